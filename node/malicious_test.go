package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/frame"
	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/meshnode/meshnode/mesh"
)

// The malicious member: a process that holds the fleet's join token,
// passes fleet authentication like any member, and then sends every kind
// of change the document's rules refuse, each by gossip and by sync. Three
// honest nodes in this process must refuse all of it, keep their document
// and their memory as they were, report the sender and cut it off, and
// keep serving each other meanwhile.
//
// The attacker is this test binary run again (TestMaliciousMemberProcess,
// with attackerEnv naming its plan). It uses the package mesh's exported
// pieces a node is built from (NewHost, NewGate, NewAuth, NewPubSub, the
// fleet's Seal, Topic and Protocol) but none of a node's checks: it makes
// its changes with automerge-go on a copy of the fleet document, so their
// dependencies are satisfied and only the rules can stop them.
//
// Each kind of bad change goes out under an identity of its own (a member
// can mint peer IDs at will): by sync to every honest node first, then the
// same change and one more of its kind by gossip. A refusal pauses
// anti-entropy with the sender, and three refusals strike it out (the
// replicator's defaults), so one identity per kind is what lets every
// kind reach every honest node by both paths, and be struck out for it.

// attackerEnv names the attacker's plan file; unset, the attacker's test
// skips.
const attackerEnv = "MESHNODE_TEST_ATTACKER_PLAN"

// Where the attack writes: a room topic and an item no honest node uses.
const (
	malTopic = "mal"
	malItem  = "evil-item"
)

// attackPlan is what the honest side hands the attacker.
type attackPlan struct {
	Token string `json:"token"`
	// Peers are the honest nodes' TCP addresses, with /p2p/<id>.
	Peers []string `json:"peers"`
	// Doc is the fleet document as GET /v1/doc served it.
	Doc []byte `json:"doc"`
	// Victim is honest node B's peer ID. Stale is a record B wrote at
	// nodes/<B> before the one in Doc, and StaleMsg the message of the
	// change that wrote it, which carries B's signature over it.
	// StaleAttest is B's attestation written in that change: B's
	// signature covers both, so a replay writes both.
	Victim      string `json:"victim"`
	Stale       []byte `json:"stale"`
	StaleAttest []byte `json:"stale_attest"`
	StaleMsg    string `json:"stale_msg"`
}

// attackReport is one attacker identity's account of its attack, one
// JSON line each on file descriptor 3.
type attackReport struct {
	Kind string `json:"kind"`
	Peer string `json:"peer"`
	// Hashes are the bad changes it sent: [0] by sync and gossip, [1] by
	// gossip.
	Hashes []string `json:"hashes"`
	// Sync says, per honest peer, how the sync session that offered the
	// bad change ended (syncRefused...: the honest node cut it).
	Sync map[string]string `json:"sync"`
	// Gossip counts the bad changes published.
	Gossip int `json:"gossip"`
	// Cut are the honest peers that closed every connection to it.
	Cut []string `json:"cut"`
	// Redial says, per honest peer, what dialling it again gave.
	Redial map[string]string `json:"redial"`
	Err    string            `json:"err,omitempty"`
}

// Outcomes the attacker reports.
const (
	syncRefused    = "refused"
	redialRefused  = "refused"
	attackCutAfter = 4 * time.Second // how long an identity waits to be cut off
)

// badChange is one kind of bad change: the rule an honest node must name
// when it refuses it, and how to write it into a copy of the fleet
// document (root is the copy's root map, k the attacker identity's key),
// with the message to commit it under ("" for the kind's name). Variants
// v = 0, 1 are two different changes of the kind.
type badChange struct {
	kind, rule string
	write      func(root *am.Map, p *attackPlan, k crypto.PrivKey, v int) (msg string, err error)
}

