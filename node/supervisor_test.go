package node

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type reports struct {
	mu  sync.Mutex
	got []string
}

func (r *reports) add(svc string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, svc+": "+err.Error())
}

func (r *reports) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

// blocker is a well-behaved service: it runs until ctx ends.
func blocker(stopped *atomic.Bool) func(context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		stopped.Store(true)
		return nil
	}
}

func runSupervisor(t *testing.T, ctx context.Context, rep *reports, svcs []Service) chan error {
	t.Helper()
	done := make(chan error, 1)
	bo := Backoff{First: 10 * time.Millisecond, Max: 40 * time.Millisecond}
	go func() { done <- supervise(ctx, zerolog.New(zerolog.NewTestWriter(t)), bo, rep.add, svcs) }()
	return done
}

func waitDone(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor did not return")
		return nil
	}
}

func TestSupervisorRestartsWithBackoff(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	var other atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	rep := &reports{}
	done := runSupervisor(t, ctx, rep, []Service{
		{Name: "flaky", Policy: Restart, Run: func(ctx context.Context) error {
			if runs.Add(1) <= 2 {
				return errors.New("boom")
			}
			<-ctx.Done()
			return nil
		}},
		{Name: "steady", Policy: Required, Run: blocker(&other)},
	})
	waitFor(t, 5*time.Second, "third run of the flaky service", func() bool { return runs.Load() == 3 })
	cancel()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("supervise after cancel: %v", err)
	}
	if got := rep.list(); len(got) != 2 || got[0] != "flaky: boom" || got[1] != "flaky: boom" {
		t.Fatalf("reports = %q, want two \"flaky: boom\"", got)
	}
	if !other.Load() {
		t.Fatal("steady service was not stopped and waited for")
	}
}

func TestSupervisorRequiredFailureStopsEverything(t *testing.T) {
	t.Parallel()
	var other atomic.Bool
	rep := &reports{}
	done := runSupervisor(t, context.Background(), rep, []Service{
		{Name: "auth", Policy: Required, Run: func(context.Context) error { return errors.New("listener closed") }},
		{Name: "api", Policy: Restart, Run: blocker(&other)},
	})
	err := waitDone(t, done)
	if err == nil || !strings.Contains(err.Error(), "required service auth failed: listener closed") {
		t.Fatalf("supervise = %v, want the required failure named", err)
	}
	if !other.Load() {
		t.Fatal("the other service was still running when supervise returned")
	}
	if got := rep.list(); len(got) != 1 {
		t.Fatalf("reports = %q, want exactly one", got)
	}
}

func TestSupervisorBestEffortIsReportedOnceAndNotRestarted(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	var other atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	rep := &reports{}
	done := runSupervisor(t, ctx, rep, []Service{
		{Name: "mdns", Policy: BestEffort, Run: func(context.Context) error {
			runs.Add(1)
			panic("no multicast interface")
		}},
		{Name: "steady", Policy: Required, Run: blocker(&other)},
	})
	waitFor(t, 5*time.Second, "the failure report", func() bool { return len(rep.list()) == 1 })
	time.Sleep(100 * time.Millisecond) // several restart backoffs: a restart would show
	cancel()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("supervise: %v", err)
	}
	if got := rep.list(); len(got) != 1 || got[0] != "mdns: panic: no multicast interface" {
		t.Fatalf("reports = %q", got)
	}
	if runs.Load() != 1 {
		t.Fatalf("best-effort service ran %d times, want 1", runs.Load())
	}
}

func TestSupervisorServiceReturningNilIsAFailure(t *testing.T) {
	t.Parallel()
	rep := &reports{}
	done := runSupervisor(t, context.Background(), rep, []Service{
		{Name: "replicator", Policy: Required, Run: func(context.Context) error { return nil }},
	})
	if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "stopped unexpectedly") {
		t.Fatalf("supervise = %v, want a clear 'stopped unexpectedly'", err)
	}
}
