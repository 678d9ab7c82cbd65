// Package mesh is the networking of a node: the libp2p host (QUIC-v1 and
// TCP), fleet authentication, discovery (mDNS, rendezvous peers, the
// document's node list), replication of the document, membership, and
// the mesh manager and the relay.
//
// # Fleet
//
// A fleet is defined by a 32-byte secret carried in a join token. From the
// secret, BLAKE3 key derivation gives the public fleet ID (16 hex digits),
// which scopes the mDNS service (_mn-<id>._udp), topics (meshnode/<id>/...)
// and protocol IDs (/meshnode/<id>/...), plus two keys: the auth key and
// the gossip key. The ID depends on the secret alone, so every form of
// token for one secret gives the same fleet.
//
// A join token is "mn2-" and 58 base32 characters (RFC 4648 alphabet,
// written in lower case, no padding) encoding 36 bytes: the secret, then
// CRC-32C (Castagnoli) of "mn2-" followed by the secret, little-endian.
// The checksum catches typos, not forgeries: every change of one
// character and every swap of two neighbouring ones is detected, other
// damage with probability 1 - 2^-32, and the unused low bits of the last
// character must be zero. ParseToken ignores letter case and whitespace;
// it refuses a token whose checksum fails with ErrTokenChecksum, so a typo
// never starts a new fleet. The legacy form, "mn1-" and the 52-character
// base32 secret without a checksum, still parses to the same fleet, with
// Fleet.Legacy set so the caller can ask for the token to be reissued;
// Fleet.Token always renders the current form.
//
// # Protocols
//
//	/meshnode/<id>/auth/1      challenge/response proving the secret (auth.go)
//	/meshnode/<id>/sync/2      epoch hello, then automerge's sync protocol: anti-entropy (crdt.Doc.Sync)
//	/meshnode/<id>/snapshot/1  responder writes one frame: the document's Save()
//
// All stream messages are frames: uvarint length, then payload. Only
// authenticated peers reach sync and snapshot; others' streams are reset.
// A peer whose proof is rejected reads the 0x00 verdict, then is
// disconnected and refused with backoff.
//
// # Strangers
//
// Peer IDs cost nothing, so a host without the token can open connection
// after connection, each under a new ID. Inbound peers that have not
// authenticated therefore have a budget of their own, 32 at once
// (AuthConfig.Strangers), which the Gate enforces when a connection is
// secured: with it full, a newcomer replaces the longest-waiting stranger
// that has not even opened the exchange, or is refused. Members known to
// the node (they authenticated before, or their heartbeats reached it)
// pass outside the budget. The Gate remembers at most 4,096 peers in
// backoff (repeat offenders longest), Auth at most 16,384 known members,
// Membership at most 16,384 peers, each forgotten (by default) an hour
// after its last heartbeat. libp2p's resource manager keeps its limits
// scaled to the machine, except that its system connection limits never
// fall below the connection manager's high watermark plus the strangers'
// budget.
//
// # Gossip
//
//	meshnode/<id>/doc/1  each local commit; a heads notice for a change too
//	                     large to gossip or after anti-entropy brought changes
//	meshnode/<id>/hb/1   heartbeats: name, listen addrs, document heads
//
// Payloads are sealed with XChaCha20-Poly1305 under the gossip key with the
// topic as associated data (wire.go). Validators accept a message only if
// the neighbour that forwarded it has authenticated and it opens with the
// key. Gossip is the fast path; anti-entropy on every new authenticated
// connection, every SyncInterval, and whenever gossip or a heartbeat shows
// a change we lack is what guarantees convergence.
//
// # Anti-entropy and epochs
//
// A session opens with each side's document epoch (crdt's hello). Sides
// on different epochs stop there: the side behind takes the other's
// snapshot (Replicator.catchUp), which moves its document to the later
// epoch and carries its writes over what the peer already wrote there; a peer whose snapshot does not bring the
// epoch its hello named is refused like a bad change. Every step of a
// session must progress within SyncIdle, a worker never takes a peer
// another worker is syncing with, and the periodic pass skips peers that
// membership sees as stale, so a peer that died without closing its
// connections holds one worker for SyncIdle, not every worker until the
// transport's idle timeout.
//
// # Membership
//
// A peer is alive while its heartbeats are fresh (StaleAfter); a Goodbye
// (leaving heartbeat plus alive=false in its record) is a hint the stale
// timeout confirms. Heartbeats never touch the document; last_seen_ms in
// the record is refreshed only every LastSeenEvery. A peer not heard for
// ForgetAfter is forgotten, as if never heard.
//
// # Mesh manager
//
// Manager keeps up to Max supplementary QUIC connections to eligible peers
// from the node list so the fleet stays connected without its rendezvous.
// The decision is Reconcile (plan.go), a pure function of (node list,
// current links, now, config) -> drops and opens; Manager runs it on an
// interval and a debounce after node-list changes, dials, protects links
// from the connection manager, and reports in Status. A peer already
// connected is not dialled again: its slot uses the existing connection.
// Dropping a slot unprotects the peer and closes only a connection the
// manager dialled itself, and that one only if none of our protocols has
// a stream on it; the connection manager trims what stays. Each pass
// also dials the direct addresses of peers reached only through a relay,
// and closes a relayed connection once a direct one to the same peer
// exists.
//
// # Relay
//
// RelayService runs libp2p's circuit relay v2 (/libp2p/circuit/relay/0.2.0/
// hop and stop, libp2p's own wire format) behind an access filter: a
// reservation, or a relayed connection, only for peers that have passed
// fleet authentication (the destination too). Limits come from
// RelayLimits; by default none per connection, so libp2p does not mark
// relayed connections limited. RelayClient holds a slot on each --relay,
// refreshes it at two thirds of its lifetime, retakes it when the
// connection to the relay drops, and hands Membership the relayed
// addresses (<relay addr>/p2p/<relay>/p2p-circuit) to publish after the
// node's own in its record. Fleet authentication and our streams run over
// relayed connections like over direct ones.
package mesh
