package crdt

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// attacker is a member that edits a raw automerge copy of the fleet's
// document, as a buggy or hostile peer (or another automerge tool) can.
type attacker struct {
	t   *testing.T
	doc *am.Doc
}

func newAttacker(t *testing.T, from *Doc) *attacker {
	t.Helper()
	doc, err := am.Load(from.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	return &attacker{t: t, doc: doc}
}

// change applies edit and returns the resulting change's bytes, hash and deps.
func (a *attacker) change(edit func(d *am.Doc) error) ([]byte, Hash, []Hash) {
	a.t.Helper()
	return a.changeMsg(edit, "evil")
}

// changeMsg is change with the given message (a copied signature line).
func (a *attacker) changeMsg(edit func(d *am.Doc) error, msg string) ([]byte, Hash, []Hash) {
	a.t.Helper()
	if err := edit(a.doc); err != nil {
		a.t.Fatal(err)
	}
	h, err := a.doc.Commit(msg)
	if err != nil {
		a.t.Fatal(err)
	}
	ch, err := a.doc.Change(h)
	if err != nil {
		a.t.Fatal(err)
	}
	return ch.Save(), h, ch.Dependencies()
}

func set(key string, v any) func(d *am.Doc) error {
	return func(d *am.Doc) error { return d.Path(key).Set(v) }
}

func goodCreds() string {
	b := make([]byte, CredsLen)
	b[0] = credsVersion
	b[1] = 1
	b[56] = 1 // created
	b[64] = 2 // expires
	return encodeB64(b)
}

func TestBadChangesRefusedByRule(t *testing.T) {
	t.Parallel()
	honest := openT(t, t.TempDir())
	self := honest.Self()
	if _, err := honest.Update("own", func(tx *Tx) error {
		tx.SetPresence("lobby", self, 5000)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h1, err := honest.Update("own", func(tx *Tx) error {
		tx.SetNode(self, NodeRecord{Name: "honest", Alive: true, LastSeenMs: 1000})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	replay, oldMsg := writesOf(t, honest, h1), changeMessage(t, honest, h1)
	h2, err := honest.Update("own", func(tx *Tx) error {
		tx.SetNode(self, NodeRecord{Name: "honest", Alive: true, LastSeenMs: 2000})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cur, curMsg := rawValue(t, honest, nodeKey(self)), changeMessage(t, honest, h2)
	_, evilKey := testIdentity(t)
	forged, err := encodeRecord(nodeKey(self), &record{kind: recNode, counter: 1 << 62, node: &NodeRecord{Name: "forged"}})
	if err != nil {
		t.Fatal(err)
	}
	evilSig, err := sign(evilKey, self, []sigOp{{nodeKey(self), forged}})
	if err != nil {
		t.Fatal(err)
	}
	forgedMsg := withSignatures("evil", []writerSig{{self, evilSig}})
	tampered := bytes.Clone(cur)
	tampered[len(tampered)-1] ^= 1 // alive, which the copied signature covers

	cases := []struct {
		name, rule string
		edit       func(d *am.Doc) error
		msg        string
	}{
		{"text bomb", RuleObject, func(d *am.Doc) error {
			return d.Path("rooms/lobby/state/doc").Set(am.NewText(strings.Repeat("x", 20000)))
		}, ""},
		{"nested map", RuleObject, set(nodeKey(self), map[string]any{"alive": false}), ""},
		{"list", RuleObject, set("library/x/name", []string{"a"}), ""},
		{"key outside the schema", RuleSchema, set("evil/key", "x"), ""},
		{"long key part", RuleSize, set("rooms/lobby/state/"+strings.Repeat("k", 5000), "x"), ""},
		{"big item name", RuleSize, set("library/x/name", strings.Repeat("n", 300<<10)), ""},
		{"big state value", RuleSize, set("rooms/lobby/state/k", strings.Repeat("v", MaxRoomStateValue+1)), ""},
		{"int where a string belongs", RuleType, set("library/x/name", int64(5)), ""},
		{"string where a record belongs", RuleType, set(nodeKey(self), "alive"), ""},
		{"counter", RuleType, func(d *am.Doc) error { return d.Path("rooms/lobby/state/n").Set(am.NewCounter(1)) }, ""},
		{"unsigned record", RuleSignature, set(nodeKey(self), forged), ""},
		{"record signed by another key", RuleSignature, set(nodeKey(self), forged), forgedMsg},
		{"tampered record", RuleSignature, set(nodeKey(self), tampered), curMsg},
		{"garbage signature line", RuleSignature, set(nodeKey(self), forged), "evil\nmnsig1:!!"},
		{"record of the wrong kind", RuleType, set(presenceKey("lobby", self), cur), curMsg},
		{"record deleted", RuleSignature, func(d *am.Doc) error { return d.Path(nodeKey(self)).Delete() }, ""},
		{"replayed record", RuleReplay, replay, oldMsg},
		{"garbage creds", RuleCreds, set(credsKey("lobby"), "not base64url!"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			heads := honest.HeadStrings()
			msg := c.msg
			if msg == "" {
				msg = "evil"
			}
			raw, h, deps := newAttacker(t, honest).changeMsg(c.edit, msg)
			// Precheck (the gossip validator's) gives the same verdict on
			// every rule that depends on the bytes alone.
			pre, _ := AsRefused(honest.Precheck(raw))
			if c.rule == RuleReplay {
				if pre != nil {
					t.Fatalf("precheck refused a replay, which depends on the document: %v", pre)
				}
			} else if pre == nil || pre.Rule != c.rule {
				t.Fatalf("precheck: %v, want rule %s", pre, c.rule)
			}
			_, err := honest.ApplyChange(raw, h, deps)
			r, ok := AsRefused(err)
			if !ok || r.Rule != c.rule || r.Change != h {
				t.Fatalf("gossip: err = %v, want rule %s", err, c.rule)
			}
			if fmt.Sprint(honest.HeadStrings()) != fmt.Sprint(heads) {
				t.Fatal("a refused change moved the heads")
			}
			// The same change by sync, and inside a snapshot.
			evil := openT(t, t.TempDir())
			if _, err := evil.ApplyChanges(honest.Snapshot()); err == nil {
				t.Fatal("a document chunk taken as changes")
			}
			if r, ok := AsRefused(honestSyncWith(t, honest, raw)); !ok || r.Rule != c.rule {
				t.Fatalf("sync: %v, want rule %s", r, c.rule)
			}
			a := newAttacker(t, honest)
			a.changeMsg(c.edit, msg)
			err = honest.MergeSnapshot(a.doc.Save())
			if c.rule == RuleReplay {
				// Its verdict needs the change's dependencies: the
				// snapshot is not adopted, and the peer is synced with.
				if !errors.Is(err, ErrSnapshotNeedsSync) {
					t.Fatalf("snapshot holding a replay: %v", err)
				}
			} else if r, ok := AsRefused(err); !ok || r.Rule != c.rule {
				t.Fatalf("snapshot: %v, want rule %s", err, c.rule)
			}
			if fmt.Sprint(honest.HeadStrings()) != fmt.Sprint(heads) {
				t.Fatal("a refused sync or snapshot moved the heads")
			}
		})
	}
	if n, _, _ := honest.Node(self); n.Name != "honest" || n.LastSeenMs != 2000 {
		t.Fatalf("honest record after the attacks: %+v", n)
	}
}

// honestSyncWith offers raw to d by automerge's sync protocol from a peer
// whose document holds it, and returns the session's error.
func honestSyncWith(t *testing.T, d *Doc, raw []byte) error {
	t.Helper()
	peer, err := am.Load(d.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.LoadIncremental(raw); err != nil {
		t.Fatal(err)
	}
	ps, ss := d.NewPeerState(), am.NewSyncState(peer)
	for range 10 {
		msg, ok := ss.GenerateMessage()
		if !ok {
			return nil
		}
		if _, err := d.receiveSync(ps, msg.Bytes()); err != nil {
			return err
		}
		reply, err := d.generateSync(ps, false)
		if err != nil {
			return err
		}
		if reply != nil {
			if _, err := ss.ReceiveMessage(reply); err != nil {
				t.Fatal(err)
			}
		}
	}
	return nil
}

// writesOf returns an edit that writes again every record change h of d
// wrote, in its order: a record and its writer's attestation, which one
// signature covers (attest.go).
func writesOf(t *testing.T, d *Doc, h Hash) func(*am.Doc) error {
	t.Helper()
	ch, err := d.doc().Change(h)
	if err != nil {
		t.Fatal(err)
	}
	co, _, err := decodeChange(ch.Save())
	if err != nil {
		t.Fatal(err)
	}
	var ops []sigOp
	for i := range co.Ops {
		if _, ok := recordOp(&co.Ops[i]); ok {
			ops = append(ops, sigOp{co.Ops[i].Key, bytes.Clone(co.Ops[i].Value)})
		}
	}
	return func(doc *am.Doc) error {
		for _, o := range ops {
			if err := doc.Path(o.key).Set(o.value); err != nil {
				return err
			}
		}
		return nil
	}
}

func changeMessage(t *testing.T, d *Doc, h Hash) string {
	t.Helper()
	ch, err := d.doc().Change(h)
	if err != nil {
		t.Fatal(err)
	}
	return ch.Message()
}

func rawValue(t *testing.T, d *Doc, key string) []byte {
	t.Helper()
	v, err := d.doc().Path(key).Get()
	if err != nil || v.Kind() != am.KindBytes {
		t.Fatalf("%s: %v %v", key, v, err)
	}
	return bytes.Clone(v.Bytes())
}

// Valid changes from other automerge writers pass: shared keys, creds,
// deletes of shared keys, and records signed by their writer.
func TestValidForeignChangesAccepted(t *testing.T) {
	t.Parallel()
	honest := openT(t, t.TempDir())
	other := openT(t, t.TempDir())
	h, err := other.Update("rec", func(tx *Tx) error {
		tx.SetNode(other.Self(), NodeRecord{Name: "other", Alive: true})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rec, recMsg := writesOf(t, other, h), changeMessage(t, other, h)
	a := newAttacker(t, honest)
	for _, c := range []struct {
		edit func(d *am.Doc) error
		msg  string
	}{
		{set("library/x/name", "X"), "x"},
		{set("rooms/lobby/state/k", "v"), "x"},
		{set(credsKey("lobby"), goodCreds()), "x"},
		{func(d *am.Doc) error { return d.Path("rooms/lobby/state/k").Delete() }, "x"},
		{rec, recMsg}, // relayed with its signature, once
	} {
		raw, h, deps := a.changeMsg(c.edit, c.msg)
		if _, err := honest.ApplyChange(raw, h, deps); err != nil {
			t.Fatalf("valid change refused: %v", err)
		}
	}
	if n, ok, _ := honest.Node(other.Self()); !ok || n.Name != "other" {
		t.Fatalf("relayed record: %+v %v", n, ok)
	}
}

// Replay is decided against the change's causal past, so every node
// gives the same verdict whatever else it holds: a change concurrent with
// a newer record, carrying an older record whose counter is still above
// the one in its past, is accepted by a node that holds the newer record
// as well as by one that does not.
func TestReplayVerdictIndependentOfReceiver(t *testing.T) {
	t.Parallel()
	b := openT(t, t.TempDir())
	write := func(seen int64) (func(*am.Doc) error, string) {
		t.Helper()
		h, err := b.Update("rec", func(tx *Tx) error {
			tx.SetNode(b.Self(), NodeRecord{Name: "b", LastSeenMs: seen})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return writesOf(t, b, h), changeMessage(t, b, h)
	}
	r1, m1 := write(1)
	base := b.Snapshot()
	r2, m2 := write(2)
	write(3)
	// M forks at base (record 1) and writes record 2 again: concurrent
	// with record 3, above record 1.
	m, err := am.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	a := &attacker{t: t, doc: m}
	raw, h, deps := a.changeMsg(r2, m2)

	late := openT(t, t.TempDir()) // holds records 1..3
	if err := late.MergeSnapshot(b.Snapshot()); err != nil {
		t.Fatal(err)
	}
	early := openT(t, t.TempDir()) // holds record 1 only
	if err := early.MergeSnapshot(base); err != nil {
		t.Fatal(err)
	}
	_, errLate := late.ApplyChange(raw, h, deps)
	_, errEarly := early.ApplyChange(raw, h, deps)
	if errLate != nil || errEarly != nil {
		t.Fatalf("verdicts differ or refuse: late %v, early %v", errLate, errEarly)
	}
	// Writing record 1 again over record 2 is a replay for both.
	r1raw, h1, deps1 := a.changeMsg(r1, m1)
	for _, d := range []*Doc{late, early} {
		if _, err := d.ApplyChange(r1raw, h1, deps1); err == nil {
			t.Fatal("replay over a newer record in its own past accepted")
		}
	}
}

func rawValueOf(t *testing.T, snap []byte, key string) []byte {
	t.Helper()
	d, err := am.Load(snap)
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.Path(key).Get()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(v.Bytes())
}

// A node that lost its data dir writes its record again with a counter
// from the clock; once it has synced with a peer, its next write is above
// every record it wrote before and is the one in force everywhere.
func TestCounterSurvivesLostDataDir(t *testing.T) {
	t.Parallel()
	k, _, _ := crypto.GenerateEd25519Key(nil)
	first, err := Open(Config{Dir: t.TempDir(), Key: k})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	for i := range 5 {
		if _, err := first.Update("rec", func(tx *Tx) error {
			tx.SetNode(first.Self(), NodeRecord{Name: fmt.Sprint(i)})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	again, err := Open(Config{Dir: t.TempDir(), Key: k})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := again.Update("rec", func(tx *Tx) error { tx.SetNode(again.Self(), NodeRecord{Name: "again"}); return nil }); err != nil {
		t.Fatal(err)
	}
	ps1, ps2 := first.NewPeerState(), again.NewPeerState()
	syncPair(t, first, again, ps1, ps2)
	if _, err := again.Update("rec", func(tx *Tx) error { tx.SetNode(again.Self(), NodeRecord{Name: "again, synced"}); return nil }); err != nil {
		t.Fatal(err)
	}
	syncPair(t, first, again, ps1, ps2)
	for _, d := range []*Doc{first, again} {
		if n, _, _ := d.Node(d.Self()); n.Name != "again, synced" {
			t.Fatalf("record after the lost data dir: %+v", n)
		}
	}
}

func encodeB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
