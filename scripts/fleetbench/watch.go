package main

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"sync"
	"time"
)

// watcher follows one daemon's event stream and notes when its document
// last changed (a doc.changed event), so that a round reads the node as
// soon as a change lands there, and dates the arrival to the event rather
// than to a poll.
type watcher struct {
	wake chan struct{} // a doc.changed event arrived since the last read
	mu   sync.Mutex
	last time.Time // when the latest doc.changed event arrived
}

// lastChange is when the latest doc.changed event arrived.
func (w *watcher) lastChange() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *watcher) changed(at time.Time) {
	w.mu.Lock()
	w.last = at
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// watchAll opens every daemon's event stream and returns its watchers
// (one that cannot open stays silent: polls alone then find the change)
// and a function that closes the streams and waits for their readers.
func (b *bench) watchAll(ctx context.Context, ds []*daemon) (map[*daemon]*watcher, func()) {
	ctx, cancel := context.WithCancel(ctx)
	ws := make(map[*daemon]*watcher, len(ds))
	var wg sync.WaitGroup
	for _, d := range ds {
		w := &watcher{wake: make(chan struct{}, 1)}
		ws[d] = w
		resp, err := d.events(ctx, b.hc)
		if err != nil {
			continue
		}
		wg.Go(func() {
			defer resp.Body.Close()
			w.follow(resp)
		})
	}
	return ws, func() { cancel(); wg.Wait() }
}

// follow reads server-sent events until the stream ends.
func (w *watcher) follow(resp *http.Response) {
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "event: doc.changed" {
			w.changed(time.Now())
		}
	}
}
