// Package crdt is the fleet document: one Automerge document per fleet that
// says who is in the fleet (nodes/<peer>), what each node shares
// (library/<item>/...) and which live rooms exist (rooms/<topic>/...).
//
// # Schema
//
// Every entry is a key of the root map spelled as its path:
//
//	nodes/<peer>                     map, written only by that node (NodeRecord)
//	library/<item>/name              string, last writer wins
//	library/<item>/holders/<peer>    map, written only by that holder (Holder)
//	rooms/<topic>/creds              string, last writer wins
//	rooms/<topic>/presence/<peer>    int (lease expiry, Unix ms), by that peer
//	rooms/<topic>/state/<key>        string, last writer wins
//
// Keys are flat because automerge identifies a map by the change that made
// it: two replicas that each create a shared parent map ("library")
// concurrently end up with two objects under one key, and readers see only
// one of them. Flat keys leave nested maps only where one writer creates
// them. Reads go through typed methods (Nodes, Library, Rooms); writes go
// through Update and a Tx; no raw automerge path leaves this package.
//
// # Persistence
//
// The directory holds doc.snapshot (automerge Save, checksummed) and
// doc.log (checksummed records, each one or more changes). Every change
// is appended before the call that made it returns; a local commit is
// also fsynced first (with it, every earlier record). Changes from peers
// are written but not fsynced on their own: they survive a process crash
// (the page cache does), and a power loss costs only what anti-entropy
// refetches from the peers that still hold them. The log is folded into a new snapshot (temp file, fsync,
// rename) once it outgrows the snapshot. At Open, a damaged log tail is cut
// off after copying the whole file aside (doc.log.damaged-<ns>) and a
// damaged snapshot is moved aside; the valid part is loaded and the damage
// reported by Damage and in the log. See format.go for the byte layout.
//
// # Sync
//
// Doc.Sync runs automerge's sync protocol over any stream (see sync.go for
// the framing). ApplyChange takes one gossiped change with its announced
// hash and dependencies: automerge-go's LoadIncremental refuses a change
// whose dependencies are missing, so the caller pulls the gap by Sync.
// MergeSnapshot bootstraps a new node from a peer's Save output, which
// costs a fraction of a full sync.
package crdt
