package mesh

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/frame"
)

// Fleet authentication protocol (/meshnode/<fleet>/auth/1). The dialer of
// a connection initiates; K is the auth key derived from the fleet secret,
// I and R the initiator's and responder's peer IDs as the secure channel
// authenticated them, MAC a keyed BLAKE3 over length-prefixed parts.
//
//	I → R: nI                        (32 random bytes)
//	R → I: nR | MAC(K, "R", nI, nR, R, I)
//	I → R: MAC(K, "I", nI, nR, I, R)
//	R → I: 0x01                      (accepted; 0x00: rejected)
//
// Each frame is a package frame message. Binding both peer IDs means a
// proof cannot be relayed to a third peer; fresh nonces on both sides mean
// it cannot be replayed. A peer that fails, or that does not complete the
// exchange within the timeout, is disconnected and refused by the Gate
// with backoff. A rejected initiator reads the 0x00 verdict before the
// responder disconnects it. Until a peer has authenticated, every other
// protocol of ours resets its streams and pubsub rejects what it relays.
//
// Inbound peers that have not authenticated get a budget of their own
// (AuthConfig.Strangers), enforced by the Gate as their connection is
// secured, so that connections from strangers, each with a fresh peer ID,
// cannot fill the node's connection limits and keep members out. Peers
// known as members (authenticated before, or heard in heartbeats) pass
// outside the budget.

const (
	nonceLen = 32
	macLen   = 32
	authOK   = 0x01
	authNo   = 0x00
	// verdictLinger bounds how long a responder that rejected a peer
	// waits for it to read the verdict and close the stream.
	verdictLinger = 2 * time.Second
	// defaultMaxKnown bounds the peers remembered as members.
	defaultMaxKnown = 16384
)

var (
	// ErrAuthFailed is returned when a peer cannot prove the fleet secret.
	ErrAuthFailed = errors.New("mesh: peer failed fleet authentication")
	// ErrNotAuthenticated is returned for a request from a peer that has
	// not authenticated.
	ErrNotAuthenticated = errors.New("mesh: peer not authenticated")
)

// AuthConfig configures Auth.
type AuthConfig struct {
	Host   host.Host
	Fleet  *Fleet
	Gate   *Gate
	Logger zerolog.Logger
	// Timeout bounds the exchange, and how long an inbound connection may
	// stay without authenticating. Default 10 s.
	Timeout time.Duration
	// Strangers is how many inbound peers may be connected at once
	// without having authenticated. Default 32. When they are all
	// connected, a new one takes the place of the longest-waiting stranger
	// that has not opened the exchange, or is refused.
	Strangers int
	// OnUp is called once a peer authenticates, OnDown when its last
	// connection closes. Both must not block.
	OnUp, OnDown func(peer.ID)
}

// AuthStats are Auth's figures for metrics.
type AuthStats struct {
	// Authenticated peers, connected now.
	Authenticated int
	// Strangers are inbound peers connected (or connecting) that have not
	// authenticated yet, at most AuthConfig.Strangers.
	Strangers int
	// Known is how many peers are remembered as members.
	Known int
	// StrangersRefused and StrangersEvicted count inbound strangers
	// turned away with the budget full, and those disconnected to make
	// room for a newcomer.
	StrangersRefused, StrangersEvicted uint64
}

// Auth runs fleet authentication for every connection of the host.
type Auth struct {
	cfg   AuthConfig
	lg    zerolog.Logger
	proto protocol.ID

	refused, evicted atomic.Uint64

	mu       sync.Mutex
	authed   map[peer.ID]time.Time
	inflight map[peer.ID]bool
	// known are members, with when we last learned they are: peers that
	// proved the secret to us, or whose heartbeats reached us. Their
	// inbound connections do not count against the strangers' budget.
	known     map[peer.ID]time.Time
	strangers *strangers
	// changed is closed and replaced whenever a peer authenticates, fails
	// or disconnects, to wake WaitAuthenticated.
	changed chan struct{}
	ctx     context.Context
	closing bool
	wg      sync.WaitGroup
}

