package node

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/transfer"
)

// API response types, shared with the CLI.

// Status is GET /v1/status.
type Status struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Fleet     string   `json:"fleet"`
	Addrs     []string `json:"addrs"`
	Heads     []string `json:"heads"`
	DocBytes  int64    `json:"doc_bytes"`
	UptimeSec float64  `json:"uptime_s"`
	Peers     int      `json:"peers"`
	// Document is the state of the document's files on this node.
	Document DocumentStatus `json:"document"`
}

// DocumentStatus is the document section of GET /v1/status.
type DocumentStatus struct {
	// Damage is what recovery found in the document's files at this
	// start, one entry per damaged file; empty when they were intact.
	Damage []crdt.Damage `json:"damage"`
	// WaitingRecords counts change-log records kept because the changes
	// they depend on are missing here; they apply once a peer brings them.
	WaitingRecords int `json:"waiting_records"`
	// Epoch is how many times the fleet has cut the document's history,
	// and EpochID the cut's ID (empty for epoch 0). StateBytes is the size
	// of the keys and values in force, FreshBytes what the document took
	// on disk right after the last cut (0 until known); HistoryShare the
	// share of the document on disk that is history. NextEpoch is the
	// epoch a cut proposal in the document would start (0: none).
	Epoch        uint64  `json:"epoch"`
	EpochID      string  `json:"epoch_id,omitempty"`
	StateBytes   int64   `json:"state_bytes"`
	FreshBytes   int64   `json:"fresh_bytes"`
	HistoryShare float64 `json:"history_share"`
	Switches     uint64  `json:"epoch_switches"`
	NextEpoch    uint64  `json:"next_epoch"`
}

// damageData is the data of a doc.damaged event: the Damage's fields.
func damageData(d crdt.Damage) map[string]any {
	m := map[string]any{"file": d.File, "problem": d.Problem, "lost": d.Lost}
	if d.KeptAs != "" {
		m["kept_as"] = d.KeptAs
	}
	return m
}

// NodeInfo is one entry of GET /v1/nodes.
type NodeInfo struct {
	ID string `json:"id"`
	crdt.NodeRecord
	// State is alive, stale or left: from heartbeats, which are
	// authoritative; the document's alive flag is only a hint.
	State       string `json:"state"`
	LastHeardMs int64  `json:"last_heard_ms,omitempty"`
	Self        bool   `json:"self,omitempty"`
}

// PeerInfo is one entry of GET /v1/peers.
type PeerInfo struct {
	ID            string `json:"id"`
	Addr          string `json:"addr"`
	Transport     string `json:"transport"`
	Direction     string `json:"direction"`
	Authenticated bool   `json:"authenticated"`
	OpenedMs      int64  `json:"opened_ms"`
}

// APIError is the body of every error response.
type APIError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// indentMax is the largest answer written indented, for people reading
// it with curl; larger ones (a library of 100,000 holder entries is
// 7 MB) are written compact, which halves their cost.
const indentMax = 256 << 10

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	b, err := json.Marshal(v)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `{"error":{"code":"encode","message":%q}}`+"\n", err.Error())
		return
	}
	if len(b) <= indentMax {
		var ib bytes.Buffer
		if json.Indent(&ib, b, "", "  ") == nil {
			b = ib.Bytes()
		}
	}
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var e APIError
	e.Error.Code, e.Error.Message = code, msg
	writeJSON(w, status, e)
}

// docWriteError answers a document write that failed: 400 for a key or
// value the schema refuses, 507 when the disk holding the data dir is
// full, 500 for any other write failure (whose message names the file).
// Every handler that writes the document answers its errors through it.
func (n *Node) docWriteError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, crdt.ErrInvalidKey) || errors.Is(err, crdt.ErrInvalidValue):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
	case errors.Is(err, crdt.ErrDiskFull):
		writeError(w, http.StatusInsufficientStorage, "disk_full",
			fmt.Sprintf("the disk holding the data dir %s is full and nothing was written: free space there and retry (%v)", n.cfg.DataDir, err))
	default:
		writeError(w, http.StatusInternalServerError, "doc_write", err.Error())
	}
}

