// Package transfer is the library: it shares the items of the share
// folder with the fleet and downloads other nodes' items into it, in
// verified chunks, from every holder at once.
//
// # Items
//
// Each immediate subfolder of the share folder is an item; its ID is the
// folder name (ValidItemID: not hidden, no separators or control
// characters). Inside an item, local/ and the patterns listed in the
// item's .meshignore are user-owned: never hashed, listed or served, and
// kept when an update replaces the item. Symlinks and special files are
// not shared. Bookkeeping lives outside the share folder, in the
// library folder: index/<item>.json (the last scan), manifests/<hash>,
// and staging/<item>-<hash16>/ (one per download: manifest, have, data/,
// job.json, swap.json).
//
// # Manifest
//
// The canonical encoding, whose BLAKE3-256 hash identifies a version:
//
//	"MNM1" | uvarint nfiles | per file, sorted by path:
//	  uvarint len(path) | path | uvarint size | uvarint mode (0o777 bits)
//	  | BLAKE3-256 of each 1 MiB chunk (ceil(size / 1 MiB) of them)
//
// Paths are slash-separated, relative and clean; varints are minimal, so
// one manifest has exactly one encoding. DecodeManifest enforces all of it.
//
// # Protocol /meshnode/<fleet>/xfer/1
//
// Authenticated fleet members only. Each message is a frame (uvarint
// length, payload). A stream carries requests and responses in order, so a
// client keeps several requests in flight:
//
//	request:  kind (1 manifest, 2 chunk, 3 have, 4 run) | manifest hash (32)
//	          [chunk: uvarint len(path) | path | uvarint chunk index]
//	          [run: uvarint first chunk | uvarint count (1..1024)]
//	response: status (0 ok, 1 not found, 2 refused, 3 error, 4 busy,
//	          5 changed, 6 elsewhere)
//	          | payload: the manifest encoding, the chunk bytes, the run's
//	          chunks end to end, or the have answer; for another status,
//	          a reason
//	have:     0x01 (the whole item) | 0x00 bitmap (ceil(chunks/8) bytes,
//	          bit g LSB first = chunk g held; chunks are numbered through
//	          the files in manifest order; no bit set past the last chunk)
//
// A run names consecutive chunks in the manifest-wide numbering below,
// across files, whose lengths add up to at most 1 MiB: many small files
// travel in one request and one response. A server of an earlier version
// refuses kind 4 as unknown; the client then asks it one chunk at a time.
//
// The server answers for manifests of items it holds complete, and of
// items it is downloading: those serve only chunks already verified and
// written (others are "not found"), which is what lets a fleet that
// downloads the same item swarm instead of all pulling from one origin. A
// chunk path must be clean, in that manifest, not user-owned, and resolve
// to a regular file inside the item (os.Root: no "..", no symlink out). A
// peer may hold 8 streams at once and all peers together 256; a stream
// beyond that is answered busy, with the reason. A holder never sends
// bytes that no longer match its manifest: a file whose size,
// modification or change time or inode moved on since the scan (checked when it is
// opened and after each chunk is read) is answered "changed", and the
// holder rescans the item and publishes its new version. A file modified
// less than 2 s before its scan is racy (a write in the same tick of the
// file clock could keep its fingerprint): each chunk of it is checked
// against the manifest's hash before it is sent, and the next scan
// hashes it again. The downloader
// stops asking that holder, without reporting it for bad data, and tries
// it again after 5 s: a holder whose file was only touched serves the
// same version again after its rescan. With no other source, the
// download waits up to 15 s from the first "changed" for that. (A node of
// an earlier version reads status 5 as a malformed answer and retries.)
//
// A server sends a chunk of a complete item to at most two peers within
// 3 s of the last time it sent it (the same peer asking again is always
// served); a third peer in that window is answered "elsewhere" (6) and
// fetches the chunk from the peers that have it, who serve it as partial
// holders, asking the origin again after 500 ms. So when many nodes fetch
// one version at once (followers of an item that just changed), the
// origin sends about two copies and the rest is traded among them; a
// downloader that cannot reach the others still gets the chunk from the
// origin once the window has passed (spread.go). A node may bound what it
// sends in bytes per second, all peers together (--max-send-rate).
//
// # Download
//
// A download first creates its staging folder and writes job.json there,
// so that a crash from then on resumes it; a download that cannot do so
// (a full disk: ErrNoSpace) fails at once with an error naming the path.
// The manifest comes from any source and is checked against its hash.
// Free space is checked first, and every file of a chunk or more is
// preallocated (fallocate) in the staging folder, so a disk that is too
// small fails before any fetch; a smaller file is created by its one
// write, so the writers create a small-file item's files while the
// network brings the next ones. Each source gets one pipelined stream with 8 requests in flight
// (a request is one chunk, or a run of small ones);
// it first asks which chunks the source has. A scheduler hands out the
// needed chunks from a random start (downloaders of one item start in
// different places and have chunks to trade): a partial source takes only
// chunks it has, asking again when it has nothing left to offer, and a
// complete source prefers chunks no partial source offers. Received
// chunks go to two writer goroutines that check each against the
// manifest, write it and log it in "have", so the stream never waits on
// the disk; only then is the chunk served to others. A whole chunk is
// written with O_DIRECT where the file system takes it (no copy into the
// page cache: that copy was a fifth of a receiver's CPU), a file's tail
// and small files through the page cache. A chunk that fails
// is handed out again, and its sender is reported and dropped. Every
// second the download takes new sources from the document (holders that
// appeared, partial ones included). A node downloading an item it holds
// no version of publishes itself as a partial holder of that version; the
// entry becomes complete when the download ends, or is removed if it
// fails; a node that holds an older version instead names the version it
// fetches in its entry (Next), and is a partial holder of it for the
// others. After a crash, start-up resumes every download in staging,
// re-verifying the chunks its log names; a full disk mid-download stops
// it with ErrNoSpace and keeps what was written. An update copies the
// chunks it already has from the old version, and from the staging
// folders of the item's other downloads (another version's, failed or
// stopped: the chunks their logs name, checked by hash). Once a download
// has put its version in place, the item's other staging folders are
// removed, and after every scan and download the manifest files of
// versions the node no longer holds. When all is written, files
// get their modes and are made durable, with one syncfs(2) where the
// staging folder is on a local file system that honours it (ext4, xfs,
// btrfs, f2fs; its descriptor is opened before the first write, so it is
// told of every write-back error since), file by file elsewhere (FUSE,
// network file systems): an fsync per file costs a journal commit each,
// and 20,000 small files took seconds. Then a swap,
// recorded in swap.json
// first, moves the old item's user-owned entries into the new one, the
// old item aside, and the new one into place, so an item appears under
// its name only complete, and a crash mid-swap is finished at start.
// The item is then indexed from the manifest its chunks were verified
// against, with each file's fingerprint as the download left it, and
// published: it is not hashed again. A file whose fingerprint changed
// since (a user's edit during the swap) makes it a scan instead. A download can be cancelled until the swap begins: it then stops
// between chunks and its staging folder is removed. A cancel always wins
// over a download that has not reached the swap; once it has, Cancel
// fails and the download ends done.
//
// # Versions
//
// Every holder entry carries its version's generation and parent (the
// version it replaced): the node that first publishes a version gives it
// one generation more than the item's highest, and every other holder
// copies both. The latest version is the complete one of the highest
// generation (then the latest update, then the hash), the same on every
// replica; a node that restarts or comes back holding an old version
// publishes the old generation and cannot make it latest again
// (versions.go). Each node remembers the versions it held or fetched,
// with their lineage, in versions.json (lineage.go). A download asked for the item, not a pinned version,
// moves to a newer version published while it runs: the old staging
// folder is marked superseded in its job.json, the new download copies
// the chunks it verified that the new manifest still needs, then removes
// it, and the transfer reports the versions it moved from.
//
// # Following
//
// A followed item (follow.json in the library folder: this node's
// choice, not the fleet's) is downloaded by itself whenever a newer
// version than the one held here appears in the document; a failed try
// of a version is retried after 30 s. User-owned files stay, as in every
// update (follow.go).
//
// # Scanning
//
// A scan stats every file and re-hashes only those whose fingerprint
// (size, mtime, mode, inode, ctime) changed since the index, and those
// that were racy at the last scan; a file
// smaller than a chunk is read into a buffer of its size, larger ones
// through pooled chunk buffers. fsnotify events rescan their item after
// a 1 s debounce; an event for an item with a download in flight is
// dropped, and so are the events of a download's own swap: the staging
// folder is watched too, and the removal of a swapped download's staging
// folder, which ends the swap, comes after the swap's events in the same
// queue. A request while that item's
// scan runs makes exactly one more pass. A full scan every ScanInterval
// repairs what the watcher missed. The transfer protocol is served from
// the start: while a scan goes on, what it has scanned is served at once
// and published within 200 ms, in one document change for all the items
// scanned meanwhile, only where this node's holder entries changed. A
// node that stops gives up a scan between files (that item's index is
// left as it was) and scans no more items.
package transfer
