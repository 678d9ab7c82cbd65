package mesh

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// tokenPrefix starts every join token; the digit is the token version.
const tokenPrefix = "mn1-"

var tokenEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

// ErrBadToken is returned for a join token that cannot be parsed.
var ErrBadToken = errors.New("mesh: bad join token")

// Fleet is what the join token's secret gives a node: the fleet ID that
// scopes names, and the keys that prove membership and seal gossip.
type Fleet struct {
	secret [32]byte
	// ID is public: it names the mDNS service, topics and protocols, so two
	// fleets on one LAN never mix. It proves nothing.
	ID string

	authKey [32]byte
	aead    cipher.AEAD
}

// NewFleet creates a fleet with a fresh random secret.
func NewFleet() (*Fleet, error) {
	var s [32]byte
	if _, err := rand.Read(s[:]); err != nil {
		return nil, fmt.Errorf("mesh: generate fleet secret: %w", err)
	}
	return fleetFromSecret(s), nil
}

// ParseToken parses a join token ("mn1-" followed by the base32 secret).
func ParseToken(tok string) (*Fleet, error) {
	tok = strings.TrimSpace(tok)
	if !strings.HasPrefix(tok, tokenPrefix) {
		return nil, fmt.Errorf("%w: it must start with %q", ErrBadToken, tokenPrefix)
	}
	raw, err := tokenEnc.DecodeString(strings.ToUpper(tok[len(tokenPrefix):]))
	if err != nil {
		return nil, fmt.Errorf("%w: not base32 after %q: %v", ErrBadToken, tokenPrefix, err)
	}
	if len(raw) != 32 {
		return nil, fmt.Errorf("%w: secret is %d bytes, want 32 (copied whole?)", ErrBadToken, len(raw))
	}
	return fleetFromSecret([32]byte(raw)), nil
}

func fleetFromSecret(s [32]byte) *Fleet {
	f := &Fleet{secret: s}
	var id [8]byte
	blake3.DeriveKey("meshnode 2026-11 fleet id", s[:], id[:])
	f.ID = hex.EncodeToString(id[:])
	blake3.DeriveKey("meshnode 2026-11 auth key", s[:], f.authKey[:])
	var gk [32]byte
	blake3.DeriveKey("meshnode 2026-11 gossip key", s[:], gk[:])
	f.aead, _ = chacha20poly1305.NewX(gk[:]) // only fails on a wrong key size
	return f
}

// Token returns the join token that carries this fleet's secret.
func (f *Fleet) Token() string {
	return tokenPrefix + strings.ToLower(tokenEnc.EncodeToString(f.secret[:]))
}

// Protocol returns a protocol ID scoped to this fleet.
func (f *Fleet) Protocol(name string) protocol.ID {
	return protocol.ID("/meshnode/" + f.ID + "/" + name)
}

// Topic returns a GossipSub topic name scoped to this fleet.
func (f *Fleet) Topic(name string) string { return "meshnode/" + f.ID + "/" + name }

// MDNSService returns the fleet's mDNS service name.
func (f *Fleet) MDNSService() string { return "_mn-" + f.ID + "._udp" }

// ErrUnsealed is returned for a gossip payload that fails authentication.
var ErrUnsealed = errors.New("mesh: message not sealed with this fleet's key")

// Seal encrypts and authenticates a gossip payload with the fleet key,
// binding it to the topic (ad). Output: nonce (24) | ciphertext+tag.
func (f *Fleet) Seal(plain []byte, ad string) []byte {
	nonce := make([]byte, chacha20poly1305.NonceSizeX, chacha20poly1305.NonceSizeX+len(plain)+f.aead.Overhead())
	_, _ = rand.Read(nonce)
	return f.aead.Seal(nonce, nonce, plain, []byte(ad))
}

// Open reverses Seal.
func (f *Fleet) Open(sealed []byte, ad string) ([]byte, error) {
	if len(sealed) < chacha20poly1305.NonceSizeX+f.aead.Overhead() {
		return nil, ErrUnsealed
	}
	n := chacha20poly1305.NonceSizeX
	plain, err := f.aead.Open(nil, sealed[:n], sealed[n:], []byte(ad))
	if err != nil {
		return nil, ErrUnsealed
	}
	return plain, nil
}

// mac computes a keyed BLAKE3 MAC over the parts, each length-prefixed so
// that no two different part lists produce the same input.
func (f *Fleet) mac(parts ...[]byte) []byte {
	h, _ := blake3.NewKeyed(f.authKey[:])
	for _, p := range parts {
		var l [4]byte
		l[0], l[1], l[2], l[3] = byte(len(p)>>24), byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
		h.Write(l[:])
		h.Write(p)
	}
	return h.Sum(nil)
}
