// Command fleetbench runs a fleet of real meshnode processes on loopback,
// as many as one machine holds (issue 15), kills its rendezvous and some
// other nodes, and measures what a fleet that size costs and how fast a
// change reaches every node. scripts/fleet-bench.sh builds meshnode and
// runs it:
//
//	scripts/fleet-bench.sh                   # 50 processes, kill 1 + 10
//	scripts/fleet-bench.sh -n 10 -kill 2     # a quick run
//
// The fleet: node 00 is started alone (`meshnode run`, mDNS off, TCP and
// QUIC on 127.0.0.1 port 0, API on 127.0.0.1:0, its own data dir and log);
// the others join it (`--join <its token> --bootstrap <its TCP address>`),
// -batch at a time, each batch once the previous one has its APIs up and
// holds the fleet's document. The fleet has formed when every node's
// GET /v1/nodes lists every node alive; the CPU the nodes used until then
// and the machine's busy share meanwhile (/proc/stat) are reported.
//
// Then, in order:
//
//  1. idle: after -settle, each node's CPU (utime+stime from
//     /proc/<pid>/stat) over -idle with no request to any node, as a
//     percentage of one core, and its RSS (VmRSS) at the end; beside them
//     the machine's busy share over the window, where anything else
//     running on the machine shows;
//  2. mesh: every node's GET /v1/mesh: slots held now and max_slots_seen,
//     neither of which may exceed --max-mesh-peers;
//  3. alive: -rounds rounds, each writing a room state key
//     (PUT /v1/rooms/fleetbench/state/{key}) on a different random node
//     and reading it on every other node (GET of the key, at most -par
//     requests in flight in all) until each reads the value back. A node
//     is read as soon as its event stream (GET /v1/events) says its
//     document changed, and at least every -poll; its arrival is dated by
//     that doc.changed event (or, when none came, by the read that found
//     the change), from the moment the PUT was sent. A round's time is
//     until the last node had it; the last one is named, and a node that
//     took over a second, or lacked the change at the bound, is described
//     (connections, mesh slots, changes waiting for their dependencies,
//     heads beside the writer's);
//  4. kill: SIGKILL to the rendezvous, then to -kill random other nodes;
//  5. killed: the same rounds among the survivors, at once;
//  6. every survivor lists the killed nodes as not alive (stale-after);
//  7. settled: the same rounds again, then the survivors' mesh and RSS.
//
// Baseline, in the same run and before the fleet: a lone node (a fleet of
// one) and a fleet of -baseline processes, formed the same way, idle over
// the same window at the same time, and the same rounds among the latter.
//
// Progress lines on stderr carry the UTC time, as the daemons' logs do
// (-keep keeps the logs: data dirs and logs/<node>.log in the work dir).
//
// The exit status is 1 when a round does not converge within -bound (the
// nodes that lacked the change are printed with their connections, mesh
// slots and heads), when a node holds more mesh slots than the cap, when
// a node exits unasked, or when the fleet does not form within -form; 130
// on Ctrl-C. Every daemon is stopped on the way out, whatever happened
// (and killed by the kernel should this program die first). Linux only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

type options struct {
	bin, dir  string
	keep      bool
	n, kill   int
	baseN     int
	rounds    int
	batch     int
	bound     time.Duration
	formLimit time.Duration
	settle    time.Duration
	idle      time.Duration
	poll, gap time.Duration
	par       int
	seed      uint64
	node      nodeSettings
	profile   bool
	removeDir bool // the work dir is ours: remove it at the end
}

// nodeSettings are the flags every daemon gets. The defaults are
// meshnode's own, given explicitly so that the header shows what ran.
type nodeSettings struct {
	heartbeat, staleAfter, syncInterval, meshInterval time.Duration
	maxMesh                                           int
	logLevel                                          string
}

func (s nodeSettings) args() []string {
	return []string{
		"--heartbeat-interval", s.heartbeat.String(), "--stale-after", s.staleAfter.String(),
		"--sync-interval", s.syncInterval.String(), "--mesh-interval", s.meshInterval.String(),
		"--max-mesh-peers", fmt.Sprint(s.maxMesh), "--log-level", s.logLevel,
	}
}

func main() {
	os.Exit(run())
}

