package mesh

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

// Gossip payloads. Every message on a fleet topic is sealed with the fleet
// key (Fleet.Seal: XChaCha20-Poly1305, topic name as associated data), so a
// node outside the fleet sees only ciphertext and cannot inject anything.
// Inside the seal:
//
// Document topic (meshnode/<fleet>/doc/1):
//
//	0x01 | hash (32) | ndeps (1) | deps (32 each) | change (automerge Change.Save)
//	0x02 | nheads (1) | heads (32 each)
//
// 0x01 carries one local commit. 0x02 announces heads whose change was too
// large to gossip; receivers that lack them pull by anti-entropy.
//
// Heartbeat topic (meshnode/<fleet>/hb/1): JSON Heartbeat.

const (
	msgChange byte = 0x01
	msgHeads  byte = 0x02

	maxHashes = 255

	maxHBName  = 128
	maxHBAddrs = 32
	maxHBAddr  = 256
)

// ErrBadMessage marks a malformed gossip message.
var ErrBadMessage = errors.New("mesh: malformed message")

type docMsg struct {
	kind   byte
	hash   crdt.Hash
	deps   []crdt.Hash
	change []byte
}

func encodeDocChange(hash crdt.Hash, deps []crdt.Hash, change []byte) []byte {
	b := make([]byte, 0, 2+32*(1+len(deps))+len(change))
	b = append(b, msgChange)
	b = append(b, hash[:]...)
	b = appendHashes(b, deps)
	return append(b, change...)
}

func encodeDocHeads(heads []crdt.Hash) []byte {
	return appendHashes([]byte{msgHeads}, heads)
}

func appendHashes(b []byte, hs []crdt.Hash) []byte {
	if len(hs) > maxHashes {
		hs = hs[:maxHashes]
	}
	b = append(b, byte(len(hs)))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

func readHashes(b []byte) ([]crdt.Hash, []byte, error) {
	if len(b) < 1 {
		return nil, nil, fmt.Errorf("%w: missing hash count", ErrBadMessage)
	}
	n := int(b[0])
	b = b[1:]
	if len(b) < 32*n {
		return nil, nil, fmt.Errorf("%w: %d hashes announced, %d bytes left", ErrBadMessage, n, len(b))
	}
	hs := make([]crdt.Hash, n)
	for i := range hs {
		copy(hs[i][:], b[32*i:])
	}
	return hs, b[32*n:], nil
}

func decodeDocMsg(b []byte) (docMsg, error) {
	if len(b) == 0 {
		return docMsg{}, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	m := docMsg{kind: b[0]}
	b = b[1:]
	switch m.kind {
	case msgChange:
		if len(b) < 32 {
			return docMsg{}, fmt.Errorf("%w: change message shorter than its hash", ErrBadMessage)
		}
		copy(m.hash[:], b)
		deps, rest, err := readHashes(b[32:])
		if err != nil {
			return docMsg{}, err
		}
		if len(rest) == 0 {
			return docMsg{}, fmt.Errorf("%w: change message without a change", ErrBadMessage)
		}
		m.deps, m.change = deps, rest
	case msgHeads:
		heads, rest, err := readHashes(b)
		if err != nil {
			return docMsg{}, err
		}
		if len(rest) != 0 {
			return docMsg{}, fmt.Errorf("%w: %d trailing bytes after heads", ErrBadMessage, len(rest))
		}
		m.deps = heads
	default:
		return docMsg{}, fmt.Errorf("%w: unknown document message type %#x", ErrBadMessage, m.kind)
	}
	return m, nil
}

// Heartbeat is the ephemeral liveness message. It never touches the
// document, so the document does not grow with heartbeats.
type Heartbeat struct {
	// Peer is the sender; it must equal the pubsub message's signed origin.
	Peer string `json:"peer"`
	Name string `json:"name"`
	// Addrs are the sender's listener addresses.
	Addrs []string `json:"addrs"`
	// Heads are the sender's document heads (hex): a receiver lacking any
	// of them starts anti-entropy with the sender at once.
	Heads []string `json:"heads"`
	// Seq increases with every heartbeat of one run.
	Seq    uint64 `json:"seq"`
	SentMs int64  `json:"sent_ms"`
	// Leaving is set on the Goodbye sent at clean shutdown.
	Leaving bool `json:"leaving,omitempty"`
}

func decodeHeartbeat(b []byte) (Heartbeat, []crdt.Hash, error) {
	var hb Heartbeat
	if err := json.Unmarshal(b, &hb); err != nil {
		return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat: %v", ErrBadMessage, err)
	}
	if _, err := peer.Decode(hb.Peer); err != nil {
		return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat peer %q: %v", ErrBadMessage, hb.Peer, err)
	}
	if len(hb.Name) > maxHBName {
		return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat name longer than %d bytes", ErrBadMessage, maxHBName)
	}
	if len(hb.Addrs) > maxHBAddrs {
		return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat has %d addrs, max %d", ErrBadMessage, len(hb.Addrs), maxHBAddrs)
	}
	for _, a := range hb.Addrs {
		if len(a) > maxHBAddr {
			return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat address longer than %d bytes", ErrBadMessage, maxHBAddr)
		}
	}
	if len(hb.Heads) > maxHashes {
		return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat has %d heads, max %d", ErrBadMessage, len(hb.Heads), maxHashes)
	}
	heads := make([]crdt.Hash, len(hb.Heads))
	for i, s := range hb.Heads {
		h, err := crdt.ParseHash(s)
		if err != nil {
			return Heartbeat{}, nil, fmt.Errorf("%w: heartbeat head: %v", ErrBadMessage, err)
		}
		heads[i] = h
	}
	return hb, heads, nil
}
