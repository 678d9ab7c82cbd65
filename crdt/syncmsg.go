package crdt

import "slices"

// Automerge sync messages (rust/automerge/src/sync.rs):
//
//	type u8 (0x42; 0x43 = "v2" in automerge after 0.5)
//	heads:   uLEB count, 32-byte hashes
//	need:    uLEB count, 32-byte hashes
//	have:    uLEB count, each: last_sync (uLEB count, hashes), bloom (uLEB length, bytes)
//	changes: uLEB count, each: uLEB length, bytes (a change chunk; in a v2
//	         message one entry that may be a whole document or several changes)
//	[flags:  uLEB length, bytes] (automerge after 0.5; 0.5 ignores trailing bytes)
//
// A bloom filter is empty or uLEB entries, uLEB bits per entry, uLEB
// probes, then ceil(entries*bits/8) bytes.

const (
	syncMsgV1 = 0x42
	syncMsgV2 = 0x43
)

// SyncMessage is a decoded sync message.
type SyncMessage struct {
	Heads, Need []Hash
	// Changes are the raw chunks the message carries, sub-slices of the
	// input: in a 0x42 message each is exactly one change chunk (type 1 or
	// 2, its framing and checksum checked); in a 0x43 message there is at
	// most one entry and it may be a document chunk or several changes.
	Changes [][]byte
	V2      bool // the message type was 0x43
}

// syncLayout is where a sync message's need and changes lists lie in its
// bytes.
type syncLayout struct {
	needStart, needEnd       int
	changesStart, changesEnd int
}

func decodeSyncMessage(b []byte) (*SyncMessage, error) {
	m, _, err := parseSyncMessage(b)
	return m, err
}

// syncMessageWithoutChanges returns b re-encoded with an empty change list
// (the same heads, need, have and trailing flags). Used so automerge's sync
// state sees the message while the changes are applied by us after
// validation.
func syncMessageWithoutChanges(b []byte) ([]byte, error) {
	_, l, err := parseSyncMessage(b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, l.changesStart+1+len(b)-l.changesEnd)
	out = append(out, b[:l.changesStart]...)
	out = append(out, 0)
	return append(out, b[l.changesEnd:]...), nil
}

// syncMessageWithNeed returns b with extra added to its need list: the
// changes this node waits for (their dependencies arrived in no message),
// which automerge's sync state cannot ask for itself, since it never sees
// the changes that wait.
func syncMessageWithNeed(b []byte, extra []Hash) ([]byte, error) {
	m, l, err := parseSyncMessage(b)
	if err != nil {
		return nil, err
	}
	need := m.Need
	for _, h := range extra {
		if !slices.Contains(need, h) {
			need = append(need, h)
		}
	}
	out := append([]byte(nil), b[:l.needStart]...)
	out = appendHashList(out, need)
	return append(out, b[l.needEnd:]...), nil
}

// needMessage is a sync message that only asks for changes: our heads,
// the need list, no have (so the peer sends exactly what is needed) and
// no changes.
func needMessage(heads, need []Hash) []byte {
	b := appendHashList([]byte{syncMsgV1}, heads)
	b = appendHashList(b, need)
	return append(b, 0, 0)
}

func appendHashList(b []byte, hs []Hash) []byte {
	b = appendUleb(b, uint64(len(hs)))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

func parseSyncMessage(b []byte) (*SyncMessage, syncLayout, error) {
	var l syncLayout
	if len(b) == 0 {
		return nil, l, formatErr("sync message: empty")
	}
	if b[0] != syncMsgV1 && b[0] != syncMsgV2 {
		return nil, l, formatErr("sync message: type 0x%02x", b[0])
	}
	m := &SyncMessage{V2: b[0] == syncMsgV2}
	p := parser{b: b, off: 1, what: "sync message"}
	hashes := func(what string) []Hash {
		n := p.count(what, 32)
		if p.err != nil || n == 0 {
			return nil
		}
		hs := make([]Hash, n)
		for i := range hs {
			copy(hs[i][:], p.take(32, what))
		}
		return hs
	}
	m.Heads = hashes("heads")
	l.needStart = p.off
	m.Need = hashes("need")
	l.needEnd = p.off
	nhave := p.count("have count", 2)
	for i := uint64(0); i < nhave && p.err == nil; i++ {
		hashes("last sync")
		bloom := p.bytes("bloom filter")
		if p.err == nil {
			if err := checkBloom(bloom); err != nil {
				p.fail("have %d: %v", i, err)
			}
		}
	}
	l.changesStart = p.off
	nch := p.count("change count", 1)
	if p.err == nil && m.V2 && nch > 1 {
		p.fail("v2 message with %d change entries", nch)
	}
	for i := uint64(0); i < nch && p.err == nil; i++ {
		c := p.bytes("change")
		if p.err != nil {
			break
		}
		if !m.V2 {
			if _, n, err := parseChange(c); err != nil {
				return nil, l, formatErr("sync message: change %d: %v", i, err)
			} else if n != len(c) {
				return nil, l, formatErr("sync message: change %d: %d bytes after the chunk", i, len(c)-n)
			}
		}
		m.Changes = append(m.Changes, c)
	}
	l.changesEnd = p.off
	// Trailing flags, as newer automerge writes them.
	if p.err == nil && p.off < len(b) {
		p.bytes("flags")
		if p.err == nil && p.off != len(b) {
			p.fail("%d trailing bytes", len(b)-p.off)
		}
	}
	if p.err != nil {
		return nil, l, p.err
	}
	return m, l, nil
}

func checkBloom(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	p := parser{b: b, what: "bloom filter"}
	entries := p.uleb("entries")
	bits := p.uleb("bits per entry")
	p.uleb("probes")
	if p.err != nil {
		return p.err
	}
	if entries > 1<<32-1 || bits > 1<<32-1 {
		return formatErr("bloom filter: %d entries of %d bits", entries, bits)
	}
	bitsTotal := entries * bits // both below 2^32
	need := (bitsTotal + 7) / 8
	if need != uint64(len(b)-p.off) {
		return formatErr("bloom filter: %d entries of %d bits in %d bytes", entries, bits, len(b)-p.off)
	}
	return nil
}
