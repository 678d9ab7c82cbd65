package crdt

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fullDecode reads the whole document the way readers did before the
// view: every root key of the automerge document, and the record in
// force at each key from an index built from a fresh Save. It shares no
// state with the incremental view, which it checks.
func fullDecode(t *testing.T, d *Doc) (map[string]NodeRecord, map[string]Item, map[string]Room) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	doc := d.doc()
	x, err := indexDocument(doc.Save())
	if err != nil {
		t.Fatal(err)
	}
	nodes, items, rooms := map[string]NodeRecord{}, map[string]Item{}, map[string]Room{}
	item := func(id string) Item {
		if it, ok := items[id]; ok {
			return it
		}
		return Item{Holders: map[string]Holder{}}
	}
	room := func(t string) Room {
		if r, ok := rooms[t]; ok {
			return r
		}
		return Room{Presence: map[string]int64{}, State: map[string]string{}}
	}
	for k, v := range x.keys {
		sk, _, _ := parseKey(k)
		switch r := v.rec; {
		case sk.kind == kNode && r.kind == recNode:
			nodes[sk.writer] = *r.node
		case sk.kind == kHolder && r.kind == recHolder && r.holder.State != holderRemoved:
			it := item(sk.id)
			it.Holders[sk.writer] = *r.holder
			items[sk.id] = it
		case sk.kind == kPresence && r.kind == recPresence:
			rm := room(sk.id)
			rm.Presence[sk.writer] = r.expiryMs
			rooms[sk.id] = rm
		}
	}
	root := doc.RootMap()
	keys, err := root.Keys()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		sk, _, err := parseKey(k)
		if err != nil {
			continue
		}
		v, err := root.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		s, err := am.As[string](v)
		if err != nil {
			continue
		}
		switch sk.kind {
		case kItemName:
			it := item(sk.id)
			it.Name = s
			items[sk.id] = it
		case kCreds:
			rm := room(sk.id)
			rm.Creds = s
			rooms[sk.id] = rm
		case kRoomState:
			rm := room(sk.id)
			rm.State[sk.sub] = s
			rooms[sk.id] = rm
		}
	}
	return nodes, items, rooms
}

// checkView fails unless d's readers return what a full decode does.
func checkView(t *testing.T, d *Doc, step string) {
	t.Helper()
	wantN, wantL, wantR := fullDecode(t, d)
	gotN, _ := d.Nodes()
	gotL, _ := d.Library()
	gotR, _ := d.Rooms()
	for _, c := range []struct {
		what      string
		got, want any
	}{{"nodes", gotN, wantN}, {"library", gotL, wantL}, {"rooms", gotR, wantR}} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Fatalf("%s: the view's %s differ from a full decode:\nview: %+v\nfull: %+v", step, c.what, c.got, c.want)
		}
	}
	for id, want := range wantL {
		if got, ok, _ := d.Item(id); !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Item(%s) = %+v, %v; want %+v", step, id, got, ok, want)
		}
	}
	for topic, want := range wantR {
		if got, ok, _ := d.Room(topic); !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Room(%s) = %+v, %v; want %+v", step, topic, got, ok, want)
		}
	}
}

type gossiped struct {
	raw  []byte
	hash Hash
	deps []Hash
}

