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
	h := sha256.New()
	h.Write(attestDomain)
	h.Write([]byte(writer))
	h.Write([]byte{0})
	var n [binary.MaxVarintLen64]byte
	for _, k := range slices.Sorted(maps.Keys(recs)) {
		if k == attestKey(writer) {
			continue
		}
		v := recs[k]
		l := sha256.New()
		l.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
		l.Write([]byte(k))
		l.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		l.Write(v)
		h.Write(l.Sum(nil))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// recordsOf returns writer's records in force in x, encoded, with over
// (writes not applied yet) taking precedence.
func recordsOf(x *recIndex, writer string, over map[string][]byte) map[string][]byte {
	out := map[string][]byte{}
	for k := range x.keysOf(writer) {
		sk, _, err := parseKey(k)
		if err != nil || sk.writer != writer {
			continue // a key whose suffix only looks like the writer's
		}
		if _, signed := sk.signed(); signed {
			if b, err := encodeRecord(k, x.keys[k].rec); err == nil {
				out[k] = b
			}
		}
	}
	maps.Copy(out, over)
	return out
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
		root := attestRoot(w, recordsOf(d.recs, w, writes[w]))
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
