package crdt

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	am "github.com/automerge/automerge-go"
)

// parseChange reads the identity automerge gives a change: its hash and
// its dependencies, for small and large (compressed) changes alike.
func TestParseChangeMatchesAutomerge(t *testing.T) {
	t.Parallel()
	doc := am.New()
	for i, size := range []int{1, 300, 5000, 100_000} {
		doc.Path(fmt.Sprintf("k%d", i)).Set(strings.Repeat("x", size))
		h, err := doc.Commit("c")
		if err != nil {
			t.Fatal(err)
		}
		ch, _ := doc.Change(h)
		c, n, err := parseChange(ch.Save())
		if err != nil || n != len(ch.Save()) {
			t.Fatalf("size %d: %v (n=%d of %d)", size, err, n, len(ch.Save()))
		}
		if c.hash != h || fmt.Sprint(c.deps) != fmt.Sprint(ch.Dependencies()) {
			t.Fatalf("size %d: parsed %s deps %v, automerge says %s deps %v", size, c.hash, c.deps, h, ch.Dependencies())
		}
	}
	all, _ := doc.Changes()
	chs, err := splitChanges(am.SaveChanges(all))
	if err != nil || len(chs) != len(all) {
		t.Fatalf("split %d changes: %v (%d)", len(all), err, len(chs))
	}
	if _, err := splitChanges(doc.Save()); err == nil {
		t.Fatal("a document chunk parsed as a change")
	}
}

// writeKeys commits n items named prefix-i, one change each.
func writeKeys(t *testing.T, d *Doc, prefix string, n int) {
	t.Helper()
	for i := range n {
		setName(t, d, fmt.Sprintf("%s-%d", prefix, i), "v")
	}
}

func countPrefix(t *testing.T, d *Doc, prefix string) int {
	t.Helper()
	lib, err := d.Library()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for id := range lib {
		if strings.HasPrefix(id, prefix+"-") {
			n++
		}
	}
	return n
}

// A lost snapshot does not take the change log with it: records that build
// on the snapshot's changes wait, on disk and in memory, until a peer
// brings the base, and then every acknowledged write is there.
func TestLostSnapshotKeepsWaitingRecords(t *testing.T) {
	t.Parallel()
	for _, damage := range []string{"delete", "flip", "truncate"} {
		t.Run(damage, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			c := openT(t, dir)
			peer := openT(t, t.TempDir())
			writeKeys(t, c, "base", 30)
			syncPair(t, c, peer, c.NewPeerState(), peer.NewPeerState())
			c.Close() // the base goes into the snapshot
			c = openT(t, dir)
			writeKeys(t, c, "acked", 20) // only in c's log
			crash(c)

			snap := filepath.Join(dir, snapFile)
			b, _ := os.ReadFile(snap)
			switch damage {
			case "delete":
				os.Remove(snap)
			case "flip":
				b[len(b)/2] ^= 0x40
				os.WriteFile(snap, b, 0o600)
			case "truncate":
				os.WriteFile(snap, b[:len(b)/2], 0o600)
			}
			c2 := openT(t, dir)
			if got := c2.WaitingRecords(); got != 20 {
				t.Fatalf("waiting changes = %d, want the 20 acknowledged ones", got)
			}
			if damage != "delete" && len(c2.Damage()) == 0 {
				t.Fatal("damaged snapshot not reported")
			}
			// Restart alone: the waiting records are still kept.
			crash(c2)
			c3 := openT(t, dir)
			if got := c3.WaitingRecords(); got != 20 {
				t.Fatalf("after a second start alone, waiting = %d, want 20", got)
			}
			// A peer brings the base: every acknowledged write appears, on
			// this node and then on the peer.
			// Anti-entropy sessions, as the replicator runs them, until
			// both hold everything (bounded).
			pc, pp := c3.NewPeerState(), peer.NewPeerState()
			for range 5 {
				syncPair(t, c3, peer, pc, pp)
				if countPrefix(t, peer, "acked") == 20 {
					break
				}
			}
			if got := countPrefix(t, c3, "acked"); got != 20 || c3.WaitingRecords() != 0 {
				t.Fatalf("after sync: %d of 20 acknowledged keys, %d still waiting", got, c3.WaitingRecords())
			}
			if got := countPrefix(t, peer, "acked"); got != 20 {
				t.Fatalf("peer has %d of 20 acknowledged keys after 5 sessions", got)
			}
			c3.Close()
			c4 := openT(t, dir)
			if countPrefix(t, c4, "acked") != 20 || countPrefix(t, c4, "base") != 30 {
				t.Fatal("keys lost across the restart after recovery")
			}
		})
	}
}

