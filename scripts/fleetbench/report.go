package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// printHeader: when, where, what and with which settings.
func printHeader(o options) {
	commit := strings.TrimSpace(benchproc.Output("git", "rev-parse", "--short", "HEAD"))
	if commit == "" {
		commit = "unknown"
	} else if strings.TrimSpace(benchproc.Output("git", "status", "--porcelain", "--untracked-files=no")) != "" {
		commit += " (with uncommitted changes)"
	}
	gover := strings.TrimSpace(benchproc.Output("go", "version"))
	if gover == "" {
		gover = runtime.Version()
	}
	fmt.Printf("# meshnode fleet benchmark (issue 15), %s\n", time.Now().UTC().Format("2006-01-02T15:04Z"))
	fmt.Printf("# %s, %d cores, %s, commit %s, load average %s\n", strings.TrimSpace(benchproc.Output("uname", "-srm")), runtime.NumCPU(), gover, commit, loadAvg())
	fmt.Printf("# fleet of %d processes; then SIGKILL to the rendezvous and %d others; baseline: a lone node and a fleet of %d\n", o.n, o.kill, o.baseN)
	fmt.Printf("# %d rounds per phase, bound %v, each node read on its doc.changed events and at least every %v, %d requests in flight at most, batches of %d, settle %v, idle window %v, seed %d\n",
		o.rounds, o.bound, o.poll, o.par, o.batch, o.settle, o.idle, o.seed)
	fmt.Printf("# every node: meshnode run --mdns=false --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 %s\n", strings.Join(o.node.args(), " "))
	fmt.Printf("#   joiners also: --join <rendezvous token> --bootstrap <rendezvous 127.0.0.1 TCP address>\n")
	fmt.Printf("# binary %s, work dir %s\n\n", o.bin, o.dir)
}

// printReport prints the summary table, each phase's rounds and the
// RESULT line.
func printReport(o options, res *results, fails []string) {
	fmt.Printf("## Summary (load average now %s)\n\n", loadAvg())
	fmt.Println("| figure | fleet | baseline | ratio |")
	fmt.Println("|---|---|---|---|")
	for _, row := range summaryRows(o, res) {
		fmt.Printf("| %s | %s | %s | %s |\n", row[0], row[1], row[2], row[3])
	}
	fmt.Println()
	for _, fr := range []fleetResult{res.base, res.fleet} {
		for _, p := range fr.phases {
			printPhase(p)
		}
	}
	if len(res.fleet.killed) > 0 {
		fmt.Printf("killed (SIGKILL), the rendezvous first: %s\n\n", strings.Join(res.fleet.killed, ", "))
	}
	printMesh(res.fleet)
	for _, p := range res.fleet.profiles {
		fmt.Printf("CPU profile of the idle window: %s (go tool pprof -top %s)\n\n", p, p)
	}
	if len(fails) > 0 {
		fmt.Println("## FAILED")
		fmt.Println()
		for _, f := range fails {
			fmt.Println("- " + f)
		}
		fmt.Println()
	}
	fmt.Println(resultLine(o, res, fails))
}

// summaryRows: figure, fleet, baseline, ratio. Rows whose figures were
// not measured (a run cut short) are left out.
func summaryRows(o options, res *results) [][4]string {
	f, base := res.fleet, res.base
	var rows [][4]string
	add := func(cond bool, r [4]string) {
		if cond {
			rows = append(rows, r)
		}
	}
	add(f.n > 0, [4]string{"processes", procLine(o, f), fmt.Sprintf("lone node; fleet of %d", base.n), ""})
	add(f.formed > 0, [4]string{"fleet formed: first start to every node listing all alive", secs(f.formed), secs(base.formed) + fmt.Sprintf(" (%d)", base.n), ""})
	add(f.formed > 0, [4]string{"CPU of all nodes from their start until formed; machine busy meanwhile (all cores)",
		fmt.Sprintf("%.1f s; %.0f%%", f.formCPU, f.formBusy), fmt.Sprintf("%.1f s; %.0f%% (%d)", base.formCPU, base.formBusy, base.n), ""})
	add(len(f.idle) > 0, rssRow("RSS per node after forming, min / median / max", f.idle, res.lone, base.idle))
	add(len(f.idle) > 0, [4]string{"RSS, all nodes together", fmt.Sprintf("%.0f MiB", sum(f.idle, rssOf)), "", ""})
	add(len(f.idle) > 0, cpuRow(o, "CPU per node, idle, median / max (% of a core)", f.idle, res.lone, base.idle))
	add(len(f.idle) > 0, [4]string{"CPU, all nodes together, idle", pct(sum(f.idle, cpuOf)) + " of a core", pct(sum(base.idle, cpuOf)) + fmt.Sprintf(" (%d)", base.n), ""})
	add(len(f.idle) > 0, [4]string{fmt.Sprintf("machine busy over the idle window, all %d cores (anything else running shows here)", runtime.NumCPU()),
		fmt.Sprintf("%.1f%%", f.idleBusy), fmt.Sprintf("%.1f%%", base.idleBusy), ""})
	bp := phaseOf(base, "base")
	for _, name := range []string{"alive", "killed", "settled"} {
		if p := phaseOf(f, name); p != nil {
			rows = append(rows, convRow(p, bp), arrivalRow(p, bp))
		}
	}
	add(f.goneSeen > 0, [4]string{fmt.Sprintf("kill to every survivor listing the %d killed as not alive", len(f.killed)), secs(f.goneSeen), "--stale-after " + o.node.staleAfter.String(), ""})
	add(f.meshFormed != nil, meshRow(o, f))
	add(len(f.end) > 0, [4]string{"RSS per survivor at the end, min / median / max; peak (VmHWM) max",
		mibTriple(f.end, rssOf) + fmt.Sprintf("; %.0f MiB (%s)", maxOf(f.end, peakOf), argMax(f.end, peakOf)), "", ""})
	return rows
}

