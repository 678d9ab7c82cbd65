package node

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestMain routes libp2p's logs (one handler per process) to stderr at
// error level, runs the tests (many in parallel), and then checks that no
// goroutine of ours, of a libp2p swarm or of a pubsub router outlived
// them: every test closes what it started, so once all have ended nothing
// may be left. A per-test check cannot tell whose goroutine it sees while
// other tests run beside it; this one can, and still names the leak.
//
// Unless -test.parallel is given, one test runs at a time: each starts
// real nodes whose checks, signatures and timers compete for two cores
// with the other packages, and two at once made timing-bound room and
// fleet tests miss their deadlines now and then.
func TestMain(m *testing.M) {
	defaultParallel(1)
	RouteLibp2pLogs(zerolog.New(os.Stderr).Level(zerolog.ErrorLevel))
	code := m.Run()
	if code == 0 {
		if leaked := waitLeaks(10 * time.Second); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "%d goroutines outlived every test; first:\n%s\n", len(leaked), leaked[0])
			code = 1
		}
	}
	os.Exit(code)
}

// leakWatched are stack frames of goroutines that must all be gone once
// every node is closed: ours, and those of a libp2p host or a pubsub
// router (a host or router nobody closed).
var leakWatched = []string{
	"github.com/meshnode/meshnode/",
	"go-libp2p/p2p/net/swarm.",
	"go-libp2p-pubsub.",
}

func waitLeaks(wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*B)") ||
			strings.Contains(g, "testing.(*M)") || strings.Contains(g, "leakedGoroutines") {
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

// defaultParallel sets -test.parallel to n unless the command line set it.
func defaultParallel(n int) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}
