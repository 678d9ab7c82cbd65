package room

import (
	"context"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A link is this node's membership of one room. The core keeps its state
// (link); the shell keeps its pubsub side (conn), joined and closed off
// the loop. Both carry the link's generation, so that a late result of an
// earlier link to the same room is recognised and ignored.

// link is the core's side of a link.
type link struct {
	gen    uint64
	room   ID
	name   string // the room's pubsub topic
	creds  Creds
	sealer *sealer
	state  LinkState
	since  time.Time
	// attached: the pubsub side is joined and receiving; only then can
	// the link count as connected.
	attached bool
	peers    map[peer.ID]bool // peers seen in the room's topic
}

// connectReq asks the shell to join a room's topic.
type connectReq struct {
	topic  string
	gen    uint64
	name   string
	sealer *sealer
}

// dropReq asks the shell to leave a link's topic.
type dropReq struct{ gen uint64 }

// incoming is one message off a room's topic, opened by the receiver.
type incoming struct {
	topic string
	gen   uint64
	from  peer.ID // GossipSub's signed origin
	msg   Message
	err   error // it did not open with the room's key
}

// connect starts a link to the room of cr (nothing if there is one).
func (c *core) connect(ts *topicState, cr Creds, now time.Time) {
	if _, ok := ts.links[cr.ID]; ok {
		return
	}
	c.gens++
	l := &link{gen: c.gens, room: cr.ID, name: c.cfg.TopicName(cr.ID), creds: cr, sealer: newSealer(cr),
		state: Connecting, since: now, peers: map[peer.ID]bool{}}
	if len(ts.links) == 0 && ts.open && c.history && len(ts.recent) == 0 {
		// A join, not a migration: take history once connected, and
		// hold live messages until then.
		ts.needHistory, ts.catching = true, true
	}
	ts.links[cr.ID] = l
	ts.current = cr.ID
	ts.know(l.name, l.sealer)
	c.emit(ts, Event{Type: "joining", Room: cr.ID.String()})
	c.rd.connects = append(c.rd.connects, connectReq{topic: ts.name, gen: l.gen, name: l.name, sealer: l.sealer})
	c.lg.Debug().Str("topic", ts.name).Str("room", cr.ID.String()).Msg("joining room")
}

// drop leaves one room.
func (c *core) drop(ts *topicState, id ID, why string) {
	l := ts.links[id]
	if l == nil {
		return
	}
	delete(ts.links, id)
	c.rd.drops = append(c.rd.drops, dropReq{gen: l.gen})
	c.emit(ts, Event{Type: "dropped", Room: id.String(), Why: why})
	c.rd.notes = append(c.rd.notes, note{"room.dropped", map[string]any{"topic": ts.name, "room": id.String(), "why": why}})
	c.lg.Debug().Str("topic", ts.name).Str("room", id.String()).Str("why", why).Msg("left room")
}

// link finds a topic's link of generation gen, if it still has it.
func (c *core) link(topic string, gen uint64) (*topicState, *link) {
	ts := c.topics[topic]
	if ts == nil {
		return nil, nil
	}
	for _, l := range ts.links {
		if l.gen == gen {
			return ts, l
		}
	}
	return ts, nil
}

// linkUp takes the result of joining a link's topic. A failed join
// forgets the link: the next pass joins again (a room just left may
// still be closing).
func (c *core) linkUp(topic string, gen uint64, err error, now time.Time) {
	ts, l := c.link(topic, gen)
	if l == nil {
		return
	}
	if err != nil {
		delete(ts.links, l.room)
		c.lg.Debug().Str("topic", topic).Str("room", l.room.String()).Err(err).Msg("joining the room failed; retrying")
		return
	}
	l.attached = true
	if ts.viewed && !ts.view.present {
		c.connected(ts, l, now) // holding the room alone: nobody to wait for
	}
}

// peerEvent takes a peer joining or leaving a link's topic. A participant
// appearing is what a connecting link waits for.
func (c *core) peerEvent(topic string, gen uint64, p peer.ID, joined bool, now time.Time) {
	ts, l := c.link(topic, gen)
	if l == nil {
		return
	}
	if !joined {
		delete(l.peers, p)
		return
	}
	l.peers[p] = true
	if l.state == Connecting && l.attached {
		c.connected(ts, l, now)
	} else if l.room == ts.current && !ts.catching {
		// A participant (re)appearing in the room may have sent what
		// this node could not receive meanwhile.
		c.tailDue(ts, p, now)
	}
}

func (c *core) connected(ts *topicState, l *link, now time.Time) {
	l.state = Connected
	c.emit(ts, Event{Type: "connected", Room: l.room.String()})
	c.rd.notes = append(c.rd.notes, note{"room.connected", map[string]any{"topic": ts.name, "room": l.room.String()}})
	if ts.needHistory {
		ts.needHistory = false
		c.catchUp(ts, l, now)
	}
}

// currentLink returns the generation of the topic's current link, if it
// is attached.
func (c *core) currentLink(topic string) (uint64, bool) {
	ts := c.topics[topic]
	if ts == nil {
		return 0, false
	}
	l := ts.links[ts.current]
	if l == nil || !l.attached {
		return 0, false
	}
	return l.gen, true
}

// subBuffer is how many messages pubsub holds for a link's receiver; it
// drops beyond it. The receiver only opens each one and passes it to the
// loop, which never waits, so this is only for bursts.
const subBuffer = 1024

// conn is the shell's side of a link: its pubsub handles and goroutines.
// Only the loop touches it, except that the goroutine joining the topic
// sets the handles and err before it closes ready.
type conn struct {
	gen    uint64
	topic  string // the meshnode topic (the pubsub one is name)
	name   string
	sealer *sealer
	ready  chan struct{} // the join finished, well or not
	closed chan struct{} // everything is released: the topic may be joined again
	ctx    context.Context
	cancel context.CancelFunc

	pt    *pubsub.Topic
	sub   *pubsub.Subscription
	peers *pubsub.TopicEventHandler
	err   error

	// recvDone and peersDone are closed when the receiver and the peer
	// watcher return; nil until started.
	recvDone, peersDone chan struct{}
}

// openConn joins a room's topic off the loop, once any earlier link to
// the same room has released it, and posts the result to linkUp.
func (l *loop) openConn(r connectReq) {
	cn := &conn{gen: r.gen, topic: r.topic, name: r.name, sealer: r.sealer, ready: make(chan struct{}), closed: make(chan struct{})}
	cn.ctx, cn.cancel = context.WithCancel(l.ctx)
	prev := l.closing[r.name]
	l.m.conns[r.gen] = cn
	l.goFunc(func() {
		if prev != nil {
			select {
			case <-prev.closed:
			case <-cn.ctx.Done():
			}
		}
		cn.err = cn.ctx.Err()
		if cn.err == nil {
			cn.err = l.m.join(cn)
		}
		close(cn.ready)
		l.post(func() { l.linkUp(cn) })
	})
}

// join registers the room's validator, joins its topic, subscribes and
// watches its peers; on an error it undoes what it did.
func (m *Manager) join(cn *conn) error {
	ps, s := m.cfg.PubSub, cn.sealer
	err := ps.RegisterTopicValidator(cn.name, func(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		if _, err := s.open(msg.Data); err != nil {
			return pubsub.ValidationReject
		}
		return pubsub.ValidationAccept
	})
	if err != nil {
		return err
	}
	if cn.pt, err = ps.Join(cn.name); err != nil {
		_ = ps.UnregisterTopicValidator(cn.name)
		return err
	}
	if cn.sub, err = cn.pt.Subscribe(pubsub.WithBufferSize(subBuffer)); err != nil {
		_ = cn.pt.Close()
		_ = ps.UnregisterTopicValidator(cn.name)
		return err
	}
	if cn.peers, err = cn.pt.EventHandler(); err != nil {
		cn.sub.Cancel()
		_ = cn.pt.Close()
		_ = ps.UnregisterTopicValidator(cn.name)
		return err
	}
	return nil
}

// linkUp, on the loop: a joined link still wanted starts receiving.
func (l *loop) linkUp(cn *conn) {
	if l.m.conns[cn.gen] != cn {
		return // dropped while joining: closeConn releases it
	}
	if cn.err != nil {
		delete(l.m.conns, cn.gen)
		l.c.linkUp(cn.topic, cn.gen, cn.err, l.now())
		return
	}
	cn.recvDone, cn.peersDone = make(chan struct{}), make(chan struct{})
	l.goFunc(func() { l.receive(cn) })
	l.goFunc(func() { l.watchPeers(cn) })
	l.c.linkUp(cn.topic, cn.gen, nil, l.now())
}

// receive opens each message of a link's topic and passes it to the loop.
func (l *loop) receive(cn *conn) {
	defer close(cn.recvDone)
	for {
		msg, err := cn.sub.Next(cn.ctx)
		if err != nil {
			return
		}
		in := incoming{topic: cn.topic, gen: cn.gen, from: msg.GetFrom()}
		if in.msg, in.err = cn.sealer.open(msg.Data); in.err == nil {
			in.msg.signed, in.err = msg.Message.Marshal()
		}
		select {
		case l.recv <- in:
		case <-cn.ctx.Done():
			return
		}
	}
}

// watchPeers passes the peers joining and leaving a link's topic to the
// loop.
func (l *loop) watchPeers(cn *conn) {
	defer close(cn.peersDone)
	for {
		ev, err := cn.peers.NextPeerEvent(cn.ctx)
		if err != nil {
			return
		}
		l.post(func() { l.c.peerEvent(cn.topic, cn.gen, ev.Peer, ev.Type == pubsub.PeerJoin, l.now()) })
	}
}

// closeConn leaves a link's topic off the loop: the receiver and the peer
// watcher stop, then the topic is closed and its validator removed. A
// later join of the same room waits for it.
func (l *loop) closeConn(gen uint64) {
	cn := l.m.conns[gen]
	if cn == nil {
		return
	}
	delete(l.m.conns, gen)
	l.closing[cn.name] = cn
	cn.cancel()
	started := cn.recvDone != nil
	ps := l.m.cfg.PubSub
	l.goFunc(func() {
		<-cn.ready
		if cn.err == nil {
			cn.sub.Cancel()
			if started {
				<-cn.recvDone
				<-cn.peersDone
			}
			cn.peers.Cancel()
			// Cancel is processed by pubsub's loop: Close fails until it is.
			for i := 0; cn.pt.Close() != nil && i < 100; i++ {
				time.Sleep(10 * time.Millisecond)
			}
			_ = ps.UnregisterTopicValidator(cn.name)
		}
		close(cn.closed)
		l.post(func() {
			if l.closing[cn.name] == cn {
				delete(l.closing, cn.name)
			}
		})
	})
}
