package room

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/frame"
)

// The history protocol lets a late joiner take a room's recent messages
// from a participant. On one stream:
//
//	request:  room ID (16) | proof (32) = HMAC-SHA256(secret-derived key,
//	          "history" | requester ID | responder ID)
//	response: status (0 ok, 1 not in that room, 2 bad proof)
//	          then, for ok, one frame per message, oldest first, each a
//	          sealed message (the room's own sealing), and an empty frame
//
// The proof shows the requester holds the room's credentials and cannot
// be replayed to another responder; the messages stay sealed, so they
// are as private as on the room's topic.

const (
	histOK       = 0
	histNotHere  = 1
	histBadProof = 2
)

var errHistory = errors.New("room: history")

func (s *sealer) proof(from, to peer.ID) []byte {
	mac := hmac.New(sha256.New, s.histKey)
	mac.Write([]byte("history"))
	mac.Write([]byte(from))
	mac.Write([]byte(to))
	return mac.Sum(nil)
}

// HandleHistory serves the history protocol; register it for
// authenticated fleet members only.
func (m *Manager) HandleHistory(st network.Stream) {
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(30 * time.Second))
	from := st.Conn().RemotePeer()
	req, err := frame.Read(bufio.NewReader(st), 16+32)
	if err != nil || len(req) != 48 {
		st.Reset()
		return
	}
	var id ID
	copy(id[:], req[:16])
	m.mu.Lock()
	var l *link
	var recent []Message
	for _, ts := range m.topics {
		if x := ts.links[id]; x != nil {
			l, recent = x, append([]Message(nil), ts.recent...)
		}
	}
	m.mu.Unlock()
	if l == nil {
		_ = frame.Write(st, []byte{histNotHere})
		return
	}
	if !hmac.Equal(req[16:], l.sealer.proof(from, m.cfg.Self)) {
		m.lg.Warn().Str("peer", from.String()).Str("room", id.String()).Msg("history request with a bad proof refused")
		_ = frame.Write(st, []byte{histBadProof})
		return
	}
	if err := frame.Write(st, []byte{histOK}); err != nil {
		return
	}
	for _, msg := range recent {
		b, err := l.sealer.seal(msg)
		if err != nil {
			continue
		}
		if err := frame.Write(st, b); err != nil {
			return
		}
	}
	_ = frame.Write(st, nil)
}

// fetchHistory asks p for room l's recent messages.
func (m *Manager) fetchHistory(ctx context.Context, p peer.ID, l *link) ([]Message, error) {
	if m.cfg.Host == nil {
		return nil, fmt.Errorf("%w: no host to ask with", errHistory)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := m.cfg.Host.NewStream(ctx, p, m.cfg.HistoryProtocol)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	req := append(append([]byte{}, l.creds.ID[:]...), l.sealer.proof(m.cfg.Self, p)...)
	if err := frame.Write(st, req); err != nil {
		return nil, err
	}
	br := bufio.NewReader(st)
	status, err := frame.Read(br, 1)
	if err != nil {
		return nil, err
	}
	if len(status) != 1 || status[0] != histOK {
		return nil, fmt.Errorf("%w: %s answered %v", errHistory, p, status)
	}
	var out []Message
	for i := 0; i <= m.cfg.History; i++ {
		b, err := frame.Read(br, maxWire)
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			return out, nil
		}
		msg, err := l.sealer.open(b)
		if err != nil {
			return nil, err
		}
		out = append(out, msg)
	}
	return nil, fmt.Errorf("%w: %s sent more than %d messages", errHistory, p, m.cfg.History)
}

// startCatchUp fetches history for a joiner (or, with refill, once more
// to fill a gap) from a present participant, on a goroutine Run waits
// for.
func (m *Manager) startCatchUp(ts *topicState, l *link, r crdt.Room, now time.Time, refill bool) {
	// Peers seen in the room's topic first (they are in it, and
	// connected), then others holding a lease.
	var cands []peer.ID
	seen := map[peer.ID]bool{m.cfg.Self: true}
	for _, p := range l.topic.ListPeers() {
		if !seen[p] {
			seen[p] = true
			cands = append(cands, p)
		}
	}
	var rest []peer.ID
	for p, exp := range r.Presence {
		id, err := peer.Decode(p)
		if err != nil || seen[id] || exp <= now.UnixMilli() {
			continue
		}
		seen[id] = true
		rest = append(rest, id)
	}
	sort.Slice(rest, func(i, j int) bool { return m.cfg.Alive(rest[i]) && !m.cfg.Alive(rest[j]) })
	cands = append(cands, rest...)
	if refill {
		ts.refilling = true
	}
	ctx := m.ctx
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		var hist []Message
		var from peer.ID
		for _, p := range cands {
			h, err := m.fetchHistory(ctx, p, l)
			if err == nil {
				hist, from = h, p
				break
			}
			m.lg.Debug().Str("topic", ts.name).Str("peer", p.String()).Err(err).Msg("history fetch failed")
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, h := range hist {
			if h.Sender == m.cfg.Self {
				continue
			}
			if !ts.inbox.known(h.Sender) {
				// History is in order: a sender starts at its first message.
				ts.inbox.start(h.Sender, h.Epoch, h.Seq-1)
			}
			m.addLocked(ts, h, !refill)
		}
		if refill {
			ts.refilling = false
			ts.refillUntil = time.Time{}
			return
		}
		for _, p := range ts.pending {
			m.addLocked(ts, p, false)
		}
		ts.pending, ts.catching = nil, false
		ts.refillUntil = m.cfg.Now().Add(2 * m.cfg.GapWait)
		m.emitLocked(ts, Event{Type: "live", Room: l.creds.ID.String(), Why: fmt.Sprintf("%d messages of history from %s", len(hist), from)})
	}()
}
