package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Policy says what the supervisor does when a service stops on its own.
type Policy int

const (
	// Required: the node cannot work without it; its failure stops the
	// node with that error.
	Required Policy = iota
	// Restart: run it again after a backoff (1 s doubling to 30 s).
	Restart
	// BestEffort: report the failure and carry on without it.
	BestEffort
)

// Backoff is the wait before restarting a failed service: First, doubling
// up to Max.
type Backoff struct {
	First, Max time.Duration
}

// defaultBackoff is what a node's supervisor uses.
var defaultBackoff = Backoff{First: time.Second, Max: 30 * time.Second}

// Service is one long-running part of the node.
type Service struct {
	Name   string
	Policy Policy
	// Run blocks until ctx ends (return nil) or the service fails.
	Run func(ctx context.Context) error
}

// supervise runs the services until ctx ends or a Required one fails, and
// waits for all of them. Each failure is reported once, through report and
// the log; services return errors and never log them themselves.
func supervise(ctx context.Context, lg zerolog.Logger, bo Backoff, report func(svc string, err error), svcs []Service) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed error
	)
	for _, s := range svcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			backoff := bo.First
			for {
				err := runSafe(ctx, s)
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					err = fmt.Errorf("stopped unexpectedly")
				}
				lg.Error().Str("service", s.Name).Err(err).Msg("service failed")
				report(s.Name, err)
				switch s.Policy {
				case Required:
					mu.Lock()
					if failed == nil {
						failed = fmt.Errorf("required service %s failed: %w", s.Name, err)
					}
					mu.Unlock()
					cancel()
					return
				case BestEffort:
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, bo.Max)
			}
		}()
	}
	wg.Wait()
	return failed
}

func runSafe(ctx context.Context, s Service) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return s.Run(ctx)
}
