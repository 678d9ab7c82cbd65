package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/internal/frame"
)

// fetch pulls the needed chunks from every source at once; see fetcher.
func (d *download) fetch(ctx context.Context, need []int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := &fetcher{
		d: d, ctx: ctx, cancel: cancel,
		sc:      newScheduler(len(d.refs), need, mrand.IntN(len(need))),
		work:    make(chan received, 2*d.cfg.Writers),
		allDone: make(chan struct{}),
		ended:   make(chan struct{}, 1),
		lookup:  make(chan struct{}, 1),
		srcs:    map[peer.ID]*source{},
	}
	return f.run()
}

// fetcher runs one download's transfers. Each source gets one pipelined
// stream with Window requests in flight; what arrives goes to Writers
// goroutines that verify and write it, so the network never waits on the
// disk. A source that holds only part of the item (another node still
// downloading it) takes only chunks it has, and is asked again for its
// bitmap when it has nothing left to offer.
type fetcher struct {
	d       *download
	ctx     context.Context
	cancel  context.CancelFunc
	sc      *scheduler
	work    chan received
	allDone chan struct{}
	ended   chan struct{} // a worker ended (capacity 1: a hint)
	lookup  chan struct{} // a source sent us to others: look for sources now (capacity 1)
	wg      sync.WaitGroup

	mu    sync.Mutex
	srcs  map[peer.ID]*source
	errs  []error
	fatal error
}

type source struct {
	running bool
	bad     bool
	noRuns  bool // an earlier version: one chunk per request
	ended   time.Time
	// changed is when the source last answered that a file changed
	// under it: it rescans, and serves again if the content did not
	// change (a touch), so it is tried again after restartAfter.
	changed time.Time
}

// received is a run of chunks (one, or several small ones) read from a
// source, waiting to be verified.
type received struct {
	g      int // the first chunk
	count  int
	buf    *[]byte
	n      int
	src    peer.ID
	srcBad context.CancelCauseFunc // stops the source's worker
}

// restartAfter: a source whose worker gave up is tried again this long
// after, if it is still listed.
const restartAfter = 5 * time.Second

// changedGrace is how long a download with no source left waits for a
// source that answered "changed" to be tried again, before it gives up.
const changedGrace = 3 * restartAfter

func (f *fetcher) run() error {
	var writers sync.WaitGroup
	for range f.d.cfg.Writers {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for r := range f.work {
				f.store(r)
				chunkPool.Put(r.buf)
			}
		}()
	}
	f.addSources(f.d.cfg.Sources)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-f.allDone:
			break loop
		case <-f.ctx.Done():
			break loop
		case <-f.lookup:
			f.refreshSources()
		case <-tick.C:
			f.refreshSources()
			if f.live() == 0 && f.sc.left() > 0 && !f.awaitingChanged() {
				f.mu.Lock()
				f.setFatal(fmt.Errorf("transfer: %d chunks left and no source can supply them: %w", f.sc.left(), errors.Join(f.errs...)))
				f.mu.Unlock()
				break loop
			}
		case <-f.ended:
			if f.live() == 0 {
				f.refreshSources()
				if f.live() == 0 && f.sc.left() > 0 && !f.awaitingChanged() {
					f.mu.Lock()
					f.setFatal(fmt.Errorf("transfer: %d chunks left and no source can supply them: %w", f.sc.left(), errors.Join(f.errs...)))
					f.mu.Unlock()
					break loop
				}
			}
		}
	}
	f.cancel()
	f.wg.Wait()
	close(f.work)
	writers.Wait()
	if f.sc.left() == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fatal != nil {
		return f.fatal
	}
	return context.Canceled
}

func (f *fetcher) refreshSources() {
	if f.d.cfg.MoreSources != nil {
		f.addSources(f.d.cfg.MoreSources())
	}
}

