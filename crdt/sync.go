package crdt

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	am "github.com/automerge/automerge-go"

	"github.com/meshnode/meshnode/internal/frame"
)

// Sync protocol (anti-entropy), run over one bidirectional stream:
//
//	initiator → responder: frame(sync message or empty)
//	responder → initiator: frame(sync message or empty)
//	... repeated ...
//
// Each side feeds what it receives to automerge's sync protocol and answers
// with its next sync message, or an empty frame when it has nothing to say.
// The session ends when the initiator has sent and received an empty frame
// in the same round; it then closes its write side and the responder sees
// EOF. Frames use package frame's uvarint length prefix.
const (
	// MaxSyncFrame bounds one sync message.
	MaxSyncFrame = 128 << 20
	// maxRounds bounds a session so a peer that never settles cannot keep
	// it open; a session that hits it simply ends and is retried later.
	maxRounds = 256
)

// ErrSyncRounds is returned when a session did not settle in maxRounds.
var ErrSyncRounds = errors.New("crdt: sync did not settle")

// PeerState is the per-peer sync state kept across sessions, so a session
// with a peer already in sync costs one small round trip. A PeerState may
// be used by one session at a time; Sync enforces that.
type PeerState struct {
	mu sync.Mutex
	ss *am.SyncState
	on *am.Doc // the document ss was made for
	// epoch is the epoch both sides named in the session's hello.
	epoch Epoch
}

// SyncStats describe one session.
type SyncStats struct {
	Rounds        int
	BytesSent     int
	BytesReceived int
	Changes       int
}

// NewPeerState returns fresh sync state for one peer.
func (d *Doc) NewPeerState() *PeerState {
	return &PeerState{}
}

// syncState returns ps's automerge state for the current document, fresh
// if the document was replaced (a snapshot adopted) since. Call with d.mu.
func (d *Doc) syncState(ps *PeerState) *am.SyncState {
	if cur := d.doc(); ps.on != cur {
		ps.ss, ps.on = am.NewSyncState(cur), cur
	}
	return ps.ss
}

// Sync runs one anti-entropy session over rw. The initiator speaks first.
func (d *Doc) Sync(rw io.ReadWriter, ps *PeerState, initiator bool) (SyncStats, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var st SyncStats
	br := bufio.NewReader(rw)
	if err := d.hello(rw, br, ps, initiator); err != nil {
		return st, err
	}
	// Changes that wait for dependencies no message brought are asked for
	// in the first message and after each one that brought changes: not
	// more, or a session with a peer that lacks them too never ends.
	ask := true
	recv := func() (bool, error) {
		b, err := frame.Read(br, MaxSyncFrame)
		if err != nil {
			return false, err
		}
		st.BytesReceived += len(b)
		if len(b) == 0 {
			return false, nil
		}
		n, err := d.receiveSync(ps, b)
		st.Changes += n
		ask = ask || n > 0
		return true, err
	}
	send := func() (bool, error) {
		msg, err := d.generateSync(ps, ask)
		ask = false
		if err != nil {
			return false, err
		}
		st.BytesSent += len(msg)
		return len(msg) > 0, frame.Write(rw, msg)
	}
	for st.Rounds = 1; st.Rounds <= maxRounds; st.Rounds++ {
		if initiator {
			sent, err := send()
			if err != nil {
				return st, fmt.Errorf("crdt: sync send: %w", err)
			}
			got, err := recv()
			if err != nil {
				return st, fmt.Errorf("crdt: sync receive: %w", err)
			}
			if !sent && !got {
				return st, nil
			}
			continue
		}
		if _, err := recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return st, nil
			}
			return st, fmt.Errorf("crdt: sync receive: %w", err)
		}
		if _, err := send(); err != nil {
			return st, fmt.Errorf("crdt: sync send: %w", err)
		}
	}
	return st, ErrSyncRounds
}

// hello exchanges the two sides' epochs before anything else: documents
// of different epochs never merge. The initiator speaks first.
func (d *Doc) hello(w io.Writer, r *bufio.Reader, ps *PeerState, initiator bool) error {
	e := d.Epoch()
	if initiator {
		if err := frame.Write(w, EncodeSyncHello(e)); err != nil {
			return fmt.Errorf("crdt: sync hello: %w", err)
		}
	}
	b, err := frame.Read(r, 64)
	if err != nil {
		return fmt.Errorf("crdt: sync hello: %w", err)
	}
	peer, err := DecodeSyncHello(b)
	if err != nil {
		return &RefusedError{Rule: RuleDecode, Detail: fmt.Sprintf("sync hello: %v", err)}
	}
	if !initiator {
		if err := frame.Write(w, EncodeSyncHello(e)); err != nil {
			return fmt.Errorf("crdt: sync hello: %w", err)
		}
	}
	if peer != e {
		return &EpochMismatchError{Local: e, Peer: peer}
	}
	ps.epoch = e
	return nil
}

