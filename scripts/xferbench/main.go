// Command xferbench measures meshnode transfers between two real daemons on
// loopback, each figure beside a baseline measured in the same run (issue
// 14). scripts/xfer-bench.sh builds meshnode and runs it:
//
//	scripts/xfer-bench.sh                          # every case, 3 runs
//	scripts/xfer-bench.sh -runs 1 -cases small,big-tcp
//
// Each run of a case starts a holder daemon with the case's tree in its share
// folder and a fresh data dir, waits until the item is published, starts a
// fresh receiver that joins the holder's fleet (bootstrapped to it, one
// transport, 127.0.0.1 only), waits until the receiver sees the item with the
// holder, and times `meshnode get ITEM` (the real CLI) end to end. Then it
// checks the received tree is byte-identical and stops both daemons (SIGTERM,
// then wait). Cases:
//
//	small     20,000 x 4 KiB files (100 folders of 200) over TCP; baseline:
//	          `tar c | tar x` of the same tree on the same disk, then `sync`
//	medium    2,000 x 256 KiB files (20 folders of 100) over TCP; baselines:
//	          the same tar, and the raw streams of big-tcp
//	big-tcp   one 1 GiB file over TCP; baselines: a raw libp2p stream of 1 GiB
//	          between the same two daemons (POST /v1/debug/stream-test) into
//	          nothing, and the same stream written to a file on the
//	          receiver's disk and fsynced ("to_disk"), which is what a
//	          download has to do: each run right before and right after the
//	          get (raw, to disk; get; to disk, raw), the mean of the two
//	          (the run line's raw_disk_extra_s is the longer time a to-disk
//	          call took beyond the daemon's clock: creating and removing
//	          the file)
//	big-quic  the same over QUIC
//	scan      the holder's first scan of the 20,000 files (from its "share
//	          folder scanned" log line, else start to published); baseline:
//	          `find | xargs cat > /dev/null` with a warm cache
//
// Receiver figures: wall time of the get, CPU seconds of the receiver daemon
// over the get (utime+stime from /proc, and each apart) and until it is idle
// again after it (what it does after the download, a rescan say, counts
// there), and its peak RSS (VmHWM; the receiver is fresh each run). The tar
// baseline's CPU is that of its shell with the tars and sync it waited for
// (the rusage wait4 returns); neither side counts the kernel's write-back
// threads. Linux only (/proc).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// tree is a generated share folder holding one item of the same name.
type tree struct {
	name       string
	files      int
	size       int64 // bytes per file
	perDir     int   // files per folder; 0: all at the item's root
	totalBytes int64
}

func (t tree) spec() string {
	return fmt.Sprintf("%s files=%d size=%d perdir=%d seed=1\n", t.name, t.files, t.size, t.perDir)
}

var trees = map[string]tree{
	"small":  {name: "small", files: 20000, size: 4 << 10, perDir: 200},
	"medium": {name: "medium", files: 2000, size: 256 << 10, perDir: 100},
	"big":    {name: "big", files: 1, size: 1 << 30},
}

// benchCase is one thing measured.
type benchCase struct {
	name      string
	tree      string
	transport string // tcp or quic
	scan      bool   // the holder's first scan instead of a get
	tar       bool   // tar baseline
	raw       bool   // raw stream baselines, into nothing and to disk
	what      string
	goals     map[string]string // issue 14's goal for a figure, by key
}

var allCases = []benchCase{
	{name: "small", tree: "small", transport: "tcp", tar: true, what: "20,000 x 4 KiB over TCP",
		goals: map[string]string{"ratio_tar": "<= 3x", "rx_cpu_s": "<= 3 s", "rx_rss_mib": "<= 80 MiB"}},
	{name: "medium", tree: "medium", transport: "tcp", tar: true, raw: true, what: "2,000 x 256 KiB over TCP",
		goals: map[string]string{"get_mbps": ">= 300 MB/s"}},
	{name: "big-tcp", tree: "big", transport: "tcp", raw: true, what: "one 1 GiB file over TCP",
		goals: map[string]string{"ratio_raw": ">= 0.9"}},
	{name: "big-quic", tree: "big", transport: "quic", raw: true, what: "one 1 GiB file over QUIC",
		goals: map[string]string{"ratio_raw": ">= 0.9"}},
	{name: "scan", tree: "small", transport: "tcp", scan: true, what: "first scan of 20,000 x 4 KiB",
		goals: map[string]string{"scan_s": "<= 1.5 s"}},
}