var badChanges = []badChange{
	{"text bomb", crdt.RuleObject, func(root *am.Map, _ *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		// A 200,000-character Text object: one operation per character.
		return "", root.Set(roomStateKeyOf(malTopic, "bomb"), am.NewText(strings.Repeat(string(rune('x'+v)), 200_000)))
	}},
	{"forged record", crdt.RuleSignature, forgeRecord},
	{"replayed record", crdt.RuleReplay, func(root *am.Map, p *attackPlan, _ crypto.PrivKey, _ int) (string, error) {
		// B's own record, older than the one in force, under B's own
		// signature (it signs the key and the value, not the change).
		if err := root.Set("nodes/"+p.Victim, p.Stale); err != nil {
			return "", err
		}
		return p.StaleMsg, root.Set("nodes/"+p.Victim+"/attest", p.StaleAttest)
	}},
	{"oversized key", crdt.RuleSize, func(root *am.Map, _ *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		return "", root.Set(roomStateKeyOf(malTopic, strings.Repeat("k", 5000+v)), "v")
	}},
	{"oversized value", crdt.RuleSize, func(root *am.Map, _ *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		return "", root.Set("library/"+malItem+"/name", strings.Repeat("n", 300_000+v))
	}},
	{"garbage creds", crdt.RuleCreds, func(root *am.Map, _ *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		return "", root.Set("rooms/"+malTopic+"/creds", "garbage-"+strconv.Itoa(v))
	}},
	{"key outside the schema", crdt.RuleSchema, func(root *am.Map, _ *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		return "", root.Set("evil/x", "pwned-"+strconv.Itoa(v))
	}},
	{"nested map", crdt.RuleObject, func(root *am.Map, p *attackPlan, _ crypto.PrivKey, v int) (string, error) {
		return "", root.Set("nodes/"+p.Victim, map[string]any{"name": "evil", "alive": v == 0})
	}},
}

func roomStateKeyOf(topic, key string) string { return "rooms/" + topic + "/state/" + key }

// forgeRecord rewrites B's record in force to say B is gone (alive, the
// record's last byte, cleared). Variant 0 carries no signature; variant 1
// a signature line naming B, made with the attacker's own key. Records
// and their signatures: crdt/record.go.
func forgeRecord(root *am.Map, p *attackPlan, k crypto.PrivKey, v int) (string, error) {
	key := "nodes/" + p.Victim
	cur, err := root.Get(key)
	if err != nil {
		return "", err
	}
	if cur.Kind() != am.KindBytes || len(cur.Bytes()) < 3 {
		return "", fmt.Errorf("no record of B's at %s to forge (%v)", key, cur.Kind())
	}
	rec := slices.Clone(cur.Bytes())
	rec[len(rec)-1] ^= 1
	if err := root.Set(key, rec); err != nil || v == 0 {
		return "", err
	}
	// SHA-256("meshnode/records/1" 0 | writer | 0 | len key | key | len value | value)
	h := sha256.New()
	h.Write([]byte("meshnode/records/1\x00" + p.Victim + "\x00"))
	h.Write(binary.AppendUvarint(nil, uint64(len(key))))
	h.Write([]byte(key))
	h.Write(binary.AppendUvarint(nil, uint64(len(rec))))
	h.Write(rec)
	sig, err := k.Sign(h.Sum(nil))
	if err != nil {
		return "", err
	}
	line := append(binary.AppendUvarint(nil, uint64(len(p.Victim))), p.Victim...)
	return "forged\nmnsig1:" + base64.RawURLEncoding.EncodeToString(append(line, sig...)), nil
}

// TestMaliciousMemberProcess is the attacker of TestMaliciousMember; it
// runs only in the process that test starts.
func TestMaliciousMemberProcess(t *testing.T) {
	planPath := os.Getenv(attackerEnv)
	if planPath == "" {
		t.Skip("the attacker of TestMaliciousMember, run by it in a process of its own")
	}
	b, err := os.ReadFile(planPath)
	if err != nil {
		t.Fatal(err)
	}
	var plan attackPlan
	if err := json.Unmarshal(b, &plan); err != nil {
		t.Fatal(err)
	}
	out := os.NewFile(3, "reports")
	defer out.Close()
	fleet, err := mesh.ParseToken(plan.Token)
	if err != nil {
		t.Fatal(err)
	}
	var honest []peer.AddrInfo
	for _, s := range plan.Peers {
		ai, err := peer.AddrInfoFromString(s)
		if err != nil {
			t.Fatal(err)
		}
		honest = append(honest, *ai)
	}
	enc := json.NewEncoder(out)
	for _, bc := range badChanges {
		rep := attackWith(fleet, honest, &plan, bc)
		if err := enc.Encode(rep); err != nil {
			t.Fatal(err)
		}
	}
}