// addSources starts a worker for each listed peer not in use, not known
// bad, and not given up on in the last restartAfter.
func (f *fetcher) addSources(ps []peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ps {
		src := f.srcs[p]
		if src == nil {
			src = &source{}
			f.srcs[p] = src
		} else if src.running || src.bad || time.Since(src.ended) < restartAfter {
			continue
		}
		if f.ctx.Err() != nil {
			return
		}
		src.running = true
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			err := f.worker(p)
			f.mu.Lock()
			src.running, src.ended = false, time.Now()
			if err != nil && f.ctx.Err() == nil {
				src.bad = errors.Is(err, errBadData) || isRefusal(err)
				// The grace runs from the first of a row of "changed"
				// answers: a holder that keeps answering it (its rescan
				// keeps failing) is not waited for forever.
				if !isChanged(err) {
					src.changed = time.Time{}
				} else if src.changed.IsZero() {
					src.changed = src.ended
				}
				f.errs = append(f.errs, fmt.Errorf("%s: %w", p, err))
			}
			f.mu.Unlock()
			select {
			case f.ended <- struct{}{}:
			default:
			}
		}()
	}
}

// awaitingChanged reports whether a source answered "changed" within
// changedGrace: the download waits for it to be tried again.
func (f *fetcher) awaitingChanged() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.srcs {
		if !s.bad && !s.changed.IsZero() && time.Since(s.changed) < changedGrace {
			return true
		}
	}
	return false
}

func (f *fetcher) live() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.srcs {
		if s.running {
			n++
		}
	}
	return n
}

func (f *fetcher) setFatal(err error) {
	if f.fatal == nil {
		f.fatal = err
	}
	f.cancel()
}

func isRefusal(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Status == StatusRefused
}

// isChanged reports a holder whose file changed since its scan: an honest
// holder of an older version, not a liar. Its worker stops; it is not
// reported for bad data.
func isChanged(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Status == StatusChanged
}

// store verifies a received run chunk by chunk and writes the chunks
// that verify. Bad data stops its source and puts the rest of the run
// back for the others.
func (f *fetcher) store(r received) {
	d := f.d
	b := (*r.buf)[:r.n]
	good, n := d.verifyRun(r.g, r.count, b)
	if good > 0 {
		if err := d.writeRun(r.g, good, b[:n]); err != nil {
			f.releaseRun(r.g, r.g+r.count)
			f.mu.Lock()
			f.setFatal(err)
			f.mu.Unlock()
			return
		}
		d.cfg.Progress.Fetched.Add(int64(n))
		d.cfg.Progress.addSource(r.src, int64(n))
		for g := r.g; g < r.g+good; g++ {
			if f.sc.finish(g) {
				close(f.allDone)
			}
		}
	}
	if good < r.count || n != len(b) {
		d.cfg.Progress.BadChunks.Add(1)
		why := fmt.Sprintf("answered a run of %d chunks with %d bytes", r.count, len(b))
		if good < r.count {
			fl, _ := d.hashOf(r.g + good)
			why = fmt.Sprintf("chunk %d of %s does not match the manifest", d.refs[r.g+good].idx, fl.Path)
		}
		d.bad(r.src, why)
		f.releaseRun(r.g+good, r.g+r.count)
		r.srcBad(errBadData)
	}
}

func (f *fetcher) releaseRun(from, to int) {
	for g := from; g < to; g++ {
		f.sc.release(g)
	}
}

// worker serves the download from one source until nothing is left, the
// source fails three times in a row, refuses, or sends bad data.
func (f *fetcher) worker(p peer.ID) error {
	ctx, stop := context.WithCancelCause(f.ctx)
	defer stop(nil)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		if errors.Is(context.Cause(ctx), errBadData) {
			return errBadData
		}
		if ctx.Err() != nil {
			return nil
		}
		progressed, err := f.session(ctx, stop, p)
		if errors.Is(context.Cause(ctx), errBadData) {
			return errBadData
		}
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if isRefusal(err) || isChanged(err) {
			return err
		}
		if progressed {
			attempt = -1 // it was working: start counting again
		}
		lastErr = err
	}
	return lastErr
}