func run() int {
	o, ok := parseFlags()
	if !ok {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := prepare(ctx, &o); err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		return 1
	}
	printHeader(o)
	b := newBench(o)
	res := b.measure(ctx)
	b.stopAll()
	fails := failures(res, o)
	if ctx.Err() != nil {
		fails = []string{"interrupted"}
	}
	printReport(o, res, fails)
	printLogSummary(b.all)
	code := 0
	switch {
	case ctx.Err() != nil:
		code = 130
	case len(fails) > 0:
		code = 1
	}
	finish(o, code)
	return code
}

func parseFlags() (options, bool) {
	var o options
	flag.StringVar(&o.bin, "bin", "", "meshnode binary (default: built from this tree into the work dir)")
	flag.StringVar(&o.dir, "dir", "", "work dir for data dirs and logs (default: a fresh temp dir, removed at the end unless -keep or a failure)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work dir")
	flag.IntVar(&o.n, "n", 50, "processes in the fleet, the rendezvous included")
	flag.IntVar(&o.kill, "kill", 10, "nodes killed after the rendezvous")
	flag.IntVar(&o.baseN, "baseline", 3, "processes in the baseline fleet")
	flag.IntVar(&o.rounds, "rounds", 5, "convergence rounds per phase")
	flag.IntVar(&o.batch, "batch", 5, "processes started at a time")
	flag.DurationVar(&o.bound, "bound", 60*time.Second, "a round that has not reached every node by then fails")
	flag.DurationVar(&o.formLimit, "form", 3*time.Minute, "limit on the fleet's forming, and on survivors seeing the killed nodes as gone")
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "wait after forming before the idle window")
	flag.DurationVar(&o.idle, "idle", 20*time.Second, "idle window for CPU")
	flag.DurationVar(&o.poll, "poll", 200*time.Millisecond, "longest time between two reads of one node in a round (it is also read as soon as its document changes)")
	flag.DurationVar(&o.gap, "gap", time.Second, "pause between rounds")
	flag.IntVar(&o.par, "par", 8, "API requests in flight at most")
	flag.BoolVar(&o.profile, "profile", false, "take CPU profiles of the rendezvous and node 01 over the fleet's idle window (into the work dir's profiles/; implies -keep); an idle node uses so little CPU that a useful profile needs -idle 2m or more")
	flag.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "seed for the writers and victims picked")
	flag.DurationVar(&o.node.heartbeat, "heartbeat-interval", 5*time.Second, "nodes' --heartbeat-interval")
	flag.DurationVar(&o.node.staleAfter, "stale-after", 20*time.Second, "nodes' --stale-after")
	flag.DurationVar(&o.node.syncInterval, "sync-interval", 30*time.Second, "nodes' --sync-interval")
	flag.DurationVar(&o.node.meshInterval, "mesh-interval", 30*time.Second, "nodes' --mesh-interval")
	flag.IntVar(&o.node.maxMesh, "max-mesh-peers", 4, "nodes' --max-mesh-peers: the cap checked")
	flag.StringVar(&o.node.logLevel, "log-level", "info", "nodes' --log-level")
	flag.Parse()
	var bad []string
	if flag.NArg() > 0 {
		bad = append(bad, fmt.Sprintf("unexpected argument %q", flag.Arg(0)))
	}
	if o.n < 2 || o.kill < 0 || o.kill > o.n-3 {
		bad = append(bad, "-n must be at least 2 and -kill between 0 and n-3 (two survivors at least)")
	}
	if o.baseN < 2 || o.rounds < 1 || o.batch < 1 || o.par < 1 || o.poll <= 0 {
		bad = append(bad, "-baseline must be at least 2; -rounds, -batch, -par and -poll positive")
	}
	if runtime.GOOS != "linux" {
		bad = append(bad, "Linux only (it reads /proc)")
	}
	if len(bad) > 0 {
		fmt.Fprintln(os.Stderr, "fleetbench:", strings.Join(bad, "; "))
		flag.Usage()
		return o, false
	}
	return o, true
}

// prepare makes the work dir and builds or finds the binary.
func prepare(ctx context.Context, o *options) error {
	if o.dir == "" {
		d, err := os.MkdirTemp("", "fleetbench-")
		if err != nil {
			return err
		}
		o.dir, o.removeDir = d, !o.keep && !o.profile
	}
	var err error
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	if o.bin == "" {
		o.bin = filepath.Join(o.dir, "meshnode")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", o.bin, "./cmd/meshnode").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build ./cmd/meshnode (run from the repository's root, or give -bin): %v: %s", err, benchproc.Tail(out, 600))
		}
	}
	o.bin, err = filepath.Abs(o.bin)
	return err
}