type options struct {
	bin      string
	dir      string
	runs     int
	rawBytes int64
	keep     bool
	timeout  time.Duration
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	var cases string
	flag.StringVar(&o.bin, "bin", "", "meshnode binary (required)")
	flag.StringVar(&o.dir, "dir", "", "work dir on the disk to measure (default: a fresh dir under "+os.TempDir()+", removed after); trees generated there are reused by later invocations")
	flag.IntVar(&o.runs, "runs", 3, "runs of each case")
	flag.StringVar(&cases, "cases", "small,medium,big-tcp,big-quic,scan", "comma-separated cases: small, medium, big-tcp, big-quic, scan")
	flag.Int64Var(&o.rawBytes, "raw-bytes", 1<<30, "bytes of each raw stream baseline")
	flag.BoolVar(&o.keep, "keep", false, "keep the work dir (trees and daemon logs)")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "limit on one get")
	flag.Parse()
	if o.bin == "" || flag.NArg() > 0 || o.runs < 1 {
		fmt.Fprintln(os.Stderr, "usage: xferbench -bin MESHNODE [-dir DIR] [-runs N] [-cases LIST]")
		flag.PrintDefaults()
		return 2
	}
	if runtime.GOOS != "linux" {
		fmt.Fprintln(os.Stderr, "xferbench: Linux only (it reads /proc)")
		return 2
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "xferbench:", err)
		return 2
	}
	o.bin = bin
	var sel []benchCase
	for _, name := range strings.Split(cases, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(allCases, func(c benchCase) bool { return c.name == name })
		if i < 0 {
			fmt.Fprintf(os.Stderr, "xferbench: unknown case %q (small, medium, big-tcp, big-quic, scan)\n", name)
			return 2
		}
		sel = append(sel, allCases[i])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	removeDir := false
	if o.dir == "" {
		d, err := os.MkdirTemp("", "xferbench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "xferbench:", err)
			return 1
		}
		o.dir, removeDir = d, !o.keep
	}
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		fmt.Fprintln(os.Stderr, "xferbench:", err)
		return 1
	}
	failed := false
	defer func() {
		os.RemoveAll(filepath.Join(o.dir, "trash"))
		switch {
		case removeDir && !failed:
			os.RemoveAll(o.dir)
		case removeDir:
			// Keep the logs of a failure; drop the bulky trees.
			os.RemoveAll(filepath.Join(o.dir, "trees"))
			fmt.Fprintf(os.Stderr, "xferbench: logs kept in %s\n", filepath.Join(o.dir, "logs"))
		}
	}()

	printHeader(o)
	b := &bench{o: o, srcHash: map[string]string{}, results: map[string][]figures{}}
	for _, c := range sel {
		if err := b.ensureTree(ctx, trees[c.tree]); err != nil {
			fmt.Fprintln(os.Stderr, "xferbench: generate tree:", err)
			failed = true
			return 1
		}
	}
	// Runs interleave the cases, so a slow patch of a shared machine
	// spreads over all of them.
	for r := 1; r <= o.runs; r++ {
		for _, c := range sel {
			if ctx.Err() != nil {
				break
			}
			f, err := b.runCase(ctx, c, r)
			if err != nil && ctx.Err() != nil {
				fmt.Printf("%s run %d/%d: interrupted\n", c.name, r, o.runs)
				failed = true
				break
			}
			if err != nil {
				fmt.Printf("%s run %d/%d: FAILED: %v\n", c.name, r, o.runs, err)
				failed = true
				continue
			}
			b.results[c.name] = append(b.results[c.name], f)
			fmt.Printf("%s run %d/%d: %s\n", c.name, r, o.runs, runLine(c, f))
		}
	}
	fmt.Println()
	for _, c := range sel {
		printSummary(c, b.results[c.name], o.runs)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "xferbench: interrupted")
		failed = true
		return 130
	}
	if failed {
		return 1
	}
	return 0
}

// printHeader: when, where and what was measured.
func printHeader(o options) {
	uname := strings.TrimSpace(benchproc.Output("uname", "-srm"))
	gover := strings.TrimSpace(benchproc.Output("go", "version"))
	if gover == "" {
		gover = runtime.Version()
	}
	commit := strings.TrimSpace(benchproc.Output("git", "rev-parse", "--short", "HEAD"))
	if commit == "" {
		commit = "unknown"
	} else if strings.TrimSpace(benchproc.Output("git", "status", "--porcelain", "--untracked-files=no")) != "" {
		commit += " (with uncommitted changes)"
	}
	fmt.Printf("# meshnode two-process transfer benchmark, %s\n", time.Now().UTC().Format("2006-01-02T15:04Z"))
	fmt.Printf("# %s, %d cores, %s, commit %s\n", uname, runtime.NumCPU(), gover, commit)
	fmt.Printf("# work dir %s, %d run(s) per case, raw stream %d bytes\n\n", o.dir, o.runs, o.rawBytes)
}

