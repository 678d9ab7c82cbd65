package node

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	leakMu      sync.Mutex
	leakChecked = map[testing.TB]bool{}
)

// leakWatched are stack frames of goroutines that must all be gone once
// every node of a test is closed: ours, and those of a libp2p host or a
// pubsub router (a host or router nobody closed).
var leakWatched = []string{
	"github.com/meshnode/meshnode/",
	"go-libp2p/p2p/net/swarm.",
	"go-libp2p-pubsub.",
}

// checkLeaks registers, once per test and before any cluster's own
// cleanup (cleanups run last-in first-out), a check that no goroutine of
// ours, of a libp2p swarm or of a pubsub router outlives the test.
func checkLeaks(t testing.TB) {
	leakMu.Lock()
	defer leakMu.Unlock()
	if leakChecked[t] {
		return
	}
	leakChecked[t] = true
	t.Cleanup(func() {
		leakMu.Lock()
		delete(leakChecked, t)
		leakMu.Unlock()
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leakedGoroutines()
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(leaked) > 0 {
			t.Errorf("%d goroutines outlived the cluster; first:\n%s", len(leaked), leaked[0])
		}
	})
}

func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*B)") || strings.Contains(g, "leakedGoroutines") {
			continue
		}
		for _, w := range leakWatched {
			if strings.Contains(g, w) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
