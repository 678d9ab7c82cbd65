package node

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/mesh"
)

// Default ports. The p2p port serves both QUIC (UDP) and TCP.
const (
	DefaultPort    = 4700
	DefaultAPIAddr = "127.0.0.1:4701"
)

// Config configures a node. Every field has a flag of the same name
// (shown in brackets), an environment variable MESHNODE_<NAME> (upper case,
// '-' as '_') and a key in the optional TOML config file. Precedence:
// flags, then environment, then file, then these defaults.
type Config struct {
	// DataDir holds identity, fleet token, document and API files [data].
	DataDir string
	// Name is this node's human-readable name [name]; default the hostname.
	Name string
	// Join is a fleet join token [join]. Empty: use the token kept in the
	// data dir, or create a new fleet on first start.
	Join string
	// Listen are the p2p listener multiaddrs [listen]. Default QUIC-v1
	// and TCP on 0.0.0.0 port 4700.
	Listen []string
	// Bootstrap are rendezvous multiaddrs ending in /p2p/<id> [bootstrap].
	Bootstrap []string
	// MDNS enables LAN discovery [mdns]. Default true.
	MDNS bool
	// API is the local HTTP API address [api]; loopback only.
	API string
	// LogLevel is debug, info, warn or error [log-level].
	LogLevel string
	// Roles are free-form labels published in the node record [roles].
	Roles []string
	// HeartbeatInterval between heartbeats [heartbeat-interval]. Default 5s.
	HeartbeatInterval time.Duration
	// StaleAfter marks a silent peer stale [stale-after]. Default 20s.
	StaleAfter time.Duration
	// SyncInterval between anti-entropy rounds with each peer
	// [sync-interval]. Default 30s.
	SyncInterval time.Duration
	// LastSeenEvery is how often last_seen_ms is refreshed in the document
	// [last-seen-every]. Default 10m: each refresh is a document change.
	LastSeenEvery time.Duration
	// MaxMeshPeers caps the supplementary connections this node opens to
	// alive peers from the node list, so the fleet stays connected when a
	// rendezvous dies [max-mesh-peers]. Default 4; 0 disables them.
	MaxMeshPeers int
	// MeshInterval between mesh reconcile passes [mesh-interval]. Default
	// 30s; a pass also runs a second after the node list changes.
	MeshInterval time.Duration
	// RelayService makes this node a circuit-relay-v2 relay for fleet
	// members [relay-service].
	RelayService bool
	// RelayLimitDuration and RelayLimitData limit each relayed connection
	// [relay-limit-duration, relay-limit-data (bytes per direction)].
	// Default 0: no limit; only fleet members can use the relay.
	RelayLimitDuration time.Duration
	RelayLimitData     int64
	// RelayMaxReservations caps the nodes holding a slot at once
	// [relay-max-reservations]. Default 1024.
	RelayMaxReservations int
	// RelayMaxCircuits caps one node's relayed connections through this
	// relay [relay-max-circuits]. Default 64.
	RelayMaxCircuits int
	// Relays are relays (multiaddrs ending in /p2p/<id>) this node holds a
	// slot on, to be reachable through them [relay].
	Relays []string
	// Share is the share folder: each immediate subfolder is an item
	// [share]. Default: "share" inside the data dir.
	Share string
	// ScanInterval between full rescans of the share folder, which repair
	// missed watch events [scan-interval]. Default 10m.
	ScanInterval time.Duration
	// RoomLease is how long a room presence lease in the document lasts;
	// it is renewed at half its life while the topic is open. Liveness in
	// between comes from heartbeats.
	RoomLease time.Duration
	// MaxSendRate bounds the bytes per second this node sends to peers
	// downloading its items, all together [max-send-rate]. Default 0: no
	// bound; otherwise at least 65536 (a 1 MiB chunk waits for its turn).
	MaxSendRate int64
	// CutBytes, CutMinAge and CutGrace are the document's cut rule
	// (crdt/cutrule.go): the fleet cuts the document's history into a new
	// epoch once it takes CutBytes on disk and is at least half history,
	// and the epoch is CutMinAge old; a node switches CutGrace after it
	// sees a proposal [cut-bytes, cut-min-age, cut-grace]. Defaults
	// 128 KiB, 30s, 10s.
	CutBytes  int64
	CutMinAge time.Duration
	CutGrace  time.Duration

	// Logger receives the node's logs (not configurable from outside).
	Logger zerolog.Logger

	// apiBodyTimeout bounds reading one API request's body, so a client
	// that trickles it cannot hold the connection and its handler open.
	// Default 10 s; a knob for tests only.
	apiBodyTimeout time.Duration
	// spreadCopies is the transfer server's Limits.SpreadCopies (0: its
	// default; -1: no spreading); a knob for the benchmark that compares
	// the two.
	spreadCopies int
	// cutCheck (how often the cut rule runs; negative: never) and now
	// (its clock) are knobs for tests only.
	cutCheck time.Duration
	now      func() time.Time
}

