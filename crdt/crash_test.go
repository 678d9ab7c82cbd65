package crdt

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

const (
	crashChildEnv   = "MESHNODE_CRASH_CHILD_DIR"
	crashWritersEnv = "MESHNODE_CRASH_CHILD_WRITERS"
)

// TestCrashChild is the child process of TestKill9KeepsAcknowledgedChanges:
// its writers commit changes forever and print "ack <item>" after each
// Update returns.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("child process of TestKill9KeepsAcknowledgedChanges")
	}
	writers, _ := strconv.Atoi(os.Getenv(crashWritersEnv))
	d, err := Open(Config{Dir: dir, CompactRecords: 97, Logger: zerolog.Nop()})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	run := func(id int) {
		for i := 0; ; i++ {
			item := fmt.Sprintf("item-%d-%06d", id, i)
			if _, err := d.Update("crash", func(tx *Tx) error {
				tx.SetItemName(item, "v")
				return nil
			}); err != nil {
				fmt.Println("update:", err)
				os.Exit(3)
			}
			mu.Lock()
			fmt.Fprintf(w, "ack %s\n", item)
			w.Flush()
			mu.Unlock()
		}
	}
	for id := 1; id < max(writers, 1); id++ {
		go run(id)
	}
	run(0)
}

// A change acknowledged by Update survives kill -9 of the process,
// including kills that land mid-compaction (CompactRecords is small) and
// with many writers sharing fsyncs.
func TestKill9KeepsAcknowledgedChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	t.Parallel()
	for _, writers := range []int{1, 8} {
		t.Run(fmt.Sprintf("writers=%d", writers), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var acked []string
			for round := range 3 {
				cmd, sc := startChild(t, "TestCrashChild", crashChildEnv+"="+dir, crashWritersEnv+"="+strconv.Itoa(writers))
				target := len(acked) + 150 + 37*round
				for sc.Scan() {
					line := sc.Text()
					if item, ok := strings.CutPrefix(line, "ack "); ok {
						acked = append(acked, item)
						if len(acked) >= target {
							break
						}
					} else if strings.HasPrefix(line, "open:") || strings.HasPrefix(line, "update:") {
						t.Fatalf("child: %s", line)
					}
				}
				cmd.Process.Kill() // SIGKILL
				cmd.Wait()
				d, err := Open(Config{Dir: dir, Logger: zerolog.New(zerolog.NewTestWriter(t))})
				if err != nil {
					t.Fatalf("round %d: reopen after kill -9: %v", round, err)
				}
				lib, _ := d.Library()
				for _, item := range acked {
					if _, ok := lib[item]; !ok {
						t.Fatalf("round %d: acknowledged change %s lost (%d acknowledged, have %d)", round, item, len(acked), len(lib))
					}
				}
				if dm := d.Damage(); len(dm) > 0 {
					t.Fatalf("round %d: damage after kill -9: %v", round, dm)
				}
				d.Close()
			}
		})
	}
}

// startChild runs test in a child process of this test binary, with env
// added to the environment, and returns it and a scanner of its stdout.
func startChild(t *testing.T, test string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}
