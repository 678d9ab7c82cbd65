package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// bench holds what every phase needs and every daemon started, so that
// all of them are stopped whatever happens.
type bench struct {
	o   options
	hc  *http.Client
	rng *rand.Rand

	mu  sync.Mutex
	all []*daemon
}

func newBench(o options) *bench {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// One kept-alive connection pool per daemon API: a poll must not pay
	// for a new connection.
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 0, o.par
	return &bench{o: o, hc: &http.Client{Transport: tr}, rng: rand.New(rand.NewPCG(o.seed, 0x15))}
}

// start starts one daemon of a fleet and registers it for stopping.
func (b *bench) start(fleetDir, name string, args []string) (*daemon, error) {
	logDir := filepath.Join(b.o.dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	all := append(b.o.node.args(), args...)
	d, err := startDaemon(b.o.bin, name, filepath.Join(fleetDir, name), filepath.Join(logDir, name+".log"), all)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.all = append(b.all, d)
	b.mu.Unlock()
	return d, nil
}

// stopAll asks every daemon still running to stop, all at once, and kills
// those that have not exited after 15 s.
func (b *bench) stopAll() {
	b.mu.Lock()
	ds := slices.Clone(b.all)
	b.mu.Unlock()
	for _, d := range ds {
		d.signalStop()
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, d := range ds {
		d.awaitStop(deadline)
	}
}

// fleet is one fleet of daemons; nodes[0] is its rendezvous.
type fleet struct {
	tag     string
	nodes   []*daemon
	started time.Time
	formed  time.Duration // from the first start until every node lists all alive
}

// alive are the nodes the benchmark has not killed.
func (f *fleet) alive() []*daemon {
	var out []*daemon
	for _, d := range f.nodes {
		if !d.killed {
			out = append(out, d)
		}
	}
	return out
}

func (f *fleet) killed() []*daemon {
	var out []*daemon
	for _, d := range f.nodes {
		if d.killed {
			out = append(out, d)
		}
	}
	return out
}

// startFleet starts a rendezvous, then n-1 nodes that join its fleet
// bootstrapped from it, in batches: a batch starts once every node of the
// previous one has its API up and holds the fleet's document.
func (b *bench) startFleet(ctx context.Context, tag string, n int) (*fleet, error) {
	dir := filepath.Join(b.o.dir, tag)
	f := &fleet{tag: tag, started: time.Now()}
	rv, err := b.start(dir, tag+"-00", nil)
	if err != nil {
		return f, err
	}
	f.nodes = append(f.nodes, rv)
	if err := rv.waitAPI(ctx, b.hc, time.Minute); err != nil {
		return f, err
	}
	token, err := os.ReadFile(filepath.Join(rv.dir, "fleet.token"))
	if err != nil {
		return f, fmt.Errorf("rendezvous fleet token: %w", err)
	}
	boot, err := rv.loopbackTCP()
	if err != nil {
		return f, err
	}
	join := []string{"--join", strings.TrimSpace(string(token)), "--bootstrap", boot}
	for i := 1; i < n; i += b.o.batch {
		var batch []*daemon
		for j := i; j < min(i+b.o.batch, n); j++ {
			d, err := b.start(dir, fmt.Sprintf("%s-%02d", tag, j), join)
			if err != nil {
				return f, err
			}
			batch = append(batch, d)
		}
		f.nodes = append(f.nodes, batch...)
		if err := b.awaitJoined(ctx, batch); err != nil {
			return f, err
		}
		progress("%s: %d of %d processes up (%.1f s)", tag, len(f.nodes), n, time.Since(f.started).Seconds())
	}
	return f, nil
}

// awaitJoined waits for each daemon's API and for its document to hold
// another node than itself (it has joined the fleet's document).
func (b *bench) awaitJoined(ctx context.Context, ds []*daemon) error {
	for _, d := range ds {
		if err := d.waitAPI(ctx, b.hc, time.Minute); err != nil {
			return err
		}
		deadline := time.Now().Add(time.Minute)
		for {
			if st, err := d.nodeStates(ctx, b.hc); err == nil && len(st) >= 2 {
				break
			}
			if err := d.dead(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: has not joined the fleet's document after 1 min (log: %s)", d.name, d.logPath)
			}
			if err := benchproc.Sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// viewWant is what every node should see: these alive, those not alive.
type viewWant struct {
	alive, gone []*daemon
}

// viewGap says what a node's view lacks, "" when nothing.
func (w viewWant) gap(states map[string]string) string {
	var notAlive, stillAlive int
	for _, d := range w.alive {
		if states[d.id] != "alive" {
			notAlive++
		}
	}
	for _, d := range w.gone {
		if states[d.id] == "alive" {
			stillAlive++
		}
	}
	if notAlive == 0 && stillAlive == 0 {
		return ""
	}
	return fmt.Sprintf("%d of %d not alive, %d of %d killed still alive (%d records)", notAlive, len(w.alive), stillAlive, len(w.gone), len(states))
}

// awaitView waits until every node of ds has seen want, each at least
// once, and then all of them at once in a final pass; it returns the time
// from since until then. Nodes are asked once a second, those that have
// seen want no more until the final pass.
func (b *bench) awaitView(ctx context.Context, ds []*daemon, want viewWant, since time.Time, limit time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(limit)
	pending := ds
	for {
		var gaps map[*daemon]string
		pending, gaps = b.viewPass(ctx, pending, want)
		if len(pending) == 0 {
			at := time.Since(since)
			if pending, gaps = b.viewPass(ctx, ds, want); len(pending) == 0 {
				return at, nil
			}
		}
		if err := b.anyDead(ds); err != nil {
			return 0, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("after %v, %d of %d nodes still see another fleet: %s", limit, len(pending), len(ds), describeGaps(pending, gaps))
		}
		if err := benchproc.Sleep(ctx, time.Second); err != nil {
			return 0, err
		}
	}
}

// viewPass asks every node of ds for its view and returns those whose
// view is not want yet, with what they lack.
func (b *bench) viewPass(ctx context.Context, ds []*daemon, want viewWant) ([]*daemon, map[*daemon]string) {
	gaps := make([]string, len(ds))
	var wg sync.WaitGroup
	sem := make(chan struct{}, b.o.par)
	for i, d := range ds {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := d.nodeStates(ctx, b.hc)
			if err != nil {
				gaps[i] = "GET /v1/nodes: " + err.Error()
				return
			}
			gaps[i] = want.gap(st)
		})
	}
	wg.Wait()
	var pending []*daemon
	out := map[*daemon]string{}
	for i, d := range ds {
		if gaps[i] != "" {
			pending = append(pending, d)
			out[d] = gaps[i]
		}
	}
	return pending, out
}

func describeGaps(ds []*daemon, gaps map[*daemon]string) string {
	var parts []string
	for i, d := range ds {
		if i == 10 {
			parts = append(parts, fmt.Sprintf("and %d more", len(ds)-10))
			break
		}
		parts = append(parts, d.name+": "+gaps[d])
	}
	return strings.Join(parts, "; ")
}

// anyDead reports a daemon of ds that exited without being killed.
func (b *bench) anyDead(ds []*daemon) error {
	for _, d := range ds {
		if d.killed {
			continue
		}
		if err := d.dead(); err != nil {
			return err
		}
	}
	return nil
}

// killSome kills the rendezvous, then k other nodes picked at random,
// each with SIGKILL, and returns the victims in that order.
func (b *bench) killSome(f *fleet, k int) []*daemon {
	victims := []*daemon{f.nodes[0]}
	for _, i := range b.rng.Perm(len(f.nodes) - 1)[:k] {
		victims = append(victims, f.nodes[i+1])
	}
	for _, d := range victims {
		d.kill()
	}
	return victims
}
