package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshnode/meshnode/internal/atomicfile"
	"github.com/meshnode/meshnode/mesh"
)

// Files in the data directory. Secrets are mode 0600.
const (
	FileIdentity = "identity.key" // libp2p private key
	FileToken    = "fleet.token"  // the fleet join token
	FileAPIToken = "api.token"    // bearer token of the local API
	FileAPIAddr  = "api.addr"     // address the running daemon's API listens on
	DirDoc       = "doc"          // document snapshot and change log
	DirShare     = "share"        // default share folder (--share)
	DirLibrary   = "library"      // scan index, manifests, download staging
)

// loadFleet returns the fleet to run in: --join if given (stored for next
// time), else the stored token, else a new fleet. created tells the caller
// to print how others join.
func loadFleet(dir, join string) (f *mesh.Fleet, created bool, err error) {
	path := filepath.Join(dir, FileToken)
	stored, rerr := os.ReadFile(path)
	if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read fleet token: %w", rerr)
	}
	var have *mesh.Fleet
	if rerr == nil {
		if have, err = mesh.ParseToken(string(stored)); err != nil {
			return nil, false, fmt.Errorf("fleet token file %s: %w", path, err)
		}
	}
	switch {
	case join != "":
		if f, err = mesh.ParseToken(join); err != nil {
			return nil, false, fmt.Errorf("--join: %w", err)
		}
		if have != nil && have.ID != f.ID {
			return nil, false, fmt.Errorf("data dir %s already belongs to another fleet; use a new --data directory to join this one", dir)
		}
	case have != nil:
		f = have
		if strings.TrimSpace(string(stored)) == f.Token() {
			return f, false, nil
		}
		// A token of an earlier release (mn1-, no checksum): stored
		// again in the current form below.
	default:
		if f, err = mesh.NewFleet(); err != nil {
			return nil, false, err
		}
		created = true
	}
	if err := atomicfile.WriteFile(path, []byte(f.Token()+"\n"), 0o600); err != nil {
		return nil, false, fmt.Errorf("write fleet token: %w", err)
	}
	return f, created, nil
}

// loadAPIToken returns the API bearer token, creating it on first start.
func loadAPIToken(dir string) (string, error) {
	path := filepath.Join(dir, FileAPIToken)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	var r [32]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(r[:])
	if err := atomicfile.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write API token: %w", err)
	}
	return tok, nil
}

// ReadClientInfo returns what a CLI needs to reach the daemon of a data
// dir: its API address and bearer token.
func ReadClientInfo(dir string) (addr, token string, err error) {
	a, err := os.ReadFile(filepath.Join(dir, FileAPIAddr))
	if err != nil {
		return "", "", fmt.Errorf("no meshnode daemon is running with data dir %s (start one with `meshnode run --data %s`)", dir, dir)
	}
	t, err := os.ReadFile(filepath.Join(dir, FileAPIToken))
	if err != nil {
		return "", "", fmt.Errorf("read API token: %w", err)
	}
	return strings.TrimSpace(string(a)), strings.TrimSpace(string(t)), nil
}