// finish removes the work dir when it is ours and the run passed; it
// keeps it, logs and all, after a failure.
func finish(o options, code int) {
	switch {
	case o.removeDir && code == 0:
		os.RemoveAll(o.dir)
	case o.removeDir:
		fmt.Fprintf(os.Stderr, "fleetbench: logs kept in %s\n", filepath.Join(o.dir, "logs"))
	}
}

// results are everything measured; fatal is what cut the run short.
type results struct {
	lone  usage
	base  fleetResult
	fleet fleetResult
	fatal error
}

type fleetResult struct {
	n          int
	formed     time.Duration
	idle       []usage
	phases     []phase
	meshFormed *meshStats
	meshEnd    *meshStats
	killed     []string
	goneSeen   time.Duration // from the kill until every survivor saw the killed as not alive
	end        []usage       // survivors' memory at the end
	profiles   []string      // CPU profiles of the idle window (-profile)
	formCPU    float64       // CPU seconds of all nodes from their start until formed
	formBusy   float64       // machine busy while forming, percent of all cores
	idleBusy   float64       // machine busy over the idle window, percent of all cores
	exited     error         // a node that exited unasked
}

// measure runs the baseline, then the fleet.
func (b *bench) measure(ctx context.Context) *results {
	res := &results{}
	if res.fatal = b.baseline(ctx, res); res.fatal != nil {
		return res
	}
	res.fatal = b.bigFleet(ctx, &res.fleet)
	return res
}

// baseline: a lone node and a small fleet, idle at the same time, then
// rounds in the small fleet; both stopped after.
func (b *bench) baseline(ctx context.Context, res *results) error {
	progress("baseline: a lone node and a fleet of %d", b.o.baseN)
	lone, err := b.start(filepath.Join(b.o.dir, "lone"), "lone", nil)
	if err != nil {
		return err
	}
	defer stopSet([]*daemon{lone})
	if err := lone.waitAPI(ctx, b.hc, time.Minute); err != nil {
		return err
	}
	m := readMachine()
	f, err := b.startFleet(ctx, "base", b.o.baseN)
	defer stopSet(f.nodes)
	if err != nil {
		return err
	}
	r := &res.base
	r.n = b.o.baseN
	if r.formed, err = b.awaitView(ctx, f.nodes, viewWant{alive: f.nodes}, f.started, b.o.formLimit); err != nil {
		return fmt.Errorf("baseline fleet did not form: %w", err)
	}
	r.formCPU, r.formBusy = cpuOfAll(f.nodes), m.busySince()
	if err := benchproc.Sleep(ctx, b.o.settle); err != nil {
		return err
	}
	progress("baseline: idle window of %v", b.o.idle)
	m = readMachine()
	idle, err := measureIdle(ctx, slices.Concat(f.nodes, []*daemon{lone}), b.o.idle)
	if err != nil {
		return err
	}
	r.idleBusy = m.busySince()
	res.lone, r.idle = idle[len(idle)-1], idle[:len(idle)-1]
	r.phases = append(r.phases, b.runPhase(ctx, "base", fmt.Sprintf("%d processes, all alive", r.n), f.nodes, b.o.rounds))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.exited = b.anyDead(slices.Concat(f.nodes, []*daemon{lone}))
	return ctx.Err()
}

// bigFleet is the fleet measured: form, idle, mesh, rounds, kill, rounds,
// survivors' view, rounds, mesh and memory.
func (b *bench) bigFleet(ctx context.Context, r *fleetResult) error {
	r.n = b.o.n
	progress("starting a fleet of %d processes, %d at a time", b.o.n, b.o.batch)
	m := readMachine()
	f, err := b.startFleet(ctx, "fleet", b.o.n)
	if err != nil {
		return err
	}
	if r.formed, err = b.awaitView(ctx, f.nodes, viewWant{alive: f.nodes}, f.started, b.o.formLimit); err != nil {
		return fmt.Errorf("the fleet did not form: %w", err)
	}
	r.formCPU, r.formBusy = cpuOfAll(f.nodes), m.busySince()
	progress("fleet formed in %.1f s; settling %v, then an idle window of %v", r.formed.Seconds(), b.o.settle, b.o.idle)
	if err := benchproc.Sleep(ctx, b.o.settle); err != nil {
		return err
	}
	if err := b.idle(ctx, f, r); err != nil {
		return err
	}
	if r.meshFormed, err = b.meshOf(ctx, f.nodes); err != nil {
		return err
	}
	r.phases = append(r.phases, b.runPhase(ctx, "alive", fmt.Sprintf("%d processes, all alive", b.o.n), f.nodes, b.o.rounds))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := b.afterKill(ctx, f, r); err != nil {
		return err
	}
	if r.meshEnd, err = b.meshOf(ctx, f.alive()); err != nil {
		return err
	}
	for _, d := range f.alive() {
		u, err := memOf(d)
		if err != nil {
			return err
		}
		r.end = append(r.end, u)
	}
	r.exited = b.anyDead(f.nodes)
	return ctx.Err()
}