func (n *Node) apiHandler() http.Handler {
	mux := http.NewServeMux()
	for path, h := range map[string]http.HandlerFunc{
		"/v1/status": n.handleStatus,
		"/v1/nodes":  n.handleNodes,
		"/v1/peers":  n.handlePeers,
		"/v1/mesh":   n.handleMesh,
		"/v1/doc":    n.handleDoc,
		"/v1/events": n.handleEvents,
		"/metrics":   n.metrics.handler().ServeHTTP,
	} {
		mux.HandleFunc("GET "+path, h)
	}
	mux.HandleFunc("POST /v1/doc/changes", n.handlePostChanges)
	mux.HandleFunc("GET /v1/library", n.handleLibrary)
	mux.HandleFunc("POST /v1/items/{id}/download", n.handleDownload)
	mux.HandleFunc("POST /v1/items/{id}/follow", n.handleFollow)
	mux.HandleFunc("DELETE /v1/items/{id}/follow", n.handleUnfollow)
	mux.HandleFunc("GET /v1/transfers", n.handleTransfers)
	mux.HandleFunc("GET /v1/transfers/{id}", n.handleTransfer)
	mux.HandleFunc("DELETE /v1/transfers/{id}", n.handleCancel)
	mux.HandleFunc("POST /v1/debug/stream-test", n.handleStreamTest)
	// Go's profiles, behind the token like every route: CPU
	// (?seconds=N), heap, allocs, goroutine, block, mutex.
	mux.HandleFunc("GET /v1/debug/pprof/profile", pprof.Profile)
	for _, name := range []string{"heap", "allocs", "goroutine", "block", "mutex"} {
		mux.Handle("GET /v1/debug/pprof/"+name, pprof.Handler(name))
	}
	mux.HandleFunc("GET /v1/rooms/{topic}/state", withTopic(n.handleRoomState))
	mux.HandleFunc("GET /v1/rooms/{topic}/state/{key}", withTopic(n.handleRoomStateKey))
	mux.HandleFunc("PUT /v1/rooms/{topic}/state/{key}", withTopic(n.handlePutRoomState))
	n.roomRoutes(mux)
	mux.HandleFunc("POST /v1/ui/code", n.handleUICode)
	mux.HandleFunc("POST /v1/ui/logout", n.handleUILogout)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.serveUI(w, r) {
			return
		}
		if !n.bearerOK(r) {
			if status, code, msg := n.cookieAuth(r); status != 0 {
				writeError(w, status, code, msg)
				return
			}
		}
		// ServeMux would answer these with a redirect and an empty body
		// (or, for %2E%2E, hand ".." to a handler as a topic or key).
		if seg, bad := badSegment(r.URL.EscapedPath()); bad {
			writeError(w, http.StatusBadRequest, "bad_path", fmt.Sprintf("path %s has an empty, \".\" or \"..\" segment (%q): topics, keys and IDs must not be empty, \".\" or \"..\"", r.URL.EscapedPath(), seg))
			return
		}
		if _, pattern := mux.Handler(r); pattern == "" {
			noRoute(mux, w, r)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			// Bounds the handler's reads of the body. The server clears
			// it once the body is read to its end (to watch for the
			// client going away) and before the next request.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(n.cfg.apiBodyTimeout))
		}
		mux.ServeHTTP(w, r)
	})
}

// badSegment finds an empty, "." or ".." segment of an escaped path
// (percent-encoded dots count as dots).
func badSegment(escaped string) (string, bool) {
	if escaped == "/" {
		return "", false // no endpoint, but a clean path: 404
	}
	for _, seg := range strings.Split(strings.TrimPrefix(escaped, "/"), "/") {
		un, err := url.PathUnescape(seg)
		if err != nil {
			un = seg
		}
		if un == "" || un == "." || un == ".." {
			return seg, true
		}
	}
	return "", false
}

