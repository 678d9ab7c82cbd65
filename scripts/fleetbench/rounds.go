package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// round is one change written on one node and awaited on the others.
type round struct {
	writer   string
	readers  int
	ack      time.Duration   // the PUT's answer (the change is on the writer's disk)
	arrivals []time.Duration // from the PUT, per reader that read the change back
	missing  []string        // readers that had not within the bound, with their state
	byPoll   int             // arrivals dated by a read, with no doc.changed event
	slowest  string          // the reader that had it last
	late     []string        // readers that had it after lateAfter, with their state at the round's end
	err      string          // the write failed
}

func (r round) converged() bool { return r.err == "" && len(r.missing) == 0 }

// all is the time until every node had the change, the writer included.
func (r round) all() time.Duration {
	return max(r.ack, slices.Max(append([]time.Duration{0}, r.arrivals...)))
}

// phase is a series of rounds among the same nodes.
type phase struct {
	name      string
	what      string
	nodes     int
	rounds    []round
	proberPct float64 // this program's CPU while it polled, percent of a core
}

func (p phase) converged() bool {
	for _, r := range p.rounds {
		if !r.converged() {
			return false
		}
	}
	return len(p.rounds) > 0
}

// runPhase writes a change on a random node of ds, a different one each
// round, and times its arrival on all the others, rounds times.
func (b *bench) runPhase(ctx context.Context, name, what string, ds []*daemon, rounds int) phase {
	p := phase{name: name, what: what, nodes: len(ds)}
	ws, unwatch := b.watchAll(ctx, ds)
	defer unwatch()
	cpu0, _ := benchproc.CPUSeconds(0)
	start := time.Now()
	perm := b.rng.Perm(len(ds))
	for i := range rounds {
		if ctx.Err() != nil {
			break
		}
		w := ds[perm[i%len(perm)]]
		r := b.round(ctx, w, without(ds, w), ws, fmt.Sprintf("%s-%d", name, i+1))
		p.rounds = append(p.rounds, r)
		progress("%s round %d/%d: %s", name, i+1, rounds, r.line())
		if i+1 < rounds && benchproc.Sleep(ctx, b.o.gap) != nil {
			break
		}
	}
	if cpu1, err := benchproc.CPUSeconds(0); err == nil {
		p.proberPct = 100 * (cpu1 - cpu0) / time.Since(start).Seconds()
	}
	return p
}

func without(ds []*daemon, x *daemon) []*daemon {
	return slices.DeleteFunc(slices.Clone(ds), func(d *daemon) bool { return d == x })
}

// round writes key on w and reads it on every reader until each has it or
// the bound passes.
func (b *bench) round(ctx context.Context, w *daemon, readers []*daemon, ws map[*daemon]*watcher, key string) round {
	val := fmt.Sprintf("%s@%d", key, time.Now().UnixNano())
	r := round{writer: w.name, readers: len(readers)}
	for _, d := range readers {
		select {
		case <-ws[d].wake: // an earlier change's
		default:
		}
	}
	t0 := time.Now()
	if err := w.putState(ctx, b.hc, key, val); err != nil {
		r.err = fmt.Sprintf("PUT on %s: %v", w.name, err)
		return r
	}
	r.ack = time.Since(t0)
	got := b.await(ctx, readers, ws, key, val, t0)
	for i, d := range readers {
		switch {
		case got[i].at < 0:
			r.missing = append(r.missing, b.describe(ctx, d, w))
		default:
			r.arrived(d, got[i])
			if got[i].at > lateAfter {
				r.late = append(r.late, fmt.Sprintf("%s after %s: %s", d.name, secs(got[i].at), b.describe(ctx, d, w)))
			}
		}
	}
	return r
}

// lateAfter: a reader slower than this is named and described.
const lateAfter = time.Second

func (r *round) arrived(d *daemon, a arrival) {
	if len(r.arrivals) == 0 || a.at > slices.Max(r.arrivals) {
		r.slowest = d.name
	}
	r.arrivals = append(r.arrivals, a.at)
	if !a.byEvent {
		r.byPoll++
	}
}

// arrival is when a node had the change, from the PUT (-1: not within the
// bound); byEvent: dated by the node's doc.changed event, else by the
// answer of the read that found it.
type arrival struct {
	at      time.Duration
	byEvent bool
}

