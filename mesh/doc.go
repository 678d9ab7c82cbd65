// Package mesh is the networking of a node: the libp2p host (QUIC-v1 and
// TCP), fleet authentication, discovery (mDNS, rendezvous peers, the
// document's node list), replication of the document, and membership.
//
// # Fleet
//
// A fleet is defined by a 32-byte secret carried in a join token
// ("mn1-" + base32). From the secret, BLAKE3 key derivation gives the
// public fleet ID (16 hex digits), which scopes the mDNS service
// (_mn-<id>._udp), topics (meshnode/<id>/...) and protocol IDs
// (/meshnode/<id>/...), plus two keys: the auth key and the gossip key.
//
// # Protocols
//
//	/meshnode/<id>/auth/1      challenge/response proving the secret (auth.go)
//	/meshnode/<id>/sync/1      automerge sync protocol, anti-entropy (crdt.Doc.Sync)
//	/meshnode/<id>/snapshot/1  responder writes one frame: the document's Save()
//
// All stream messages are frames: uvarint length, then payload. Only
// authenticated peers reach sync and snapshot; others' streams are reset.
//
// # Gossip
//
//	meshnode/<id>/doc/1  each local commit (or a heads notice if too large)
//	meshnode/<id>/hb/1   heartbeats: name, listen addrs, document heads
//
// Payloads are sealed with XChaCha20-Poly1305 under the gossip key with the
// topic as associated data (wire.go). Validators accept a message only if
// the neighbour that forwarded it has authenticated and it opens with the
// key. Gossip is the fast path; anti-entropy on every new authenticated
// connection, every SyncInterval, and whenever gossip or a heartbeat shows
// a change we lack is what guarantees convergence.
//
// # Membership
//
// A peer is alive while its heartbeats are fresh (StaleAfter); a Goodbye
// (leaving heartbeat plus alive=false in its record) is a hint the stale
// timeout confirms. Heartbeats never touch the document; last_seen_ms in
// the record is refreshed only every LastSeenEvery.
package mesh