// idle measures the fleet's idle window, profiling the rendezvous and
// node 01 over it when asked to.
func (b *bench) idle(ctx context.Context, f *fleet, r *fleetResult) error {
	wait := func() ([]string, error) { return nil, nil }
	if b.o.profile {
		wait = b.profileIdle(ctx, f.nodes[:2], b.o.idle)
	}
	m := readMachine()
	var err error
	r.idle, err = measureIdle(ctx, f.nodes, b.o.idle)
	r.idleBusy = m.busySince()
	paths, perr := wait()
	r.profiles = paths
	return errors.Join(err, perr)
}

// afterKill kills the rendezvous and -kill others, runs rounds among the
// survivors at once, waits until they all see the killed as gone, and
// runs rounds again.
func (b *bench) afterKill(ctx context.Context, f *fleet, r *fleetResult) error {
	if err := b.anyDead(f.nodes); err != nil {
		return err
	}
	victims := b.killSome(f, b.o.kill)
	at := time.Now()
	for _, d := range victims {
		r.killed = append(r.killed, d.name)
	}
	progress("killed (SIGKILL) %s", strings.Join(r.killed, ", "))
	surv := f.alive()
	what := fmt.Sprintf("%d survivors, right after the kill", len(surv))
	r.phases = append(r.phases, b.runPhase(ctx, "killed", what, surv, b.o.rounds))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var err error
	if r.goneSeen, err = b.awaitView(ctx, surv, viewWant{alive: surv, gone: f.killed()}, at, b.o.formLimit); err != nil {
		return fmt.Errorf("the survivors did not all see the killed nodes as gone: %w", err)
	}
	progress("every survivor sees the killed nodes as not alive, %.1f s after the kill", r.goneSeen.Seconds())
	what = fmt.Sprintf("%d survivors, once they see the killed as gone", len(surv))
	r.phases = append(r.phases, b.runPhase(ctx, "settled", what, surv, b.o.rounds))
	return ctx.Err()
}

func (b *bench) meshOf(ctx context.Context, ds []*daemon) (*meshStats, error) {
	s, err := collectMesh(ctx, b.hc, ds, b.o.node.maxMesh)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// stopSet stops daemons (SIGTERM, all at once; SIGKILL after 15 s).
func stopSet(ds []*daemon) {
	for _, d := range ds {
		d.signalStop()
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, d := range ds {
		d.awaitStop(deadline)
	}
}

// failures are the reasons the run fails, empty when it passes.
func failures(res *results, o options) []string {
	var out []string
	if res.fatal != nil && !errors.Is(res.fatal, context.Canceled) {
		out = append(out, res.fatal.Error())
	}
	for _, fr := range []*fleetResult{&res.base, &res.fleet} {
		if fr.exited != nil {
			out = append(out, "a node exited unasked: "+fr.exited.Error())
		}
		for _, p := range fr.phases {
			if !p.converged() {
				out = append(out, fmt.Sprintf("phase %s (%s): a change did not reach every node within %v", p.name, p.what, o.bound))
			}
		}
		for _, m := range []*meshStats{fr.meshFormed, fr.meshEnd} {
			if m != nil && len(m.over) > 0 {
				out = append(out, fmt.Sprintf("mesh cap %d exceeded: %s", o.node.maxMesh, strings.Join(m.over, ", ")))
			}
			if m != nil && len(m.badCap) > 0 {
				out = append(out, fmt.Sprintf("nodes report another mesh cap than %d: %s", o.node.maxMesh, strings.Join(m.badCap, ", ")))
			}
		}
	}
	return out
}