// await reads key on each node whenever its document changes and at
// least every -poll, with at most -par requests in flight in all, until
// it reads val or t0 + the bound passes.
func (b *bench) await(ctx context.Context, ds []*daemon, ws map[*daemon]*watcher, key, val string, t0 time.Time) []arrival {
	deadline := t0.Add(b.o.bound)
	sem := make(chan struct{}, b.o.par)
	got := make([]arrival, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() { got[i] = b.pollOne(ctx, d, ws[d], key, val, t0, deadline, sem) })
	}
	wg.Wait()
	return got
}

// pollOne reads one node whenever its document changes, and at least
// every -poll, until it has the change. The arrival is dated by the
// latest doc.changed event that came after the previous read was sent
// (the change landed between that read and this one), or, with no such
// event, by this read's answer.
func (b *bench) pollOne(ctx context.Context, d *daemon, w *watcher, key, val string, t0, deadline time.Time, sem chan struct{}) arrival {
	prev := t0
	for {
		if !waitWake(ctx, w.wake, b.o.poll, deadline) {
			return arrival{at: -1}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return arrival{at: -1}
		}
		sent := time.Now()
		v, err := d.stateValue(ctx, b.hc, key)
		<-sem
		if err == nil && v == val {
			if ev := w.lastChange(); ev.After(prev) {
				return arrival{at: ev.Sub(t0), byEvent: true}
			}
			return arrival{at: time.Since(t0)}
		}
		prev = sent
		if time.Now().After(deadline) || !d.running() {
			return arrival{at: -1}
		}
	}
}

// waitWake waits for a wake-up, poll or the deadline, whichever comes
// first; false when ctx ended.
func waitWake(ctx context.Context, wake <-chan struct{}, poll time.Duration, deadline time.Time) bool {
	t := time.NewTimer(min(poll, time.Until(deadline)))
	defer t.Stop()
	select {
	case <-wake:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

// describe says what a node that lacks a change looks like: running or
// not, its connections, mesh slots and heads beside the writer's.
func (b *bench) describe(ctx context.Context, d, writer *daemon) string {
	if err := d.dead(); err != nil {
		return err.Error()
	}
	var st, wst struct {
		Peers    int      `json:"peers"`
		Heads    []string `json:"heads"`
		Document struct {
			Waiting int `json:"waiting_records"`
		} `json:"document"`
	}
	if err := d.call(ctx, b.hc, "GET", "/v1/status", nil, &st, 5*time.Second); err != nil {
		return fmt.Sprintf("%s (pid %d): running, GET /v1/status: %v", d.name, d.pid, err)
	}
	_ = writer.call(ctx, b.hc, "GET", "/v1/status", nil, &wst, 5*time.Second)
	slots := "?"
	if m, err := d.mesh(ctx, b.hc); err == nil {
		slots = fmt.Sprint(len(m.Slots))
	}
	return fmt.Sprintf("%s (pid %d, log %s): running; now %d peers, %s mesh slots, %d changes waiting for their dependencies, heads %s (writer's %s)",
		d.name, d.pid, d.logPath, st.Peers, slots, st.Document.Waiting, shortHeads(st.Heads), shortHeads(wst.Heads))
}

func shortHeads(hs []string) string {
	var out []string
	for _, h := range hs {
		out = append(out, h[:min(8, len(h))])
	}
	return "[" + strings.Join(out, " ") + "]"
}

// line is a round's progress line.
func (r round) line() string {
	if r.err != "" {
		return "FAILED: " + r.err
	}
	s := fmt.Sprintf("writer %s, ack %s, %d of %d readers", r.writer, ms(r.ack), len(r.arrivals), r.readers)
	if len(r.arrivals) > 0 {
		ds := sorted(r.arrivals)
		s += fmt.Sprintf(", p50 %s p90 %s max %s (%s)", secs(quantile(ds, 0.5)), secs(quantile(ds, 0.9)), secs(ds[len(ds)-1]), r.slowest)
	}
	if r.byPoll > 0 {
		s += fmt.Sprintf(" (%d dated by the read that found it: no doc.changed event before it)", r.byPoll)
	}
	if len(r.missing) > 0 {
		s += fmt.Sprintf("; NOT CONVERGED: %d lacked the change after the bound: %s", len(r.missing), strings.Join(r.missing, "; "))
	}
	return s
}
