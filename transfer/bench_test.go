package transfer

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"
)

// The benchmarks in this file are experiments run once each
// (scripts/bench.sh runs them with -benchtime=1x): each measures a
// baseline in the same run and reports the ratio, because the machine is
// shared and noisy.

const (
	benchProto = "/meshnode/bench/xfer/1"
	rawProto   = "/meshnode/bench/raw/1"
)

// testHost starts a libp2p host on 127.0.0.1 with one transport ("quic"
// or "tcp") and the product's default security and muxer.
func testHost(tb testing.TB, transport string) host.Host {
	tb.Helper()
	opts := []libp2p.Option{libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{})}
	switch transport {
	case "quic":
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	case "tcp":
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	default:
		tb.Fatalf("unknown transport %q", transport)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

func connect(tb testing.TB, a, b host.Host) {
	tb.Helper()
	if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		tb.Fatal(err)
	}
}

// writeBenchItem writes an item of files files totalling size bytes of
// pseudo-random data under root.
// ageTree sets every file under root a minute back in time, so that no
// scan takes them for racy (written too shortly before it).
func ageTree(tb testing.TB, root string) {
	tb.Helper()
	old := time.Now().Add(-time.Minute)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err // and never through a symlink
		}
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		tb.Fatal(err)
	}
}