// NewAuth returns Auth; Run starts it.
func NewAuth(cfg AuthConfig) *Auth {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.OnUp == nil {
		cfg.OnUp = func(peer.ID) {}
	}
	if cfg.OnDown == nil {
		cfg.OnDown = func(peer.ID) {}
	}
	if cfg.Strangers <= 0 {
		cfg.Strangers = defaultStrangers
	}
	return &Auth{
		cfg:       cfg,
		lg:        cfg.Logger.With().Str("component", "auth").Logger(),
		proto:     cfg.Fleet.Protocol("auth/1"),
		authed:    map[peer.ID]time.Time{},
		inflight:  map[peer.ID]bool{},
		known:     map[peer.ID]time.Time{},
		strangers: newStrangers(cfg.Strangers, 2*cfg.Timeout),
		changed:   make(chan struct{}),
	}
}

// Run serves authentication until ctx ends, then waits for every exchange
// it started.
func (a *Auth) Run(ctx context.Context) error {
	a.mu.Lock()
	a.ctx = ctx
	a.mu.Unlock()
	h := a.cfg.Host
	h.SetStreamHandler(a.proto, a.respond)
	a.cfg.Gate.setAdmit(a.admit)
	defer a.cfg.Gate.setAdmit(nil)
	nb := &network.NotifyBundle{
		ConnectedF:    func(_ network.Network, c network.Conn) { a.connected(c) },
		DisconnectedF: func(_ network.Network, c network.Conn) { a.disconnected(c.RemotePeer()) },
	}
	h.Network().Notify(nb)
	for _, c := range h.Network().Conns() {
		a.connected(c)
	}
	<-ctx.Done()
	h.Network().StopNotify(nb)
	h.RemoveStreamHandler(a.proto)
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// IsAuthenticated reports whether p has proven the fleet secret on a
// connection that is still open.
func (a *Auth) IsAuthenticated(p peer.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.authed[p]
	return ok
}

// WaitAuthenticated waits until p has authenticated, and reports whether
// it has; it gives up when p is no longer connected (it failed, or left),
// ctx ends or timeout passes. It serves callers that act on a peer's
// request which can arrive before the exchange on a new connection
// completes (a relay reservation, for one).
func (a *Auth) WaitAuthenticated(ctx context.Context, p peer.ID, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		a.mu.Lock()
		_, ok := a.authed[p]
		ch := a.changed
		a.mu.Unlock()
		if ok {
			return true
		}
		if a.cfg.Host.Network().Connectedness(p) != network.Connected {
			return false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
	}
}

// Stats returns the current figures.
func (a *Auth) Stats() AuthStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return AuthStats{
		Authenticated: len(a.authed), Strangers: a.strangers.len(), Known: len(a.known),
		StrangersRefused: a.refused.Load(), StrangersEvicted: a.evicted.Load(),
	}
}

// admit is the Gate's decision on an inbound peer whose connection is
// secured: members pass, strangers within their budget.
func (a *Auth) admit(p peer.ID) bool {
	a.mu.Lock()
	_, authed := a.authed[p]
	_, known := a.known[p]
	ok, evict := true, peer.ID("")
	if !authed && !known {
		ok, evict = a.strangers.admit(p, time.Now())
	}
	a.mu.Unlock()
	if !ok {
		a.refused.Add(1)
		a.lg.Debug().Str("peer", p.String()).Msg("inbound connection refused: too many peers have not authenticated")
		return false
	}
	if evict != "" {
		// At once, before the newcomer's connection is added: the count
		// of strangers connected never exceeds the budget.
		a.evicted.Add(1)
		a.lg.Debug().Str("peer", evict.String()).Msg("unauthenticated peer that never started authenticating disconnected to make room")
		_ = a.cfg.Host.Network().ClosePeer(evict)
	}
	return true
}

// vouch remembers p as a member (its heartbeat reached us): its inbound
// connections pass outside the strangers' budget. It does not block.
func (a *Auth) vouch(p peer.ID) {
	a.mu.Lock()
	a.rememberLocked(p)
	a.mu.Unlock()
}

// rememberLocked adds p to the known members, forgetting those seen
// longest ago past defaultMaxKnown. Call with a.mu held.
func (a *Auth) rememberLocked(p peer.ID) {
	a.known[p] = time.Now()
	if len(a.known) > defaultMaxKnown {
		prune(a.known, defaultMaxKnown*3/4, time.Time.Compare)
	}
}

// Authenticated returns the authenticated peers.
func (a *Auth) Authenticated() []peer.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Collect(maps.Keys(a.authed))
}

