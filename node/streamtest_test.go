package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// POST /v1/debug/stream-test pulls exactly the bytes asked for from
// another member over a raw stream and names the transport; bad bodies and
// peers it cannot test against get 400; a peer refuses a test over the cap.
// With to_disk the bytes go through a file in the receiver's data dir,
// which is gone after (and so is a file a killed daemon left there).
func TestStreamTest(t *testing.T) {
	c := newCluster(t, 2)
	c.waitFormed(t, 1)
	a, b := c.nodes[0], c.nodes[1]
	waitFor(t, 10*time.Second, "a to see b authenticated", func() bool { return a.Auth.IsAuthenticated(b.ID()) })

	const size = 3<<20 + 12345 // not a whole number of the sender's blocks
	call := contractDo(t, a, "POST", "/v1/debug/stream-test", strings.NewReader(fmt.Sprintf(`{"peer": %q, "bytes": %d}`, b.ID(), size)))
	if call.status != 200 {
		t.Fatalf("stream test answered %d %s", call.status, call.body)
	}
	var res StreamTestResult
	if err := json.Unmarshal(call.body, &res); err != nil {
		t.Fatalf("answer %s: %v", call.body, err)
	}
	if res.Peer != b.ID().String() || res.Bytes != size || res.Seconds <= 0 || res.MBPerSec <= 0 {
		t.Errorf("answer %+v: want peer %s, %d bytes, a time and a rate", res, b.ID(), size)
	}
	if res.Transport != "quic" && res.Transport != "tcp" {
		t.Errorf("transport %q, want quic or tcp", res.Transport)
	}
	if res.ToDisk {
		t.Errorf("answer %s: to_disk without asking", call.body)
	}

	// to_disk: the file holds exactly the bytes sent (seen after the
	// fsync), mode 0600, and is gone after with its folder; so is a file
	// a killed daemon left there.
	tmp := filepath.Join(a.cfg.DataDir, dirStreamTest)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "stream-test-123"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var written []string
	streamTestWritten = func(path string) {
		written = append(written, path)
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("stream test file: %v", err)
			return
		}
		if filepath.Dir(path) != tmp || fi.Mode().Perm() != 0o600 {
			t.Errorf("stream test file %s mode %v, want one in %s, 0600", path, fi.Mode().Perm(), tmp)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("stream test file: %v", err)
			return
		}
		data := streamTestData()
		want := bytes.Repeat(data, len(got)/len(data)+1)[:size]
		if !bytes.Equal(got, want) {
			t.Errorf("stream test file holds %d bytes, want the %d sent", len(got), size)
		}
	}
	t.Cleanup(func() { streamTestWritten = nil })
	call = contractDo(t, a, "POST", "/v1/debug/stream-test", strings.NewReader(fmt.Sprintf(`{"peer": %q, "bytes": %d, "to_disk": true}`, b.ID(), size)))
	if call.status != 200 {
		t.Fatalf("stream test to disk answered %d %s", call.status, call.body)
	}
	res = StreamTestResult{}
	if err := json.Unmarshal(call.body, &res); err != nil {
		t.Fatalf("answer %s: %v", call.body, err)
	}
	if res.Peer != b.ID().String() || res.Bytes != size || res.Seconds <= 0 || res.MBPerSec <= 0 || !res.ToDisk {
		t.Errorf("answer %s: want peer %s, %d bytes, a time, a rate and to_disk", call.body, b.ID(), size)
	}
	if len(written) != 1 {
		t.Errorf("%d stream test files seen, want 1", len(written))
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(tmp)
		t.Errorf("%s after the test: %v, entries %v; want it gone", tmp, err, ents)
	}

	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ what, body, code string }{
		{"not JSON", `peer=x`, "bad_body"},
		{"an unknown field", `{"peer": "` + b.ID().String() + `", "size": 5}`, "bad_body"},
		{"no peer", `{"bytes": 5}`, "bad_body"},
		{"negative bytes", `{"peer": "` + b.ID().String() + `", "bytes": -1}`, "bad_body"},
		{"over 64 GiB", `{"peer": "` + b.ID().String() + `", "bytes": 68719476737}`, "bad_body"},
		{"a peer ID that does not decode", `{"peer": "nobody"}`, "bad_peer"},
		{"this node", `{"peer": "` + a.ID().String() + `"}`, "bad_peer"},
		{"a peer with no connection", `{"peer": "` + stranger.String() + `"}`, "bad_peer"},
	} {
		call := contractDo(t, a, "POST", "/v1/debug/stream-test", strings.NewReader(tc.body))
		call.wantError(t, tc.what, 400, tc.code)
		t.Logf("%s: %s", tc.what, call.err.Error.Message)
	}

	// The server side checks the cap too: a test over it is reset, not served.
	if res, err := a.StreamTest(t.Context(), b.ID(), StreamTestMax+1, false); err == nil {
		t.Errorf("a stream test over the cap was served: %+v", res)
	}
}
