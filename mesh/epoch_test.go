package mesh

import (
	"errors"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// TestEpochCatchUpOverTheNetwork: two members cut the document while the
// third is cut off and writes; back, it learns of the new epoch from a
// sync hello, takes a snapshot (it never saw the proposal), and its write
// reaches the others in the new epoch.
func TestEpochCatchUpOverTheNetwork(t *testing.T) {
	t.Parallel()
	f, _ := NewFleet()
	a, b, c := newMember(t, f, false), newMember(t, f, false), newMember(t, f, false)
	for _, m := range []*member{b, c} {
		connect(t, m.h, a.info(), func() bool { return a.auth.IsAuthenticated(m.h.ID()) })
	}
	set := func(m *member, k, v string) {
		t.Helper()
		if _, err := m.doc.Update("t", func(tx *crdt.Tx) error { tx.SetItemName(k, v); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	has := func(m *member, k, v string) bool {
		lib, _ := m.doc.Library()
		return lib[k].Name == v
	}
	for i, m := range []*member{a, b, c} {
		set(m, "item"+string(rune('0'+i)), "before")
	}
	waitFor(t, 10*time.Second, "the three writes everywhere", func() bool {
		return has(a, "item2", "before") && has(c, "item0", "before") && has(b, "item2", "before")
	})
	// c is cut off; members' documents never cut on their own
	// (newMember): a proposes, a and b switch, c writes meanwhile.
	a.gate.Block(c.h.ID())
	c.gate.Block(a.h.ID())
	a.h.Network().ClosePeer(c.h.ID())
	if err := a.doc.ProposeCut(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the proposal on b", func() bool { _, ok := b.doc.NextCut(); return ok })
	set(c, "late", "from c") // concurrent with the cut
	for _, m := range []*member{a, b} {
		// b may have caught up from a in between: then it has no cut left.
		if _, err := m.doc.SwitchEpoch(); err != nil && !(m == b && errors.Is(err, crdt.ErrNoCut)) {
			t.Fatal(err)
		}
	}
	a.gate.Unblock(c.h.ID())
	c.gate.Unblock(a.h.ID())
	connect(t, c.h, a.info(), func() bool { return a.auth.IsAuthenticated(c.h.ID()) })
	waitFor(t, 20*time.Second, "every member on one epoch after 0, c by a snapshot", func() bool {
		e := a.doc.Epoch()
		return e.Num == 1 && b.doc.Epoch() == e && c.doc.Epoch() == e && c.repl.Stats().EpochCatchUps > 0
	})
	waitFor(t, 20*time.Second, "c's write made during the cut on a and b", func() bool {
		return has(a, "late", "from c") && has(b, "late", "from c")
	})
	for _, m := range []*member{a, b, c} {
		for i := range 3 {
			if !has(m, "item"+string(rune('0'+i)), "before") {
				t.Fatalf("%s lost item%d", m.h.ID(), i)
			}
		}
	}
}
