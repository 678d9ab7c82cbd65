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

// followersUpdate runs the follow sequence on a fleet of one publisher
// and n followers: they follow an item of ten files through the API,
// get its first version by themselves, then the publisher changes one
// file and they all get the new version by themselves. It returns the
// bytes the publisher sent for the new version and the changed file's
// size.
func followersUpdate(t *testing.T, n int, fileSize int) (pubSent, changed int64) {
	c := newCluster(t, n+1)
	pub, followers := c.nodes[0], c.nodes[1:]
	c.waitFormed(t, n)
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
	patched := randBytes(fileSize)
	if err := os.WriteFile(filepath.Join(shareDir(pub), "toolchain", "part03.bin"), patched, 0o644); err != nil {
		t.Fatal(err)
	}
	pub.Library.ScanAll()
	var v2 string
	waitFor(t, 20*time.Second, "the new version", func() bool {
		v2 = itemViewOf(t, pub, "toolchain").Latest
		return v2 != v1
	})
	waitVersion(v2)
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
				pubSent += st.BySource[pub.ID().String()]
				if len(st.BadSources) > 0 {
					t.Fatalf("%s reported bad sources: %v", f.cfg.Name, st.BadSources)
				}
			}
		}
	}
	return pubSent, int64(fileSize)
}

// Followers of an item update by themselves when it changes, keeping
// their local/ files, and the update swarms: the publisher sends fewer
// copies of the changed file than there are followers.
func TestFollowersUpdateBySwarming(t *testing.T) {
	t.Parallel()
	const followers = 4
	sent, changed := followersUpdate(t, followers, 4<<20)
	t.Logf("the publisher sent %.2f copies of the changed file to %d followers", float64(sent)/float64(changed), followers)
	if sent >= followers*changed {
		t.Fatalf("the publisher sent %d bytes, %d followers' worth of the %d changed: the update did not swarm", sent, followers, changed)
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
