// Package crdt is the fleet document: one Automerge document per fleet that
// says who is in the fleet (nodes/<peer>), what each node shares
// (library/<item>/...) and which live rooms exist (rooms/<topic>/...).
//
// # Schema
//
// Every entry is a key of the root map spelled as its path:
//
//	nodes/<peer>                     signed record (NodeRecord), written only by that node
//	library/<item>/name              string, at most 1 KiB, last writer wins
//	library/<item>/holders/<peer>    signed record (Holder), written only by that holder
//	rooms/<topic>/creds              string, room credentials that decode, last writer wins
//	rooms/<topic>/presence/<peer>    signed record (lease expiry, Unix ms), by that peer
//	rooms/<topic>/state/<key>        string, at most 16 KiB, last writer wins
//	nodes/<peer>/attest              signed record: a root over the peer's other records (attest.go)
//	epoch/cut/<peer>                 string, that peer's proposal to cut the history (epoch.go)
//
// Every key part is at most 256 bytes. Keys are flat because automerge
// identifies a map by the change that made it: two replicas that each
// create a shared parent map ("library") concurrently end up with two
// objects under one key, and readers see only one of them. So the
// document holds no object at all: every value is a scalar at the root.
// Reads go through typed methods (Nodes, Library, Rooms); writes go
// through Update and a Tx; no raw automerge path leaves this package.
//
// # Signed records and checked changes
//
// A single-writer record is one bytes value carrying a counter that rises
// with every write; the change that writes it carries its writer's Ed25519
// signature (the key inside its peer ID) over the change's record writes,
// one signature per writer per change (record.go has the byte layouts). Every change
// that reaches this node from outside, by gossip, sync, snapshot, the
// change log at start-up or ApplyChanges (POST /v1/doc/changes), is
// decoded by this package's own reader of automerge's binary format
// (ops.go, columns.go, syncmsg.go) and checked before automerge sees it
// (validate.go lists the rules; intake.go is the one way in). A change
// that breaks a rule is refused whole with a *RefusedError naming the
// rule, and never enters any replica, so it is never relayed. A peer's
// snapshot is checked with the same rules (validate.go, checkDocument),
// one signature per change of its history. Readers take each record from
// an index that keeps the highest counter ever written at its key
// (recindex.go), so a replayed record is never read. The format of the
// directory is in doc.format (migrate.go: a format 1 directory, with
// records as unsigned maps, is moved aside and its shared entries carried
// over).
//
// # Reading at scale
//
// Readers never walk the automerge document. The node list, the library
// and the rooms are Go values (view.go) kept up to date from what each
// change touched: the record index marks every key whose record in force
// changed, and every shared key a change sets or deletes is read again
// from automerge (one call per key) once the change is in. A reader
// copies a top-level map under a read lock and shares the values, which
// are replaced, never modified, by later changes; so it encodes JSON with
// no lock held. At 100,000 holder records, Library takes 0.2 ms where a
// walk of the document took 0.37 s and tens of MiB of C heap. A peer's
// snapshot is loaded by automerge on a second core while its ops are
// checked, once the decoder has found no action but set and delete in
// it, and a node that adopted one returns the check's garbage and
// automerge's free C heap to the system.
//
// # Persistence
//
// The directory holds doc.snapshot (automerge Save, checksummed) and
// doc.log (checksummed records, each one or more automerge chunks). See
// format.go for the byte layout and change.go for the part of automerge's
// chunk format this package reads itself (a change's hash and
// dependencies).
//
//   - Durable before acknowledged. Update commits in memory, appends the
//     change under the document lock and then waits, outside that lock,
//     until one fsync covers its record (group commit: writers that append
//     while an fsync runs share the next one). Watchers, and so the
//     gossip publisher, see a local change only once it is durable.
//   - A failed write leaves no trace. If the append or its fsync fails (a
//     full disk gives ErrDiskFull), the log is cut back and the document
//     rolled back to the heads before it (a fork, paid only on failure),
//     so the change is never visible again, never published, never
//     replayed. A change from a peer is appended before it is applied, so
//     one that cannot be logged never enters memory; anti-entropy brings
//     it again.
//   - Changes from peers are written but not fsynced on their own: they
//     survive a process crash (the page cache does), and a power loss costs
//     only what anti-entropy refetches from the peers that still hold
//     them; the next local commit's fsync covers them.
//   - Compaction folds the log into a new snapshot in a goroutine of its
//     own once the log outgrows the snapshot (or CompactRecords): the
//     snapshot is written outside the document lock and the log replaced
//     by one holding only what the snapshot lacks (temp file, fsync,
//     rename, fsync of the directory).
//   - Recovery keeps every intact record. At Open, a damaged snapshot is
//     moved aside (doc.snapshot.damaged-<ns>); a damaged log is copied
//     aside whole (doc.log.damaged-<ns>) and rewritten with every record
//     that passes its checksum: the scan resynchronises after damage, so a
//     flipped byte costs one record, not the rest of the file. A record
//     whose dependencies are missing (they were in a lost snapshot or a
//     lost record) is not an error: its changes wait, on disk and in
//     memory, and apply as soon as anti-entropy brings what they depend
//     on. Damage reports each problem: the file, what was wrong, what was
//     lost, where the copy is; WaitingRecords counts the waiting changes.
//
// # Bounded history: epochs
//
// Automerge keeps every change forever, and a document chunk keeps every
// op ever written (an overwritten value stays, marked by its successor).
// So the fleet cuts the document from time to time into a new epoch: a
// new automerge document whose first change, the genesis, holds the
// state at the cut and no history. No node is in charge.
//
//   - The rule (cutrule.go). A cut is due on a node when its document
//     takes at least CutBytes on disk (default 128 KiB), at least CutShare
//     (half) of that is history (1 - bytes right after the last switch /
//     bytes on disk; before its first switch a node builds the genesis it
//     would cut once to learn that size) and the epoch is CutMinAge old
//     (30 s). Proposers
//     take turns: the alive nodes of the node list are ranked by
//     SHA-256(epoch ID | peer ID), and rank r proposes once the cut has
//     been due for r x CutGrace (r at most 4).
//   - A proposal is a shared value, epoch/cut/<peer> = "<n> <heads>", the
//     proposer's heads at the time (epoch.go). The change that writes it
//     depends on those heads, so a node that holds the proposal holds the
//     cut. The epoch it starts is named by
//     ID = SHA-256("meshnode/epoch/1" 0 | n | parent ID | sorted heads).
//     Between two proposals of one epoch the lower ID wins (Epoch.After).
//   - The switch. A node that has seen a proposal for the next epoch for
//     CutGrace (10 s, for concurrent proposals to reach it) takes the
//     winner, forks its document at the cut, and builds the genesis
//     (genesis.go): one change by the actor ID[:16], time 0, no deps, the
//     keys set in sorted order: every record in force (recindex.go's
//     choice) and every shared value automerge shows, proposals dropped.
//     Every node that holds the cut builds the same change byte for byte,
//     so nodes that switch on their own share one document and sync as
//     before. The old document is kept beside the new one (doc.prev).
//   - The carry (carry.go). Writes the cut left out (made after the
//     proposal, or on a node that had not seen it) are written again on
//     top of the genesis, in changes of the node that switches: its own
//     records whose counter is above the new document's; other writers'
//     records from the left-out changes, as they were, each change's
//     writes of one writer in a change of their own under that writer's
//     original signature (it covers the writes, not the change); and its
//     own shared values the left-out changes wrote last, where the new
//     document still shows the genesis's value or another node's carry
//     of an older write (a carry change names the write it carries).
//     Records are idempotent by counter, so any number of nodes may carry
//     the same writes; shared values are carried by their writer only.
//   - Signatures across a cut. Every change that writes a peer's records
//     also writes its attestation, a signed root over all of its records
//     (attest.go). The genesis's message carries, for each writer whose
//     records hash to its attestation's root, the one signature that
//     covered the attestation, and for any other record the signature of
//     the change that wrote it (record.go): the writer, the signature and
//     every record write of that change (a write the genesis still holds
//     is named by its key; any other comes with its value). A joiner checks
//     one signature per group, about one per writer; a genesis whose
//     records a group or an attestation does not exactly cover is refused
//     (RuleEpoch). Signatures carried from an older genesis are carried
//     again.
//   - Wire. Anti-entropy (sync/2) opens with a hello of each side's epoch
//     (sync.go); sides on different epochs end the session with
//     EpochMismatchError, and the side behind fetches the other's snapshot
//     (MergeSnapshot moves it to the later epoch and carries its writes).
//     A gossiped change of another epoch lacks its dependencies and is
//     pulled by sync, which sorts the epochs out the same way; a change
//     with no dependencies in an epoch after the first is the root of
//     another epoch's document and is never applied.
//   - Disk. A switch writes the old document (doc.prev), the new
//     snapshot and a new log whose first record is the epoch marker
//     ("MNEPOCH1" | ID | number, format.go) under temporary names, fsynced;
//     then renames the snapshot into place (the commit point) and syncs
//     the directory, then renames doc.prev and the log and syncs again.
//     Mutations wait while it runs; a failure after the commit point
//     stops the document taking changes until a restart. At Open the
//     epoch comes from the snapshot's genesis, and a log whose marker
//     does not name it predates a switch cut short: it is set aside
//     (doc.log.epoch-<ns>), since the snapshot holds everything of it
//     this node had acknowledged (the carry ran before it was written).
//
// Failure cases, and what happens:
//
//   - Two proposals at once: each node switches to the lower ID after the
//     grace; a node that switched to the higher one before it saw the
//     lower moves at its next sync, carrying its writes (a sibling epoch:
//     the carry also takes the writes of doc.prev the winning cut lacks).
//   - A partition during the switch: each side cuts on its own; at the
//     heal the side with the higher ID moves to the other's epoch by
//     snapshot and carries every write it made since the two sides parted.
//   - kill -9 in the middle of a switch: before the new snapshot is in
//     place the node restarts on the old epoch and switches again; after
//     it, the old log is set aside and the new snapshot holds all.
//   - A node offline across one cut or more: its first sync hello shows
//     it behind; it adopts a peer's snapshot and carries its own writes
//     that no peer saw (changes of its own that no other actor's change
//     depends on), and its records by counter.
//   - Writes at full rate during a switch: they wait for it (milliseconds
//     for a small document), land in the new epoch, or, if they were in
//     the old document after the cut, are carried.
//   - A joiner during a switch: it bootstraps from whichever epoch its
//     peer is on, and moves to the later one like any node behind.
//
// Left open (each a known gap, not a silent one):
//
//   - A shared value written after the cut by a node that never switches
//     (gone for good) is lost; its records are not (others carry them).
//   - Shared values carried by two nodes that each built the cut before
//     seeing the other's carry merge as concurrent writes do (automerge's
//     order of the new epoch's ops), even when one old write followed the
//     other; a value written natively in the new epoch can lose the same
//     way to a carry made concurrently with it. (Repairing that by writing
//     the rightful value again needs each write named by its op, not its
//     value, or a repair can undo a newer write.) Changes a tool sent by
//     ApplyChanges are carried for their records, not for their shared
//     values (their actor is the tool's).
//   - A snapshot of a later epoch is adopted even when a record in it is
//     below a higher one at its key in stored order (two carries of one
//     writer's records make that): readers take the highest anyway.
//   - A node behind by two cuts or more carries its own writes that no
//     other actor's change depends on. A write of its that a peer built
//     on, whose epoch was then lost with that peer (a partition that
//     outlived two cuts), is not carried; a write a peer saw but built
//     nothing on is written again, over a newer value if there is one.
//     The genesis keeps the version vector of its own cut only.
//   - A writer whose records stop matching its attestation (a tool
//     writing them with its key but no attestation) makes the next
//     genesis fall back to a signature per change; if one of its records
//     came from the parent genesis under the old attestation alone, no
//     genesis can be built until it writes again. The rule then retries
//     every 5 minutes and says why in the log.
//   - The epoch ID names the cut, not the genesis's bytes: a member can
//     serve a snapshot whose genesis has the right header but other
//     shared values (its records still verify). A node that takes it
//     stays apart from the fleet until it is reset.
//   - A member can propose a cut at every chance; nodes switch no sooner
//     than CutMinAge into an epoch, so the fleet cuts at most that often.
//   - A node whose snapshot of an epoch after 0 is lost restarts on epoch
//     0 with its log's changes waiting; the next snapshot it adopts drops
//     them, except what its records and its carry rule bring across.
//   - Tombstones (withdrawn holders) are kept across cuts so an old record
//     cannot be replayed; they are never dropped.
//
// # Sync
//
// Doc.Sync runs automerge's sync protocol over any stream, after the
// epoch hello (see sync.go for the framing); automerge's sync state sees each message with its changes
// stripped, the changes going through intake.go. ApplyChange takes one
// gossiped change with its announced hash and dependencies and answers
// ErrMissingDeps for one whose dependencies this node lacks, so the
// caller pulls the gap by Sync. MergeSnapshot bootstraps a new node from
// a peer's Save output, which costs a fraction of a full sync; a snapshot
// holding a change whose replay check needs that change's dependencies is
// not adopted (ErrSnapshotNeedsSync), and the node syncs instead.
package crdt