// makeBad writes variant v of bc into a fresh copy of the fleet document
// and commits it.
func makeBad(p *attackPlan, bc badChange, k crypto.PrivKey, v int) (*am.Doc, *am.Change, error) {
	doc, err := am.Load(p.Doc)
	if err != nil {
		return nil, nil, err
	}
	msg, err := bc.write(doc.RootMap(), p, k, v)
	if err != nil {
		return nil, nil, err
	}
	if msg == "" {
		msg = bc.kind
	}
	h, err := doc.Commit(msg)
	if err != nil {
		return nil, nil, err
	}
	ch, err := doc.Change(h)
	return doc, ch, err
}

// attackWith joins the fleet under a fresh identity and sends bc's
// changes: by sync to every honest node, then by gossip. It then waits to
// be cut off, and dials every honest node again.
func attackWith(fleet *mesh.Fleet, honest []peer.AddrInfo, plan *attackPlan, bc badChange) (rep attackReport) {
	rep = attackReport{Kind: bc.kind, Sync: map[string]string{}, Redial: map[string]string{}}
	fail := func(err error) attackReport { rep.Err = err.Error(); return rep }
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return fail(err)
	}
	doc0, ch0, err := makeBad(plan, bc, key, 0)
	if err != nil {
		return fail(fmt.Errorf("make the bad change: %w", err))
	}
	_, ch1, err := makeBad(plan, bc, key, 1)
	if err != nil {
		return fail(fmt.Errorf("make the bad change: %w", err))
	}
	rep.Hashes = []string{ch0.Hash().String(), ch1.Hash().String()}

	gate := mesh.NewGate()
	h, err := mesh.NewHost(mesh.HostConfig{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, Gate: gate})
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	rep.Peer = h.ID().String()
	ctx, cancel := context.WithCancel(context.Background())
	auth := mesh.NewAuth(mesh.AuthConfig{Host: h, Fleet: fleet, Gate: gate, Logger: zerolog.Nop()})
	authDone := make(chan struct{})
	go func() { defer close(authDone); _ = auth.Run(ctx) }()
	defer func() { cancel(); <-authDone }()
	ps, err := mesh.NewPubSub(ctx, h, slog.New(slog.DiscardHandler))
	if err != nil {
		return fail(err)
	}
	topicName := fleet.Topic("doc/1")
	topic, err := ps.Join(topicName)
	if err != nil {
		return fail(err)
	}
	defer topic.Close()

	for _, ai := range honest {
		cctx, c := context.WithTimeout(ctx, 5*time.Second)
		err := h.Connect(cctx, ai)
		c()
		if err != nil {
			return fail(fmt.Errorf("connect to %s: %w", ai.ID, err))
		}
		if !auth.WaitAuthenticated(ctx, ai.ID, 10*time.Second) {
			return fail(fmt.Errorf("%s did not authenticate us", ai.ID))
		}
	}

	// By sync first: a refusal pauses anti-entropy with the sender, not
	// gossip.
	for _, ai := range honest {
		rep.Sync[ai.ID.String()] = syncBad(ctx, h, ai.ID, fleet.Protocol("sync/2"), doc0, ch0.Hash())
	}

	// Then by gossip, to every honest node at once (flood publishing),
	// as soon as each has told us it is on the topic.
	if !pollUntil(5*time.Second, func() bool {
		on := topic.ListPeers()
		return !slices.ContainsFunc(honest, func(ai peer.AddrInfo) bool { return !slices.Contains(on, ai.ID) })
	}) {
		return fail(fmt.Errorf("honest nodes on the document topic: %v of %d", topic.ListPeers(), len(honest)))
	}
	for _, ch := range []*am.Change{ch0, ch1} {
		if err := topic.Publish(ctx, fleet.Seal(docChangeMsg(ch), topicName)); err != nil {
			return fail(fmt.Errorf("publish: %w", err))
		}
		rep.Gossip++
	}

	cut := func() []string {
		var out []string
		for _, ai := range honest {
			if h.Network().Connectedness(ai.ID) != network.Connected {
				out = append(out, ai.ID.String())
			}
		}
		return out
	}
	pollUntil(attackCutAfter, func() bool { return len(cut()) == len(honest) })
	rep.Cut = cut()

	for _, ai := range honest {
		if !gate.Allowed(ai.ID) {
			rep.Redial[ai.ID.String()] = "not tried: our own gate refuses it"
			continue
		}
		cctx, c := context.WithTimeout(ctx, 3*time.Second)
		err := h.Connect(cctx, ai)
		c()
		if err != nil {
			rep.Redial[ai.ID.String()] = redialRefused + ": " + err.Error()
			continue
		}
		// Our side may finish the handshake (the muxer is agreed inside
		// Noise's) before the honest gate, which judges the connection
		// once it is secured, closes it.
		pollUntil(3*time.Second, func() bool {
			return auth.IsAuthenticated(ai.ID) || h.Network().Connectedness(ai.ID) != network.Connected
		})
		switch {
		case auth.IsAuthenticated(ai.ID):
			rep.Redial[ai.ID.String()] = "connected and authenticated"
		case h.Network().Connectedness(ai.ID) != network.Connected:
			rep.Redial[ai.ID.String()] = redialRefused + ": closed as soon as it was made, before authentication"
		default:
			rep.Redial[ai.ID.String()] = "connected for 3 s without authenticating"
		}
	}
	return rep
}

