package mesh

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"unicode"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// Join tokens. The current form is tokenPrefix followed by 58 base32
// characters (RFC 4648 alphabet, lower case, no padding) that encode 36
// bytes: the 32-byte fleet secret, then its checksum (tokenSum). The
// legacy form, legacyTokenPrefix followed by the 52-character base32
// secret, has no checksum: a typo in it gives a valid but different
// secret, so the node would silently start a fleet of its own.
const (
	tokenPrefix       = "mn2-"
	legacyTokenPrefix = "mn1-" // same length as tokenPrefix
	tokenSumSize      = 4
)

var tokenEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

// castagnoli is the CRC-32C table for tokenSum.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadToken is returned for a join token that cannot be parsed: no
// known version prefix, a character outside base32, or a wrong length.
var ErrBadToken = errors.New("mesh: bad join token")

// ErrTokenChecksum is returned for a join token that is well formed but
// whose checksum does not match its secret: it was mistyped or mangled,
// and is refused rather than taken for another fleet's token.
var ErrTokenChecksum = errors.New("mesh: join token checksum mismatch: check for a typo")

// Fleet is what the join token's secret gives a node: the fleet ID that
// scopes names, and the keys that prove membership and seal gossip.
type Fleet struct {
	secret [32]byte
	// ID is public: it names the mDNS service, topics and protocols, so two
	// fleets on one LAN never mix. It proves nothing. It depends on the
	// secret only, never on the token form, so compare fleets by ID.
	ID string

	legacy  bool // parsed from a legacy token (no checksum)
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

// ParseToken parses a join token: the current form ("mn2-", secret and
// checksum) or the legacy one ("mn1-", secret only; see Fleet.Legacy).
// Letters may be in either case, and whitespace anywhere is ignored, so a
// token wrapped across lines still parses. A mistyped current token fails
// with ErrTokenChecksum; a malformed one with an error wrapping
// ErrBadToken that says what is wrong.
func ParseToken(tok string) (*Fleet, error) {
	tok = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, tok)
	switch {
	case tok == "":
		return nil, fmt.Errorf("%w: it is empty", ErrBadToken)
	case hasPrefixFold(tok, tokenPrefix):
		return parseCurrentToken(tok)
	case hasPrefixFold(tok, legacyTokenPrefix):
		return parseLegacyToken(tok)
	}
	if v := tokenVersion(tok); v != "" {
		return nil, fmt.Errorf("%w: version %q is not known to this meshnode (made by a newer release?)", ErrBadToken, v)
	}
	return nil, fmt.Errorf("%w: it must start with %q", ErrBadToken, tokenPrefix)
}

func parseCurrentToken(tok string) (*Fleet, error) {
	raw, tailZero, err := decodeTokenBody(tok, 32+tokenSumSize)
	if err != nil {
		return nil, err
	}
	var s [32]byte
	copy(s[:], raw)
	// The unused low bits of the last character must be zero, or a typo
	// there would go unnoticed.
	if sum := tokenSum(s); !tailZero || string(sum[:]) != string(raw[32:]) {
		return nil, ErrTokenChecksum
	}
	return fleetFromSecret(s), nil
}

func parseLegacyToken(tok string) (*Fleet, error) {
	// The unused bits of the last character are ignored, as before.
	raw, _, err := decodeTokenBody(tok, 32)
	if err != nil {
		return nil, err
	}
	f := fleetFromSecret([32]byte(raw))
	f.legacy = true
	return f, nil
}

// decodeTokenBody decodes the base32 after the 4-character prefix of tok
// (all whitespace removed) into n bytes. tailZero reports whether the bits
// of the last character beyond the n bytes are zero. Positions in its
// errors count characters from 1 at the start of the prefix.
func decodeTokenBody(tok string, n int) (raw []byte, tailZero bool, err error) {
	prefix, body := tok[:len(tokenPrefix)], tok[len(tokenPrefix):]
	pos := len(prefix) // ASCII: it matched a prefix
	for _, r := range body {
		pos++
		if base32Value(r) < 0 {
			return nil, false, fmt.Errorf("%w: %s at position %d is not a base32 character (a-z, 2-7)%s",
				ErrBadToken, strconv.QuoteRune(r), pos, base32Hint(r))
		}
	}
	if want := (n*8 + 4) / 5; len(body) != want {
		return nil, false, fmt.Errorf("%w: %d characters after %q, want %d (copied whole?)",
			ErrBadToken, len(body), strings.ToLower(prefix), want)
	}
	raw = make([]byte, 0, n)
	var acc, bits uint
	for i := 0; i < len(body); i++ {
		acc = acc<<5 | uint(base32Value(rune(body[i])))
		bits += 5
		if bits >= 8 {
			bits -= 8
			raw = append(raw, byte(acc>>bits))
			acc &= 1<<bits - 1
		}
	}
	return raw, acc == 0, nil
}

// base32Value returns the value of an RFC 4648 base32 digit in either
// case, or -1.
func base32Value(r rune) int {
	switch {
	case r >= 'a' && r <= 'z':
		return int(r - 'a')
	case r >= 'A' && r <= 'Z':
		return int(r - 'A')
	case r >= '2' && r <= '7':
		return int(r-'2') + 26
	}
	return -1
}

// base32Hint suggests the letter meant by a digit base32 leaves out.
func base32Hint(r rune) string {
	switch r {
	case '0':
		return ` (the letter "o"?)`
	case '1':
		return ` (the letter "l" or "i"?)`
	case '8':
		return ` (the letter "b"?)`
	}
	return ""
}

// tokenSum is the checksum a current token carries: CRC-32C over the
// prefix (which separates this use and version from any other) and the
// secret, little-endian. It protects against typos, not attackers: a
// CRC-32 detects every error burst of up to 32 bits, so every change of
// one character (5 bits) and every swap of two neighbouring characters
// (10 bits) is caught, where a truncated hash would only make that
// likely; other errors pass with probability 2^-32.
func tokenSum(secret [32]byte) [tokenSumSize]byte {
	c := crc32.Update(0, castagnoli, []byte(tokenPrefix))
	c = crc32.Update(c, castagnoli, secret[:])
	var sum [tokenSumSize]byte
	binary.LittleEndian.PutUint32(sum[:], c)
	return sum
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// tokenVersion returns the prefix of a token that looks like a join token
// of another version ("mn" digits "-"), else "".
func tokenVersion(tok string) string {
	if !hasPrefixFold(tok, "mn") {
		return ""
	}
	i := 2
	for i < len(tok) && tok[i] >= '0' && tok[i] <= '9' {
		i++
	}
	if i == 2 || i >= len(tok) || tok[i] != '-' {
		return ""
	}
	return strings.ToLower(tok[:i+1])
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

// Token returns the join token that carries this fleet's secret, always
// in the current form with a checksum, even for a legacy fleet.
func (f *Fleet) Token() string {
	sum := tokenSum(f.secret)
	payload := append(f.secret[:len(f.secret):len(f.secret)], sum[:]...)
	return tokenPrefix + strings.ToLower(tokenEnc.EncodeToString(payload))
}

// Legacy reports whether the fleet was parsed from a legacy ("mn1-") token,
// which has no checksum. The fleet is the same as the one its current
// token (Token) gives; the caller should ask for the token to be reissued.
func (f *Fleet) Legacy() bool { return f.legacy }

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
