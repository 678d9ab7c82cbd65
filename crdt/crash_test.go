package crdt

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

const crashChildEnv = "MESHNODE_CRASH_CHILD_DIR"

// TestCrashChild is the child process of TestKill9KeepsAcknowledgedChanges:
// it writes changes forever and prints "ack N" after each Update returns.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("child process of TestKill9KeepsAcknowledgedChanges")
	}
	d, err := Open(Config{Dir: dir, CompactRecords: 97, Logger: zerolog.Nop()})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		if _, err := d.Update("crash", func(tx *Tx) error {
			tx.SetItemName(fmt.Sprintf("item-%06d", i), "v")
			return nil
		}); err != nil {
			fmt.Println("update:", err)
			os.Exit(3)
		}
		fmt.Fprintf(w, "ack %d\n", i)
		w.Flush()
	}
}

// A change acknowledged by Update survives kill -9 of the process,
// including kills that land mid-compaction (CompactRecords is small).
func TestKill9KeepsAcknowledgedChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	last := -1
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		target := last + 150 + 37*round
		for sc.Scan() {
			line := sc.Text()
			if n, ok := strings.CutPrefix(line, "ack "); ok {
				last, _ = strconv.Atoi(n)
				if last >= target {
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
		for i := 0; i <= last; i++ {
			if _, ok := lib[fmt.Sprintf("item-%06d", i)]; !ok {
				t.Fatalf("round %d: acknowledged change %d lost (last ack %d, have %d)", round, i, last, len(lib))
			}
		}
		d.Close()
	}
}