// apiMethods are the methods the API's routes take.
var apiMethods = []string{"DELETE", "GET", "POST", "PUT"}

// noRoute answers a request no route takes: 405 with the methods the path
// takes if there are any, else 404; JSON either way.
func noRoute(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range apiMethods {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := mux.Handler(probe); pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) == 0 {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
		return
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s takes %s, not %s", r.URL.Path, strings.Join(allow, " or "), r.Method))
}

// readBody reads a request body of at most limit bytes, or answers: 413
// beyond the limit, 408 when the client sends it slower than the body
// timeout allows, 400 when it breaks off.
func readBody(w http.ResponseWriter, r *http.Request, limit int, what string) ([]byte, bool) {
	b, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeError(w, http.StatusRequestTimeout, "body_timeout", what+" arrived too slowly; send the whole body at once")
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_body", fmt.Sprintf("reading the %s: %v", what, err))
	case len(b) > limit:
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("%s is over %d bytes", what, limit))
	default:
		return b, true
	}
	return nil, false
}

// Status returns what GET /v1/status reports.
func (n *Node) Status() Status {
	return Status{
		ID: n.ID().String(), Name: n.cfg.Name, Fleet: n.Fleet.ID, Addrs: n.Addrs(),
		Heads: n.Doc.HeadStrings(), DocBytes: n.Doc.DiskBytes(),
		UptimeSec: time.Since(n.started).Seconds(), Peers: len(n.Host.Network().Peers()),
		Document: documentStatus(n.Doc),
	}
}

func documentStatus(d *crdt.Doc) DocumentStatus {
	ep := d.EpochStatus()
	s := DocumentStatus{
		Damage:         append([]crdt.Damage{}, d.Damage()...),
		WaitingRecords: d.WaitingRecords(),
		Epoch:          ep.Epoch.Num, StateBytes: ep.StateBytes, FreshBytes: ep.FreshBytes, HistoryShare: ep.HistoryShare,
		Switches: ep.Switches, NextEpoch: ep.NextCut.Num,
	}
	if ep.Epoch.Num > 0 {
		s.EpochID = ep.Epoch.ID.String()
	}
	return s
}

func (n *Node) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.Status())
}

// Nodes returns the fleet's nodes from the document with heartbeat state.
func (n *Node) Nodes() ([]NodeInfo, error) {
	recs, err := n.Doc.Nodes()
	if err != nil {
		return nil, err
	}
	// Heard peers by their string form: encoding the few heard is
	// cheaper than decoding every record's ID.
	heard := map[string]mesh.Member{}
	for p, m := range n.Membership.Members() {
		heard[p.String()] = m
	}
	self := n.ID().String()
	out := make([]NodeInfo, 0, len(recs))
	for id, rec := range recs {
		ni := NodeInfo{ID: id, NodeRecord: rec, State: mesh.StateStale}
		if !rec.Alive {
			ni.State = mesh.StateLeft
		}
		if m, ok := heard[id]; ok {
			ni.State, ni.LastHeardMs = m.State, m.LastHeard.UnixMilli()
		}
		if id == self {
			ni.State, ni.Self = mesh.StateAlive, true
		}
		out = append(out, ni)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.ID, b.ID)) })
	return out, nil
}

func (n *Node) handleNodes(w http.ResponseWriter, _ *http.Request) {
	nodes, err := n.Nodes()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "doc_read", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, nodes)
}

// Peers returns the live connections.
func (n *Node) Peers() []PeerInfo {
	out := []PeerInfo{}
	for _, c := range n.Host.Network().Conns() {
		out = append(out, PeerInfo{
			ID:            c.RemotePeer().String(),
			Addr:          c.RemoteMultiaddr().String(),
			Transport:     transportOf(c.RemoteMultiaddr()),
			Direction:     strings.ToLower(c.Stat().Direction.String()),
			Authenticated: n.Auth.IsAuthenticated(c.RemotePeer()),
			OpenedMs:      c.Stat().Opened.UnixMilli(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID+out[i].Addr < out[j].ID+out[j].Addr })
	return out
}

func transportOf(a ma.Multiaddr) string {
	t := "unknown"
	for _, c := range a {
		switch c.Protocol().Code {
		case ma.P_QUIC_V1:
			t = "quic-v1"
		case ma.P_TCP:
			t = "tcp"
		case ma.P_CIRCUIT:
			return "relay"
		}
	}
	return t
}

func (n *Node) handlePeers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.Peers())
}

