package room

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

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
	var s *sealer
	var recent []Message
	if err := m.do(func() { s, recent = m.core.historyFor(id) }); err != nil || s == nil {
		_ = frame.Write(st, []byte{histNotHere})
		return
	}
	if !hmac.Equal(req[16:], s.proof(from, m.cfg.Self)) {
		m.lg.Warn().Str("peer", from.String()).Str("room", id.String()).Msg("history request with a bad proof refused")
		_ = frame.Write(st, []byte{histBadProof})
		return
	}
	if err := frame.Write(st, []byte{histOK}); err != nil {
		return
	}
	for _, msg := range recent {
		if err := frame.Write(st, msg.signed); err != nil {
			return
		}
	}
	_ = frame.Write(st, nil)
}

// historyFor returns the sealer of a room this node is linked to and its
// topic's recent messages that have their signed form (our own, once back
// from the topic). They may include messages of the topic's earlier rooms,
// still sealed with those rooms' keys.
func (c *core) historyFor(id ID) (*sealer, []Message) {
	for _, ts := range c.topics {
		if l := ts.links[id]; l != nil {
			out := make([]Message, 0, len(ts.recent))
			for _, msg := range ts.recent {
				if msg.signed != nil {
					out = append(out, msg)
				}
			}
			return l.sealer, out
		}
	}
	return nil, nil
}

// fetchReq asks participants for a room's recent messages: a joiner's
// catch-up (the first that answers), or a refill (until every gap in
// want is filled, or every candidate asked).
type fetchReq struct {
	topic  string
	gen    uint64
	refill bool
	creds  Creds   // the room asked about
	sealer *sealer // its sealer, for the proof
	// rooms are the topic's rooms known here, by pubsub topic name:
	// messages of other rooms in an answer are skipped.
	rooms map[string]*sealer
	cands []peer.ID
	want  []Gap
}

type fetchResult struct {
	fetchReq
	msgs []Message // checked, each once
	from []peer.ID // who answered
}

// fetch runs a fetchReq off the loop.
func (m *Manager) fetch(ctx context.Context, r fetchReq) fetchResult {
	res := fetchResult{fetchReq: r}
	seen := map[msgKey]bool{}
	for _, p := range r.cands {
		h, err := m.fetchHistory(ctx, p, r)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			m.lg.Debug().Str("topic", r.topic).Str("peer", p.String()).Err(err).Msg("history fetch failed")
			continue
		}
		res.from = append(res.from, p)
		for _, msg := range h {
			if !seen[msg.key()] {
				seen[msg.key()] = true
				res.msgs = append(res.msgs, msg)
			}
		}
		if !r.refill || filled(r.want, seen) {
			break
		}
	}
	return res
}

// filled reports whether seen has every message of gaps.
func filled(gaps []Gap, seen map[msgKey]bool) bool {
	for _, g := range gaps {
		for q := g.From; q <= g.To; q++ {
			if !seen[msgKey{g.Sender, g.Epoch, q}] {
				return false
			}
		}
	}
	return true
}

// fetchHistory asks p for the recent messages of r's room.
func (m *Manager) fetchHistory(ctx context.Context, p peer.ID, r fetchReq) ([]Message, error) {
	if m.cfg.Host == nil {
		return nil, fmt.Errorf("%w: no host to ask with", errHistory)
	}
	timeout := 5 * time.Second
	if r.refill {
		// A gap waits for the answer before it is reported: an
		// unresponsive peer must not hold it up for long.
		timeout = min(timeout, m.cfg.GapWait)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := m.cfg.Host.NewStream(ctx, p, m.cfg.HistoryProtocol)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	req := append(append([]byte{}, r.creds.ID[:]...), r.sealer.proof(m.cfg.Self, p)...)
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
		msg, err := openSignedIn(b, r.rooms)
		if errors.Is(err, errOtherRoom) {
			continue // sealed for a room this node never had
		}
		if err != nil {
			return nil, fmt.Errorf("%w: from %s: %v", errHistory, p, err)
		}
		out = append(out, msg)
	}
	return nil, fmt.Errorf("%w: %s sent more than %d messages", errHistory, p, m.cfg.History)
}

// maxSigned bounds one signed message of history: the sealed data plus
// GossipSub's fields (sender, sequence number, topic, signature, key).
const maxSigned = maxWire + 8<<10

// errOtherRoom: a message of history carried in a room not asked about.
var errOtherRoom = fmt.Errorf("%w: for another topic", ErrBadMessage)

// openSigned checks a GossipSub message passed on by a history responder:
// it must decode, be for topic, carry a valid signature of its sender,
// open with the room's key, and name that same sender inside. It never
// panics on hostile input.
func openSigned(b []byte, topic string, s *sealer) (Message, error) {
	return openSignedIn(b, map[string]*sealer{topic: s})
}

// openSignedIn is openSigned for a message of any of rooms (by pubsub
// topic name); errOtherRoom if it is for none of them.
func openSignedIn(b []byte, rooms map[string]*sealer) (Message, error) {
	var pm pb.Message
	if err := pm.Unmarshal(b); err != nil {
		return Message{}, fmt.Errorf("%w: not a GossipSub message: %v", ErrBadMessage, err)
	}
	s := rooms[pm.GetTopic()]
	if s == nil {
		return Message{}, errOtherRoom
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