// DefaultConfig returns the defaults described on Config.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		DataDir:              defaultDataDir(),
		Name:                 host,
		Listen:               ListenOnPort(DefaultPort),
		MDNS:                 true,
		API:                  DefaultAPIAddr,
		LogLevel:             "info",
		HeartbeatInterval:    5 * time.Second,
		StaleAfter:           20 * time.Second,
		SyncInterval:         30 * time.Second,
		LastSeenEvery:        10 * time.Minute,
		MaxMeshPeers:         4,
		MeshInterval:         30 * time.Second,
		RelayMaxReservations: mesh.DefaultRelayLimits().MaxReservations,
		RelayMaxCircuits:     mesh.DefaultRelayLimits().MaxCircuits,
		ScanInterval:         10 * time.Minute,
		RoomLease:            10 * time.Minute,
		CutBytes:             128 << 10,
		CutMinAge:            30 * time.Second,
		CutGrace:             10 * time.Second,
		Logger:               zerolog.Nop(),
		apiBodyTimeout:       defaultAPIBodyTimeout,
	}
}

// defaultAPIBodyTimeout is ample for the API's bodies (at most 256 KiB,
// over loopback) and bounds a client that trickles one.
const defaultAPIBodyTimeout = 10 * time.Second

// ListenOnPort returns the default listeners (QUIC-v1 and TCP on all IPv4
// interfaces) on one port; 0 picks random free ports.
func ListenOnPort(port int) []string {
	return []string{
		fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", port),
		fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", port),
	}
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "meshnode")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "meshnode")
	}
	return "meshnode-data"
}