// Handle registers a stream handler that only authenticated peers reach;
// streams from anyone else are reset.
func (a *Auth) Handle(proto protocol.ID, fn network.StreamHandler) {
	a.cfg.Host.SetStreamHandler(proto, func(s network.Stream) {
		if !a.IsAuthenticated(s.Conn().RemotePeer()) {
			a.lg.Debug().Str("peer", s.Conn().RemotePeer().String()).Str("protocol", string(proto)).Msg("stream from unauthenticated peer refused")
			s.Reset()
			return
		}
		fn(s)
	})
}

// goFunc runs fn on a goroutine that Run waits for; it does nothing once
// Run is stopping.
func (a *Auth) goFunc(fn func(ctx context.Context)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing || a.ctx == nil {
		return
	}
	ctx := a.ctx
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn(ctx)
	}()
}

func (a *Auth) connected(c network.Conn) {
	p := c.RemotePeer()
	if a.IsAuthenticated(p) {
		return
	}
	if c.Stat().Direction == network.DirOutbound {
		a.mu.Lock()
		busy := a.inflight[p]
		a.inflight[p] = true
		a.mu.Unlock()
		if !busy {
			a.goFunc(func(ctx context.Context) { a.initiate(ctx, p) })
		}
		return
	}
	a.mu.Lock()
	a.strangers.connected(p)
	a.mu.Unlock()
	a.goFunc(func(ctx context.Context) {
		t := time.NewTimer(a.cfg.Timeout)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			if !a.IsAuthenticated(p) && a.cfg.Host.Network().Connectedness(p) == network.Connected {
				a.fail(p, errors.New("did not authenticate in time"))
			}
		}
	})
}

func (a *Auth) disconnected(p peer.ID) {
	if a.cfg.Host.Network().Connectedness(p) == network.Connected {
		return
	}
	a.mu.Lock()
	_, was := a.authed[p]
	delete(a.authed, p)
	a.strangers.remove(p)
	a.broadcastLocked()
	a.mu.Unlock()
	if was {
		a.lg.Debug().Str("peer", p.String()).Msg("authenticated peer disconnected")
		a.cfg.OnDown(p)
	}
}

func (a *Auth) succeed(p peer.ID) {
	a.mu.Lock()
	_, was := a.authed[p]
	a.authed[p] = time.Now()
	a.strangers.remove(p)
	a.rememberLocked(p)
	a.broadcastLocked()
	a.mu.Unlock()
	a.cfg.Gate.Succeed(p)
	if !was {
		a.lg.Debug().Str("peer", p.String()).Msg("peer authenticated")
		a.cfg.OnUp(p)
	}
}

func (a *Auth) fail(p peer.ID, err error) {
	d := a.cfg.Gate.Fail(p)
	a.lg.Warn().Str("peer", p.String()).Err(err).Dur("backoff", d).Msg("peer failed fleet authentication; disconnected")
	_ = a.cfg.Host.Network().ClosePeer(p)
	a.mu.Lock()
	delete(a.known, p)
	a.broadcastLocked()
	a.mu.Unlock()
}

// broadcastLocked wakes every WaitAuthenticated. Call with a.mu held.
func (a *Auth) broadcastLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *Auth) initiate(ctx context.Context, p peer.ID) {
	defer func() {
		a.mu.Lock()
		delete(a.inflight, p)
		a.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		err := a.runInitiator(network.WithAllowLimitedConn(ctx, "auth"), p)
		connected := a.cfg.Host.Network().Connectedness(p) == network.Connected
		switch {
		case err == nil:
			a.succeed(p)
			return
		case refused(err):
			a.fail(p, err)
			return
		case !connected || errors.Is(ctx.Err(), context.Canceled):
			// The connection went away (the peer stopped, say) or we are
			// stopping: nothing to punish.
			a.lg.Debug().Str("peer", p.String()).Err(err).Msg("authentication interrupted: connection closed")
			return
		case attempt < 3 && ctx.Err() == nil:
			// A reset stream on a live connection: try again shortly.
			a.lg.Debug().Str("peer", p.String()).Err(err).Int("attempt", attempt).Msg("authentication interrupted; retrying")
			sleepCtx(ctx, 100*time.Millisecond)
		default:
			a.fail(p, err)
			return
		}
	}
}

