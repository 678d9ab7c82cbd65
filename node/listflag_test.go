package node

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A list flag given several times keeps every value; the first use in
// each source replaces what the default or an earlier source set.
func TestListFlagsAccumulate(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "meshnode.toml")
	if err := os.WriteFile(file, []byte("listen = [\"/ip4/10.0.0.1/tcp/1\"]\nroles = [\"file\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const a, b, c = "/ip4/127.0.0.1/tcp/4710", "/ip4/127.0.0.1/udp/4710/quic-v1", "/ip6/::1/tcp/4710"
	for _, tc := range []struct {
		name      string
		args, env []string
		listen    []string
		roles     []string
	}{
		{"repeated --listen", []string{"--listen", a, "--listen", b}, nil, []string{a, b}, nil},
		{"repeated and comma-separated", []string{"--listen", a + "," + b, "--listen=" + c}, nil, []string{a, b, c}, nil},
		{"--port adds like a --listen", []string{"--listen", c, "--port", "4711"}, nil, append([]string{c}, ListenOnPort(4711)...), nil},
		{"--port alone replaces the default", []string{"--port", "0"}, nil, ListenOnPort(0), nil},
		{"flags replace the environment", []string{"--listen", a, "--listen", b}, []string{"MESHNODE_LISTEN=" + c}, []string{a, b}, nil},
		{"environment replaces the file", []string{"--config", file}, []string{"MESHNODE_LISTEN=" + c}, []string{c}, []string{"file"}},
		{"flags replace the file", []string{"--config", file, "--roles", "x", "--roles", "y"}, nil, []string{"/ip4/10.0.0.1/tcp/1"}, []string{"x", "y"}},
		{"default", nil, nil, ListenOnPort(DefaultPort), nil},
	} {
		fs := flag.NewFlagSet("meshnode run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg, err := LoadConfig(fs, tc.args, tc.env)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(cfg.Listen, tc.listen) || !slices.Equal(cfg.Roles, tc.roles) {
			t.Errorf("%s: listen %q roles %q; want %q and %q", tc.name, cfg.Listen, cfg.Roles, tc.listen, tc.roles)
		}
	}
	fs := flag.NewFlagSet("meshnode run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg, err := LoadConfig(fs, []string{"--bootstrap", "/ip4/10.0.0.2/tcp/4700/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
		"--bootstrap", "/ip4/10.0.0.3/tcp/4700/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"}, nil)
	if err != nil || len(cfg.Bootstrap) != 2 {
		t.Fatalf("repeated --bootstrap: %q, %v", cfg.Bootstrap, err)
	}
}