func (c *Config) validate() error {
	if c.apiBodyTimeout <= 0 {
		c.apiBodyTimeout = defaultAPIBodyTimeout
	}
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data: must not be empty"))
	}
	if len(c.Listen) == 0 {
		errs = append(errs, errors.New("listen: at least one address is needed"))
	}
	if c.HeartbeatInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat-interval: %v is below 100ms", c.HeartbeatInterval))
	}
	if c.StaleAfter <= c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("stale-after: %v must exceed heartbeat-interval %v", c.StaleAfter, c.HeartbeatInterval))
	}
	if c.SyncInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("sync-interval: %v is below 100ms", c.SyncInterval))
	}
	if c.MaxMeshPeers < 0 || c.MaxMeshPeers > 64 {
		errs = append(errs, fmt.Errorf("max-mesh-peers: %d is outside 0..64", c.MaxMeshPeers))
	}
	if c.MeshInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("mesh-interval: %v is below 100ms", c.MeshInterval))
	}
	if c.RelayLimitDuration < 0 {
		errs = append(errs, fmt.Errorf("relay-limit-duration: %v is negative (0 means no limit)", c.RelayLimitDuration))
	}
	if c.RelayLimitData < 0 {
		errs = append(errs, fmt.Errorf("relay-limit-data: %d is negative (0 means no limit)", c.RelayLimitData))
	}
	if c.RelayMaxReservations < 1 {
		errs = append(errs, fmt.Errorf("relay-max-reservations: %d must be at least 1", c.RelayMaxReservations))
	}
	if c.RelayMaxCircuits < 1 {
		errs = append(errs, fmt.Errorf("relay-max-circuits: %d must be at least 1", c.RelayMaxCircuits))
	}
	if _, err := mesh.ParseRelays(c.Relays); err != nil {
		errs = append(errs, fmt.Errorf("relay: %w", err))
	}
	if c.ScanInterval < time.Second {
		errs = append(errs, fmt.Errorf("scan-interval: %v is below 1s", c.ScanInterval))
	}
	if c.RoomLease < time.Second {
		errs = append(errs, fmt.Errorf("room-lease: %v is below 1s", c.RoomLease))
	}
	if c.MaxSendRate != 0 && c.MaxSendRate < 64<<10 {
		errs = append(errs, fmt.Errorf("max-send-rate: %d bytes/s is below 65536 (0 means no bound); a 1 MiB chunk would wait over 16 s", c.MaxSendRate))
	}
	if c.CutBytes < 16<<10 {
		errs = append(errs, fmt.Errorf("cut-bytes: %d is below 16384 (a cut costs a rebuild of the document)", c.CutBytes))
	}
	if c.CutMinAge < time.Second {
		errs = append(errs, fmt.Errorf("cut-min-age: %v is below 1s", c.CutMinAge))
	}
	if c.CutGrace < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("cut-grace: %v is below 100ms", c.CutGrace))
	}
	if c.LastSeenEvery < time.Second {
		errs = append(errs, fmt.Errorf("last-seen-every: %v is below 1s", c.LastSeenEvery))
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		errs = append(errs, fmt.Errorf("log-level: %q is not one of debug, info, warn, error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// listFlag is a list flag: each use adds its comma-separated values, so a
// repeated --listen or --bootstrap keeps every value. The first use in a
// source (file, environment, command line) replaces what the default or
// an earlier source set, so flags override the file instead of adding to
// it; LoadConfig starts each source with newSource.
type listFlag struct {
	p *[]string
	// set: the list was set in the current source; later uses add to it.
	set bool
}

func (l *listFlag) String() string {
	if l == nil || l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *listFlag) Set(s string) error {
	var vals []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			vals = append(vals, x)
		}
	}
	l.add(vals)
	return nil
}

func (l *listFlag) add(vals []string) {
	if !l.set {
		*l.p, l.set = nil, true
	}
	*l.p = append(*l.p, vals...)
}

// newSource makes the next use of each list flag on fs replace the list.
func newSource(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if l, ok := f.Value.(*listFlag); ok {
			l.set = false
		}
	})
}

// portFlag is shorthand for the default listeners on one port: it adds
// them to --listen as one more --listen would.
type portFlag struct{ listen *listFlag }

func (p portFlag) String() string { return "" }
func (p portFlag) Set(s string) error {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 0 || n > 65535 || fmt.Sprint(n) != s {
		return fmt.Errorf("%q is not a port number (0-65535)", s)
	}
	p.listen.add(ListenOnPort(n))
	return nil
}