// The hello frame: helloMagic | epoch number uvarint | epoch ID [32].
// EncodeSyncHello and DecodeSyncHello are exported for tools and tests
// that speak the protocol from outside a Doc.
const helloMagic = "MNH1"

func EncodeSyncHello(e Epoch) []byte {
	b := binary.AppendUvarint([]byte(helloMagic), e.Num)
	return append(b, e.ID[:]...)
}

func DecodeSyncHello(b []byte) (Epoch, error) {
	if len(b) < len(helloMagic) || string(b[:len(helloMagic)]) != helloMagic {
		return Epoch{}, errors.New("not a hello frame")
	}
	b = b[len(helloMagic):]
	n, k := binary.Uvarint(b)
	if k <= 0 || len(b)-k != 32 {
		return Epoch{}, errors.New("a hello frame of the wrong length")
	}
	e := Epoch{Num: n}
	copy(e.ID[:], b[k:])
	if (n == 0) != (e.ID == Hash{}) {
		return Epoch{}, errors.New("a hello frame naming epoch 0 with an ID, or a later one without")
	}
	if k != len(binary.AppendUvarint(nil, n)) {
		return Epoch{}, errors.New("a hello frame whose epoch number is not minimally encoded")
	}
	return e, nil
}

// EpochMismatchError ends a sync session whose two sides are on
// different epochs. The side whose epoch is behind (Peer.After(Local))
// moves to the peer's by its snapshot.
type EpochMismatchError struct{ Local, Peer Epoch }

func (e *EpochMismatchError) Error() string {
	return fmt.Sprintf("crdt: sync across epochs: this node is on epoch %s, the peer on %s", e.Local, e.Peer)
}

// ErrEpochChanged ends a sync session when the document switched epochs
// during it.
var ErrEpochChanged = errors.New("crdt: the document switched epochs during the session")

func (d *Doc) generateSync(ps *PeerState, askMissing bool) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.waitSwitchLocked(); err != nil {
		return nil, err
	}
	if d.closed {
		return nil, ErrClosed
	}
	if d.Epoch() != ps.epoch {
		return nil, ErrEpochChanged
	}
	var missing []Hash
	if askMissing {
		missing = d.missingDepsLocked()
	}
	m, ok := d.syncState(ps).GenerateMessage()
	switch {
	case !ok && len(missing) == 0:
		return nil, nil
	case !ok:
		return needMessage(*d.heads.Load(), missing), nil
	case len(missing) == 0:
		return m.Bytes(), nil
	}
	return syncMessageWithNeed(m.Bytes(), missing)
}

// missingDepsLocked lists the dependencies of waiting changes that this
// node neither holds nor keeps waiting. Call with mu held.
func (d *Doc) missingDepsLocked() []Hash {
	var out []Hash
	for _, w := range d.waiting {
		for _, h := range w.deps {
			if !slices.Contains(out, h) && !d.has(h) && !slices.ContainsFunc(d.waiting, func(x rawChange) bool { return x.hash == h }) {
				out = append(out, h)
			}
		}
	}
	return out
}

// receiveSync takes the changes of one sync message through the checks
// (intake.go) and then feeds the message, stripped of its changes, to
// automerge's sync state, returning how many changes the message carried
// (on an error, how many were applied). A
// refused change ends the session with an error wrapping *RefusedError;
// the changes before it that passed are kept. If the changes cannot be
// logged (a full disk), none of them enters memory and the session fails;
// the next session brings them again.
func (d *Doc) receiveSync(ps *PeerState, b []byte) (int, error) {
	msg, err := decodeSyncMessage(b)
	if err != nil {
		return 0, &RefusedError{Rule: RuleDecode, Detail: fmt.Sprintf("sync message: %v", err)}
	}
	stripped := b
	if len(msg.Changes) > 0 {
		if stripped, err = syncMessageWithoutChanges(b); err != nil {
			return 0, &RefusedError{Rule: RuleDecode, Detail: fmt.Sprintf("sync message: %v", err)}
		}
	}
	defer d.deliver()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.waitSwitchLocked(); err != nil {
		return 0, err
	}
	if d.closed {
		return 0, ErrClosed
	}
	if d.Epoch() != ps.epoch {
		return 0, ErrEpochChanged
	}
	in := d.newIntake(true)
	var takeErr error
	for _, raw := range msg.Changes {
		c, n, err := parseChange(raw)
		if err != nil || n != len(raw) {
			takeErr = &RefusedError{Rule: RuleDecode, Detail: fmt.Sprintf("not one automerge change (%v)", err)}
			break
		}
		if takeErr = in.take(c); takeErr != nil {
			break
		}
	}
	if err := in.done(); err != nil && takeErr == nil {
		takeErr = err
	}
	if takeErr != nil {
		return in.applied, takeErr
	}
	if _, err := d.syncState(ps).ReceiveMessage(stripped); err != nil {
		return in.applied, fmt.Errorf("%w: sync message: %v", ErrCorrupt, err)
	}
	return len(msg.Changes), nil
}