// refused reports whether an exchange failed because the peer is not one
// of ours (it lacks our fleet protocol, or its proof or its verdict says
// so), as opposed to a transport failure.
func refused(err error) bool {
	var unsupported msmux.ErrNotSupported[protocol.ID]
	return errors.Is(err, ErrAuthFailed) || errors.As(err, &unsupported)
}

func (a *Auth) runInitiator(ctx context.Context, p peer.ID) error {
	s, err := a.cfg.Host.NewStream(ctx, p, a.proto)
	if err != nil {
		return fmt.Errorf("open auth stream (not a member of this fleet?): %w", err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	self := []byte(a.cfg.Host.ID())
	remote := []byte(p)
	nI := make([]byte, nonceLen)
	_, _ = rand.Read(nI)
	if err := frame.Write(s, nI); err != nil {
		return err
	}
	br := bufio.NewReader(s)
	b, err := frame.Read(br, 1024)
	if err != nil {
		return err
	}
	nR, macR, err := decodeChallengeReply(b)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(macR, a.cfg.Fleet.mac([]byte("R"), nI, nR, remote, self)) != 1 {
		return fmt.Errorf("%w: responder's proof does not match our fleet secret", ErrAuthFailed)
	}
	if err := frame.Write(s, a.cfg.Fleet.mac([]byte("I"), nI, nR, self, remote)); err != nil {
		return err
	}
	b, err = frame.Read(br, 16)
	if err != nil {
		return fmt.Errorf("read verdict: %w", err)
	}
	if len(b) == 1 && b[0] == authNo {
		return fmt.Errorf("%w: responder rejected our proof", ErrAuthFailed)
	}
	if len(b) != 1 || b[0] != authOK {
		return fmt.Errorf("%w: unexpected verdict %x", ErrAuthFailed, b)
	}
	return nil
}

func (a *Auth) respond(s network.Stream) {
	p := s.Conn().RemotePeer()
	defer s.Close()
	a.mu.Lock()
	a.strangers.started(p)
	a.mu.Unlock()
	_ = s.SetDeadline(time.Now().Add(a.cfg.Timeout))
	if err := a.runResponder(s, p); err != nil {
		if refused(err) {
			// Closing the connection at once would discard the verdict
			// unsent: end our side, and let the peer close its own once it
			// has read it (or verdictLinger pass).
			_ = frame.Write(s, []byte{authNo})
			_ = s.CloseWrite()
			_ = s.SetReadDeadline(time.Now().Add(min(verdictLinger, a.cfg.Timeout)))
			_, _ = io.Copy(io.Discard, io.LimitReader(s, 1024))
			a.fail(p, err)
		} else {
			// A transport failure: a peer that never completes is failed
			// by the timeout that watches inbound connections.
			s.Reset()
			a.lg.Debug().Str("peer", p.String()).Err(err).Msg("authentication interrupted")
		}
		return
	}
	a.succeed(p)
	_ = frame.Write(s, []byte{authOK})
}

func (a *Auth) runResponder(s network.Stream, p peer.ID) error {
	self := []byte(a.cfg.Host.ID())
	remote := []byte(p)
	br := bufio.NewReader(s)
	nI, err := frame.Read(br, 1024)
	if err != nil {
		return err
	}
	if len(nI) != nonceLen {
		return fmt.Errorf("%w: challenge is %d bytes, want %d", ErrAuthFailed, len(nI), nonceLen)
	}
	nR := make([]byte, nonceLen)
	_, _ = rand.Read(nR)
	reply := append(nR, a.cfg.Fleet.mac([]byte("R"), nI, nR, self, remote)...)
	if err := frame.Write(s, reply); err != nil {
		return err
	}
	macI, err := frame.Read(br, 1024)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(macI, a.cfg.Fleet.mac([]byte("I"), nI, nR, remote, self)) != 1 {
		return fmt.Errorf("%w: initiator's proof does not match our fleet secret", ErrAuthFailed)
	}
	return nil
}

func decodeChallengeReply(b []byte) (nonce, mac []byte, err error) {
	if len(b) != nonceLen+macLen {
		return nil, nil, fmt.Errorf("%w: challenge reply is %d bytes, want %d", ErrAuthFailed, len(b), nonceLen+macLen)
	}
	return b[:nonceLen], b[nonceLen:], nil
}