// Flags binds every Config field to a flag on fs.
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, "data", c.DataDir, "data directory")
	fs.StringVar(&c.Name, "name", c.Name, "node name")
	fs.StringVar(&c.Join, "join", c.Join, "fleet join token (default: the data dir's, or a new fleet)")
	listen := &listFlag{p: &c.Listen}
	fs.Var(listen, "listen", "p2p listen multiaddrs, comma-separated or repeated (default QUIC-v1 and TCP on port 4700)")
	fs.Var(portFlag{listen}, "port", "shorthand: listen with QUIC-v1 and TCP on this port (0: random); adds to --listen")
	fs.Var(&listFlag{p: &c.Bootstrap}, "bootstrap", "rendezvous multiaddrs ending in /p2p/<id>, comma-separated or repeated")
	fs.BoolVar(&c.MDNS, "mdns", c.MDNS, "discover fleet peers on the LAN with mDNS")
	fs.StringVar(&c.API, "api", c.API, "local HTTP API address (loopback)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.Var(&listFlag{p: &c.Roles}, "roles", "role labels for this node's record, comma-separated or repeated")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "time between heartbeats")
	fs.DurationVar(&c.StaleAfter, "stale-after", c.StaleAfter, "a peer silent this long is stale")
	fs.DurationVar(&c.SyncInterval, "sync-interval", c.SyncInterval, "time between anti-entropy rounds")
	fs.DurationVar(&c.LastSeenEvery, "last-seen-every", c.LastSeenEvery, "how often last_seen_ms is refreshed in the document")
	fs.IntVar(&c.MaxMeshPeers, "max-mesh-peers", c.MaxMeshPeers, "cap on supplementary connections to peers from the node list (0: none)")
	fs.DurationVar(&c.MeshInterval, "mesh-interval", c.MeshInterval, "time between mesh reconcile passes")
	fs.BoolVar(&c.RelayService, "relay-service", c.RelayService, "relay connections between fleet members (circuit relay v2)")
	fs.DurationVar(&c.RelayLimitDuration, "relay-limit-duration", c.RelayLimitDuration, "relay service: reset a relayed connection after this long (0: no limit)")
	fs.Int64Var(&c.RelayLimitData, "relay-limit-data", c.RelayLimitData, "relay service: reset a relayed connection after this many bytes each way (0: no limit)")
	fs.IntVar(&c.RelayMaxReservations, "relay-max-reservations", c.RelayMaxReservations, "relay service: nodes that may hold a slot at once")
	fs.IntVar(&c.RelayMaxCircuits, "relay-max-circuits", c.RelayMaxCircuits, "relay service: relayed connections one node may have open")
	fs.Var(&listFlag{p: &c.Relays}, "relay", "relay multiaddrs ending in /p2p/<id> to be reachable through, comma-separated or repeated")
	fs.StringVar(&c.Share, "share", c.Share, "share folder: each subfolder is an item (default: share inside the data dir)")
	fs.DurationVar(&c.ScanInterval, "scan-interval", c.ScanInterval, "time between full rescans of the share folder")
	fs.DurationVar(&c.RoomLease, "room-lease", c.RoomLease, "lifetime of a room presence lease in the document (renewed at half)")
	fs.Int64Var(&c.MaxSendRate, "max-send-rate", c.MaxSendRate, "bytes per second this node sends to peers downloading its items, all together (0: no bound)")
	fs.Int64Var(&c.CutBytes, "cut-bytes", c.CutBytes, "cut the document's history into a new epoch once it takes this many bytes on disk and is half history")
	fs.DurationVar(&c.CutMinAge, "cut-min-age", c.CutMinAge, "an epoch is cut at most this often")
	fs.DurationVar(&c.CutGrace, "cut-grace", c.CutGrace, "switch to a proposed epoch this long after seeing the proposal")
}

// EnvPrefix starts every environment variable of meshnode.
const EnvPrefix = "MESHNODE_"

// LoadConfig builds the configuration for `meshnode run` from args, the
// environment and the config file named by --config or MESHNODE_CONFIG,
// with flags over environment over file over defaults. Unknown file keys
// and unknown MESHNODE_* variables are errors that name them.
func LoadConfig(fs *flag.FlagSet, args []string, environ []string) (Config, error) {
	cfg := DefaultConfig()
	cfg.Flags(fs)
	var cfgFile string
	fs.StringVar(&cfgFile, "config", "", "TOML config file (keys are the flag names)")

	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	cfgFile = env[EnvPrefix+"CONFIG"]
	delete(env, EnvPrefix+"CONFIG")
	// --config must be known before the file is read; scan args for it.
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "config" {
			if hasVal {
				cfgFile = val
			} else if i+1 < len(args) {
				cfgFile = args[i+1]
			}
		}
	}
	if cfgFile != "" {
		newSource(fs)
		if err := applyFile(fs, cfgFile); err != nil {
			return cfg, err
		}
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	newSource(fs)
	for _, k := range keys {
		name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, EnvPrefix)), "_", "-")
		if name == "config" || fs.Lookup(name) == nil {
			return cfg, fmt.Errorf("environment variable %s is not a meshnode setting", k)
		}
		if err := fs.Set(name, env[k]); err != nil {
			return cfg, fmt.Errorf("environment variable %s: %w", k, err)
		}
	}
	newSource(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.validate()
}

func applyFile(fs *flag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := toml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config file %s: unknown key %q", path, k)
		}
		var s string
		switch v := m[k].(type) {
		case []any:
			parts := make([]string, len(v))
			for i, x := range v {
				parts[i] = fmt.Sprint(x)
			}
			s = strings.Join(parts, ",")
		default:
			s = fmt.Sprint(v)
		}
		if err := fs.Set(k, s); err != nil {
			return fmt.Errorf("config file %s: key %q: %w", path, k, err)
		}
	}
	return nil
}