// docChangeMsg is a change as the replicator gossips it (mesh/wire.go):
// 0x01 | hash | ndeps | deps | change, before the seal.
func docChangeMsg(ch *am.Change) []byte {
	hash := ch.Hash()
	b := append([]byte{0x01}, hash[:]...)
	deps := ch.Dependencies()
	b = append(b, byte(len(deps)))
	for _, d := range deps {
		b = append(b, d[:]...)
	}
	return append(b, ch.Save()...)
}

// syncBad runs automerge's sync protocol as the initiator of a session
// with p (framing: crdt/sync.go) over doc, which holds the bad change, and
// says how the session ended.
func syncBad(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID, doc *am.Doc, bad am.ChangeHash) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		return "no stream: " + err.Error()
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	ss := am.NewSyncState(doc)
	br := bufio.NewReader(s)
	offered := false
	if err := frame.Write(s, crdt.EncodeSyncHello(crdt.Epoch{})); err != nil {
		return "failed before the bad change was offered: " + err.Error()
	}
	if _, err := frame.Read(br, 64); err != nil {
		return "failed before the bad change was offered: " + err.Error()
	}
	ended := func(err error) string {
		switch {
		case !offered && err != nil:
			return "failed before the bad change was offered: " + err.Error()
		case !offered:
			return "settled without offering the bad change"
		case err != nil:
			return syncRefused + ": " + err.Error()
		}
		return "accepted: the session settled after the bad change was offered"
	}
	for range 64 {
		m, ok := ss.GenerateMessage()
		var msg []byte
		if ok {
			msg = m.Bytes()
			for _, c := range m.Changes() {
				offered = offered || c.Hash() == bad
			}
		}
		if err := frame.Write(s, msg); err != nil {
			return ended(err)
		}
		in, err := frame.Read(br, crdt.MaxSyncFrame)
		if err != nil {
			return ended(err)
		}
		if !ok && len(in) == 0 {
			return ended(nil)
		}
		if len(in) > 0 {
			if _, err := ss.ReceiveMessage(in); err != nil {
				return "the honest node's sync message does not load: " + err.Error()
			}
		}
	}
	return "did not settle in 64 rounds"
}

// pollUntil polls cond every 20 ms until it holds or d passes.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// procStatusKB reads a "kB" field of /proc/self/status (VmRSS, VmHWM).
func procStatusKB(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/self/status %s: %q: %v", field, rest, err)
			}
			return v
		}
	}
	t.Fatalf("/proc/self/status has no %s", field)
	return 0
}

// memory is the process's resident memory (VmRSS) and its peak (VmHWM),
// in kB.
type memory struct{ rss, hwm int64 }

func readMemory(t *testing.T) memory {
	return memory{rss: procStatusKB(t, "VmRSS"), hwm: procStatusKB(t, "VmHWM")}
}

// memoryBudgetKB is how much the attack may grow the process's VmRSS: 20
// MB per honest node in it, five times that under the race detector,
// which multiplies a program's memory ("5-10x", says its documentation)
// and keeps its shadow memory resident.
//
// Per node, not 20 MB for the process: refusing costs the honest nodes
// something even when nothing goes wrong. With three nodes in one process,
// each receives the 200 KB bomb and the 300 KB name three times (by sync,
// and by gossip from the attacker and from each other: GossipSub relays a
// change before the document refuses it), and the garbage that leaves
// lets the heap grow to its GC goal. Measured on code that refuses
// everything early: about +22-25 MB without the race detector, +80 MB
// with it. A decoder that materialised the bomb's 200,000 operations
// before refusing it (35 MB each time) grew VmRSS by +150 MB, +620 MB
// under the race detector.
func memoryBudgetKB(nodes int) int64 {
	kb := int64(nodes) * 20 << 10
	if raceDetector() {
		kb *= 5
	}
	return kb
}

