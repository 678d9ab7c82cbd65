package crdt

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Signed single-writer records.
//
// A node record (nodes/<X>), a holder entry (library/<item>/holders/<X>)
// and a presence lease (rooms/<topic>/presence/<X>) are each one automerge
// bytes value written only by X:
//
//	version 1 | kind u8 | counter uvarint | fields | signature [64]
//
// kind is 1 (node), 2 (holder) or 3 (presence). Fields, in order, with
// strings and lists as uvarint length then bytes (UTF-8) or items, and
// integers as zig-zag varints:
//
//	node:     name, addrs list, version, roles list, started_ms, last_seen_ms, alive u8
//	holder:   manifest, version, size, files, state, updated_ms
//	presence: expiry_ms
//
// The signature is X's Ed25519 signature (the key inside X's peer ID, so
// anyone can check it without a lookup) over
//
//	"meshnode/record/1" 0x00 | document key | 0x00 | the record without its signature
//
// so a record verifies only at the key it was written for. The counter
// rises with every write of the key (max(previous+1, now in Unix ms), so a
// node that lost its data dir still moves forward); a change that writes a
// counter not above the one in force is a replay and is refused. Encoding
// is canonical: a record decodes only if re-encoding its fields gives the
// same bytes.
//
// One value per record, instead of a map of fields, keeps a record to one
// automerge operation: fewer operations in memory and to load.

const (
	recordVersion = 1
	recNode       = 1
	recHolder     = 2
	recPresence   = 3

	sigLen = 64
	// MaxRecord bounds one signed record's bytes.
	MaxRecord = 8 << 10
	// holderRemoved is the state of a holder entry its writer withdrew:
	// a signed tombstone, since a delete cannot carry a signature.
	holderRemoved = "removed"
)

var recordDomain = []byte("meshnode/record/1\x00")

// errRecord is wrapped by record decoding errors.
var errRecord = errors.New("crdt: bad signed record")

// record is a decoded signed record.
type record struct {
	kind     byte
	counter  uint64
	node     NodeRecord
	holder   Holder
	expiryMs int64
	// signed is the record without its signature; sig the signature.
	signed, sig []byte
}

func (r *record) appendFields(b []byte) []byte {
	b = append(b, recordVersion, r.kind)
	b = binary.AppendUvarint(b, r.counter)
	switch r.kind {
	case recNode:
		n := r.node
		b = appendStr(b, n.Name)
		b = appendList(b, n.Addrs)
		b = binary.AppendVarint(b, n.Version)
		b = appendList(b, n.Roles)
		b = binary.AppendVarint(b, n.StartedMs)
		b = binary.AppendVarint(b, n.LastSeenMs)
		b = append(b, boolByte(n.Alive))
	case recHolder:
		h := r.holder
		b = appendStr(b, h.Manifest)
		b = appendStr(b, h.Version)
		b = binary.AppendVarint(b, h.Size)
		b = binary.AppendVarint(b, h.Files)
		b = appendStr(b, h.State)
		b = binary.AppendVarint(b, h.UpdatedMs)
	case recPresence:
		b = binary.AppendVarint(b, r.expiryMs)
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendList(b []byte, l []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(l)))
	for _, s := range l {
		b = appendStr(b, s)
	}
	return b
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func signedMessage(key string, body []byte) []byte {
	m := make([]byte, 0, len(recordDomain)+len(key)+1+len(body))
	m = append(m, recordDomain...)
	m = append(m, key...)
	m = append(m, 0)
	return append(m, body...)
}

// signRecord encodes r for key and signs it with k.
func signRecord(k crypto.PrivKey, key string, r *record) ([]byte, error) {
	body := r.appendFields(nil)
	sig, err := k.Sign(signedMessage(key, body))
	if err != nil {
		return nil, fmt.Errorf("crdt: sign %s: %w", key, err)
	}
	if len(sig) != sigLen {
		return nil, fmt.Errorf("crdt: sign %s: the identity key is not Ed25519 (%d-byte signature)", key, len(sig))
	}
	out := append(body, sig...)
	if len(out) > MaxRecord {
		return nil, fmt.Errorf("%w: record for %s is %d bytes, max %d", ErrInvalidValue, key, len(out), MaxRecord)
	}
	return out, nil
}

// decodeRecord parses a record without checking its signature.
func decodeRecord(b []byte) (*record, error) {
	if len(b) > MaxRecord {
		return nil, fmt.Errorf("%w: %d bytes, max %d", errRecord, len(b), MaxRecord)
	}
	if len(b) < 2+1+sigLen {
		return nil, fmt.Errorf("%w: %d bytes is too short", errRecord, len(b))
	}
	if b[0] != recordVersion {
		return nil, fmt.Errorf("%w: version %d, this node reads %d", errRecord, b[0], recordVersion)
	}
	r := &record{kind: b[1], signed: b[:len(b)-sigLen], sig: b[len(b)-sigLen:]}
	p := recReader{b: r.signed[2:]}
	r.counter = p.uvarint()
	switch r.kind {
	case recNode:
		n := &r.node
		n.Name = p.str()
		n.Addrs = p.list()
		n.Version = p.varint()
		n.Roles = p.list()
		n.StartedMs = p.varint()
		n.LastSeenMs = p.varint()
		switch a := p.byte(); a {
		case 0, 1:
			n.Alive = a == 1
		default:
			p.fail("alive is %d", a)
		}
	case recHolder:
		h := &r.holder
		h.Manifest = p.str()
		h.Version = p.str()
		h.Size = p.varint()
		h.Files = p.varint()
		h.State = p.str()
		h.UpdatedMs = p.varint()
	case recPresence:
		r.expiryMs = p.varint()
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", errRecord, r.kind)
	}
	if p.err != nil {
		return nil, p.err
	}
	if len(p.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the fields", errRecord, len(p.b))
	}
	if string(r.appendFields(nil)) != string(r.signed) {
		return nil, fmt.Errorf("%w: not canonically encoded", errRecord)
	}
	return r, nil
}

// recReader reads record fields; the first error sticks.
type recReader struct {
	b   []byte
	err error
}

func (p *recReader) fail(format string, a ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("%w: %s", errRecord, fmt.Sprintf(format, a...))
	}
	p.b = nil
}