var errBadData = errors.New("sent a chunk that does not match the manifest")

// partialRefresh: a source holding part of the item, with nothing left
// to offer, is asked again which chunks it has this long after the last
// time.
const partialRefresh = 200 * time.Millisecond

// session runs one pipelined stream to p. Chunks it requested but did not
// receive go back to the scheduler.
func (f *fetcher) session(ctx context.Context, srcBad context.CancelCauseFunc, p peer.ID) (progressed bool, err error) {
	d := f.d
	s, err := d.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "transfer"), p, d.cfg.Protocol)
	if err != nil {
		return false, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	br := bufio.NewReaderSize(s, 64<<10)
	var bits []byte // a partial source's last answer; nil: complete
	defer func() { f.sc.offer(bits, nil) }()
	var asked time.Time
	var has func(int) bool
	ask := func() error {
		cur, err := f.askHave(s, br)
		if err != nil {
			return err
		}
		f.sc.offer(bits, cur)
		bits, asked = cur, time.Now()
		has = nil
		if cur != nil {
			has = func(g int) bool { return bitSet(cur, g) }
		}
		return nil
	}
	if err := ask(); err != nil {
		return false, err
	}
	var inflight []received
	defer func() {
		for _, r := range inflight {
			f.releaseRun(r.g, r.g+r.count)
		}
	}()
	// Chunks a complete source answered StatusElsewhere for: not asked of
	// it again before the time noted (spread.go).
	elsewhere := map[int]time.Time{}
	for {
		wake := f.sc.changed() // before take: a release after it wakes us
		pick := has
		if bits == nil {
			pick = notBefore(elsewhere, time.Now())
		}
		for len(inflight) < d.cfg.Window {
			req, g, n, ok := f.next(pick, bits == nil, p)
			if !ok {
				break
			}
			inflight = append(inflight, received{g: g, count: n})
			if err := frame.Write(s, req.Encode()); err != nil {
				return progressed, err
			}
		}
		if len(inflight) == 0 {
			if f.sc.left() == 0 {
				return progressed, nil
			}
			var refresh <-chan time.Time
			if bits != nil {
				refresh = time.After(partialRefresh - time.Since(asked))
			} else if len(elsewhere) > 0 {
				refresh = time.After(spreadRetry)
			}
			select {
			case <-ctx.Done():
				return progressed, nil
			case <-wake:
			case <-refresh:
				if bits != nil {
					if err := ask(); err != nil {
						return progressed, err
					}
				}
			}
			continue
		}
		_ = s.SetReadDeadline(time.Now().Add(time.Minute))
		buf := chunkPool.Get().(*[]byte)
		b, err := readChunkResponse(br, *buf)
		if isElsewhere(err) {
			// Sent to enough peers already: it comes from them, or from
			// this source after spreadRetry.
			chunkPool.Put(buf)
			r := inflight[0]
			inflight = inflight[1:]
			until := time.Now().Add(spreadRetry)
			for g := r.g; g < r.g+r.count; g++ {
				elsewhere[g] = until
			}
			f.releaseRun(r.g, r.g+r.count)
			select {
			case f.lookup <- struct{}{}: // the peers it sent the chunk to may be new
			default:
			}
			d.cfg.Progress.Elsewhere.Add(1)
			continue
		}
		if err != nil {
			chunkPool.Put(buf)
			if inflight[0].count > 1 && oldServer(err) {
				f.noRuns(p)
				err = fmt.Errorf("%s; asking it for one chunk at a time", err) // not a refusal: retried
			}
			return progressed, err
		}
		r := inflight[0]
		inflight = inflight[1:]
		progressed = true
		r.buf, r.n, r.src, r.srcBad = buf, len(b), p, srcBad
		select {
		case f.work <- r:
		case <-ctx.Done():
			chunkPool.Put(buf)
			f.releaseRun(r.g, r.g+r.count)
			return progressed, nil
		}
	}
}

