package crdt

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"maps"
	"slices"

	am "github.com/automerge/automerge-go"
)

// Attestations: one signature that covers all of a writer's records.
//
// Every change that writes records of a writer W also writes W's
// attestation, nodes/<W>/attest: a signed record (kind 4) whose root is
//
//	SHA-256("meshnode/attest/1" 0 | W | 0 | leaf*)
//	leaf = SHA-256(uvarint len(key) | key | uvarint len(value) | value)
//
// over W's other records in force after the change, in key order. A
// genesis (genesis.go) must show why each record it holds is W's: a
// writer whose records in the genesis hash to the root of its
// attestation there needs no other signature for them than the one on
// the attestation, so a genesis carries about one signature per writer
// instead of one per change that wrote a record still in force (2,300
// against 50 for a fleet of 50 nodes of 40 items each). A writer whose
// records moved on after its last attestation (a change from a tool that
// writes none, say) falls back to a signature per change.

var attestDomain = []byte("meshnode/attest/1\x00")

// attestRoot is the root over a writer's records (key to value; the
// attestation itself is left out).
func attestRoot(writer string, recs map[string][]byte) string {
	return rootOf(writer, slices.Sorted(maps.Keys(recs)), func(k string) ([32]byte, bool) {
		return attestLeaf(k, recs[k]), true
	})
}

// attestLeaf is one record's leaf of an attestation root.
func attestLeaf(k string, v []byte) [32]byte {
	var n [binary.MaxVarintLen64]byte
	l := sha256.New()
	l.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
	l.Write([]byte(k))
	l.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
	l.Write(v)
	var out [32]byte
	l.Sum(out[:0])
	return out
}

// rootOf hashes the leaves of keys (sorted), skipping the attestation
// and keys leaf has none for.
func rootOf(writer string, keys []string, leaf func(string) ([32]byte, bool)) string {
	h := sha256.New()
	h.Write(attestDomain)
	h.Write([]byte(writer))
	h.Write([]byte{0})
	for _, k := range keys {
		if k == attestKey(writer) {
			continue
		}
		if l, ok := leaf(k); ok {
			h.Write(l[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// rootFor is the root over writer's records in force in x, with over
// (writes not applied yet) taking precedence. A leaf is computed once per
// record (writerLeaf) and the keys sorted once per key added: a commit of
// a node with 10,000 records hashes only what it writes.
func rootFor(x *recIndex, writer string, over map[string][]byte) string {
	keys := x.sortedKeysOf(writer)
	cache := x.keysOf(writer)
	var extra []string
	for k := range over {
		if _, ok := cache[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		keys = slices.Sorted(slices.Values(append(slices.Clone(keys), extra...)))
	}
	return rootOf(writer, keys, func(k string) ([32]byte, bool) {
		if v, ok := over[k]; ok {
			return attestLeaf(k, v), true
		}
		c, v := cache[k], x.keys[k]
		if c == nil || v.rec == nil {
			return [32]byte{}, false
		}
		if c.rec != v.rec {
			sk, _, err := parseKey(k)
			if err != nil || sk.writer != writer {
				return [32]byte{}, false // a key whose suffix only looks like the writer's
			}
			b, err := encodeRecord(k, v.rec)
			if err != nil {
				return [32]byte{}, false
			}
			c.rec, c.leaf = v.rec, attestLeaf(k, b)
		}
		return c.leaf, true
	})
}

// attestLocked adds to tx, applied to doc, the attestation of every
// writer whose records tx writes. Call with mu and view held, after tx's
// ops ran and before its records are signed.
func (d *Doc) attestLocked(tx *Tx, doc *am.Doc) error {
	writes := map[string]map[string][]byte{}
	keys := map[string]pendingSig{}
	for _, p := range tx.w.signed {
		if writes[p.writer] == nil {
			writes[p.writer] = map[string][]byte{}
			keys[p.writer] = p
		}
		writes[p.writer][p.op.key] = p.op.value
	}
	for _, w := range slices.Sorted(maps.Keys(writes)) {
		root := rootFor(d.recs, w, writes[w])
		key := attestKey(w)
		if cur, ok := d.recs.best(key); ok && cur.root == root {
			continue
		}
		if err := tx.w.writeRecord(d, doc, key, w, keys[w].key, &record{kind: recAttest, root: root}); err != nil {
			return err
		}
	}
	return nil
}

// attested returns the writers whose records in recs (the records of a
// genesis, key to value) hash to the root of their attestation there.
func attested(recs map[string][]byte) map[string]bool {
	byWriter := map[string]map[string][]byte{}
	for k, v := range recs {
		sk, _, err := parseKey(k)
		if err != nil {
			continue
		}
		if byWriter[sk.writer] == nil {
			byWriter[sk.writer] = map[string][]byte{}
		}
		byWriter[sk.writer][k] = v
	}
	out := map[string]bool{}
	for w, rs := range byWriter {
		a, ok := rs[attestKey(w)]
		if !ok {
			continue
		}
		r, err := decodeRecord(a)
		if err != nil || r.kind != recAttest {
			continue
		}
		if attestRoot(w, rs) == r.root {
			out[w] = true
		}
	}
	return out
}
