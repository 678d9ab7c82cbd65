package room

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// The loop is the manager's one goroutine with state, in the manner of
// etcd raft's node.go around RawNode. It takes one input at a time —
// an API call, a received message, a document snapshot, a tick, a timer,
// the result of work it started — hands it to the core, and then carries
// out what the core asked for in ready: events go to subscribers at once
// (never waiting), and everything that can block — pubsub joins and
// closes, document reads and writes, history fetches — runs on other
// goroutines that post their results back as further inputs. So the loop
// never waits, and a receiver never waits for it for long.

// loop is one Run of the manager.
type loop struct {
	m      *Manager
	c      *core
	ctx    context.Context // this run's; cancelled when it ends
	cancel context.CancelFunc
	wg     sync.WaitGroup

	recv    chan incoming    // from the links' receivers
	results chan func()      // results of work off the loop, run on it
	docs    chan struct{}    // the document changed
	reads   chan readReq     // to the reader; holds only the latest request
	snaps   chan snapshot    // from the reader
	writes  chan docWrite    // to the writer, one at a time
	writeq  []docWrite       // writes waiting for the writer
	readSeq uint64           // the number of the last read asked for
	closing map[string]*conn // links being closed, by pubsub topic
	timer   *time.Timer
	timerAt time.Time

	writerDone chan struct{}
}

// recvBuffer is how many received messages wait for the loop; past it a
// receiver waits (and pubsub buffers subBuffer more per link).
const recvBuffer = 1024

// Run runs the manager until ctx ends; then it leaves every room,
// withdraws this node's leases and waits for every goroutine it started.
// API calls made before Run wait for it; after it they fail with
// ErrStopped. If Run returns early (a panic under a supervisor), it may
// be run again and takes up the same topics.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("room: manager already running")
	}
	defer m.running.Store(false)
	lctx, cancel := context.WithCancel(ctx)
	l := &loop{m: m, c: m.core, ctx: lctx, cancel: cancel,
		recv: make(chan incoming, recvBuffer), results: make(chan func(), 64), docs: make(chan struct{}, 1),
		reads: make(chan readReq, 1), snaps: make(chan snapshot), writes: make(chan docWrite),
		closing: map[string]*conn{}, timer: time.NewTimer(time.Hour), writerDone: make(chan struct{})}
	l.timer.Stop()
	l.goFunc(l.reader)
	l.goFunc(l.writer)
	defer l.shutdown(ctx)
	l.run()
	return nil
}

func (l *loop) now() time.Time { return l.m.cfg.Now() }

func (l *loop) run() {
	stop := l.m.cfg.Doc.Watch(func(crdt.Event) {
		select {
		case l.docs <- struct{}{}:
		default:
		}
	})
	defer stop()
	tick := time.NewTicker(l.m.cfg.Interval)
	defer tick.Stop()
	l.read()
	for {
		var writes chan docWrite
		var next docWrite
		if len(l.writeq) > 0 {
			writes, next = l.writes, l.writeq[0]
		}
		select {
		case <-l.ctx.Done():
			return
		case fn := <-l.m.calls:
			fn()
		case in := <-l.recv:
			l.c.received(in, l.now())
		case fn := <-l.results:
			fn()
		case s := <-l.snaps:
			l.c.snapshot(l.now(), s.seq, s.views)
		case <-l.docs:
			l.read()
		case <-tick.C:
			l.read()
			l.c.wake(l.now())
		case <-l.timer.C:
			l.timerAt = time.Time{}
			l.c.wake(l.now())
		case writes <- next:
			l.writeq = l.writeq[1:]
		}
		l.apply(l.c.take())
		l.arm()
	}
}

// apply carries out what the core asked for.
func (l *loop) apply(rd ready) {
	l.fanOut(rd.events)
	for _, n := range rd.notes {
		l.m.cfg.OnEvent(n.typ, n.data)
	}
	// Drops before joins: a join of a room waits for its earlier link to
	// be released. (Between different rooms the order does not matter:
	// both run off the loop.)
	for _, d := range rd.drops {
		l.closeConn(d.gen)
	}
	for _, r := range rd.connects {
		l.openConn(r)
	}
	l.writeq = append(l.writeq, rd.writes...)
	for _, r := range rd.fetches {
		l.goFunc(func() {
			res := l.m.fetch(l.ctx, r)
			l.post(func() { l.c.historyDone(res, l.now()) })
		})
	}
	if rd.read {
		l.read()
	}
}

// read asks the reader for a fresh snapshot of the topics tracked here,
// replacing a request it has not taken yet. With no topic there is
// nothing to read: every document change would otherwise cost a read.
func (l *loop) read() {
	if len(l.c.topics) == 0 {
		return
	}
	l.readSeq++
	select {
	case <-l.reads:
	default:
	}
	l.reads <- readReq{seq: l.readSeq, topics: l.c.names()} // only the loop sends: there is room
}

// arm sets the timer for the core's next deadline.
func (l *loop) arm() {
	at, ok := l.c.nextWake()
	if !ok || at.Equal(l.timerAt) {
		return
	}
	l.timerAt = at
	l.timer.Reset(max(time.Until(at), time.Millisecond))
}

// post hands a result to the loop; dropped once the run ends.
func (l *loop) post(fn func()) {
	select {
	case l.results <- fn:
	case <-l.ctx.Done():
	}
}

// goFunc runs fn on a goroutine this run waits for.
func (l *loop) goFunc(fn func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn()
	}()
}

// shutdown ends a run: every room is left, writes not yet made fail, and
// once the writer is idle this node's leases are withdrawn (when ctx
// ended; after a panic the next run renews them). It waits for every
// goroutine of the run.
func (l *loop) shutdown(ctx context.Context) {
	open := l.c.stopAll("the node is stopping", l.now())
	rd := l.c.take()
	l.cancel()
	l.fanOut(rd.events)
	for _, n := range rd.notes {
		l.m.cfg.OnEvent(n.typ, n.data)
	}
	for _, d := range rd.drops {
		l.closeConn(d.gen)
	}
	for gen := range l.m.conns {
		l.closeConn(gen)
	}
	for _, w := range append(l.writeq, rd.writes...) {
		if w.done != nil {
			w.done <- ErrStopped
		}
	}
	l.writeq = nil
	l.timer.Stop()
	<-l.writerDone
	final := ctx.Err() != nil
	if final && len(open) > 0 {
		if err := l.m.writeLeases(open, 0); err != nil {
			l.m.lg.Warn().Err(err).Msg("withdrawing the presence leases failed")
		}
	}
	l.wg.Wait()
	if final {
		t := l.c.totals()
		l.m.final.Store(&t)
		l.m.stop.Do(func() { close(l.m.stopped) })
	}
}