func procLine(o options, f fleetResult) string {
	if len(f.killed) == 0 {
		return fmt.Sprint(f.n)
	}
	return fmt.Sprintf("%d; %d after SIGKILL to the rendezvous and %d more", f.n, f.n-len(f.killed), len(f.killed)-1)
}

func rssRow(label string, us []usage, lone usage, base []usage) [4]string {
	med := median(us, rssOf)
	return [4]string{label, mibTriple(us, rssOf) + " (max: " + argMax(us, rssOf) + ")",
		fmt.Sprintf("lone %.0f MiB; %d-node median %.0f MiB", lone.rssMiB, len(base), median(base, rssOf)),
		ratio(med, lone.rssMiB) + " of lone"}
}

func cpuRow(o options, label string, us []usage, lone usage, base []usage) [4]string {
	med, bmed := median(us, cpuOf), median(base, cpuOf)
	// A 10 ms clock tick over the window: a lone node's few ticks make a
	// poor denominator, so the ratio is to the small fleet's median.
	res := 100 * 0.01 / o.idle.Seconds()
	return [4]string{label + fmt.Sprintf(" over %v (resolution %.2f%%)", o.idle, res), pct(med) + " / " + pct(maxOf(us, cpuOf)) + " (max: " + argMax(us, cpuOf) + ")",
		fmt.Sprintf("lone %s; %d-node median %s", pct(lone.cpuPct), len(base), pct(bmed)),
		ratio(med, bmed) + fmt.Sprintf(" of the %d-node median", len(base))}
}

// convRow: a phase's rounds, the time until every node had the change:
// median and max over the rounds, beside the baseline's median.
func convRow(p, bp *phase) [4]string {
	label := fmt.Sprintf("change reaches every node (%s): median / max of %d rounds", p.what, len(p.rounds))
	val := fmt.Sprintf("%s / %s", secs(p.quantileAll(0.5)), secs(p.quantileAll(1)))
	if !p.converged() {
		val += " (NOT CONVERGED)"
	}
	if bp == nil {
		return [4]string{label, val, "", ""}
	}
	return [4]string{label, val, fmt.Sprintf("%s / %s (%d)", secs(bp.quantileAll(0.5)), secs(bp.quantileAll(1)), bp.nodes), ratio(p.quantileAll(0.5).Seconds(), bp.quantileAll(0.5).Seconds())}
}

// arrivalRow: per-node arrival p50 and p90 in each round, medians over
// the rounds.
func arrivalRow(p, bp *phase) [4]string {
	label := fmt.Sprintf("per-node arrival (%s): p50 / p90, median of the rounds", p.what)
	p50, p90 := p.arrival()
	row := [4]string{label, secs(p50) + " / " + secs(p90), "", ""}
	if bp != nil {
		b50, b90 := bp.arrival()
		row[2] = secs(b50) + " / " + secs(b90) + fmt.Sprintf(" (%d)", bp.nodes)
		row[3] = ratio(p50.Seconds(), b50.Seconds())
	}
	return row
}

func meshRow(o options, f fleetResult) [4]string {
	label := fmt.Sprintf("mesh slots per node, most observed (cap %d): after forming; at the end", o.node.maxMesh)
	val := fmt.Sprintf("%d now, %d ever", f.meshFormed.maxNow, f.meshFormed.maxSeen)
	if f.meshEnd != nil {
		val += fmt.Sprintf("; %d now, %d ever", f.meshEnd.maxNow, f.meshEnd.maxSeen)
	}
	return [4]string{label, val, "", ""}
}