// TestViewMatchesFullDecode is the property test of the view: three
// replicas make random writes (their own records, records of two
// identities they share, which makes concurrent writes of one key by one
// writer, and shared entries), and exchange them by gossip, by sync and
// by snapshot, in random order. After every step, every replica's readers
// must return what a full decode of its document returns.
func TestViewMatchesFullDecode(t *testing.T) {
	t.Parallel()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var docs []*Doc
	var changes []gossiped
	for range 3 {
		d := openT(t, t.TempDir())
		d.Watch(func(ev Event) {
			if ev.Local {
				changes = append(changes, gossiped{ev.Change, ev.Hash, ev.Deps})
			}
		})
		docs = append(docs, d)
	}
	var shared []crypto.PrivKey
	for range 2 {
		k, _, _ := crypto.GenerateEd25519Key(nil)
		shared = append(shared, k)
	}
	steps := 400
	if testing.Short() {
		steps = 100
	}
	for step := range steps {
		what := randomStep(t, rng, docs, shared, changes)
		for i, d := range docs {
			checkView(t, d, fmt.Sprintf("step %d (%s), replica %d", step, what, i))
		}
	}
	for i := range docs {
		for j := range docs {
			if i != j {
				syncPair(t, docs[i], docs[j], docs[i].NewPeerState(), docs[j].NewPeerState())
			}
		}
	}
	n0, l0, r0 := fullDecode(t, docs[0])
	for i, d := range docs {
		checkView(t, d, fmt.Sprintf("after a full sync, replica %d", i))
		n, l, r := fullDecode(t, d)
		if !reflect.DeepEqual(n, n0) || !reflect.DeepEqual(l, l0) || !reflect.DeepEqual(r, r0) {
			t.Fatalf("replica %d did not converge", i)
		}
	}
	if len(n0) == 0 || len(l0) == 0 || len(r0) == 0 {
		t.Fatalf("the random writes left an empty section: %d nodes, %d items, %d rooms", len(n0), len(l0), len(r0))
	}
}

// randomStep makes one random write or exchange and says which.
func randomStep(t *testing.T, rng *rand.Rand, docs []*Doc, shared []crypto.PrivKey, changes []gossiped) string {
	t.Helper()
	a, b := docs[rng.IntN(len(docs))], docs[rng.IntN(len(docs))]
	switch n := rng.IntN(10); {
	case n < 6 || len(changes) == 0:
		if _, err := a.Update("random", func(tx *Tx) error {
			for range 1 + rng.IntN(3) {
				randomWrite(rng, tx, a.Self(), shared)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return "write"
	case n < 8:
		c := changes[rng.IntN(len(changes))]
		if _, err := b.ApplyChange(c.raw, c.hash, c.deps); err != nil && !errors.Is(err, ErrMissingDeps) {
			t.Fatal(err)
		}
		return "gossip"
	case n < 9:
		if a != b {
			syncPair(t, a, b, a.NewPeerState(), b.NewPeerState())
		}
		return "sync"
	default:
		if err := b.MergeSnapshot(a.Snapshot()); err != nil && !errors.Is(err, ErrSnapshotNeedsSync) {
			t.Fatal(err)
		}
		return "snapshot"
	}
}

// randomWrite adds one random write to tx, as self or as a shared identity.
func randomWrite(rng *rand.Rand, tx *Tx, self string, shared []crypto.PrivKey) {
	w, id := tx, self
	if rng.IntN(3) == 0 {
		k := shared[rng.IntN(len(shared))]
		p, _ := peer.IDFromPrivateKey(k)
		w, id = tx.As(k), p.String()
	}
	item := fmt.Sprintf("item-%d", rng.IntN(4))
	topic := fmt.Sprintf("topic-%d", rng.IntN(3))
	switch rng.IntN(8) {
	case 0:
		w.SetNode(id, NodeRecord{Name: fmt.Sprintf("n%d", rng.IntN(100)), Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Alive: rng.IntN(2) == 0, LastSeenMs: rng.Int64N(1e6)})
	case 1:
		w.SetHolder(item, id, Holder{Manifest: fmt.Sprintf("%064x", rng.IntN(3)), Version: "v", Size: rng.Int64N(100), State: HolderComplete})
	case 2:
		w.RemoveHolder(item, id)
	case 3:
		tx.SetItemName(item, fmt.Sprintf("name %d", rng.IntN(100)))
	case 4:
		tx.SetRoomCreds(topic, goodCreds())
	case 5:
		w.SetPresence(topic, id, rng.Int64N(1e9))
	default:
		tx.SetRoomState(topic, fmt.Sprintf("k%d", rng.IntN(3)), fmt.Sprintf("v%d", rng.IntN(100)))
	}
}