// spreadRetry is how long a chunk a complete source answered
// StatusElsewhere for is left to the partial sources before it is asked
// of that source again.
const spreadRetry = 500 * time.Millisecond

// notBefore drops the entries of m that are due at now and returns a
// filter that leaves out the others (nil when none are left).
func notBefore(m map[int]time.Time, now time.Time) func(int) bool {
	for g, t := range m {
		if !now.Before(t) {
			delete(m, g)
		}
	}
	if len(m) == 0 {
		return nil
	}
	return func(g int) bool { _, wait := m[g]; return !wait }
}

func isElsewhere(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Status == StatusElsewhere
}

// next takes the next request for source p: a run of small chunks where
// they follow each other, one chunk otherwise (or for a source that does
// not know runs). has leaves out chunks p does not offer now; complete
// says p holds the whole item.
func (f *fetcher) next(has func(int) bool, complete bool, p peer.ID) (req Request, g, n int, ok bool) {
	d := f.d
	size := func(g int) int {
		fl, _ := d.hashOf(g)
		return ChunkLen(fl.Size, d.refs[g].idx)
	}
	if f.runsOK(p) {
		g, n, ok = f.sc.takeRun(has, complete, size)
	} else {
		g, ok = f.sc.take(has, complete)
		n = 1
	}
	switch {
	case !ok:
		return Request{}, 0, 0, false
	case n > 1:
		return Request{Kind: ReqRun, Manifest: d.cfg.Manifest, Chunk: uint64(g), Count: uint64(n)}, g, n, true
	}
	fl, _ := d.hashOf(g)
	return Request{Kind: ReqChunk, Manifest: d.cfg.Manifest, Path: fl.Path, Chunk: uint64(d.refs[g].idx)}, g, 1, true
}

// oldServer reports whether err is a server's refusal of a run request
// as a request kind it does not know (a node of an earlier version).
func oldServer(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Status == StatusRefused && strings.Contains(se.Msg, "unknown request kind")
}

func (f *fetcher) runsOK(p peer.ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	src := f.srcs[p]
	return src == nil || !src.noRuns
}

func (f *fetcher) noRuns(p peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if src := f.srcs[p]; src != nil {
		src.noRuns = true
	}
}

// askHave asks the source which chunks it holds; nil means all of them.
func (f *fetcher) askHave(s network.Stream, br *bufio.Reader) ([]byte, error) {
	_ = s.SetDeadline(time.Now().Add(time.Minute))
	if err := frame.Write(s, Request{Kind: ReqHave, Manifest: f.d.cfg.Manifest}.Encode()); err != nil {
		return nil, err
	}
	b, err := readResponse(br)
	if err != nil {
		return nil, err
	}
	return decodeHave(b, len(f.d.refs))
}

// readChunkResponse reads one response into buf (ChunkSize bytes or
// more) and returns the chunk bytes. Errors are frame.Read's: io.EOF for
// a clean end before the response, the stream's own cause otherwise.
func readChunkResponse(br *bufio.Reader, buf []byte) ([]byte, error) {
	n, err := frame.ReadLen(br, 1+ChunkSize)
	if errors.Is(err, frame.ErrTooLarge) {
		return nil, fmt.Errorf("%w: chunk response: %w", ErrBadFrame, err)
	}
	if err != nil {
		return nil, err
	}
	if n == 0 || n-1 > len(buf) {
		return nil, fmt.Errorf("%w: chunk response of %d bytes", ErrBadFrame, n)
	}
	var status [1]byte
	if err := frame.ReadBody(br, status[:]); err != nil {
		return nil, err
	}
	b := buf[:n-1]
	if err := frame.ReadBody(br, b); err != nil {
		return nil, err
	}
	switch {
	case status[0] > StatusElsewhere:
		return nil, fmt.Errorf("%w: unknown status %d", ErrBadFrame, status[0])
	case status[0] != StatusOK:
		return nil, &ServerError{Status: status[0], Msg: string(b)}
	}
	return b, nil
}