func writeBenchItem(tb testing.TB, root string, files int, size int64) {
	tb.Helper()
	rng := rand.NewChaCha8([32]byte{1})
	per := size / int64(files)
	buf := make([]byte, 1<<20)
	for i := 0; i < files; i++ {
		p := filepath.Join(root, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("f%05d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			tb.Fatal(err)
		}
		for left := per; left > 0; {
			n := min(left, int64(len(buf)))
			_, _ = rng.Read(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				tb.Fatal(err)
			}
			left -= n
		}
		if err := f.Close(); err != nil {
			tb.Fatal(err)
		}
	}
}

// serve makes h serve sv on the benchmark protocol, and serve the same
// files raw (every file's bytes in manifest order, then close) on the raw
// protocol.
func serve(h host.Host, sv *Served) {
	srv := NewServer(func(x Hash) (*Served, bool) { return sv, x == sv.Hash }, zerolog.Nop(), Limits{})
	h.SetStreamHandler(benchProto, srv.Handle)
	h.SetStreamHandler(rawProto, func(s network.Stream) {
		defer s.Close()
		for _, f := range sv.Manifest.Files {
			fh, err := os.Open(filepath.Join(sv.Root, f.Path))
			if err != nil {
				s.Reset()
				return
			}
			_, err = io.Copy(s, fh)
			fh.Close()
			if err != nil {
				s.Reset()
				return
			}
		}
	})
}

func servedOf(tb testing.TB, root string) *Served {
	tb.Helper()
	m, _, err := Scan(root, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &Served{Root: root, Manifest: m, Hash: m.Hash(), Encoded: m.Encode()}
}

// rawPull reads the raw protocol's whole stream from p into io.Discard,
// or with dir into one file there, synced and removed after; it returns
// the bytes and the time it took.
func rawPull(tb testing.TB, h host.Host, p peer.ID, dir string) (int64, time.Duration) {
	tb.Helper()
	start := time.Now()
	s, err := h.NewStream(context.Background(), p, rawProto)
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	_ = s.CloseWrite()
	var dst io.Writer = io.Discard
	if dir != "" {
		f, err := os.CreateTemp(dir, "raw-")
		if err != nil {
			tb.Fatal(err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		dst = f
	}
	n, err := io.Copy(dst, s)
	if err != nil {
		tb.Fatal(err)
	}
	if f, ok := dst.(*os.File); ok {
		if err := f.Sync(); err != nil {
			tb.Fatal(err)
		}
	}
	return n, time.Since(start)
}

// benchDownload fetches sv from sources into a fresh staging folder under dir
// and returns the time it took; the staging folder is removed after.
func benchDownload(tb testing.TB, h host.Host, sv *Served, sources []peer.ID, dir string) (time.Duration, *Progress) {
	tb.Helper()
	staging, err := os.MkdirTemp(dir, "dl-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.RemoveAll(staging)
	pr := &Progress{}
	start := time.Now()
	_, err = Download(context.Background(), DownloadConfig{Host: h, Protocol: benchProto, Manifest: sv.Hash, Sources: sources, Staging: staging, Progress: pr, Logger: zerolog.Nop()})
	if err != nil {
		tb.Fatal(err)
	}
	return time.Since(start), pr
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// BenchmarkDownload1GiB: one holder serves a 1 GiB item (64 files of
// 16 MiB) to one downloader over QUIC, then over TCP. Baseline: the same
// bytes read from the same files and sent over one raw libp2p stream of
// the same transport between the same hosts, received into io.Discard;
// it runs before and after the download and the mean is the baseline. The
// download also verifies every chunk, writes it and fsyncs the item, so a
// second baseline writes the raw stream into one file and fsyncs it.
func BenchmarkDownload1GiB(b *testing.B) {
	root := filepath.Join(b.TempDir(), "item")
	writeBenchItem(b, root, 64, 1<<30)
	sv := servedOf(b, root)
	for _, tr := range []string{"quic", "tcp"} {
		b.Run(tr, func(b *testing.B) {
			for range b.N {
				src, dst := testHost(b, tr), testHost(b, tr)
				serve(src, sv)
				connect(b, dst, src)
				disk := b.TempDir()
				n, raw1 := rawPull(b, dst, src.ID(), "")
				_, toDisk := rawPull(b, dst, src.ID(), disk)
				dl, _ := benchDownload(b, dst, sv, []peer.ID{src.ID()}, disk)
				_, raw2 := rawPull(b, dst, src.ID(), "")
				raw := (raw1 + raw2) / 2
				b.ReportMetric(mbps(n, raw), "raw_MB/s")
				b.ReportMetric(mbps(n, toDisk), "rawdisk_MB/s")
				b.ReportMetric(mbps(n, dl), "download_MB/s")
				b.ReportMetric(raw.Seconds()/dl.Seconds(), "ratio")
				b.ReportMetric(toDisk.Seconds()/dl.Seconds(), "ratio_disk")
			}
		})
	}
}

// BenchmarkDownloadHolders: the same 1 GiB item from three holders at
// once against one holder, over QUIC. The holders serve the same files
// on disk, so the figure is about the network and the scheduler.
func BenchmarkDownloadHolders(b *testing.B) {
	root := filepath.Join(b.TempDir(), "item")
	writeBenchItem(b, root, 64, 1<<30)
	sv := servedOf(b, root)
	for range b.N {
		dst := testHost(b, "quic")
		var srcs []peer.ID
		for range 3 {
			h := testHost(b, "quic")
			serve(h, sv)
			connect(b, dst, h)
			srcs = append(srcs, h.ID())
		}
		one, _ := benchDownload(b, dst, sv, srcs[:1], b.TempDir())
		three, pr := benchDownload(b, dst, sv, srcs, b.TempDir())
		b.ReportMetric(mbps(sv.Manifest.Size(), one), "1holder_MB/s")
		b.ReportMetric(mbps(sv.Manifest.Size(), three), "3holders_MB/s")
		b.ReportMetric(one.Seconds()/three.Seconds(), "speedup")
		for i, p := range srcs {
			b.ReportMetric(float64(pr.Sources()[p])/float64(sv.Manifest.Size()), fmt.Sprintf("share%d", i))
		}
	}
}

// BenchmarkScan: the first scan of 1 GiB in 1,000 files (no index; the
// files are in the page cache, just written), against raw BLAKE3 of the
// same bytes read from the same files with os.ReadFile.
func BenchmarkScan(b *testing.B) {
	for _, c := range []struct {
		name  string
		files int
		bytes int64
	}{{"1000x1MiB", 1000, 1 << 30}, {"20000x4KiB", 20000, 20000 << 12}} {
		b.Run(c.name, func(b *testing.B) {
			root := filepath.Join(b.TempDir(), "item")
			writeBenchItem(b, root, c.files, c.bytes)
			for range b.N {
				benchScanOnce(b, root)
			}
		})
	}
}

func benchScanOnce(b *testing.B, root string) {
	start := time.Now()
	var n int64
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n += int64(len(data))
		for off := 0; off < len(data); off += ChunkSize {
			blake3.Sum256(data[off:min(off+ChunkSize, len(data))])
		}
		return nil
	})
	raw := time.Since(start)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start = time.Now()
	m, st, err := Scan(root, nil)
	if err != nil {
		b.Fatal(err)
	}
	scan := time.Since(start)
	runtime.ReadMemStats(&after)
	if m.Size() != n || st.BytesHashed != n {
		b.Fatalf("scan hashed %d of %d bytes, raw %d", st.BytesHashed, m.Size(), n)
	}
	b.ReportMetric(mbps(n, raw), "raw_blake3_MB/s")
	b.ReportMetric(mbps(n, scan), "scan_MB/s")
	b.ReportMetric(scan.Seconds(), "scan_s")
	b.ReportMetric(raw.Seconds()/scan.Seconds(), "ratio")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "alloc_MiB")
}

// BenchmarkRescan100k: a library of 100 items of 1,000 small files each
// (100,000 files), scanned once to build the indexes; then a rescan of the
// unchanged library as the library does it (load each item's index from
// disk, scan, save). Baseline: walking the same tree and stat'ing every
// file, the least any rescan based on stat data can do.
func BenchmarkRescan100k(b *testing.B) {
	share := b.TempDir()
	ixDir := b.TempDir()
	const items, files = 100, 1000
	small := make([]byte, 512)
	for i := range items {
		for j := range files {
			p := filepath.Join(share, fmt.Sprintf("item%03d", i), fmt.Sprintf("d%02d", j%10), fmt.Sprintf("f%04d", j))
			if j < 10 {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					b.Fatal(err)
				}
			}
			small[0], small[1] = byte(i), byte(j)
			if err := os.WriteFile(p, small, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	ageTree(b, share) // not racy (scan.go): a rescan hashes nothing
	rescan := func() (time.Duration, ScanStats) {
		start := time.Now()
		var total ScanStats
		for i := range items {
			id := fmt.Sprintf("item%03d", i)
			ixFile := filepath.Join(ixDir, id+".json")
			ix := LoadIndex(ixFile)
			_, st, err := Scan(filepath.Join(share, id), ix)
			if err != nil {
				b.Fatal(err)
			}
			if err := ix.Save(ixFile); err != nil {
				b.Fatal(err)
			}
			total.Files += st.Files
			total.Hashed += st.Hashed
		}
		return time.Since(start), total
	}
	rescan() // builds the indexes
	for range b.N {
		start := time.Now()
		stat := 0
		_ = filepath.WalkDir(share, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if _, err := d.Info(); err == nil && !d.IsDir() {
				stat++
			}
			return nil
		})
		walk := time.Since(start)
		d, st := rescan()
		if st.Files != items*files || st.Hashed != 0 || stat != items*files {
			b.Fatalf("rescan saw %d files and hashed %d; walk saw %d", st.Files, st.Hashed, stat)
		}
		b.ReportMetric(walk.Seconds()*1e3, "walk_ms")
		b.ReportMetric(d.Seconds()*1e3, "rescan_ms")
		b.ReportMetric(d.Seconds()/walk.Seconds(), "ratio")
	}
}

// uplink models a holder's upload link: chunk-sized writes on all its
// streams share one rate.
type uplink struct {
	mu       sync.Mutex
	next     time.Time
	perChunk time.Duration // 0: unlimited
	sent     atomic.Int64
}

type uplinkStream struct {
	network.Stream
	up *uplink
}

func (s uplinkStream) Write(b []byte) (int, error) {
	if len(b) > 1<<16 {
		s.up.sent.Add(int64(len(b)))
		if s.up.perChunk > 0 {
			s.up.mu.Lock()
			now := time.Now()
			if s.up.next.Before(now) {
				s.up.next = now
			}
			at := s.up.next
			s.up.next = at.Add(s.up.perChunk)
			s.up.mu.Unlock()
			time.Sleep(time.Until(at))
		}
	}
	return s.Stream.Write(b)
}

// fanOut has n nodes download sv from one origin at once and returns the
// time until the last finishes and the bytes the origin sent. With swarm,
// each downloader serves its verified chunks and takes the others as
// sources, as the library does.
func fanOut(b *testing.B, sv *Served, n int, swarm bool, perChunk time.Duration) (time.Duration, int64) {
	origin := testHost(b, "quic")
	up := &uplink{perChunk: perChunk}
	lim := Limits{}
	if !swarm {
		lim.SpreadCopies = -1 // an origin that serves everyone, as before spreading
	}
	srv := NewServer(func(h Hash) (*Served, bool) { return sv, h == sv.Hash }, zerolog.Nop(), lim)
	origin.SetStreamHandler(benchProto, func(s network.Stream) { srv.Handle(uplinkStream{s, up}) })
	hosts := make([]host.Host, n)
	partial := make([]atomic.Pointer[Served], n)
	for i := range hosts {
		hosts[i] = testHost(b, "quic")
		connect(b, hosts[i], origin)
		for j := range i {
			connect(b, hosts[i], hosts[j])
		}
		s := NewServer(func(h Hash) (*Served, bool) {
			p := partial[i].Load()
			return p, p != nil && p.Hash == h
		}, zerolog.Nop(), Limits{})
		hosts[i].SetStreamHandler(benchProto, s.Handle)
	}
	dir := b.TempDir()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, h := range hosts {
		cfg := DownloadConfig{Host: h, Protocol: benchProto, Manifest: sv.Hash, Sources: []peer.ID{origin.ID()},
			Staging: filepath.Join(dir, fmt.Sprint(i)), Logger: zerolog.Nop()}
		if swarm {
			cfg.Serve = func(p *Served) { partial[i].Store(p) }
			cfg.MoreSources = func() []peer.ID {
				out := []peer.ID{origin.ID()}
				for j, o := range hosts {
					if j != i {
						out = append(out, o.ID())
					}
				}
				return out
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Download(context.Background(), cfg)
			errs <- err
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	_ = os.RemoveAll(dir)
	return took, up.sent.Load()
}

// BenchmarkFanOut: one holder, eight nodes downloading a 256 MiB item at
// once, against one node downloading it alone, over QUIC. "cpu": the
// origin's upload is limited only by this machine, which then carries all
// nine nodes' work on two cores. "link": the origin's upload is limited
// to 64 MB/s, as a holder on a LAN link would be; the same fan-out also
// runs without swarming (downloaders take only the origin), for
// comparison. origin_x is the bytes the origin sent over the item size.
func BenchmarkFanOut(b *testing.B) {
	root := filepath.Join(b.TempDir(), "item")
	writeBenchItem(b, root, 16, 256<<20)
	sv := servedOf(b, root)
	size := float64(sv.Manifest.Size())
	for _, mode := range []string{"cpu", "link"} {
		b.Run(mode, func(b *testing.B) {
			var perChunk time.Duration
			if mode == "link" {
				perChunk = time.Duration(float64(time.Second) * ChunkSize / 64e6)
			}
			for range b.N {
				alone, _ := fanOut(b, sv, 1, true, perChunk)
				all, sent := fanOut(b, sv, 8, true, perChunk)
				b.ReportMetric(alone.Seconds(), "alone_s")
				b.ReportMetric(all.Seconds(), "eight_s")
				b.ReportMetric(all.Seconds()/alone.Seconds(), "ratio")
				b.ReportMetric(float64(sent)/size, "origin_x")
				if mode == "link" {
					plain, sent := fanOut(b, sv, 8, false, perChunk)
					b.ReportMetric(plain.Seconds(), "eight_noswarm_s")
					b.ReportMetric(float64(sent)/size, "noswarm_origin_x")
				}
			}
		})
	}
}

// BenchmarkDownloadSmallFiles: 20,000 files of 4 KiB and 2,000 of 256
// KiB over TCP in one process, for profiling the download's per-file
// costs (requests, writes, the final sync). Baseline: the raw stream of
// the same bytes into io.Discard. scripts/xfer-bench.sh measures the
// same trees between two daemons, against tar.
func BenchmarkDownloadSmallFiles(b *testing.B) {
	for _, c := range []struct {
		name  string
		files int
		bytes int64
	}{{"20000x4KiB", 20000, 20000 << 12}, {"2000x256KiB", 2000, 2000 << 18}} {
		b.Run(c.name, func(b *testing.B) {
			root := filepath.Join(b.TempDir(), "item")
			writeBenchItem(b, root, c.files, c.bytes)
			sv := servedOf(b, root)
			for range b.N {
				src, dst := testHost(b, "tcp"), testHost(b, "tcp")
				serve(src, sv)
				connect(b, dst, src)
				n, raw := rawPull(b, dst, src.ID(), "")
				dl, _ := benchDownload(b, dst, sv, []peer.ID{src.ID()}, b.TempDir())
				b.ReportMetric(mbps(n, raw), "raw_MB/s")
				b.ReportMetric(mbps(n, dl), "download_MB/s")
				b.ReportMetric(dl.Seconds(), "download_s")
			}
		})
	}
}
