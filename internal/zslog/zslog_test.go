package zslog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestHandlerLevelsAttrsAndDemote(t *testing.T) {
	var buf bytes.Buffer
	lg := slog.New(New(zerolog.New(&buf).Level(zerolog.WarnLevel)).Demote("noise"))
	lg.Info("below the level")
	lg.Warn("noise", "k", 1)
	lg.With("logger", "swarm").WithGroup("g").Warn("kept", "n", 2, "s", "x")
	out := buf.String()
	if strings.Contains(out, "below the level") || strings.Contains(out, "noise") {
		t.Fatalf("records below the level or demoted were written: %s", out)
	}
	for _, want := range []string{`"level":"warn"`, `"subsystem":"swarm"`, `"g.n":2`, `"g.s":"x"`, `"message":"kept"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %s: %s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Fatalf("want one line per record, got %d: %s", n, out)
	}
}
