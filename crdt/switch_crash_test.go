package crdt

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const switchChildEnv = "MESHNODE_SWITCH_CHILD_DIR"

// TestSwitchCrashChild is the child process of
// TestKill9MidSwitchKeepsAcknowledgedWrites: two writers commit items
// forever, printing "ack <item>" after each Update returns, while a
// third goroutine cuts the document every few dozen writes, printing
// "step <name>" at each file step of the switch and pausing there.
func TestSwitchCrashChild(t *testing.T) {
	dir := os.Getenv(switchChildEnv)
	if dir == "" {
		t.Skip("child process of TestKill9MidSwitchKeepsAcknowledgedWrites")
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	say := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format+"\n", a...)
		w.Flush()
		mu.Unlock()
	}
	switchHook = func(step string) {
		say("step %s", step)
		time.Sleep(20 * time.Millisecond)
	}
	d, err := Open(Config{Dir: dir, CutCheck: -1, Logger: zerolog.Nop()})
	if err != nil {
		say("open: %v", err)
		os.Exit(3)
	}
	run := func(id int) {
		for i := 0; ; i++ {
			item := fmt.Sprintf("item-%d-%d-%06d", os.Getpid(), id, i)
			if _, err := d.Update("crash", func(tx *Tx) error {
				tx.SetItemName(item, "v")
				tx.SetHolder(item, d.Self(), Holder{Manifest: "m", Version: "v", Size: int64(i), State: "complete"})
				return nil
			}); err != nil {
				say("update: %v", err)
				os.Exit(3)
			}
			say("ack %s", item)
		}
	}
	go run(1)
	go func() {
		for {
			time.Sleep(30 * time.Millisecond)
			if err := d.ProposeCut(); err != nil {
				say("update: propose: %v", err)
				os.Exit(3)
			}
			if _, err := d.SwitchEpoch(); err != nil {
				say("update: switch: %v", err)
				os.Exit(3)
			}
		}
	}()
	run(0)
}

// A write acknowledged by Update survives kill -9 at every step of an
// epoch switch: after the previous epoch's document is kept, after the
// new snapshot replaced the old one (the log still the old epoch's), and
// after the new log replaced the old one. Each restart is a real process
// on the same directory.
func TestKill9MidSwitchKeepsAcknowledgedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	t.Parallel()
	dir := t.TempDir()
	var acked []string
	for round, at := range []string{"snapshot", "prev", "log", "snapshot", "log"} {
		cmd, sc := startChild(t, "TestSwitchCrashChild", switchChildEnv+"="+dir)
		steps := 0
		for sc.Scan() {
			line := sc.Text()
			if item, ok := strings.CutPrefix(line, "ack "); ok {
				acked = append(acked, item)
			} else if step, ok := strings.CutPrefix(line, "step "); ok && step == at {
				// Kill at this step of the second switch of the round, so
				// writes of the first epoch are carried too.
				if steps++; steps == 2 {
					break
				}
			} else if strings.HasPrefix(line, "open:") || strings.HasPrefix(line, "update:") {
				t.Fatalf("child: %s", line)
			}
		}
		cmd.Process.Kill() // SIGKILL, paused inside the switch
		cmd.Wait()
		d, err := Open(Config{Dir: dir, CutCheck: -1, Logger: zerolog.New(zerolog.NewTestWriter(t))})
		if err != nil {
			t.Fatalf("round %d (killed after %s): reopen: %v", round, at, err)
		}
		lib, _ := d.Library()
		for _, item := range acked {
			it, ok := lib[item]
			if !ok || len(it.Holders) != 1 { // by the child's identity
				exec.Command("cp", "-r", dir, "/tmp/zzdebug").Run()
				t.Fatalf("round %d (killed after %s): acknowledged write %s lost: %v %+v (%d acknowledged, %d items, epoch %v)", round, at, item, ok, it, len(acked), len(lib), d.Epoch())
			}
		}
		if dm := d.Damage(); len(dm) > 0 {
			t.Fatalf("round %d (killed after %s): damage %v", round, at, dm)
		}
		t.Logf("round %d: killed after step %q, reopened on epoch %v with all %d acknowledged writes", round, at, d.Epoch(), len(acked))
		d.Close()
	}
}