// raceDetector reports whether this binary was built with -race.
func raceDetector() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// startAttacker runs the attacker process on plan; its reports arrive on
// the channel, which closes when the process closes its end.
func startAttacker(t *testing.T, plan attackPlan) (<-chan attackReport, func() error) {
	t.Helper()
	b, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	planPath := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(planPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMaliciousMemberProcess$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), attackerEnv+"="+planPath)
	cmd.ExtraFiles = []*os.File{w}
	var output testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	reports := make(chan attackReport)
	t.Cleanup(func() {
		select {
		case <-waited:
		default:
			_ = cmd.Process.Kill()
			<-waited
		}
		for range reports { // unread if the test stopped early
		}
		t.Logf("attacker process output:\n%s", output.String())
	})
	go func() {
		defer close(reports)
		defer r.Close()
		dec := json.NewDecoder(r)
		for {
			var rep attackReport
			if err := dec.Decode(&rep); err != nil {
				if !errors.Is(err, io.EOF) {
					rep = attackReport{Err: "reading the attacker's reports: " + err.Error()}
					reports <- rep
				}
				return
			}
			reports <- rep
		}
	}()
	wait := func() error {
		select {
		case err := <-waited:
			waited <- err
			return err
		case <-time.After(20 * time.Second):
			return errors.New("the attacker process did not exit within 20 s of its last report")
		}
	}
	return reports, wait
}

// badEventLog collects the peer.bad_change events of every honest node.
type badEventLog struct {
	mu     sync.Mutex
	byNode [][]Event
}