// A byte flipped in the middle of the log costs the record it hit, not the
// records after it; the damaged file is kept aside.
func TestFlippedLogByteCostsOneRecord(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := openT(t, dir)
	peer := openT(t, t.TempDir())
	writeKeys(t, d, "k", 40)
	syncPair(t, d, peer, d.NewPeerState(), peer.NewPeerState())
	crash(d)
	logPath := filepath.Join(dir, logFile)
	b, _ := os.ReadFile(logPath)
	recs, _ := decodeLog(b)
	hit := recs[20]
	lost := hashOfRecord(t, hit.payload)
	b[hit.off+recHeaderLen+len(hit.payload)/2] ^= 0x01
	os.WriteFile(logPath, b, 0o600)

	d2 := openT(t, dir)
	// Record 20 is lost; 21..39 depend on it (a linear history) and wait.
	if got := countPrefix(t, d2, "k"); got != 20 {
		t.Fatalf("%d keys applied, want the 20 before the damage", got)
	}
	if got := d2.WaitingRecords(); got != 19 {
		t.Fatalf("waiting = %d, want the 19 records after the damage", got)
	}
	dm := d2.Damage()
	if len(dm) != 2 || !strings.Contains(dm[0].Lost, "39 intact records kept") || !strings.Contains(dm[1].Problem, "19 changes depend") || dm[0].KeptAs == "" {
		t.Fatalf("damage = %v", dm)
	}
	if kb, err := os.ReadFile(dm[0].KeptAs); err != nil || len(kb) != len(b) {
		t.Fatalf("damaged copy: %v (%d bytes, want %d)", err, len(kb), len(b))
	}
	// d2 asks for the lost change itself: automerge's sync state never
	// sees the waiting changes, and the peer's bloom filter may say d2
	// has it.
	b, err := d2.generateSync(d2.NewPeerState(), true)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := decodeSyncMessage(b); err != nil || !slices.Contains(m.Need, lost) {
		t.Fatalf("first sync message: %v, need %v, want the lost change", err, m)
	}
	// A peer that holds the lost change completes the history.
	syncPair(t, d2, peer, d2.NewPeerState(), peer.NewPeerState())
	if got := countPrefix(t, d2, "k"); got != 40 || d2.WaitingRecords() != 0 {
		t.Fatalf("after sync with a peer: %d of 40 keys, %d waiting", got, d2.WaitingRecords())
	}
}

// FuzzLogRecovery damages a log of real changes at random; Open never
// fails, and every record whose bytes are intact is applied or waiting.
func FuzzLogRecovery(f *testing.F) {
	src := f.TempDir()
	d, err := Open(Config{Dir: src, CompactRecords: 1 << 30, CompactBytes: 1 << 30})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 12 {
		if _, err := d.Update("w", func(tx *Tx) error {
			tx.SetItemName(fmt.Sprintf("i%d", i), strings.Repeat("n", i*7))
			return nil
		}); err != nil {
			f.Fatal(err)
		}
	}
	crash(d)
	orig, _ := os.ReadFile(filepath.Join(src, logFile))
	f.Add(uint64(1), uint8(1), uint16(100))
	f.Add(uint64(7), uint8(4), uint16(3))
	f.Add(uint64(99), uint8(0), uint16(9000))
	f.Fuzz(func(t *testing.T, seed uint64, flips uint8, cut uint16) {
		b := append([]byte(nil), orig...)
		r := rand.New(rand.NewPCG(seed, uint64(flips)))
		for range flips % 16 {
			b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		}
		if int(cut) < len(b) && cut%3 == 0 {
			b = b[:len(b)-int(cut)%len(b)]
		}
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir), 0o700)
		os.WriteFile(filepath.Join(dir, logFile), b, 0o600)
		doc, err := Open(Config{Dir: dir})
		if err != nil {
			t.Fatalf("Open failed on a damaged log: %v", err)
		}
		defer doc.Close()
		intact, _ := decodeLog(b)
		for _, rec := range intact {
			chs, err := splitChanges(rec.payload)
			if err != nil {
				continue
			}
			for _, c := range chs {
				doc.mu.Lock()
				ok := doc.has(c.hash) || slicesContainsHash(doc.waiting, c.hash)
				doc.mu.Unlock()
				if !ok {
					t.Fatalf("intact change %s neither applied nor waiting", c.hash)
				}
			}
		}
	})
}

func slicesContainsHash(ws []rawChange, h Hash) bool {
	for _, w := range ws {
		if w.hash == h {
			return true
		}
	}
	return false
}

func hashOfRecord(t *testing.T, payload []byte) Hash {
	t.Helper()
	chs, err := splitChanges(payload)
	if err != nil || len(chs) != 1 {
		t.Fatalf("record: %v (%d changes)", err, len(chs))
	}
	return chs[0].hash
}
