package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshnode/meshnode/transfer"
)

// replaceFile replaces a shared file at once (written beside, then
// renamed), so that no scan sees it half written and publishes a version
// in between.
func replaceFile(t testing.TB, path string, b []byte, mode os.FileMode) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "new")
	if err := os.WriteFile(tmp, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// followRun is what followersUpdate measured of the second version.
type followRun struct {
	pubSent int64         // bytes the publisher sent for it
	changed int64         // bytes of the changed file
	took    time.Duration // from the publisher's scan to every follower holding it
}

// followersUpdate runs the follow sequence on a fleet of one publisher
// and n followers: they follow an item of ten files through the API and
// get its first version by themselves; then twice the publisher changes
// one file and they all get the new version by themselves. Each keeps
// its local/ files, and after the third version only its manifest is
// left and no staging.
func followersUpdate(t testing.TB, n int, fileSize int, mod ...func(i int, c *Config)) followRun {
	c := newCluster(t, n+1, mod...)
	pub, followers := c.nodes[0], c.nodes[1:]
	c.waitFormed(t, min(n, 3)) // the mesh cap (4) keeps larger fleets from a full mesh
	files := map[string]testFile{}
	for i := range 10 {
		files[fmt.Sprintf("part%02d.bin", i)] = testFile{randBytes(fileSize), 0o644}
	}
	v1 := shareItem(t, c, pub, "toolchain", files)
	for _, f := range followers {
		if call := contractDo(t, f, "POST", "/v1/items/toolchain/follow", nil); call.status != http.StatusOK {
			t.Fatalf("follow: %d %s", call.status, call.body)
		}
	}
	waitVersion := func(want string) {
		t.Helper()
		waitFor(t, 120*time.Second, "every follower at "+want[:8], func() bool {
			for _, f := range followers {
				if v := itemViewOf(t, f, "toolchain"); v.LocalVer != want || v.Local != transfer.LocalComplete {
					return false
				}
			}
			return true
		})
	}
	waitVersion(v1)
	for _, f := range followers {
		keep := filepath.Join(shareDir(f), "toolchain", "local", "notes")
		os.MkdirAll(filepath.Dir(keep), 0o755)
		os.WriteFile(keep, []byte("mine"), 0o644)
	}

	// One of the ten files changes on the publisher.
	publish := func(file, prev string) string {
		t.Helper()
		replaceFile(t, filepath.Join(shareDir(pub), "toolchain", file), randBytes(fileSize), 0o644)
		pub.Library.ScanAll()
		var v string
		waitFor(t, 20*time.Second, "the new version", func() bool {
			v = itemViewOf(t, pub, "toolchain").Latest
			return v != prev
		})
		return v
	}
	run := followRun{changed: int64(fileSize)}
	start := time.Now()
	v2 := publish("part03.bin", v1)
	waitVersion(v2)
	run.took = time.Since(start)
	want := treeOf(t, filepath.Join(shareDir(pub), "toolchain"))
	for _, f := range followers {
		sameTree(t, want, treeOf(t, filepath.Join(shareDir(f), "toolchain")))
		if b, err := os.ReadFile(filepath.Join(shareDir(f), "toolchain", "local", "notes")); err != nil || !bytes.Equal(b, []byte("mine")) {
			t.Fatalf("%s's local/ did not survive the update: %q %v", f.cfg.Name, b, err)
		}
		v := itemViewOf(t, f, "toolchain")
		if !v.Following || v.FollowUpdated == 0 {
			t.Fatalf("%s shows following %v, updated %d", f.cfg.Name, v.Following, v.FollowUpdated)
		}
		for _, st := range f.Library.Transfers() {
			if st.Manifest == v2 {
				run.pubSent += st.BySource[pub.ID().String()]
				if len(st.BadSources) > 0 {
					t.Fatalf("%s reported bad sources: %v", f.cfg.Name, st.BadSources)
				}
			}
		}
	}
	// A third version; then only its manifest is left on every node,
	// and no staging.
	v3 := publish("part07.bin", v2)
	waitVersion(v3)
	for _, nd := range c.nodes {
		dir := filepath.Join(nd.cfg.DataDir, DirLibrary)
		waitFor(t, 10*time.Second, "only v3's manifest on "+nd.cfg.Name, func() bool {
			ms, _ := os.ReadDir(filepath.Join(dir, "manifests"))
			st, _ := os.ReadDir(filepath.Join(dir, "staging"))
			return len(ms) == 1 && ms[0].Name() == v3 && len(st) == 0
		})
	}
	return run
}

// Followers of an item update by themselves when it changes, keeping
// their local/ files, and the update swarms: the publisher sends fewer
// copies of the changed file than there are followers.
func TestFollowersUpdateBySwarming(t *testing.T) {
	t.Parallel()
	const followers = 4
	r := followersUpdate(t, followers, 4<<20)
	t.Logf("the publisher sent %.2f copies of the changed file to %d followers", float64(r.pubSent)/float64(r.changed), followers)
	if r.pubSent >= followers*r.changed {
		t.Fatalf("the publisher sent %d bytes, %d followers' worth of the %d changed: the update did not swarm", r.pubSent, followers, r.changed)
	}
}

// Follow and unfollow through the API: unknown items may be followed,
// unfollowing one not followed is a 404, bad IDs are refused, and the
// set survives a restart.
func TestFollowAPI(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1)
	a := c.nodes[0]
	call := contractDo(t, a, "POST", "/v1/items/later/follow", nil)
	var st FollowStatus
	if err := json.Unmarshal(call.body, &st); call.status != http.StatusOK || err != nil || !st.Following || st.Item != "later" || st.SinceMs == 0 {
		t.Fatalf("follow: %d %s", call.status, call.body)
	}
	if call := contractDo(t, a, "POST", "/v1/items/.hidden/follow", nil); call.status != http.StatusBadRequest {
		t.Fatalf("follow of a hidden ID: %d %s", call.status, call.body)
	}
	if call := contractDo(t, a, "DELETE", "/v1/items/never/follow", nil); call.status != http.StatusNotFound {
		t.Fatalf("unfollow of an item not followed: %d %s", call.status, call.body)
	}
	dir := a.cfg.DataDir
	c.stop(0)
	b := c.add(func(_ int, cfg *Config) { cfg.DataDir = dir })
	if _, ok := b.Library.Following()["later"]; !ok {
		t.Fatalf("following %v after a restart, want later", b.Library.Following())
	}
	if call := contractDo(t, b, "DELETE", "/v1/items/later/follow", nil); call.status != http.StatusOK {
		t.Fatalf("unfollow: %d %s", call.status, call.body)
	}
	if len(b.Library.Following()) != 0 {
		t.Fatal("still following after unfollow")
	}
}