func (n *Node) handleMesh(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.MeshStatus())
}

func (n *Node) handleDoc(w http.ResponseWriter, _ *http.Request) {
	b := n.Doc.Snapshot()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="meshnode-`+n.Fleet.ID+`.automerge"`)
	_, _ = w.Write(b)
}

func (n *Node) handleEvents(w http.ResponseWriter, r *http.Request) {
	ch, cancel := n.Events.Subscribe(256)
	defer cancel()
	streamSSE(n, w, r, "meshnode events", ch, func(ev Event) (string, any) { return ev.Type, ev })
}

// RoomStateValue is GET and PUT /v1/rooms/{topic}/state/{key}.
type RoomStateValue struct {
	Topic string `json:"topic"`
	Key   string `json:"key"`
	Value string `json:"value"`
	// Heads are the document heads after the write (PUT only).
	Heads []string `json:"heads,omitempty"`
}

func (n *Node) roomState(w http.ResponseWriter, topic string) (map[string]string, bool) {
	room, _, err := n.Doc.Room(topic)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "doc_read", err.Error())
		return nil, false
	}
	if room.State == nil {
		room.State = map[string]string{}
	}
	return room.State, true
}

func (n *Node) handleRoomState(w http.ResponseWriter, r *http.Request) {
	if st, ok := n.roomState(w, r.PathValue("topic")); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

func (n *Node) handleRoomStateKey(w http.ResponseWriter, r *http.Request) {
	topic, key := r.PathValue("topic"), r.PathValue("key")
	st, ok := n.roomState(w, topic)
	if !ok {
		return
	}
	v, ok := st[key]
	if !ok {
		writeError(w, http.StatusNotFound, "no_such_key", fmt.Sprintf("room %q has no state key %q", topic, key))
		return
	}
	writeJSON(w, http.StatusOK, RoomStateValue{Topic: topic, Key: key, Value: v})
}

// handlePutRoomState sets one room state key to the request body, in one
// document change that is on disk before the answer.
func (n *Node) handlePutRoomState(w http.ResponseWriter, r *http.Request) {
	topic, key := r.PathValue("topic"), r.PathValue("key")
	b, ok := readBody(w, r, crdt.MaxRoomStateValue, "room state value")
	if !ok {
		return
	}
	// The document holds only UTF-8; automerge would refuse the write
	// itself, as a failure indistinguishable from the disk's.
	if !utf8.ValidString(key) {
		writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("room state key %q is not UTF-8", key))
		return
	}
	if !utf8.Valid(b) {
		writeError(w, http.StatusBadRequest, "invalid", "room state value is not UTF-8 text")
		return
	}
	_, err := n.Doc.Update("room state", func(tx *crdt.Tx) error {
		tx.SetRoomState(topic, key, string(b))
		return nil
	})
	if err != nil {
		n.docWriteError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, RoomStateValue{Topic: topic, Key: key, Value: string(b), Heads: n.Doc.HeadStrings()})
}

func (n *Node) handleLibrary(w http.ResponseWriter, _ *http.Request) {
	v, err := n.Library.View()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "doc_read", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// DownloadRequest is the optional body of POST /v1/items/{id}/download.
type DownloadRequest struct {
	// Manifest pins a version; empty: the latest (the complete version
	// of the highest generation), and the download moves on to a newer
	// version published while it runs.
	Manifest string `json:"manifest"`
}

// FollowStatus answers POST and DELETE /v1/items/{id}/follow.
type FollowStatus struct {
	Item      string `json:"item"`
	Following bool   `json:"following"`
	transfer.FollowInfo
}

func (n *Node) handleFollow(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := transfer.ValidItemID(id); err != nil {
		writeError(w, http.StatusBadRequest, "bad_item", fmt.Sprintf("item %q: %v", id, err))
		return
	}
	fi, err := n.Library.Follow(id)
	if err != nil {
		n.followWriteError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, FollowStatus{Item: id, Following: true, FollowInfo: fi})
}

func (n *Node) handleUnfollow(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := transfer.ValidItemID(id); err != nil {
		writeError(w, http.StatusBadRequest, "bad_item", fmt.Sprintf("item %q: %v", id, err))
		return
	}
	err := n.Library.Unfollow(id)
	switch {
	case errors.Is(err, transfer.ErrNotFollowed):
		writeError(w, http.StatusNotFound, "not_followed", err.Error())
	case err != nil:
		n.followWriteError(w, err)
	default:
		writeJSON(w, http.StatusOK, FollowStatus{Item: id})
	}
}

// followWriteError answers a failed write of the followed items: 507 when
// the disk is full, 500 otherwise; the message names the file.
func (n *Node) followWriteError(w http.ResponseWriter, err error) {
	if errors.Is(err, transfer.ErrNoSpace) {
		writeError(w, http.StatusInsufficientStorage, "disk_full", fmt.Sprintf("%v: free space in the data dir %s and retry", err, n.cfg.DataDir))
		return
	}
	writeError(w, http.StatusInternalServerError, "follow_write", err.Error())
}

func (n *Node) handleDownload(w http.ResponseWriter, r *http.Request) {
	var req DownloadRequest
	b, ok := readBody(w, r, 4096, "download request")
	if !ok {
		return
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &req); err != nil {
			writeError(w, http.StatusBadRequest, "bad_body", "body must be JSON like {\"manifest\": \"<hash>\"}: "+err.Error())
			return
		}
	}
	t, err := n.Library.StartDownload(r.PathValue("id"), req.Manifest)
	switch {
	case errors.Is(err, transfer.ErrBusy):
		writeError(w, http.StatusConflict, "busy", err.Error())
	case errors.Is(err, transfer.ErrHeld):
		writeError(w, http.StatusConflict, "held", err.Error())
	case errors.Is(err, transfer.ErrNoHolder):
		writeError(w, http.StatusNotFound, "no_holder", err.Error())
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
	default:
		writeJSON(w, http.StatusAccepted, t)
	}
}

func (n *Node) handleTransfers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.Library.Transfers())
}

// apiContext is a request's context, also ended when the API shuts
// down, so that a long poll or a long test answers at once. Its
// goroutine ends with the context: the caller cancels it when done.
func (n *Node) apiContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-n.apiStopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// maxTransferWait bounds GET /v1/transfers/{id}?wait=D.
const maxTransferWait = 30 * time.Second

// handleTransfer answers GET /v1/transfers/{id}; with ?wait=D (a Go
// duration, at most 30s) it answers as soon as the transfer ends, or
// after D with its figures then, so a client follows it without polling
// behind its end.
func (n *Node) handleTransfer(w http.ResponseWriter, r *http.Request) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxTransferWait {
			writeError(w, http.StatusBadRequest, "bad_wait", fmt.Sprintf("wait=%q: want a duration from 0 to %v, such as 500ms", v, maxTransferWait))
			return
		}
		wait = d
	}
	ctx, cancel := n.apiContext(r.Context())
	defer cancel()
	ctx, cancelWait := context.WithTimeout(ctx, wait)
	defer cancelWait()
	t, ok := n.Library.WaitTransfer(ctx, r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no_such_transfer", "no transfer "+r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (n *Node) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := n.Library.TransferByID(id); !ok {
		writeError(w, http.StatusNotFound, "no_such_transfer", "no transfer "+id)
		return
	}
	if err := n.Library.Cancel(id); err != nil {
		writeError(w, http.StatusConflict, "not_running", err.Error())
		return
	}
	t, _ := n.Library.TransferByID(id)
	writeJSON(w, http.StatusOK, t)
}
