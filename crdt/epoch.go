package crdt

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Epochs: see doc.go, "Bounded history", for the design. This file holds
// the names and byte formats: the epoch ID, the genesis change's header
// and the cut proposal's value.

// Epoch names one generation of the fleet document. Epoch 0 is the
// document as it began; every cut starts the next one from a genesis
// change that holds the state at the cut and no history.
type Epoch struct {
	Num uint64
	// ID is the hash of the cut: the parent epoch, the number and the
	// heads the state was taken at (epochID). Zero for epoch 0.
	ID Hash
}

// String renders the epoch as "num/id-prefix".
func (e Epoch) String() string {
	if e.Num == 0 {
		return "0"
	}
	return fmt.Sprintf("%d/%s", e.Num, hex.EncodeToString(e.ID[:6]))
}

// After reports whether e supersedes f: a higher number, or the same
// number and a lower ID (two cuts of one parent: the lower ID wins on
// every node).
func (e Epoch) After(f Epoch) bool {
	if e.Num != f.Num {
		return e.Num > f.Num
	}
	return bytes.Compare(e.ID[:], f.ID[:]) < 0
}

var epochDomain = []byte("meshnode/epoch/1\x00")

// epochID is the ID of epoch num cut from parent at heads cut (sorted).
func epochID(num uint64, parent Hash, cut []Hash) Hash {
	h := sha256.New()
	h.Write(epochDomain)
	h.Write(binary.AppendUvarint(nil, num))
	h.Write(parent[:])
	for _, c := range cut {
		h.Write(c[:])
	}
	var id Hash
	copy(id[:], h.Sum(nil))
	return id
}

// epochActor is the automerge actor of an epoch's genesis change: the
// first 16 bytes of its ID, so every node that builds the genesis makes
// the same change.
func epochActor(id Hash) string { return hex.EncodeToString(id[:16]) }

// ownActorPrefix is the part of this node's automerge actor IDs derived
// from its peer ID: changes it made in any run are told apart by it
// (carry.go), and the rest is random, so no two runs reuse an actor.
func ownActorPrefix(self string) []byte {
	h := sha256.Sum256([]byte("meshnode/actor/1\x00" + self))
	return h[:8]
}

// newOwnActor returns a fresh actor ID (hex) for this node.
func newOwnActor(self string) string {
	b := make([]byte, 16)
	copy(b, ownActorPrefix(self))
	_, _ = rand.Read(b[8:])
	return hex.EncodeToString(b)
}

// isOwnActor reports whether actor (bytes) is one of self's.
func isOwnActor(actor []byte, prefix []byte) bool {
	return len(actor) == 16 && bytes.Equal(actor[:8], prefix)
}

// The genesis change's message is
//
//	"meshnode epoch <num>\n" genesisPrefix base64url(header)
//
// and its header, with uvarint lengths and counts:
//
//	num uvarint | parent [32] | ncut | cut [32]* |
//	nincluded | { actor str | seq uvarint }* |
//	ngroups | { writer str | sig [64] | nentries | entry* }*
//	entry:   key str | 0 (the genesis holds this value at key) |
//	         key str | 1 | value str (a value the genesis does not hold)
//
// included is the parent epoch's version vector at the cut: actor (raw
// bytes) to the highest seq of its changes the state holds. A group is
// one signature of the parent history carried across: the writer's
// signature over its record writes in one change (record.go), with every
// write of that change, so a reader can check it again. A write the
// genesis still holds is named by its key alone.
const genesisPrefix = "mnepoch1:"

// epochHeader is a decoded genesis header.
type epochHeader struct {
	num      uint64
	parent   Hash
	cut      []Hash
	included []actorSeq
	groups   []sigGroup
}

type actorSeq struct {
	actor string // raw bytes
	seq   uint64
}

// sigGroup is one carried signature.
type sigGroup struct {
	writer  string
	sig     []byte
	entries []groupEntry
}

type groupEntry struct {
	key    string
	inline bool
	value  []byte // when inline
}

