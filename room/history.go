package room

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/internal/frame"
)

// The history protocol lets a late joiner take a room's recent messages
// from a participant, and any participant ask for messages it missed. On
// one stream:
//
//	request:  room ID (16) | proof (32) = HMAC-SHA256(secret-derived key,
//	          "history" | requester ID | responder ID) [| since]
//	since:    uvarint n | n × (uvarint len(sender) | sender |
//	          uvarint epoch | uvarint next)
//	response: status (0 ok, 1 not in that room, 2 bad proof)
//	          then, for ok, one frame per message, oldest first, each the
//	          GossipSub message that carried it (protobuf, with its
//	          sender's signature over the sealed data), and an empty frame
//
// Without since the answer is every recent message (a joiner's catch-up);
// with it, only those of the senders listed from their position on (a
// later epoch, or the same epoch and seq >= next): what a refill of a gap
// or a check for a lost tail needs, which is mostly nothing.
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
	req, err := frame.Read(bufio.NewReader(st), 16+32+maxSinceLen)
	if err != nil || len(req) < 48 {
		st.Reset()
		return
	}
	var since map[peer.ID]position
	if len(req) > 48 {
		if since, err = decodeSince(req[48:]); err != nil {
			m.lg.Debug().Str("peer", from.String()).Err(err).Msg("history request refused")
			st.Reset()
			return
		}
	}
	var id ID
	copy(id[:], req[:16])
	var s *sealer
	var recent []Message
	if err := m.do(func() { s, recent = m.core.historyFor(id) }); err != nil || s == nil {
		_ = frame.Write(st, []byte{histNotHere})
		return
	}
	if !hmac.Equal(req[16:48], s.proof(from, m.cfg.Self)) {
		m.lg.Warn().Str("peer", from.String()).Str("room", id.String()).Msg("history request with a bad proof refused")
		_ = frame.Write(st, []byte{histBadProof})
		return
	}
	if err := frame.Write(st, []byte{histOK}); err != nil {
		return
	}
	for _, msg := range recent {
		if since != nil && !since[msg.Sender].before(msg) {
			continue
		}
		if err := frame.Write(st, msg.signed); err != nil {
			return
		}
	}
	_ = frame.Write(st, nil)
}

// position is where a requester stands in one sender's stream: it has
// what comes before seq next of epoch.
type position struct{ epoch, next uint64 }

// before reports whether msg comes at or after p (a zero p: never listed,
// so nothing is wanted).
func (p position) before(msg Message) bool {
	if p.next == 0 {
		return false
	}
	return msg.Epoch > p.epoch || msg.Epoch == p.epoch && msg.Seq >= p.next
}

// maxSince bounds the senders one request lists.
const maxSince = 512

// maxSinceLen bounds an encoded since: count, and per sender its ID (at
// most 128 bytes, as in a message) and two uvarints.
const maxSinceLen = binary.MaxVarintLen64 + maxSince*(1+128+2*binary.MaxVarintLen64)

// encodeSince encodes positions (at most maxSince, the first in sender
// order).
func encodeSince(pos map[peer.ID]position) []byte {
	ids := make([]peer.ID, 0, len(pos))
	for p := range pos {
		ids = append(ids, p)
	}
	slices.Sort(ids)
	ids = ids[:min(len(ids), maxSince)]
	b := binary.AppendUvarint(nil, uint64(len(ids)))
	for _, p := range ids {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.AppendUvarint(b, pos[p].epoch)
		b = binary.AppendUvarint(b, pos[p].next)
	}
	return b
}

// decodeSince parses a since list; it never panics.
func decodeSince(b []byte) (map[peer.ID]position, error) {
	r := bytes.NewReader(b)
	n, err := binary.ReadUvarint(r)
	if err != nil || n > maxSince {
		return nil, fmt.Errorf("%w: since: count", errHistory)
	}
	out := make(map[peer.ID]position, n)
	for range n {
		l, err := binary.ReadUvarint(r)
		if err != nil || l == 0 || l > 128 || l > uint64(r.Len()) {
			return nil, fmt.Errorf("%w: since: sender length", errHistory)
		}
		id := make([]byte, l)
		_, _ = r.Read(id)
		p, err := peer.IDFromBytes(id)
		if err != nil {
			return nil, fmt.Errorf("%w: since: sender: %v", errHistory, err)
		}
		var pos position
		if pos.epoch, err = binary.ReadUvarint(r); err != nil {
			return nil, fmt.Errorf("%w: since: epoch", errHistory)
		}
		if pos.next, err = binary.ReadUvarint(r); err != nil || pos.next == 0 {
			return nil, fmt.Errorf("%w: since: next", errHistory)
		}
		out[p] = pos
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: since: %d trailing bytes", errHistory, r.Len())
	}
	return out, nil
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
// catch-up (the first that answers with messages), or a refill (until every gap in
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
	// since, for a refill or a tail check: ask only for what comes after
	// these positions.
	since map[peer.ID]position
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
		// A catch-up takes the first answer that has messages: a
		// participant whose own sends have not come back signed yet, or
		// that joined late itself, may answer with none.
		if !r.refill && len(res.msgs) > 0 || r.refill && filled(r.want, seen) {
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
	req := append(append([]byte{}, r.creds.ID[:]...), r.sealer.proof(m.cfg.Self, p)...)
	if r.since != nil {
		req = append(req, encodeSince(r.since)...)
	}
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
