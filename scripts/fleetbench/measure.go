package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// usage is one process's CPU over a window and its memory at the end.
type usage struct {
	name    string
	cpuPct  float64 // percent of one core
	rssMiB  float64 // VmRSS
	peakMiB float64 // VmHWM
}

// measureIdle reads every daemon's CPU time, lets window pass with no
// request to any of them, and returns each one's CPU share of the window
// and its memory at its end.
func measureIdle(ctx context.Context, ds []*daemon, window time.Duration) ([]usage, error) {
	cpu0 := make([]float64, len(ds))
	for i, d := range ds {
		c, err := benchproc.CPUSeconds(d.pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		cpu0[i] = c
	}
	start := time.Now()
	if err := benchproc.Sleep(ctx, window); err != nil {
		return nil, err
	}
	el := time.Since(start).Seconds()
	out := make([]usage, len(ds))
	for i, d := range ds {
		u, err := memOf(d)
		if err != nil {
			return nil, err
		}
		c, err := benchproc.CPUSeconds(d.pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.name, err)
		}
		u.cpuPct = 100 * (c - cpu0[i]) / el
		out[i] = u
	}
	return out, nil
}

// memOf is a daemon's VmRSS and VmHWM now.
func memOf(d *daemon) (usage, error) {
	rss, err := benchproc.StatusMiB(d.pid, "VmRSS")
	if err != nil {
		return usage{}, fmt.Errorf("%s: %w", d.name, err)
	}
	hwm, err := benchproc.StatusMiB(d.pid, "VmHWM")
	if err != nil {
		return usage{}, fmt.Errorf("%s: %w", d.name, err)
	}
	return usage{name: d.name, rssMiB: rss, peakMiB: hwm}, nil
}

// meshStats sums up the supplementary connections of a set of nodes.
type meshStats struct {
	nodes      int
	maxNow     int         // most slots held by one node now
	maxSeen    int         // most slots any node ever held (its max_slots_seen)
	hist       map[int]int // slots held now -> nodes
	over       []string    // nodes above the cap, with their figures
	badCap     []string    // nodes reporting another cap than configured
	components int         // of the graph of slots among these nodes
	largest    int         // nodes in its largest component
}

// collectMesh reads every node's /v1/mesh and checks the cap.
func collectMesh(ctx context.Context, hc *http.Client, ds []*daemon, limit int) (meshStats, error) {
	views := make([]meshView, len(ds))
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, d := range ds {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			views[i], errs[i] = d.mesh(ctx, hc)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%s: GET /v1/mesh: %w", d.name, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return meshStats{}, err
	}
	return summarizeMesh(ds, views, limit), nil
}

func summarizeMesh(ds []*daemon, views []meshView, limit int) meshStats {
	s := meshStats{nodes: len(ds), hist: map[int]int{}}
	for i, v := range views {
		n := len(v.Slots)
		s.hist[n]++
		s.maxNow = max(s.maxNow, n)
		s.maxSeen = max(s.maxSeen, v.MaxSlotsSeen, n)
		if n > limit || v.MaxSlotsSeen > limit {
			s.over = append(s.over, fmt.Sprintf("%s (slots %d, max_slots_seen %d)", ds[i].name, n, v.MaxSlotsSeen))
		}
		if v.Cap != limit {
			s.badCap = append(s.badCap, fmt.Sprintf("%s (cap %d)", ds[i].name, v.Cap))
		}
	}
	s.components, s.largest = components(ds, views)
	return s
}

// components counts the connected components of the undirected graph of
// slots among ds (links to nodes outside ds are left out) and the size of
// the largest.
func components(ds []*daemon, views []meshView) (int, int) {
	idx := make(map[string]int, len(ds))
	for i, d := range ds {
		idx[d.id] = i
	}
	parent := make([]int, len(ds))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		if parent[i] != i {
			parent[i] = find(parent[i])
		}
		return parent[i]
	}
	for i, v := range views {
		for _, sl := range v.Slots {
			if j, ok := idx[sl.Peer]; ok {
				parent[find(i)] = find(j)
			}
		}
	}
	size := map[int]int{}
	largest := 0
	for i := range ds {
		r := find(i)
		size[r]++
		largest = max(largest, size[r])
	}
	return len(size), largest
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// profileIdle takes a CPU profile of each of ds over the idle window
// (GET /v1/debug/pprof/profile) into <dir>/profiles/<name>.cpu.pprof, in
// the background; the function it returns waits for them and lists the
// files written. Profiling costs the profiled node a little CPU of its
// own, so it is off unless asked for (-profile).
func (b *bench) profileIdle(ctx context.Context, ds []*daemon, window time.Duration) func() ([]string, error) {
	dir := filepath.Join(b.o.dir, "profiles")
	paths := make([]string, len(ds))
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() {
			path := fmt.Sprintf("/v1/debug/pprof/profile?seconds=%d", max(1, int(window.Seconds())))
			prof, err := d.fetch(ctx, b.hc, "GET", path, nil, window+30*time.Second)
			if err == nil {
				err = os.MkdirAll(dir, 0o755)
			}
			if err == nil {
				paths[i] = filepath.Join(dir, d.name+".cpu.pprof")
				err = os.WriteFile(paths[i], prof, 0o644)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s: CPU profile: %w", d.name, err)
			}
		})
	}
	return func() ([]string, error) {
		wg.Wait()
		return slices.DeleteFunc(paths, func(p string) bool { return p == "" }), errors.Join(errs...)
	}
}

// machine is a reading of /proc/stat's cpu line: jiffies busy and in all,
// over every core.
type machine struct{ busy, total float64 }

func readMachine() machine {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machine{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var m machine
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i == 8 || i == 9 {
			continue // guest and guest_nice: already in user and nice
		}
		m.total += x
		if i != 3 && i != 4 {
			m.busy += x // all but idle and iowait
		}
	}
	return m
}

// busySince is the share of the machine's CPU time (all cores) spent busy
// since m, in percent.
func (m machine) busySince() float64 {
	n := readMachine()
	if n.total <= m.total {
		return 0
	}
	return 100 * (n.busy - m.busy) / (n.total - m.total)
}

// cpuOfAll is the CPU seconds the daemons have used since they started.
func cpuOfAll(ds []*daemon) float64 {
	t := 0.0
	for _, d := range ds {
		c, _ := benchproc.CPUSeconds(d.pid)
		t += c
	}
	return t
}