// id returns the epoch the header starts.
func (h *epochHeader) id() Hash { return epochID(h.num, h.parent, h.cut) }

func (h *epochHeader) epoch() Epoch { return Epoch{Num: h.num, ID: h.id()} }

// includedSeq returns the highest seq of actor the cut holds.
func (h *epochHeader) includedSeq(actor []byte) uint64 {
	i, ok := slices.BinarySearchFunc(h.included, string(actor), func(a actorSeq, s string) int { return cmp.Compare(a.actor, s) })
	if !ok {
		return 0
	}
	return h.included[i].seq
}

func (h *epochHeader) encode() []byte {
	b := binary.AppendUvarint(nil, h.num)
	b = append(b, h.parent[:]...)
	b = binary.AppendUvarint(b, uint64(len(h.cut)))
	for _, c := range h.cut {
		b = append(b, c[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(h.included)))
	for _, a := range h.included {
		b = appendStr(b, a.actor)
		b = binary.AppendUvarint(b, a.seq)
	}
	b = binary.AppendUvarint(b, uint64(len(h.groups)))
	for _, g := range h.groups {
		b = appendStr(b, g.writer)
		b = append(b, g.sig...)
		b = binary.AppendUvarint(b, uint64(len(g.entries)))
		for _, e := range g.entries {
			b = appendStr(b, e.key)
			if e.inline {
				b = append(b, 1)
				b = appendStr(b, string(e.value))
			} else {
				b = append(b, 0)
			}
		}
	}
	return b
}

// maxCutHeads bounds the heads a cut names.
const maxCutHeads = 64

// errEpoch is wrapped by errors decoding an epoch header or a proposal.
var errEpoch = errors.New("crdt: bad epoch header")

// decodeEpochHeader decodes a genesis header; it is a decoder of peer
// bytes (it comes in snapshots), so every count is checked against the
// bytes left before anything is allocated for it.
func decodeEpochHeader(b []byte) (*epochHeader, error) {
	p := recReader{b: b}
	h := &epochHeader{num: p.uvarint()}
	h.parent = p.hash()
	n := p.count(32)
	if n > maxCutHeads {
		p.fail("%d cut heads (max %d)", n, maxCutHeads)
	}
	for range n {
		h.cut = append(h.cut, p.hash())
	}
	n = p.count(2)
	for i := uint64(0); i < n && p.err == nil; i++ {
		a := actorSeq{actor: string(p.raw()), seq: p.uvarint()}
		if i > 0 && a.actor <= h.included[i-1].actor {
			p.fail("included actors out of order")
		}
		h.included = append(h.included, a)
	}
	n = p.count(1 + sigLen + 1)
	for i := uint64(0); i < n && p.err == nil; i++ {
		g := sigGroup{writer: p.str(), sig: p.bytes(sigLen)}
		m := p.count(2)
		for j := uint64(0); j < m && p.err == nil; j++ {
			e := groupEntry{key: p.str()}
			switch p.byte() {
			case 0:
			case 1:
				e.inline, e.value = true, p.raw()
			default:
				p.fail("bad entry kind")
			}
			g.entries = append(g.entries, e)
		}
		h.groups = append(h.groups, g)
	}
	if p.err == nil && len(p.b) > 0 {
		p.fail("%d bytes after the header", len(p.b))
	}
	if p.err != nil {
		return nil, fmt.Errorf("%w: %v", errEpoch, p.err)
	}
	if h.num == 0 {
		return nil, fmt.Errorf("%w: epoch 0 has no genesis", errEpoch)
	}
	if !bytes.Equal(h.encode(), b) {
		return nil, fmt.Errorf("%w: not in canonical form", errEpoch)
	}
	return h, nil
}

// raw reads a uvarint length and that many bytes (not text).
func (p *recReader) raw() []byte {
	n := p.uvarint()
	if n > uint64(len(p.b)) {
		p.fail("%d bytes, %d left", n, len(p.b))
		return nil
	}
	return p.bytes(int(n))
}

// hash reads 32 bytes.
func (p *recReader) hash() Hash {
	var h Hash
	copy(h[:], p.bytes(32))
	return h
}

// bytes reads n bytes.
func (p *recReader) bytes(n int) []byte {
	if p.err != nil {
		return nil
	}
	if len(p.b) < n {
		p.fail("truncated")
		return nil
	}
	out := p.b[:n]
	p.b = p.b[n:]
	return out
}

// count reads a count of items that take at least min bytes each, and
// refuses one the bytes left cannot hold.
func (p *recReader) count(min int) uint64 {
	n := p.uvarint()
	if p.err == nil && n > uint64(len(p.b)/min) {
		p.fail("a count of %d with %d bytes left", n, len(p.b))
		return 0
	}
	return n
}

// genesisMessage is the genesis change's message for h.
func genesisMessage(h *epochHeader) string {
	return fmt.Sprintf("meshnode epoch %d\n%s%s", h.num, genesisPrefix, base64.RawURLEncoding.EncodeToString(h.encode()))
}

// isGenesisMessage reports whether a change message is a genesis's.
func isGenesisMessage(msg string) bool {
	return strings.HasPrefix(msg, "meshnode epoch ") && strings.Contains(msg, "\n"+genesisPrefix)
}

// parseGenesisMessage returns the header of a genesis message; ok is
// false for a message that is not one.
func parseGenesisMessage(msg string) (_ *epochHeader, ok bool, _ error) {
	if !isGenesisMessage(msg) {
		return nil, false, nil
	}
	i := strings.Index(msg, "\n"+genesisPrefix)
	b, err := base64.RawURLEncoding.DecodeString(msg[i+1+len(genesisPrefix):])
	if err != nil {
		return nil, true, fmt.Errorf("%w: not base64url: %v", errEpoch, err)
	}
	h, err := decodeEpochHeader(b)
	return h, true, err
}

// A cut proposal is the shared value at epoch/cut/<peer>, written by that
// peer:
//
//	"<num> <head hex>[,<head hex>...]"
//
// proposing epoch num, cut from the epoch the document is in at the
// heads named, which the change that writes it depends on. A genesis
// drops every proposal.

// proposal is a decoded cut proposal.
type proposal struct {
	num uint64
	cut []Hash // sorted
}

func (p proposal) String() string {
	hs := make([]string, len(p.cut))
	for i, h := range p.cut {
		hs[i] = h.String()
	}
	return strconv.FormatUint(p.num, 10) + " " + strings.Join(hs, ",")
}

// parseProposal decodes a proposal value.
func parseProposal(s string) (proposal, error) {
	num, heads, ok := strings.Cut(s, " ")
	var p proposal
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil || n == 0 {
		return p, fmt.Errorf("%w: proposal %q does not start with an epoch number", errEpoch, clip(s))
	}
	p.num = n
	for hs := range strings.SplitSeq(heads, ",") {
		h, err := ParseHash(hs)
		if err != nil {
			return p, fmt.Errorf("%w: proposal names a bad head: %v", errEpoch, err)
		}
		p.cut = append(p.cut, h)
		if len(p.cut) > maxCutHeads {
			return p, fmt.Errorf("%w: proposal names more than %d heads", errEpoch, maxCutHeads)
		}
	}
	if !slices.IsSortedFunc(p.cut, compareHash) {
		return p, fmt.Errorf("%w: proposal heads are not sorted", errEpoch)
	}
	for i := 1; i < len(p.cut); i++ {
		if p.cut[i] == p.cut[i-1] {
			return p, fmt.Errorf("%w: proposal names a head twice", errEpoch)
		}
	}
	if p.String() != s {
		return p, fmt.Errorf("%w: proposal %q is not in canonical form (lower-case hex, no leading zeros)", errEpoch, clip(s))
	}
	return p, nil
}

func compareHash(a, b Hash) int { return bytes.Compare(a[:], b[:]) }
