// Package room runs engagement rooms: live broadcast groups around a
// topic (an item, a build job), for any number of participants, with no
// host and no arbiter.
//
// # Rendezvous on the document
//
// A topic's room is whatever rooms/<topic>/creds advertises: encoded
// Creds, a last-writer-wins field any participant may set. A participant
// is present on a topic while it has the topic open: it writes a lease
// (rooms/<topic>/presence/<peer> = expiry, Unix ms) when it opens the
// topic, renews it at half its life (default lease 10 min) and writes 0
// when it leaves. A lease counts only while the peer's heartbeats are
// fresh, so a participant that dies stops counting within the stale
// timeout, not at the end of its lease; the document gets one write per
// participant per five minutes, not per heartbeat.
//
// Reconcile is the per-topic decision, pure: given whether the topic is
// open here, whether an offer holds it, the advertised creds, whether
// another participant is present, this node's links and the time, it
// returns actions. Creds missing, malformed or expired while a peer is
// present (or the topic is offered) → mint new ones, write them, join.
// Linked to the advertised room → nothing. Creds changed → join the new
// room, then drop the old. No other participant → tear down. A link
// still connecting after ConnectTimeout → drop it; the next pass joins
// again. Concurrent mints converge because the document keeps one of the
// writes everywhere and every loser migrates to it.
//
// # Credentials
//
// Unpadded base64url of: version (1) | room ID (16, random) | secret (32,
// random) | created (8, Unix ms, big endian) | expires (8). DecodeCreds
// rejects anything else, an unknown version, and creation or expiry times
// that make no sense, with the reason; Valid rejects expired creds.
//
// # Messages
//
// Each room is a GossipSub topic, meshnode/<fleet>/room/<room ID hex>,
// whose validator drops what does not open with the room's key. A
// message on the wire:
//
//	version (1) | nonce (24) | XChaCha20-Poly1305 ciphertext + tag
//	  key: HKDF-SHA256(secret, salt room ID, "meshnode room message v1")
//	  associated data: version | room ID
//	plaintext: uvarint len(sender) | sender peer ID | uvarint epoch |
//	  uvarint seq | uvarint len(type) | type | payload
//
// Type is at most 64 bytes and the payload 64 KiB; larger is refused
// with ErrTooLarge before anything is sent. The sender must be the
// GossipSub message's signed origin, or the message is dropped as forged.
// Epoch is the sender's join of the topic (Unix ms) and seq counts its
// messages from 1 within it, across rooms, so a receiver keeps each
// sender's messages in order through a migration: it drops duplicates and
// anything from an older epoch (replays) and holds a message that follows
// a gap. GossipSub validates messages concurrently, so they arrive out of
// order: a sender that joined after this node is expected from seq 1; one
// met mid-stream without history starts at the lowest seq seen in its
// first 200 ms.
//
// A gap still open after RefillAfter (250 ms) is asked of the
// participants over the history protocol below: the gap's sender first
// (it keeps its own messages), then the others in the room, until one
// answer fills it; it is asked once more at half of GapWait (2 s) for
// messages that were still on their way to the first responder. What the
// answers bring is delivered in its place. Only a gap still open once
// the asks are answered and GapWait has passed is reported (a gap event),
// and ordering goes on after it: a gap is what nobody present could fill,
// such as messages older than every participant's History. A lost last
// message shows no gap, so once the room has been quiet for GapWait/2
// after a live message, or after a participant (re)appeared in it, a node
// asks one in the room for anything after its position in each sender's
// stream; mostly the answer is empty. Without a Host, a gap is reported
// after GapWait and a lost tail stays lost.
//
// # Late joiners
//
// A node that joins a topic holds the room's live messages while it asks a
// present participant for the recent ones over /meshnode/<fleet>/room/1
// (fleet members only):
//
//	request:  room ID (16) | HMAC-SHA256(HKDF(secret, "meshnode room
//	          history v1"), "history" | requester ID | responder ID)
//	          [| since: uvarint n | n × (uvarint len(sender) | sender |
//	          uvarint epoch | uvarint next)]
//	response: status (0 ok, 1 not in that room, 2 bad proof), then each of
//	          the topic's last History (256) messages as the GossipSub
//	          message that carried it (protobuf, signed by its sender),
//	          oldest first, then an empty frame
//
// A joiner asks without since; a refill or a tail check lists where it
// stands (at most 512 senders) and gets only those senders' messages
// from there on (a later epoch, or the same epoch and seq >= next).
//
// The joiner checks each one as the router would (the sender's signature),
// and that it opens with the key of the room whose topic it names and
// names that same sender inside: a responder can leave messages out, but
// not make up or alter another participant's. A message of a room the
// asker never had (the topic's history spans its rooms) is skipped.
// It delivers the history (flagged as such), then the held live messages,
// through the same ordering, so the seam has no duplicate; a gap at the
// seam is refilled like any other. The room's durable state is
// rooms/<topic>/state in the document, which a joiner has already.
//
// # Inside the manager
//
// One goroutine owns every topic's state, as etcd raft's node.go owns
// RawNode: the core (core.go) is a state machine of inputs to actions,
// with no I/O, clock or goroutine, and the loop (loop.go) feeds it API
// calls, received messages, document snapshots, ticks, timers and the
// results of work it started, one at a time, and then carries out what
// it asked for. Events go to subscribers at once without waiting (a full
// subscriber misses them, counted as lagged); pubsub joins and closes
// (links.go), document reads and writes (presence.go) and history fetches
// (history.go) run on goroutines the loop starts and Run waits for, which
// post their results back. The loop never waits and holds no lock, so a
// link's receiver, which opens each message and hands it over, is never
// held up behind pubsub or the disk.
package room
