package crdt

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
	"unique"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Single-writer records and their signatures.
//
// A node record (nodes/<X>), a holder entry (library/<item>/holders/<X>)
// and a presence lease (rooms/<topic>/presence/<X>) are each one automerge
// bytes value written only by X:
//
//	version 1 | kind u8 | counter uvarint | fields
//
// kind is 1 (node), 2 (holder), 3 (presence) or 4 (attestation). Fields, in order, with
// strings and lists as uvarint length then bytes (UTF-8) or items, and
// integers as zig-zag varints:
//
//	node:     name, addrs list, version, roles list, started_ms, last_seen_ms, alive u8
//	holder:   manifest, version, size, files, state, updated_ms
//	          [gen, parent, next: present only when one is not zero/empty]
//	presence: expiry_ms
//	attest:   root (hex SHA-256 over the writer's other records, attest.go)
//
// Encoding is canonical: a record decodes only if re-encoding its fields
// gives the same bytes. The counter rises with every write of the key
// (max(previous+1, now in Unix ms), so a node that lost its data dir still
// moves forward); a change that writes a counter not above the one in
// force in its causal past is a replay and is refused.
//
// Records are signed per change, not one by one: the change that writes
// X's records carries X's Ed25519 signature (the key inside X's peer ID,
// so anyone checks it without a lookup) in its message, after the
// human-readable text, as a last line
//
//	mnsig1:<base64url of { uvarint len(writer) | writer | signature [64] }*>
//
// with one signature per writer whose records the change writes, over
//
//	SHA-256("meshnode/records/1" 0x00 | writer | 0x00 |
//	        { uvarint len(key) | key | uvarint len(value) | value }*)
//
// for that writer's record writes in operation order. A change with
// record writes that no signature of their writer covers is refused. A
// library scan writing 1,000 holder entries costs one signature, and a
// joiner checks a snapshot with one signature per change of its history
// (the document chunk keeps each change's message and op range), where a
// signature per record would cost one per record ever written and 64
// bytes each in the document.

const (
	recordVersion = 1
	recNode       = 1
	recHolder     = 2
	recPresence   = 3
	recAttest     = 4

	sigLen = 64
	// MaxRecord bounds one record's bytes.
	MaxRecord = 8 << 10
	// holderRemoved is the state of a holder entry its writer withdrew:
	// a signed tombstone, since a delete cannot carry a signature.
	holderRemoved = "removed"
)

var recordsDomain = []byte("meshnode/records/1\x00")

const sigPrefix = "mnsig1:"

// errRecord is wrapped by record decoding errors.
var errRecord = errors.New("crdt: bad signed record")

// record is a decoded signed record. The fields of its kind are behind a
// pointer: a fleet document holds 100,000 holder records, and a struct
// with both kinds inline was half of the memory they take in Go.
type record struct {
	kind     byte
	counter  uint64
	expiryMs int64
	root     string // attest: hex of the writer's records root (attest.go)
	node     *NodeRecord
	holder   *Holder
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
		if h.Gen != 0 || h.Parent != "" || h.Next != "" {
			b = binary.AppendVarint(b, h.Gen)
			b = appendStr(b, h.Parent)
			b = appendStr(b, h.Next)
		}
	case recPresence:
		b = binary.AppendVarint(b, r.expiryMs)
	case recAttest:
		b = appendStr(b, r.root)
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

// encodeRecord encodes r, refusing one over MaxRecord.
func encodeRecord(key string, r *record) ([]byte, error) {
	b := r.appendFields(nil)
	if len(b) > MaxRecord {
		return nil, fmt.Errorf("%w: record for %s is %d bytes, max %d", ErrInvalidValue, key, len(b), MaxRecord)
	}
	return b, nil
}

// decodeRecord parses a record.
func decodeRecord(b []byte) (*record, error) {
	if len(b) > MaxRecord {
		return nil, fmt.Errorf("%w: %d bytes, max %d", errRecord, len(b), MaxRecord)
	}
	if len(b) < 3 {
		return nil, fmt.Errorf("%w: %d bytes is too short", errRecord, len(b))
	}
	if b[0] != recordVersion {
		return nil, fmt.Errorf("%w: version %d, this node reads %d", errRecord, b[0], recordVersion)
	}
	r := &record{kind: b[1]}
	p := recReader{b: b[2:]}
	r.counter = p.uvarint()
	switch r.kind {
	case recNode:
		n := &NodeRecord{}
		r.node = n
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
		h := &Holder{}
		r.holder = h
		// Every holder of one version of an item carries the same
		// manifest hash and label: records decoded together (a join's
		// check) share one copy of each.
		h.Manifest = unique.Make(p.str()).Value()
		h.Version = unique.Make(p.str()).Value()
		h.Size = p.varint()
		h.Files = p.varint()
		h.State = unique.Make(p.str()).Value()
		h.UpdatedMs = p.varint()
		if len(p.b) > 0 && p.err == nil {
			h.Gen = p.varint()
			h.Parent = unique.Make(p.str()).Value()
			h.Next = unique.Make(p.str()).Value()
			if err := checkLineage(h); err != nil {
				p.fail("%v", err)
			}
		}
	case recPresence:
		r.expiryMs = p.varint()
	case recAttest:
		r.root = p.str()
		if len(r.root) != 64 {
			p.fail("an attestation root of %d characters, not 64", len(r.root))
		}
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", errRecord, r.kind)
	}
	if p.err != nil {
		return nil, p.err
	}
	if len(p.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the fields", errRecord, len(p.b))
	}
	if string(r.appendFields(nil)) != string(b) {
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

// sigOp is one record write covered by a change's signature.
type sigOp struct {
	key   string
	value []byte
}

// recordsDigest is what writer signs for its record writes in a change.
func recordsDigest(writer string, ops []sigOp) []byte {
	h := sha256.New()
	h.Write(recordsDomain)
	h.Write([]byte(writer))
	h.Write([]byte{0})
	var n [binary.MaxVarintLen64]byte
	for _, op := range ops {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(op.key)))])
		h.Write([]byte(op.key))
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(op.value)))])
		h.Write(op.value)
	}
	return h.Sum(nil)
}

