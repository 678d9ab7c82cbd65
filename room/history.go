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

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
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
//	          then, for ok, one frame per message, oldest first, each the
//	          GossipSub message that carried it (protobuf, with its
//	          sender's signature over the sealed data), and an empty frame
//
// The proof shows the requester holds the room's credentials and cannot
// be replayed to another responder. The messages stay sealed, so they are
// as private as on the room's topic, and signed by their senders, so a
// responder cannot make up or alter another participant's messages: the
// joiner checks each signature, the topic and the sealed sender.

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
		if msg.signed == nil {
			continue // our own, not yet back from the topic
		}
		if err := frame.Write(st, msg.signed); err != nil {
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
		b, err := frame.Read(br, maxSigned)
		if err != nil {
			return nil, err
		}
		if len(b) == 0 {
			return out, nil
		}
		msg, err := openSigned(b, l.name, l.sealer)
		if err != nil {
			return nil, fmt.Errorf("%w: from %s: %v", errHistory, p, err)
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

// maxSigned bounds one signed message of history: the sealed data plus
// GossipSub's fields (sender, sequence number, topic, signature, key).
const maxSigned = maxWire + 8<<10

// openSigned checks a GossipSub message passed on by a history responder:
// it must decode, be for topic, carry a valid signature of its sender,
// open with the room's key, and name that same sender inside. It never
// panics on hostile input.
func openSigned(b []byte, topic string, s *sealer) (Message, error) {
	var pm pb.Message
	if err := pm.Unmarshal(b); err != nil {
		return Message{}, fmt.Errorf("%w: not a GossipSub message: %v", ErrBadMessage, err)
	}
	if pm.GetTopic() != topic {
		return Message{}, fmt.Errorf("%w: for another topic", ErrBadMessage)
	}
	if err := verifySigned(&pm); err != nil {
		return Message{}, fmt.Errorf("%w: signature: %v", ErrBadMessage, err)
	}
	msg, err := s.open(pm.Data)
	if err != nil {
		return Message{}, err
	}
	if msg.Sender != peer.ID(pm.From) {
		return Message{}, fmt.Errorf("%w: sealed sender %s signed by %s", ErrBadMessage, msg.Sender, peer.ID(pm.From))
	}
	msg.signed = b
	return msg, nil
}

// verifySigned checks a GossipSub message signature as the router does
// (go-libp2p-pubsub sign.go): the sender's key signs the message without
// its signature and key fields, prefixed with pubsub.SignPrefix.
func verifySigned(pm *pb.Message) error {
	from, err := peer.IDFromBytes(pm.From)
	if err != nil {
		return err
	}
	var pub crypto.PubKey
	if pm.Key == nil {
		if pub, err = from.ExtractPublicKey(); err != nil {
			return err
		}
	} else {
		if pub, err = crypto.UnmarshalPublicKey(pm.Key); err != nil {
			return err
		}
		if !from.MatchesPublicKey(pub) {
			return errors.New("key does not match the sender")
		}
	}
	if pub == nil || pm.Signature == nil {
		return errors.New("unsigned")
	}
	xm := *pm
	xm.Signature, xm.Key = nil, nil
	body, err := xm.Marshal()
	if err != nil {
		return err
	}
	ok, err := pub.Verify(append([]byte(pubsub.SignPrefix), body...), pm.Signature)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("invalid")
	}
	return nil
}