func (p *recReader) uvarint() uint64 {
	v, n := binary.Uvarint(p.b)
	if n <= 0 {
		p.fail("truncated number")
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *recReader) varint() int64 {
	v, n := binary.Varint(p.b)
	if n <= 0 {
		p.fail("truncated number")
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *recReader) byte() byte {
	if len(p.b) == 0 {
		p.fail("truncated")
		return 0
	}
	c := p.b[0]
	p.b = p.b[1:]
	return c
}

func (p *recReader) str() string {
	n := p.uvarint()
	if n > uint64(len(p.b)) {
		p.fail("string of %d bytes, %d left", n, len(p.b))
		return ""
	}
	s := string(p.b[:n])
	p.b = p.b[n:]
	if !utf8.ValidString(s) {
		p.fail("string is not UTF-8")
	}
	return s
}

func (p *recReader) list() []string {
	n := p.uvarint()
	if n > uint64(len(p.b)) { // every item takes at least one byte
		p.fail("list of %d items, %d bytes left", n, len(p.b))
		return nil
	}
	out := make([]string, 0, n)
	for i := uint64(0); i < n && p.err == nil; i++ {
		out = append(out, p.str())
	}
	return out
}

// keys caches writers' public keys and the records already verified, so a
// reader pays for a signature once per record, not once per read. Every
// record that passes validation on arrival is added to the cache.
type keys struct {
	mu       sync.Mutex
	pubs     map[string]crypto.PubKey
	verified map[[32]byte]struct{}
}

// Bounds of the caches: past them, they are cleared and refilled.
const (
	maxPubKeys  = 1 << 16
	maxVerified = 1 << 20
)

func newKeys() *keys {
	return &keys{pubs: map[string]crypto.PubKey{}, verified: map[[32]byte]struct{}{}}
}

func verifiedKey(key string, value []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(value)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func (ks *keys) known(id [32]byte) bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	_, ok := ks.verified[id]
	return ok
}

func (ks *keys) remember(id [32]byte) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if len(ks.verified) >= maxVerified {
		clear(ks.verified)
	}
	ks.verified[id] = struct{}{}
}

// pub returns the public key inside a peer ID.
func (ks *keys) pub(writer string) (crypto.PubKey, error) {
	ks.mu.Lock()
	k, ok := ks.pubs[writer]
	ks.mu.Unlock()
	if ok {
		return k, nil
	}
	id, err := peer.Decode(writer)
	if err != nil {
		return nil, fmt.Errorf("writer %q is not a peer ID: %v", writer, err)
	}
	k, err = id.ExtractPublicKey()
	if err != nil {
		return nil, fmt.Errorf("peer ID %s does not embed its public key: %v", writer, err)
	}
	if k.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("peer ID %s has a %s key; records are signed with Ed25519", writer, k.Type())
	}
	ks.mu.Lock()
	if len(ks.pubs) >= maxPubKeys {
		clear(ks.pubs)
	}
	ks.pubs[writer] = k
	ks.mu.Unlock()
	return k, nil
}

// verify decodes the record at key, written by writer, of the wanted
// kind, and checks its signature (once: verified records are cached).
func (ks *keys) verify(key, writer string, kind byte, value []byte) (*record, error) {
	r, err := decodeRecord(value)
	if err != nil {
		return nil, err
	}
	if r.kind != kind {
		return nil, fmt.Errorf("%w: a kind %d record where kind %d belongs", errRecord, r.kind, kind)
	}
	id := verifiedKey(key, value)
	if ks.known(id) {
		return r, nil
	}
	pub, err := ks.pub(writer)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadSignature, err)
	}
	ok, err := pub.Verify(signedMessage(key, r.signed), r.sig)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: not signed by %s", errBadSignature, writer)
	}
	ks.remember(id)
	return r, nil
}

var errBadSignature = errors.New("crdt: bad record signature")
