package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshnode/meshnode/mesh"
)

const (
	legacyToken = "mn1-pp3jr5g5dqemmjnuxkqkv6ou3a6wmqqwlgum34pq4jbn6oxla7wq"
	sameFleet   = "mn2-pp3jr5g5dqemmjnuxkqkv6ou3a6wmqqwlgum34pq4jbn6oxla7wtippype"
)

// A token stored by an earlier release still opens its fleet and is stored
// again with a checksum; --join with either form of it is the same fleet.
func TestLegacyStoredTokenRewritten(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, FileToken)
	os.WriteFile(path, []byte(legacyToken+"\n"), 0o600)
	f, created, err := loadFleet(dir, "")
	if err != nil || created {
		t.Fatalf("legacy stored token: created=%v err=%v", created, err)
	}
	b, _ := os.ReadFile(path)
	if strings.TrimSpace(string(b)) != sameFleet {
		t.Fatalf("stored token is %q, want it rewritten as %q", b, sameFleet)
	}
	for _, join := range []string{legacyToken, sameFleet} {
		g, _, err := loadFleet(dir, join)
		if err != nil || g.ID != f.ID {
			t.Fatalf("--join %s on its own data dir: %v", join[:4], err)
		}
	}
}

// A mistyped join token stops the node with the checksum error; it never
// starts a new fleet.
func TestMistypedJoinTokenRefused(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Join = sameFleet[:20] + "a" + sameFleet[21:]
	if cfg.Join == sameFleet {
		cfg.Join = sameFleet[:20] + "b" + sameFleet[21:]
	}
	n, err := New(cfg)
	if err == nil {
		n.Close()
		t.Fatal("a node started with a mistyped join token")
	}
	if !errors.Is(err, mesh.ErrTokenChecksum) || !strings.Contains(err.Error(), "check for a typo") {
		t.Fatalf("error %q does not say the checksum failed", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, FileToken)); err == nil {
		t.Fatal("a fleet token was stored for the mistyped token")
	}
}