func phaseOf(f fleetResult, name string) *phase {
	for i := range f.phases {
		if f.phases[i].name == name {
			return &f.phases[i]
		}
	}
	return nil
}

// quantileAll is the q-quantile over the rounds of each round's time
// until every node had it; rounds that did not converge count as the
// bound's worth (they are flagged apart).
func (p phase) quantileAll(q float64) time.Duration {
	var ds []time.Duration
	for _, r := range p.rounds {
		if r.err == "" {
			ds = append(ds, r.all())
		}
	}
	if len(ds) == 0 {
		return 0
	}
	return quantile(sorted(ds), q)
}

// arrival is the median over the rounds of each round's p50 and p90 of
// per-node arrival.
func (p phase) arrival() (time.Duration, time.Duration) {
	var p50s, p90s []time.Duration
	for _, r := range p.rounds {
		if len(r.arrivals) == 0 {
			continue
		}
		s := sorted(r.arrivals)
		p50s, p90s = append(p50s, quantile(s, 0.5)), append(p90s, quantile(s, 0.9))
	}
	if len(p50s) == 0 {
		return 0, 0
	}
	return quantile(sorted(p50s), 0.5), quantile(sorted(p90s), 0.5)
}

func printPhase(p phase) {
	fmt.Printf("### %s: %s (this program's CPU while polling: %s of a core)\n\n", p.name, p.what, pct(p.proberPct))
	fmt.Println("| round | writer | PUT answered | readers with it | p50 | p90 | every node | last | dated by a read |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for i, r := range p.rounds {
		if r.err != "" {
			fmt.Printf("| %d | %s | FAILED: %s | | | | | | |\n", i+1, r.writer, r.err)
			continue
		}
		s := sorted(r.arrivals)
		all := secs(r.all())
		if !r.converged() {
			all = "NOT CONVERGED"
		}
		fmt.Printf("| %d | %s | %s | %d / %d | %s | %s | %s | %s | %d |\n", i+1, r.writer, ms(r.ack), len(r.arrivals), r.readers,
			secs(quantile(s, 0.5)), secs(quantile(s, 0.9)), all, r.slowest, r.byPoll)
	}
	fmt.Println()
	for i, r := range p.rounds {
		for _, m := range r.late {
			fmt.Printf("round %d: late: %s\n\n", i+1, m)
		}
		for _, m := range r.missing {
			fmt.Printf("round %d: lacked the change: %s\n\n", i+1, m)
		}
	}
}

func printMesh(f fleetResult) {
	for _, m := range []struct {
		when string
		s    *meshStats
	}{{"after forming", f.meshFormed}, {"at the end (survivors)", f.meshEnd}} {
		if m.s == nil {
			continue
		}
		var hist []string
		for _, k := range slices.Sorted(maps.Keys(m.s.hist)) {
			hist = append(hist, fmt.Sprintf("%d slots: %d", k, m.s.hist[k]))
		}
		fmt.Printf("mesh %s: %d nodes; %s; graph of slots among them: %d component(s), the largest %d nodes\n",
			m.when, m.s.nodes, strings.Join(hist, ", "), m.s.components, m.s.largest)
	}
	fmt.Println()
}

// resultLine is the one line to grep.
func resultLine(o options, res *results, fails []string) string {
	f, base := res.fleet, res.base
	verdict := "PASS"
	if len(fails) > 0 {
		verdict = "FAIL"
	}
	kv := []string{"RESULT " + verdict, fmt.Sprintf("n=%d killed=1+%d", o.n, max(len(f.killed)-1, 0)), "formed_s=" + num(f.formed.Seconds(), 1)}
	for _, name := range []string{"alive", "killed", "settled"} {
		if p := phaseOf(f, name); p != nil {
			kv = append(kv, fmt.Sprintf("%s_s=%s/%s", name, num(p.quantileAll(0.5).Seconds(), 3), num(p.quantileAll(1).Seconds(), 3)))
		}
	}
	if bp := phaseOf(base, "base"); bp != nil {
		kv = append(kv, fmt.Sprintf("base%d_s=%s/%s", base.n, num(bp.quantileAll(0.5).Seconds(), 3), num(bp.quantileAll(1).Seconds(), 3)))
	}
	if len(f.idle) > 0 {
		kv = append(kv, fmt.Sprintf("rss_mib=%s/%s/%s lone_rss_mib=%s cpu_pct=%s/%s lone_cpu_pct=%s",
			num(minOf(f.idle, rssOf), 0), num(median(f.idle, rssOf), 0), num(maxOf(f.idle, rssOf), 0), num(res.lone.rssMiB, 0),
			num(median(f.idle, cpuOf), 2), num(maxOf(f.idle, cpuOf), 2), num(res.lone.cpuPct, 2)))
	}
	if m := f.meshEnd; m != nil {
		kv = append(kv, fmt.Sprintf("mesh_max=%d cap=%d survivor_components=%d", max(m.maxSeen, f.meshFormed.maxSeen), o.node.maxMesh, m.components))
	} else if m := f.meshFormed; m != nil {
		kv = append(kv, fmt.Sprintf("mesh_max=%d cap=%d", m.maxSeen, o.node.maxMesh))
	}
	if len(fails) > 0 {
		kv = append(kv, strconv.Quote("reason="+fails[0]))
	}
	return strings.Join(kv, " ")
}

