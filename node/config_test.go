package node

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func loadTest(t *testing.T, args, env []string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("meshnode run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return LoadConfig(fs, args, env)
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "meshnode.toml")
	if err := os.WriteFile(file, []byte("name = \"from-file\"\nmax-mesh-peers = 7\nrelay-service = true\nrelay = [\"/ip4/10.0.0.1/tcp/4700/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadTest(t, []string{"--config", file, "--name", "from-flag"}, []string{"MESHNODE_MAX_MESH_PEERS=9", "MESHNODE_RELAY_LIMIT_DURATION=1h"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "from-flag" || cfg.MaxMeshPeers != 9 || !cfg.RelayService || len(cfg.Relays) != 1 || cfg.RelayLimitDuration != time.Hour {
		t.Fatalf("flags over environment over file: got %+v", cfg)
	}
	if cfg.RelayMaxReservations != 1024 || cfg.RelayMaxCircuits != 64 || cfg.RelayLimitData != 0 {
		t.Fatalf("relay defaults: %d reservations, %d circuits, %d bytes", cfg.RelayMaxReservations, cfg.RelayMaxCircuits, cfg.RelayLimitData)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(file, []byte("no-such-key = 1\n"), 0o600)
	for _, tc := range []struct {
		args, env []string
		want      string
	}{
		{[]string{"--relay", "/ip4/10.0.0.1/tcp/4700"}, nil, "relay address \"/ip4/10.0.0.1/tcp/4700\" must end in /p2p/<peer id>"},
		{[]string{"--relay", "not-a-multiaddr"}, nil, "relay address \"not-a-multiaddr\""},
		{[]string{"--relay-limit-data", "-1"}, nil, "relay-limit-data: -1 is negative"},
		{[]string{"--relay-limit-duration", "-1s"}, nil, "relay-limit-duration"},
		{[]string{"--max-send-rate", "1000"}, nil, "max-send-rate: 1000 bytes/s is below 65536"},
		{[]string{"--relay-max-circuits", "0"}, nil, "relay-max-circuits: 0 must be at least 1"},
		{[]string{"--relay-max-reservations", "0"}, nil, "relay-max-reservations"},
		{[]string{"--max-mesh-peers", "65"}, nil, "max-mesh-peers: 65 is outside 0..64"},
		{[]string{"--mesh-interval", "1ms"}, nil, "mesh-interval"},
		{[]string{"--port", "70000"}, nil, "not a port number"},
		{nil, []string{"MESHNODE_NO_SUCH=1"}, "MESHNODE_NO_SUCH is not a meshnode setting"},
		{nil, []string{"MESHNODE_MAX_MESH_PEERS=lots"}, "MESHNODE_MAX_MESH_PEERS"},
		{[]string{"--config", file}, nil, `unknown key "no-such-key"`},
		{[]string{"stray"}, nil, `unexpected argument "stray"`},
	} {
		_, err := loadTest(t, tc.args, tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: error %v, want it to mention %q", tc.args, tc.env, err, tc.want)
		}
	}
}