type bench struct {
	o       options
	srcHash map[string]string
	results map[string][]figures
}

// figures are one run's measurements, by name.
type figures map[string]float64

func (b *bench) treeShare(t tree) string { return filepath.Join(b.o.dir, "trees", t.name) }

// trash holds the runs' received trees and tar copies until the end.
func (b *bench) trash() string { return filepath.Join(b.o.dir, "trash") }

// ensureTree writes a tree of pseudo-random files (distinct, so that no
// deduplication flatters a figure) unless an identical one is already
// there, then syncs so that its write-back does not land in a run.
func (b *bench) ensureTree(ctx context.Context, t tree) error {
	share := b.treeShare(t)
	marker := share + ".ok"
	if got, err := os.ReadFile(marker); err == nil && string(got) == t.spec() {
		return nil
	}
	start := time.Now()
	fmt.Fprintf(os.Stderr, "xferbench: writing tree %s (%d x %d bytes)...\n", t.name, t.files, t.size)
	os.Remove(marker)
	if err := os.RemoveAll(share); err != nil {
		return err
	}
	root := filepath.Join(share, t.name)
	rng := rand.NewChaCha8([32]byte{'x', 'f', 'e', 'r', byte(len(t.name)), t.name[0]})
	buf := make([]byte, min(t.size, 4<<20))
	for i := range t.files {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		dir := root
		if t.perDir > 0 {
			dir = filepath.Join(root, fmt.Sprintf("d%03d", i/t.perDir))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d.bin", i)))
		if err != nil {
			return err
		}
		for left := t.size; left > 0; {
			k := min(left, int64(len(buf)))
			_, _ = rng.Read(buf[:k])
			if _, err := f.Write(buf[:k]); err != nil {
				f.Close()
				return err
			}
			left -= k
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	fmt.Fprintf(os.Stderr, "xferbench: tree %s written in %.1f s\n", t.name, time.Since(start).Seconds())
	return os.WriteFile(marker, []byte(t.spec()), 0o644)
}

// runCase runs one case once, with fresh daemons, and stops them whatever
// happens.
func (b *bench) runCase(ctx context.Context, c benchCase, r int) (figures, error) {
	t := trees[c.tree]
	runDir := filepath.Join(b.o.dir, "run")
	logDir := filepath.Join(b.o.dir, "logs")
	if err := os.RemoveAll(runDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		// Many files deleted here would slow every file created on the
		// same ext4 file system for minutes after (without a journal,
		// ext4 skips recently deleted inodes one by one when it allocates
		// one: tar x of the small tree went from 0.5 s to 6-10 s of system
		// time). So a run's trees are set aside and deleted at the end.
		if t.files > 1 {
			if err := os.MkdirAll(b.trash(), 0o755); err == nil && os.Rename(runDir, filepath.Join(b.trash(), fmt.Sprintf("%s-%d", c.name, r))) == nil {
				return
			}
		}
		os.RemoveAll(runDir)
		// The deletion's write-back must not land in the next run.
		_ = exec.Command("sync").Run()
	}()
	listen := "/ip4/127.0.0.1/tcp/0"
	if c.transport == "quic" {
		listen = "/ip4/127.0.0.1/udp/0/quic-v1"
	}
	share := b.treeShare(t)
	f := figures{}
	logBase := filepath.Join(logDir, fmt.Sprintf("%s-%d", c.name, r))

	if c.scan {
		// Warm the cache (as the holder will find it: the tree was just
		// written or read), then time the baseline.
		walk := fmt.Sprintf("find %s -type f -print0 | xargs -0 cat > /dev/null", shellQuote(share))
		if _, err := timeShell(ctx, walk); err != nil {
			return nil, err
		}
		d, err := timeShell(ctx, walk)
		if err != nil {
			return nil, err
		}
		f["cat_s"] = d.Seconds()
	}

	holder, err := startDaemon(ctx, b.o.bin, "holder", filepath.Join(runDir, "holder"), share, listen, "", "", logBase+"-holder.log")
	if err != nil {
		return nil, err
	}
	defer holder.stop()
	if err := holder.waitAPI(ctx); err != nil {
		return nil, err
	}
	published, err := holder.waitItem(ctx, t.name, holder.id, 10*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	if c.scan {
		// The log line may come a moment after the item is published.
		line := holder.waitScanLine(ctx, 2*time.Second)
		if line != nil {
			f["scan_s"] = line.tookMs / 1000
			f["scan_cpu_s"] = line.cpu
			f["scan_from_log"] = 1
		} else {
			f["scan_s"] = published.Sub(holder.started).Seconds()
			f["scan_cpu_s"] = holder.publishedCPU
		}
		if v, err := benchproc.StatusMiB(holder.pid, "VmHWM"); err == nil {
			f["holder_rss_mib"] = v
		}
		f["ratio_scan"] = f["scan_s"] / f["cat_s"]
		return f, nil
	}

	if c.tar {
		tarDir := filepath.Join(runDir, "tar")
		if err := os.MkdirAll(tarDir, 0o755); err != nil {
			return nil, err
		}
		d, ps, err := runShell(ctx, fmt.Sprintf("set -o pipefail; tar c -C %s %s | tar x -C %s && sync", shellQuote(share), shellQuote(t.name), shellQuote(tarDir)))
		if err != nil {
			return nil, fmt.Errorf("tar baseline: %w", err)
		}
		f["tar_s"] = d.Seconds()
		// The shell's rusage from wait4 holds the tars and sync it
		// waited for (Linux: the child's and its reaped children's).
		f["tar_cpu_user_s"] = ps.UserTime().Seconds()
		f["tar_cpu_sys_s"] = ps.SystemTime().Seconds()
		f["tar_cpu_s"] = f["tar_cpu_user_s"] + f["tar_cpu_sys_s"]
		if f["tar_cpu_s"] == 0 {
			fmt.Fprintf(os.Stderr, "xferbench: %s run %d: the tar baseline's rusage shows no CPU (children not counted?)\n", c.name, r)
		}
		// The copy stays until the end (see above): deleting it would slow
		// the get's file creation.
	}

	token, err := os.ReadFile(filepath.Join(holder.dir, "fleet.token"))
	if err != nil {
		return nil, fmt.Errorf("holder's join token: %w", err)
	}
	boot := ""
	for _, a := range holder.addrs {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/") {
			boot = a
			break
		}
	}
	if boot == "" {
		return nil, fmt.Errorf("holder has no 127.0.0.1 address: %v", holder.addrs)
	}
	rdir := filepath.Join(runDir, "receiver")
	recv, err := startDaemon(ctx, b.o.bin, "receiver", rdir, filepath.Join(rdir, "share"), listen, strings.TrimSpace(string(token)), boot, logBase+"-receiver.log")
	if err != nil {
		return nil, err
	}
	defer recv.stop()
	if err := recv.waitAPI(ctx); err != nil {
		return nil, err
	}
	if _, err := recv.waitItem(ctx, t.name, holder.id, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	transport, err := recv.waitAuthenticated(ctx, holder.id, time.Minute)
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	if want := map[string]string{"tcp": "tcp", "quic": "quic-v1"}[c.transport]; transport != want {
		return nil, fmt.Errorf("receiver reaches the holder over %s, not %s", transport, want)
	}

	// Raw streams before the get: into nothing, then to disk; after it
	// the other way round, so that each mean is as near the get.
	var raws, disks, diskExtra []float64
	rawStream := func(when string, toDisk bool) error {
		what := "raw stream"
		if toDisk {
			what = "raw stream to disk"
		}
		start := time.Now()
		res, err := recv.streamTest(ctx, holder.id, b.o.rawBytes, toDisk)
		if err != nil {
			return fmt.Errorf("%s %s the get: %w", what, when, err)
		}
		if res.Transport != c.transport {
			return fmt.Errorf("%s went over %s, not %s", what, res.Transport, c.transport)
		}
		if res.ToDisk != toDisk {
			return fmt.Errorf("%s: the receiver answered to_disk=%v", what, res.ToDisk)
		}
		if toDisk {
			disks = append(disks, res.MBPerSec)
			// Creating and removing the file, outside the daemon's clock.
			diskExtra = append(diskExtra, time.Since(start).Seconds()-res.Seconds)
		} else {
			raws = append(raws, res.MBPerSec)
		}
		return nil
	}
	if c.raw {
		if err := rawStream("before", false); err != nil {
			return nil, err
		}
		if err := rawStream("before", true); err != nil {
			return nil, err
		}
	}

	cpu0, err := cpuTimes(recv.pid)
	if err != nil {
		return nil, err
	}
	tx0, err := cpuTimes(holder.pid)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	gctx, cancel := context.WithTimeout(ctx, b.o.timeout)
	get := exec.CommandContext(gctx, b.o.bin, "get", t.name, "--data", rdir)
	get.Env = benchproc.CleanEnv()
	out, err := get.CombinedOutput()
	cancel()
	wall := time.Since(start)
	cpu1, cerr := cpuTimes(recv.pid)
	if tx1, err := cpuTimes(holder.pid); err == nil {
		f["tx_cpu_s"] = tx1.total() - tx0.total()
	}
	_ = os.WriteFile(logBase+"-get.log", out, 0o644)
	if err != nil {
		return nil, fmt.Errorf("meshnode get: %v: %s", err, benchproc.Tail(out, 600))
	}
	if cerr != nil {
		return nil, cerr
	}
	f["get_s"] = wall.Seconds()
	f["get_mbps"] = float64(t.files) * float64(t.size) / 1e6 / wall.Seconds()
	f["rx_cpu_s"] = cpu1.total() - cpu0.total()
	f["rx_cpu_user_s"] = cpu1.user - cpu0.user
	f["rx_cpu_sys_s"] = cpu1.sys - cpu0.sys
	if el, ok := recv.transferElapsed(ctx, t.name); ok {
		f["xfer_s"] = el
	}
	cpu2, err := waitIdle(ctx, recv.pid, 60*time.Second)
	if err != nil {
		return nil, err
	}
	f["rx_cpu_idle_s"] = cpu2 - cpu0.total()
	if v, err := benchproc.StatusMiB(recv.pid, "VmHWM"); err == nil {
		f["rx_rss_mib"] = v
	}

	if c.raw {
		if err := rawStream("after", true); err != nil {
			return nil, err
		}
		if err := rawStream("after", false); err != nil {
			return nil, err
		}
		f["raw_mbps"] = (raws[0] + raws[1]) / 2
		f["raw_before_mbps"], f["raw_after_mbps"] = raws[0], raws[1]
		f["ratio_raw"] = f["get_mbps"] / f["raw_mbps"]
		f["raw_disk_mbps"] = (disks[0] + disks[1]) / 2
		f["raw_disk_before_mbps"], f["raw_disk_after_mbps"] = disks[0], disks[1]
		f["ratio_raw_disk"] = f["get_mbps"] / f["raw_disk_mbps"]
		f["raw_disk_extra_s"] = max(diskExtra[0], diskExtra[1])
	}
	if c.tar {
		f["ratio_tar"] = f["get_s"] / f["tar_s"]
	}

	// The received tree must be the holder's, byte for byte.
	want, ok := b.srcHash[t.name]
	if !ok {
		if want, err = hashTree(ctx, filepath.Join(share, t.name)); err != nil {
			return nil, fmt.Errorf("hash the holder's tree: %w", err)
		}
		b.srcHash[t.name] = want
	}
	got, err := hashTree(ctx, filepath.Join(rdir, "share", t.name))
	if err != nil {
		return nil, fmt.Errorf("hash the received tree: %w", err)
	}
	if got != want {
		diff, _ := exec.CommandContext(ctx, "diff", "-rq", filepath.Join(share, t.name), filepath.Join(rdir, "share", t.name)).CombinedOutput()
		return nil, fmt.Errorf("the received tree differs from the holder's (hash %.16s, want %.16s): %s", got, want, benchproc.Tail(diff, 600))
	}
	return f, nil
}

// daemon is one `meshnode run` process.
type daemon struct {
	name, dir string
	cmd       *exec.Cmd
	pid       int
	started   time.Time
	log       *os.File
	exited    chan struct{}
	exitErr   error

	api, token string
	id         string
	addrs      []string
	http       *http.Client

	mu           sync.Mutex
	scanLine     *scanLine
	publishedCPU float64
}

// scanLine is the library's "share folder scanned" log line and the
// daemon's CPU seconds when it was read.
type scanLine struct {
	tookMs float64
	items  float64
	files  float64
	bytes  float64
	cpu    float64
}

// startDaemon starts `meshnode run` on a fresh data dir; its stdout and
// stderr go to logPath, and its log lines are watched for the scan line.
func startDaemon(ctx context.Context, bin, name, dir, share, listen, join, boot, logPath string) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(share, 0o755); err != nil {
		return nil, err
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"run", "--data", dir, "--share", share, "--listen", listen, "--api", "127.0.0.1:0", "--mdns=false", "--name", name}
	if join != "" {
		args = append(args, "--join", join, "--bootstrap", boot)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = benchproc.CleanEnv()
	cmd.Stdout = lf
	cmd.SysProcAttr = benchproc.DaemonAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	d := &daemon{name: name, dir: dir, cmd: cmd, log: lf, exited: make(chan struct{}), http: &http.Client{}}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d.pid, d.started = cmd.Process.Pid, time.Now()
	go func() {
		d.readLog(stderr)
		d.exitErr = cmd.Wait()
		lf.Close()
		close(d.exited)
	}()
	return d, nil
}

// readLog copies the daemon's stderr to its log file and notes the scan
// line (zerolog JSON, one event a line).
func (d *daemon) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = d.log.Write(append(line, '\n'))
		if !bytes.Contains(line, []byte("share folder scanned")) {
			continue
		}
		var ev map[string]any
		if json.Unmarshal(line, &ev) != nil || ev["message"] != "share folder scanned" {
			continue
		}
		cpu, _ := benchproc.CPUSeconds(d.pid)
		num := func(k string) float64 { v, _ := ev[k].(float64); return v }
		d.mu.Lock()
		if d.scanLine == nil {
			d.scanLine = &scanLine{tookMs: num("took_ms"), items: num("items"), files: num("files"), bytes: num("hashed_bytes"), cpu: cpu}
		}
		d.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// stop ends the daemon: SIGTERM, then SIGKILL if it has not exited in 15 s.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.exitErr != nil {
			fmt.Fprintf(os.Stderr, "xferbench: %s exited after SIGTERM with %v (log: %s)\n", d.name, d.exitErr, d.log.Name())
		}
	case <-time.After(15 * time.Second):
		fmt.Fprintf(os.Stderr, "xferbench: %s did not stop within 15 s of SIGTERM; killing it (log: %s)\n", d.name, d.log.Name())
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *daemon) dead() error {
	select {
	case <-d.exited:
		return fmt.Errorf("%s exited (%v); its log %s ends: %s", d.name, d.exitErr, d.log.Name(), benchproc.TailFile(d.log.Name(), 800))
	default:
		return nil
	}
}

// waitAPI waits for the daemon's API (api.addr and api.token in its data
// dir, as the CLI finds them) and reads its ID and addresses.
func (d *daemon) waitAPI(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := d.dead(); err != nil {
			return err
		}
		a, aerr := os.ReadFile(filepath.Join(d.dir, "api.addr"))
		t, terr := os.ReadFile(filepath.Join(d.dir, "api.token"))
		if aerr == nil && terr == nil {
			d.api, d.token = strings.TrimSpace(string(a)), strings.TrimSpace(string(t))
			var st struct {
				ID    string   `json:"id"`
				Addrs []string `json:"addrs"`
			}
			if err := d.call(ctx, "GET", "/v1/status", nil, &st, 5*time.Second); err == nil && st.ID != "" {
				d.id, d.addrs = st.ID, st.Addrs
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no API after 60 s (log: %s)", d.name, d.log.Name())
		}
		if err := benchproc.Sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// call makes one API request; a non-2xx answer is an error with the
// daemon's message.
func (d *daemon) call(ctx context.Context, method, path string, body, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+d.api+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := d.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// waitItem waits until the daemon's library shows item held complete by
// holder, and returns when it first saw it.
func (d *daemon) waitItem(ctx context.Context, item, holder string, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		if err := d.dead(); err != nil {
			return time.Time{}, err
		}
		var lib []struct {
			ID       string `json:"id"`
			Versions []struct {
				Holders []string `json:"holders"`
			} `json:"versions"`
		}
		if err := d.call(ctx, "GET", "/v1/library", nil, &lib, 10*time.Second); err == nil {
			for _, it := range lib {
				if it.ID != item {
					continue
				}
				for _, v := range it.Versions {
					if slices.Contains(v.Holders, holder) {
						now := time.Now()
						cpu, _ := benchproc.CPUSeconds(d.pid)
						d.mu.Lock()
						d.publishedCPU = cpu
						d.mu.Unlock()
						return now, nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("item %s not held by %s after %v (log: %s)", item, holder, limit, d.log.Name())
		}
		if err := benchproc.Sleep(ctx, 20*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}

// waitScanLine waits up to limit for the scan log line.
func (d *daemon) waitScanLine(ctx context.Context, limit time.Duration) *scanLine {
	deadline := time.Now().Add(limit)
	for {
		d.mu.Lock()
		l := d.scanLine
		d.mu.Unlock()
		if l != nil || time.Now().After(deadline) || benchproc.Sleep(ctx, 20*time.Millisecond) != nil {
			return l
		}
	}
}

// waitAuthenticated waits for an authenticated connection to p and
// returns its transport as GET /v1/peers names it.
func (d *daemon) waitAuthenticated(ctx context.Context, p string, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		var peers []struct {
			ID            string `json:"id"`
			Transport     string `json:"transport"`
			Authenticated bool   `json:"authenticated"`
		}
		if err := d.call(ctx, "GET", "/v1/peers", nil, &peers, 10*time.Second); err == nil {
			var ts []string
			auth := false
			for _, pi := range peers {
				if pi.ID == p {
					ts = append(ts, pi.Transport)
					auth = auth || pi.Authenticated
				}
			}
			if auth {
				slices.Sort(ts)
				return strings.Join(slices.Compact(ts), "+"), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no authenticated connection to %s after %v", p, limit)
		}
		if err := benchproc.Sleep(ctx, 20*time.Millisecond); err != nil {
			return "", err
		}
	}
}

type streamResult struct {
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBPerSec  float64 `json:"mb_per_s"`
	Transport string  `json:"transport"`
	ToDisk    bool    `json:"to_disk"`
}

// streamTest pulls n raw bytes from peer p through the daemon, into
// nothing or (toDisk) into a file on its disk, fsynced.
func (d *daemon) streamTest(ctx context.Context, p string, n int64, toDisk bool) (streamResult, error) {
	var res streamResult
	body := map[string]any{"peer": p, "bytes": n}
	if toDisk {
		body["to_disk"] = true
	}
	err := d.call(ctx, "POST", "/v1/debug/stream-test", body, &res, 10*time.Minute)
	if err == nil && res.Bytes != n {
		err = fmt.Errorf("stream test moved %d bytes, not %d", res.Bytes, n)
	}
	return res, err
}

// transferElapsed is the daemon's own time for the item's finished
// download, without the CLI's polling.
func (d *daemon) transferElapsed(ctx context.Context, item string) (float64, bool) {
	var ts []struct {
		Item    string  `json:"item"`
		State   string  `json:"state"`
		Elapsed float64 `json:"elapsed_s"`
	}
	if d.call(ctx, "GET", "/v1/transfers", nil, &ts, 10*time.Second) != nil {
		return 0, false
	}
	for _, t := range ts {
		if t.Item == item && t.State == "done" && t.Elapsed > 0 {
			return t.Elapsed, true
		}
	}
	return 0, false
}

// cpuTime is a process's CPU seconds in user and in system mode.
type cpuTime struct{ user, sys float64 }

func (c cpuTime) total() float64 { return c.user + c.sys }

// cpuTimes is a process's utime and stime.
func cpuTimes(pid int) (cpuTime, error) {
	u, sys, err := benchproc.CPU(pid)
	return cpuTime{user: u, sys: sys}, err
}

// waitIdle waits until the process uses under a tenth of a core over half a
// second (or limit passes) and returns its CPU seconds then.
func waitIdle(ctx context.Context, pid int, limit time.Duration) (float64, error) {
	deadline := time.Now().Add(limit)
	prev, err := benchproc.CPUSeconds(pid)
	if err != nil {
		return 0, err
	}
	for {
		if err := benchproc.Sleep(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
		cur, err := benchproc.CPUSeconds(pid)
		if err != nil {
			return 0, err
		}
		if cur-prev < 0.05 || time.Now().After(deadline) {
			return cur, nil
		}
		prev = cur
	}
}

// hashTree hashes every regular file's path, permissions and bytes, in
// lexical order.
func hashTree(ctx context.Context, root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if de.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		info, err := de.Info()
		if err != nil {
			return err
		}
		if !de.Type().IsRegular() {
			fmt.Fprintf(h, "%s %v\n", rel, de.Type())
			return nil
		}
		fmt.Fprintf(h, "%s %o %d\n", rel, info.Mode().Perm(), info.Size())
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func timeShell(ctx context.Context, script string) (time.Duration, error) {
	d, _, err := runShell(ctx, script)
	return d, err
}

// runShell runs a bash script and returns its wall time and its process
// state (whose rusage includes the children it waited for).
func runShell(ctx context.Context, script string) (time.Duration, *os.ProcessState, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %v: %s", script, err, benchproc.Tail(out, 400))
	}
	return d, cmd.ProcessState, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// figure is one row of a case's summary.
type figure struct {
	key, label, unit string
	prec             int
}

func figuresOf(c benchCase) []figure {
	if c.scan {
		return []figure{
			{"scan_s", "holder's first scan", "s", 2},
			{"scan_cpu_s", "holder CPU from its start to the end of the scan", "s", 2},
			{"holder_rss_mib", "holder peak RSS", "MiB", 0},
			{"cat_s", "baseline: find | xargs cat (warm cache)", "s", 2},
			{"ratio_scan", "scan / baseline", "x", 1},
		}
	}
	fs := []figure{
		{"get_s", "`meshnode get`, wall", "s", 2},
		{"get_mbps", "`meshnode get`, rate", "MB/s", 0},
		{"xfer_s", "transfer time the daemon reports", "s", 2},
		{"rx_cpu_s", "receiver CPU over the get", "s", 2},
		{"rx_cpu_user_s", "receiver CPU over the get, user", "s", 2},
		{"rx_cpu_sys_s", "receiver CPU over the get, system", "s", 2},
		{"rx_cpu_idle_s", "receiver CPU until idle after it", "s", 2},
		{"rx_rss_mib", "receiver peak RSS", "MiB", 0},
		{"tx_cpu_s", "holder CPU over the get", "s", 2},
	}
	if c.tar {
		fs = append(fs,
			figure{"tar_s", "baseline: tar c | tar x; sync", "s", 2},
			figure{"tar_cpu_s", "baseline: tar c | tar x; sync, CPU", "s", 2},
			figure{"tar_cpu_user_s", "baseline: tar c | tar x; sync, CPU user", "s", 2},
			figure{"tar_cpu_sys_s", "baseline: tar c | tar x; sync, CPU system", "s", 2})
	}
	if c.raw {
		fs = append(fs,
			figure{"raw_mbps", "baseline: raw libp2p stream (mean of before and after)", "MB/s", 0},
			figure{"raw_disk_mbps", "baseline: raw libp2p stream to a file on disk, fsynced (mean of before and after)", "MB/s", 0})
	}
	if c.tar {
		fs = append(fs, figure{"ratio_tar", "get time / tar time", "x", 1})
	}
	if c.raw {
		fs = append(fs,
			figure{"ratio_raw", "get rate / raw stream rate", "x", 2},
			figure{"ratio_raw_disk", "get rate / raw-to-disk rate", "x", 2})
	}
	return fs
}

func fmtVal(v float64, f figure) string {
	s := strconv.FormatFloat(v, 'f', f.prec, 64)
	if f.unit == "x" {
		return s + "x"
	}
	return s + " " + f.unit
}

func runLine(c benchCase, f figures) string {
	var parts []string
	for _, fig := range figuresOf(c) {
		if v, ok := f[fig.key]; ok {
			parts = append(parts, fig.key+"="+strconv.FormatFloat(v, 'f', max(fig.prec, 2), 64))
		}
	}
	if c.raw {
		parts = append(parts, fmt.Sprintf("raw_before=%.0f raw_after=%.0f raw_disk_before=%.0f raw_disk_after=%.0f raw_disk_extra_s=%.2f",
			f["raw_before_mbps"], f["raw_after_mbps"], f["raw_disk_before_mbps"], f["raw_disk_after_mbps"], f["raw_disk_extra_s"]))
	}
	if c.scan && f["scan_from_log"] == 0 {
		parts = append(parts, "(scan: start to published; no \"share folder scanned\" log line)")
	}
	return strings.Join(parts, " ")
}

func printSummary(c benchCase, runs []figures, want int) {
	fmt.Printf("### %s: %s (%d of %d runs)\n\n", c.name, c.what, len(runs), want)
	if len(runs) == 0 {
		fmt.Printf("no successful run\n\n")
		return
	}
	fmt.Println("| figure | median | range |")
	fmt.Println("|---|---|---|")
	for _, fig := range figuresOf(c) {
		var vs []float64
		for _, f := range runs {
			if v, ok := f[fig.key]; ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			continue
		}
		slices.Sort(vs)
		med := vs[len(vs)/2]
		if len(vs)%2 == 0 {
			med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
		}
		rng := fmtVal(vs[0], fig)
		if len(vs) > 1 {
			rng += " - " + fmtVal(vs[len(vs)-1], fig)
		}
		label := strings.ReplaceAll(fig.label, "|", `\|`)
		if g, ok := c.goals[fig.key]; ok {
			label += " (goal " + g + ")"
		}
		fmt.Printf("| %s | %s | %s |\n", label, fmtVal(med, fig), rng)
	}
	if c.scan {
		fromLog := 0
		for _, f := range runs {
			if f["scan_from_log"] == 1 {
				fromLog++
			}
		}
		if fromLog < len(runs) {
			fmt.Printf("\n%d of %d runs had no \"share folder scanned\" log line: their scan time is from the holder's start to its item being published.\n", len(runs)-fromLog, len(runs))
		}
	}
	fmt.Println()
}