// printLogSummary counts the daemons' warn and error log lines by
// component and message: the first place to look when a figure is odd.
func printLogSummary(ds []*daemon) {
	type key struct{ level, component, msg string }
	count := map[key]int{}
	nodes := map[key]map[string]bool{}
	for _, d := range ds {
		for _, k := range logLines(d.logPath) {
			k := key{k[0], k[1], k[2]}
			count[k]++
			if nodes[k] == nil {
				nodes[k] = map[string]bool{}
			}
			nodes[k][d.name] = true
		}
	}
	if len(count) == 0 {
		fmt.Println("\nno warn or error line in any node's log")
		return
	}
	keys := slices.Collect(maps.Keys(count))
	sort.Slice(keys, func(i, j int) bool { return count[keys[i]] > count[keys[j]] })
	fmt.Println("\n## warn and error lines in the nodes' logs")
	fmt.Println()
	fmt.Println("| level | component | message | lines | nodes |")
	fmt.Println("|---|---|---|---|---|")
	for i, k := range keys {
		if i == 15 {
			fmt.Printf("| ... %d more kinds | | | | |\n", len(keys)-15)
			break
		}
		fmt.Printf("| %s | %s | %s | %d | %d |\n", k.level, k.component, k.msg, count[k], len(nodes[k]))
	}
	fmt.Println()
}

// logLines returns level, component and message of each warn or error
// line of a zerolog JSON log.
func logLines(path string) [][3]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][3]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev struct {
			Level     string `json:"level"`
			Component string `json:"component"`
			Message   string `json:"message"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || (ev.Level != "warn" && ev.Level != "error" && ev.Level != "fatal") {
			continue
		}
		out = append(out, [3]string{ev.Level, ev.Component, ev.Message})
	}
	return out
}

func rssOf(u usage) float64  { return u.rssMiB }
func cpuOf(u usage) float64  { return u.cpuPct }
func peakOf(u usage) float64 { return u.peakMiB }

func values(us []usage, f func(usage) float64) []float64 {
	vs := make([]float64, len(us))
	for i, u := range us {
		vs[i] = f(u)
	}
	slices.Sort(vs)
	return vs
}

func median(us []usage, f func(usage) float64) float64 {
	vs := values(us, f)
	if len(vs) == 0 {
		return 0
	}
	if len(vs)%2 == 0 {
		return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return vs[len(vs)/2]
}

func minOf(us []usage, f func(usage) float64) float64 {
	if vs := values(us, f); len(vs) > 0 {
		return vs[0]
	}
	return 0
}

func maxOf(us []usage, f func(usage) float64) float64 {
	if vs := values(us, f); len(vs) > 0 {
		return vs[len(vs)-1]
	}
	return 0
}

// argMax names the node with the largest figure.
func argMax(us []usage, f func(usage) float64) string {
	best := -1
	for i, u := range us {
		if best < 0 || f(u) > f(us[best]) {
			best = i
		}
	}
	if best < 0 {
		return "-"
	}
	return us[best].name
}

func sum(us []usage, f func(usage) float64) float64 {
	t := 0.0
	for _, u := range us {
		t += f(u)
	}
	return t
}

func mibTriple(us []usage, f func(usage) float64) string {
	return fmt.Sprintf("%.0f / %.0f / %.0f MiB", minOf(us, f), median(us, f), maxOf(us, f))
}

func sorted(ds []time.Duration) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s
}

// quantile is the nearest-rank q-quantile of sorted durations.
func quantile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s))*q+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fx", a/b)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
func ms(d time.Duration) string   { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
func pct(v float64) string        { return fmt.Sprintf("%.2f%%", v) }
func num(v float64, prec int) string {
	return strconv.FormatFloat(v, 'f', prec, 64)
}
