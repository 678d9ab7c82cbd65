// Package scripts holds the tests that drive the scripts in this folder.
package scripts

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMultiSite runs scripts/netns-multisite.sh: two network namespaces
// that cannot route to each other, a relay between them, five real
// meshnode processes, and the document converging across the sites
// through the relay. It needs root and ip; without them it is skipped
// with the script's reason.
func TestMultiSite(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-site namespaces test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "netns-multisite.sh", "10")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 77 {
		t.Skip(strings.TrimSpace(string(out)))
	}
	t.Logf("netns-multisite.sh output:\n%s", out)
	if err != nil {
		t.Fatalf("netns-multisite.sh: %v", err)
	}
	for _, want := range []string{"reaches site A through the relay", "document converged across sites through the relay", "multisite: ok"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q", want)
		}
	}
}