// writerSig is one writer's signature in a change's message.
type writerSig struct {
	writer string
	sig    []byte
}

// withSignatures appends the signature line to a change message.
func withSignatures(msg string, sigs []writerSig) string {
	if len(sigs) == 0 {
		return msg
	}
	var b []byte
	for _, s := range sigs {
		b = appendStr(b, s.writer)
		b = append(b, s.sig...)
	}
	return msg + "\n" + sigPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// parseSignatures reads the signature line of a change message: writer to
// signature. A message without one has none.
func parseSignatures(msg string) (map[string][]byte, error) {
	i := strings.LastIndexByte(msg, '\n')
	if i < 0 || !strings.HasPrefix(msg[i+1:], sigPrefix) {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(msg[i+1+len(sigPrefix):])
	if err != nil {
		return nil, fmt.Errorf("signature line is not base64url: %v", err)
	}
	out := map[string][]byte{}
	p := recReader{b: b}
	for len(p.b) > 0 && p.err == nil {
		w := p.str()
		if len(p.b) < sigLen {
			p.fail("truncated signature")
			break
		}
		if _, dup := out[w]; dup {
			p.fail("two signatures by %s", w)
			break
		}
		out[w], p.b = p.b[:sigLen], p.b[sigLen:]
	}
	return out, p.err
}

// keys caches writers' public keys, taken from their peer IDs, and the
// changes whose checks on their bytes already passed (by Precheck, in the
// gossip validator, before the same change is applied), with their
// decoded ops when they are small, so applying one neither decodes it nor
// verifies its signatures again.
type keys struct {
	mu      sync.Mutex
	pubs    map[string]crypto.PubKey
	checked map[Hash]*ChangeOps // nil: checked, ops not kept
}

// Bounds of the caches: past them, they are cleared and refilled.
const (
	maxPubKeys = 1 << 16
	maxChecked = 1 << 10
	// maxCheckedSize: the ops of larger changes are not kept (they alias
	// the change's bytes, which the cache then keeps too: at most 8 MiB).
	maxCheckedSize = 8 << 10
)

func newKeys() *keys { return &keys{pubs: map[string]crypto.PubKey{}, checked: map[Hash]*ChangeOps{}} }

// passed records that change c passed the checks on its bytes.
func (ks *keys) passed(c *ChangeOps) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if len(ks.checked) >= maxChecked {
		clear(ks.checked)
	}
	if c.Size > maxCheckedSize {
		ks.checked[c.Hash] = nil
		return
	}
	ks.checked[c.Hash] = c
}

// wasChecked reports whether change h passed the checks on its bytes, and
// returns its decoded ops if they were kept.
func (ks *keys) wasChecked(h Hash) (*ChangeOps, bool) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	c, ok := ks.checked[h]
	return c, ok
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
	if id.String() != writer {
		// The CID form decodes too: one node under two keys.
		return nil, fmt.Errorf("writer %q is not a peer ID in its canonical form %s", writer, id)
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

// verify checks writer's signature over its record writes.
func (ks *keys) verify(writer string, ops []sigOp, sig []byte) error {
	pub, err := ks.pub(writer)
	if err != nil {
		return err
	}
	ok, err := pub.Verify(recordsDigest(writer, ops), sig)
	if err != nil || !ok {
		return fmt.Errorf("the change's signature by %s does not match its records", writer)
	}
	return nil
}

// sign signs writer's record writes with k.
func sign(k crypto.PrivKey, writer string, ops []sigOp) ([]byte, error) {
	sig, err := k.Sign(recordsDigest(writer, ops))
	if err != nil {
		return nil, fmt.Errorf("crdt: sign records of %s: %w", writer, err)
	}
	if len(sig) != sigLen {
		return nil, fmt.Errorf("crdt: sign records of %s: the key is not Ed25519 (%d-byte signature)", writer, len(sig))
	}
	return sig, nil
}