func collectBadEvents(t *testing.T, nodes []*Node) *badEventLog {
	l := &badEventLog{byNode: make([][]Event, len(nodes))}
	var (
		wg      sync.WaitGroup
		cancels []func()
	)
	t.Cleanup(func() {
		for _, cancel := range cancels {
			cancel()
		}
		wg.Wait()
	})
	for i, n := range nodes {
		ch, cancel := n.Events.Subscribe(4096)
		cancels = append(cancels, cancel)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				if ev.Type == EventPeerBadChange {
					l.mu.Lock()
					l.byNode[i] = append(l.byNode[i], ev)
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

// seen returns, for honest node i, the (rule, via) pairs of the events
// naming p.
func (l *badEventLog) seen(i int, p string) map[[2]string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[[2]string]int{}
	for _, ev := range l.byNode[i] {
		if fmt.Sprint(ev.Data["peer"]) == p {
			out[[2]string{fmt.Sprint(ev.Data["rule"]), fmt.Sprint(ev.Data["via"])}]++
		}
	}
	return out
}

// struckOut says whether one of honest node i's events about p says it
// was disconnected for it.
func (l *badEventLog) struckOut(i int, p string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.byNode[i], func(ev Event) bool {
		return fmt.Sprint(ev.Data["peer"]) == p && ev.Data["disconnected"] == true
	})
}

// reported says whether honest node i reported p's change by both paths
// under rule.
func (l *badEventLog) reported(i int, p, rule string) bool {
	s := l.seen(i, p)
	return s[[2]string{rule, mesh.ViaSync}] > 0 && s[[2]string{rule, mesh.ViaGossip}] > 0
}

// recordAt returns the bytes at nodes/<id> of a saved document.
func recordAt(t *testing.T, doc []byte, id string) []byte {
	t.Helper()
	return bytesAt(t, doc, "nodes/"+id)
}

// bytesAt returns the bytes value at a root key of a saved document.
func bytesAt(t *testing.T, doc []byte, key string) []byte {
	t.Helper()
	d, err := am.Load(doc)
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.Path(key).Get()
	if err != nil || v.Kind() != am.KindBytes {
		t.Fatalf("%s: %v (%v); want a record's bytes", key, v, err)
	}
	return v.Bytes()
}

// changeMessage returns the message of change h in a saved document.
func changeMessage(t *testing.T, doc []byte, h crdt.Hash) string {
	t.Helper()
	d, err := am.Load(doc)
	if err != nil {
		t.Fatal(err)
	}
	ah, err := am.NewChangeHash(h.String())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := d.Change(ah)
	if err != nil {
		t.Fatalf("change %s: %v", h, err)
	}
	return ch.Message()
}

// Not parallel: the memory it measures is the whole process's, and another
// test's cluster starting meanwhile would be counted as the attack's.
func TestMaliciousMember(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skipf("no /proc/self/status to measure memory with: %v", err)
	}
	c := newCluster(t, 3)
	a, b := c.nodes[0], c.nodes[1]
	allKnown := func() bool {
		for _, n := range c.nodes {
			if ns, err := n.Doc.Nodes(); err != nil || len(ns) != len(c.nodes) {
				return false
			}
		}
		return true
	}
	waitFor(t, 30*time.Second, "the fleet to form", func() bool { return c.allAuthenticated(2) && c.converged() && allKnown() })

	// B writes its record twice: the attacker replays the first write,
	// with B's signature, once the second is in force.
	victim := b.ID().String()
	rec, ok, err := b.Doc.Node(victim)
	if err != nil || !ok {
		t.Fatalf("B's record: %v %v", ok, err)
	}
	writeB := func() crdt.Hash {
		rec.LastSeenMs++
		h, err := b.Doc.Update("node record", func(tx *crdt.Tx) error { tx.SetNode(victim, rec); return nil })
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	first := writeB()
	docB := docBytes(t, b)
	stale := recordAt(t, docB, victim)
	staleMsg := changeMessage(t, docB, first)
	staleAttest := bytesAt(t, docB, "nodes/"+victim+"/attest")
	writeB()
	waitFor(t, 20*time.Second, "B's newer record everywhere", func() bool {
		for _, n := range c.nodes {
			if r, ok, _ := n.Doc.Node(victim); !ok || r.LastSeenMs != rec.LastSeenMs {
				return false
			}
		}
		return c.converged()
	})
	snapshot := docBytes(t, a)
	inForce := recordAt(t, snapshot, victim)
	if bytes.Equal(inForce, stale) {
		t.Fatal("B's record did not change")
	}
	before, err := am.Load(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	heads0 := before.Heads()
	honestActors := map[string]bool{}
	history, err := before.Changes()
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range history {
		honestActors[ch.ActorID()] = true
	}
	for i, n := range c.nodes {
		for _, h := range heads0 {
			if ph, _ := crdt.ParseHash(h.String()); !n.Doc.HasAll([]crdt.Hash{ph}) {
				t.Fatalf("node %d lacks head %s of the document the attacker starts from", i, h)
			}
		}
	}

	var peers []string
	for _, n := range c.nodes {
		for _, s := range n.Addrs() {
			if strings.Contains(s, "/tcp/") {
				peers = append(peers, s)
				break
			}
		}
	}
	events := collectBadEvents(t, c.nodes)
	mem0 := readMemory(t)

	reports, waitAttacker := startAttacker(t, attackPlan{Token: c.token, Peers: peers, Doc: snapshot, Victim: victim, Stale: stale, StaleAttest: staleAttest, StaleMsg: staleMsg})
	var (
		got         []attackReport
		honestWrite crdt.Hash
		wroteAt     time.Time
		arrivedAt   time.Time
	)
	calmArrived := func() bool {
		for _, n := range c.nodes[1:] {
			if r, ok, _ := n.Doc.Room("calm"); !ok || r.State["during-attack"] != "ok" {
				return false
			}
		}
		return true
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(50 * time.Second)
attack:
	for {
		select {
		case rep, open := <-reports:
			if !open {
				break attack
			}
			if rep.Err != "" {
				t.Errorf("attacker (%s, %s): %s", rep.Kind, rep.Peer, rep.Err)
			}
			got = append(got, rep)
			if len(got) == 1 {
				// Honest traffic during the attack: a write on node 0.
				if honestWrite, err = a.Doc.Update("during the attack", func(tx *crdt.Tx) error {
					tx.SetRoomState("calm", "during-attack", "ok")
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				wroteAt = time.Now()
			}
		case <-tick.C:
			if !wroteAt.IsZero() && arrivedAt.IsZero() && calmArrived() {
				arrivedAt = time.Now()
			}
		case <-deadline:
			t.Fatalf("the attack did not end within 50 s; %d of %d identities reported", len(got), len(badChanges))
		}
	}
	if err := waitAttacker(); err != nil {
		t.Errorf("attacker process: %v", err)
	}
	if len(got) != len(badChanges) || wroteAt.IsZero() {
		t.Fatalf("the attacker reported %d identities, want %d", len(got), len(badChanges))
	}
	if arrivedAt.IsZero() {
		waitFor(t, 15*time.Second, "node 0's write during the attack on nodes 1 and 2", calmArrived)
		t.Logf("node 0's write reached nodes 1 and 2 after the attack ended (%v after it was made)", time.Since(wroteAt).Round(time.Millisecond))
	} else {
		t.Logf("node 0's write reached nodes 1 and 2 during the attack, %v after it was made", arrivedAt.Sub(wroteAt).Round(time.Millisecond))
	}

	// Give the bad changes every chance to do damage: wait until every
	// honest node has reported every identity by both paths (bounded:
	// without reporting, the checks below say what is missing).
	allReported := func() bool {
		for i := range c.nodes {
			for k, rep := range got {
				if !events.reported(i, rep.Peer, badChanges[k].rule) {
					return false
				}
			}
		}
		return true
	}
	pollUntil(10*time.Second, allReported)
	waitFor(t, 20*time.Second, "the honest nodes to converge after the attack", func() bool { return c.converged() })

	// Memory: the attack may not cost the honest nodes 20 MB each.
	mem1 := readMemory(t)
	budget := memoryBudgetKB(len(c.nodes))
	t.Logf("VmRSS %d kB before the attack, %d kB after (%+d kB, budget %d kB); VmHWM %d kB, %d kB (%+d kB)",
		mem0.rss, mem1.rss, mem1.rss-mem0.rss, budget, mem0.hwm, mem1.hwm, mem1.hwm-mem0.hwm)
	if grew := mem1.rss - mem0.rss; grew >= budget {
		t.Errorf("VmRSS grew by %d kB across the attack; the budget is %d kB (20 MB per honest node%s)", grew, budget, map[bool]string{true: ", x5 under the race detector"}[raceDetector()])
	}

	for k, rep := range got {
		bc := badChanges[k]
		if rep.Kind != bc.kind {
			t.Fatalf("report %d is of %q, want %q", k, rep.Kind, bc.kind)
		}
		t.Logf("%-22s %s rule %-9s sync %v; gossip %d; cut by %d; redial %v", bc.kind, rep.Peer, bc.rule, rep.Sync, rep.Gossip, len(rep.Cut), rep.Redial)
		for _, s := range rep.Hashes {
			h, err := crdt.ParseHash(s)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range c.nodes {
				if n.Doc.HasAll([]crdt.Hash{h}) {
					t.Errorf("%s: node %d holds the bad change %s", bc.kind, i, s)
				}
			}
		}
		for _, n := range c.nodes {
			if s := rep.Sync[n.ID().String()]; !strings.HasPrefix(s, syncRefused) {
				t.Errorf("%s by sync to %s: %s; want the session cut once the change was offered", bc.kind, n.ID(), s)
			}
		}
		if rep.Gossip != 2 {
			t.Errorf("%s: %d changes gossiped, want 2", bc.kind, rep.Gossip)
		}
	}

	// The documents: nothing of the attack, by the typed readers and in
	// GET /v1/doc; heads moved only by honest writes.
	for i, n := range c.nodes {
		checkHonestDoc(t, i, n, victim, rec, inForce, heads0, honestActors, honestWrite)
	}

	// The sender reported (peer.bad_change, meshnode_bad_changes_total),
	// disconnected and kept out.
	checkReported(t, c, events, got)
}

// checkHonestDoc checks that honest node i's document holds nothing of
// the attack.
func checkHonestDoc(t *testing.T, i int, n *Node, victim string, rec crdt.NodeRecord, inForce []byte, heads0 []am.ChangeHash, honestActors map[string]bool, honestWrite crdt.Hash) {
	t.Helper()
	if r, ok, err := n.Doc.Node(victim); err != nil || !ok || !r.Alive || r.LastSeenMs != rec.LastSeenMs || r.Name != rec.Name {
		t.Errorf("node %d: B's record reads %+v %v %v; want B's own newest, alive", i, r, ok, err)
	}
	if nodes, err := n.Doc.Nodes(); err != nil || len(nodes) != 3 {
		t.Errorf("node %d: %d node records (%v), want 3", i, len(nodes), err)
	}
	if r, ok, err := n.Doc.Room(malTopic); ok || err != nil {
		t.Errorf("node %d: room %q reads %+v (%v); want none", i, malTopic, r, err)
	}
	if rooms, err := n.Doc.Rooms(); err == nil {
		for topic, r := range rooms {
			for k, v := range r.State {
				if len(k) > 256 || len(v) > crdt.MaxRoomStateValue {
					t.Errorf("node %d: room %q state key of %d bytes, value of %d", i, topic, len(k), len(v))
				}
			}
		}
	}
	if it, ok, err := n.Doc.Item(malItem); ok || err != nil {
		t.Errorf("node %d: item %q reads name of %d bytes (%v); want none", i, malItem, len(it.Name), err)
	}

	doc, err := am.Load(docBytes(t, n))
	if err != nil {
		t.Fatalf("node %d: GET /v1/doc does not load: %v", i, err)
	}
	keys, err := doc.RootMap().Keys()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "evil/") || strings.HasPrefix(k, "rooms/"+malTopic+"/") || strings.HasPrefix(k, "library/"+malItem+"/") || len(k) > 300 {
			t.Errorf("node %d: GET /v1/doc has the attacker's key %.80q", i, k)
		}
	}
	if v, err := doc.Path("nodes/" + victim).Get(); err != nil || v.Kind() != am.KindBytes || !bytes.Equal(v.Bytes(), inForce) {
		t.Errorf("node %d: GET /v1/doc nodes/<B> is %v (%v); want B's own newest record", i, v.Kind(), err)
	}
	since, err := doc.Changes(heads0...)
	if err != nil {
		t.Fatal(err)
	}
	wrote, foreign := false, 0
	for _, ch := range since {
		h, _ := crdt.ParseHash(ch.Hash().String())
		wrote = wrote || h == honestWrite
		if !honestActors[ch.ActorID()] {
			foreign++
			t.Errorf("node %d: change %s (%.40q) since the attack began is not an honest node's", i, ch.Hash(), ch.Message())
		}
	}
	if !wrote {
		t.Errorf("node %d: node 0's write during the attack is not in GET /v1/doc", i)
	}
	t.Logf("node %d: %d changes since the attack began, %d of them not an honest node's; heads %v", i, len(since), foreign, n.Doc.HeadStrings())
}

// checkReported checks that every honest node reported every identity
// with its kind's rule by both paths, counted it in its metrics, and cut
// it off for good.
func checkReported(t *testing.T, c *cluster, events *badEventLog, got []attackReport) {
	t.Helper()
	for i, n := range c.nodes {
		vals, _ := scrapeText(t, n.metrics.handler())
		want := map[[2]string]float64{}
		for k, rep := range got {
			rule := badChanges[k].rule
			want[[2]string{rule, mesh.ViaSync}]++
			want[[2]string{rule, mesh.ViaGossip}]++
			if !events.reported(i, rep.Peer, rule) {
				t.Errorf("node %d: %s (%s) reported as %v; want rule %s by %s and by %s", i, rep.Peer, badChanges[k].kind, events.seen(i, rep.Peer), rule, mesh.ViaSync, mesh.ViaGossip)
			}
			for rv := range events.seen(i, rep.Peer) {
				if rv[0] != rule {
					t.Errorf("node %d: %s (%s) reported under rule %s; want %s", i, rep.Peer, badChanges[k].kind, rv[0], rule)
				}
			}
			p, err := peer.Decode(rep.Peer)
			if err != nil {
				t.Fatal(err)
			}
			if !events.struckOut(i, rep.Peer) {
				t.Errorf("node %d: no %s event says %s (%s) was disconnected", i, EventPeerBadChange, p, badChanges[k].kind)
			}
			if n.Host.Network().Connectedness(p) == network.Connected {
				t.Errorf("node %d: still connected to %s (%s)", i, p, badChanges[k].kind)
			}
			if n.Gate.Allowed(p) {
				t.Errorf("node %d: its gate lets %s (%s) back in", i, p, badChanges[k].kind)
			}
		}
		for rv, least := range want {
			name := fmt.Sprintf("meshnode_bad_changes_total{rule=%q,via=%q}", rv[0], rv[1])
			if v := vals[name]; v < least {
				t.Errorf("node %d: %s = %v; want at least %v", i, name, v, least)
			}
		}
	}
	for _, rep := range got {
		if len(rep.Cut) != len(c.nodes) {
			t.Errorf("%s (%s): cut off by %d of %d honest nodes", rep.Peer, rep.Kind, len(rep.Cut), len(c.nodes))
		}
		for p, s := range rep.Redial {
			if !strings.HasPrefix(s, redialRefused) {
				t.Errorf("%s (%s) dialling %s again: %s; want refused", rep.Peer, rep.Kind, p, s)
			}
		}
	}
}