// BenchmarkFollowersSwarm: eight followers of an item of ten 8 MiB files;
// the publisher changes one file. Figures: the copies of the changed
// file the publisher sent, and the time until every follower held the
// new version; the baseline is the same fleet with spreading off, where
// each follower fetches the changed file from the publisher. Loopback
// has no uplink to save, so the same runs again with the publisher
// sending at most 16 MiB/s.
//
//	go test ./node -run '^$' -bench FollowersSwarm -benchtime 1x
func BenchmarkFollowersSwarm(b *testing.B) {
	const followers, size = 8, 8 << 20
	for _, c := range []struct {
		name   string
		copies int
		rate   int64 // the publisher's --max-send-rate: an uplink slower than loopback
	}{
		{"spread", 0, 0}, {"baseline-no-spread", -1, 0},
		{"publisher-at-16MiBps/spread", 0, 16 << 20}, {"publisher-at-16MiBps/baseline-no-spread", -1, 16 << 20},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				r := followersUpdate(b, followers, size, func(i int, cfg *Config) {
					cfg.spreadCopies = c.copies
					if i == 0 {
						cfg.MaxSendRate = c.rate
					}
				})
				b.ReportMetric(float64(r.pubSent)/float64(r.changed), "publisher-copies")
				b.ReportMetric(r.took.Seconds(), "s-to-all")
			}
		})
	}
}
