package node

import (
	"sync"
	"sync/atomic"
	"time"
)

// Event types on the bus and the API's event stream.
const (
	EventPeerUp        = "peer.up"        // a fleet peer authenticated
	EventPeerDown      = "peer.down"      // its last connection closed
	EventNodeJoined    = "node.joined"    // heartbeats from a node became fresh
	EventNodeStale     = "node.stale"     // its heartbeats stopped
	EventNodeLeft      = "node.left"      // it said Goodbye
	EventDocChanged    = "doc.changed"    // the document's heads moved
	EventServiceFailed = "service.failed" // a supervised service failed
	EventDocDamaged    = "doc.damaged"    // damage was found and recovered at start
)

// EventPeerBadChange: the document refused a change a peer sent (by
// gossip, sync or snapshot); its data says which rule the change broke,
// and whether the refusal struck the peer out (disconnected and banned).
const EventPeerBadChange = "peer.bad_change"

// Event is one thing that happened on the node.
type Event struct {
	Type string         `json:"type"`
	Time time.Time      `json:"time"`
	Data map[string]any `json:"data,omitempty"`
}

// maxSticky bounds the sticky events a bus keeps.
const maxSticky = 64

// Bus fans events out to subscribers. Publish never blocks: a subscriber
// that falls behind by more than its buffer loses events, counted in
// Dropped, rather than stalling the node.
//
// Sticky events (PublishSticky) are also kept and sent first to every
// later subscriber: facts about this start, such as damage found in the
// document, which a client connecting at any time must learn.
type Bus struct {
	mu      sync.Mutex
	subs    map[int]chan Event
	sticky  []Event
	next    int
	dropped atomic.Uint64
}

func newBus() *Bus { return &Bus{subs: map[int]chan Event{}} }

// Publish sends an event to every subscriber.
func (b *Bus) Publish(typ string, data map[string]any) {
	b.publish(Event{Type: typ, Time: time.Now().UTC(), Data: data}, false)
}

// PublishSticky sends an event to every subscriber and keeps it for every
// later one (at most maxSticky are kept; later ones are only published).
func (b *Bus) PublishSticky(typ string, data map[string]any) {
	b.publish(Event{Type: typ, Time: time.Now().UTC(), Data: data}, true)
}

func (b *Bus) publish(ev Event, sticky bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sticky && len(b.sticky) < maxSticky {
		b.sticky = append(b.sticky, ev)
	}
	for _, ch := range b.subs {
		select {
		case ch <- ev:
		default:
			b.dropped.Add(1)
		}
	}
}

// Subscribe returns a channel of events, starting with the sticky ones,
// and a function that ends the subscription and closes the channel.
func (b *Bus) Subscribe(buffer int) (<-chan Event, func()) {
	ch := make(chan Event, buffer)
	b.mu.Lock()
	for _, ev := range b.sticky {
		select {
		case ch <- ev:
		default:
			b.dropped.Add(1)
		}
	}
	id := b.next
	b.next++
	b.subs[id] = ch
	b.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, id)
			b.mu.Unlock()
			close(ch)
		})
	}
}
