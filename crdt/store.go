package crdt

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// File names inside the document directory.
const (
	snapFile = "doc.snapshot"
	logFile  = "doc.log"
)

// store owns the snapshot and change-log files. Appends and truncations
// are serialised by Doc.mu; fsync of the log (sync) by Doc.syncMu, which
// also covers swapping the log for a compacted one. Offsets given to and
// returned by the store are logical: bytes appended since Open, never
// reset by compaction, so a waiter's "my record ends at N" stays true
// while the file under it is rewritten.
type store struct {
	dir string
	lg  zerolog.Logger

	log     *os.File
	logSize int64 // physical size of the log file
	shift   int64 // logical offset = physical offset + shift
	records int
	// snapSize is the size of the snapshot file; read and written under
	// Doc.mu.
	snapSize int64
	// marker is the epoch marker a new log starts with (switch.go); nil
	// in epoch 0. Set at Open and by a switch.
	marker []byte
}

// loaded is what openStore found on disk.
type loaded struct {
	snap    []byte
	records [][]byte
	damage  []Damage
}

// openStore reads what is on disk. A damaged snapshot is moved aside; a
// damaged log is copied aside whole and rewritten to hold every intact
// record. Both are reported in damage, never silently dropped.
func openStore(dir string, lg zerolog.Logger) (*store, loaded, error) {
	var ld loaded
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, ld, fmt.Errorf("crdt: create document dir %s: %w", dir, err)
	}
	s := &store{dir: dir, lg: lg}
	// Temp files of a write cut short by a crash (compaction, snapshot).
	if stale, _ := filepath.Glob(filepath.Join(dir, ".doc.*.tmp-*")); len(stale) > 0 {
		for _, p := range stale {
			os.Remove(p)
		}
	}

	snapPath := filepath.Join(dir, snapFile)
	raw, err := os.ReadFile(snapPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, ld, fmt.Errorf("crdt: read snapshot %s: %w", snapPath, err)
	default:
		ld.snap, err = decodeSnapshot(raw)
		if err != nil {
			kept, kerr := s.keepDamaged(snapPath, true)
			if kerr != nil {
				return nil, ld, fmt.Errorf("crdt: snapshot %s: %v, and moving it aside failed: %w", snapPath, err, kerr)
			}
			ld.damage = append(ld.damage, Damage{File: snapPath, Problem: err.Error(), KeptAs: kept, Lost: lostSnapshot})
			lg.Error().Str("file", snapPath).Str("kept_as", kept).Err(err).Msg("document snapshot damaged")
			ld.snap = nil
		} else {
			s.snapSize = int64(len(raw))
		}
	}

	logPath := filepath.Join(dir, logFile)
	raw, err = os.ReadFile(logPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, ld, fmt.Errorf("crdt: read change log %s: %w", logPath, err)
	}
	recs, gaps := decodeLog(raw)
	for _, r := range recs {
		ld.records = append(ld.records, r.payload)
	}
	if len(gaps) > 0 {
		kept, kerr := s.keepDamaged(logPath, false)
		if kerr != nil {
			return nil, ld, fmt.Errorf("crdt: change log %s is damaged (%s), and keeping a copy failed: %w", logPath, gaps[0].why, kerr)
		}
		ld.damage = append(ld.damage, logDamage(logPath, kept, len(raw), len(recs), gaps))
		lg.Error().Str("file", logPath).Str("kept_as", kept).Int("intact_records", len(recs)).
			Int("damaged_runs", len(gaps)).Int("file_bytes", len(raw)).Msg("document change log damaged; kept every intact record")
		if err := s.rewriteLog(ld.records); err != nil {
			return nil, ld, err
		}
	} else if err := s.openLog(len(raw)); err != nil {
		return nil, ld, err
	}
	s.records = len(recs)
	return s, ld, nil
}

const lostSnapshot = "the snapshot's changes, until a peer sends them again; change log records that build on them wait for that"

func logDamage(path, kept string, size, intact int, gaps []logGap) Damage {
	bytes := 0
	for _, g := range gaps {
		bytes += g.n
	}
	d := Damage{File: path, KeptAs: kept,
		Problem: fmt.Sprintf("%s at offset %d", gaps[0].why, gaps[0].off),
		Lost:    fmt.Sprintf("%d bytes in %d damaged runs of %d; %d intact records kept", bytes, len(gaps), size, intact)}
	if len(gaps) > 1 {
		d.Problem += fmt.Sprintf(" (and %d more damaged runs)", len(gaps)-1)
	}
	return d
}

// openLog opens an intact log of size bytes for appending, creating it
// when there is none.
func (s *store) openLog(size int) error {
	path := filepath.Join(s.dir, logFile)
	if size == 0 {
		return s.rewriteLog(nil)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("crdt: open change log %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return fmt.Errorf("crdt: seek change log %s: %w", path, err)
	}
	s.log, s.logSize = f, int64(size)
	return nil
}

// rewriteLog atomically replaces the log with one holding records, and
// opens it for appending.
func (s *store) rewriteLog(records [][]byte) error {
	b := s.logStart()
	for _, r := range records {
		b = appendRecord(b, r)
	}
	path := filepath.Join(s.dir, logFile)
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return s.writeErr("write change log", path, err)
	}
	if s.log != nil {
		s.log.Close()
		s.log = nil
	}
	return s.openLog(len(b))
}

// logStart is the start of a new log: the magic, and the epoch marker
// (switch.go) for an epoch after the first.
func (s *store) logStart() []byte {
	b := []byte(logMagic)
	if s.marker != nil {
		b = appendRecord(b, s.marker)
	}
	return b
}

// keepDamaged preserves a damaged file next to the original, moving it when
// move is set and copying it otherwise.
func (s *store) keepDamaged(path string, move bool) (string, error) {
	kept := fmt.Sprintf("%s.damaged-%d", path, time.Now().UnixNano())
	if move {
		return kept, os.Rename(path, kept)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return kept, atomicfile.WriteFile(kept, b, 0o600)
}

// end returns the logical offset just past the last appended record.
func (s *store) end() int64 { return s.logSize + s.shift }

// append writes one record without waiting for the disk and returns the
// logical offset just past it; sync makes it durable. On error nothing of
// the record stays in the file.
func (s *store) append(payload []byte) (int64, error) {
	rec := appendRecord(nil, payload)
	if _, err := s.log.Write(rec); err != nil {
		s.truncate(s.end())
		return 0, s.writeErr("append change log", s.log.Name(), err)
	}
	s.logSize += int64(len(rec))
	s.records++
	return s.end(), nil
}

// truncate cuts the log back to a logical offset, dropping the records
// after it (a failed or rolled-back append).
func (s *store) truncate(to int64) {
	phys := to - s.shift
	if err := s.log.Truncate(phys); err != nil {
		s.lg.Error().Err(err).Int64("offset", phys).Msg("cannot cut the change log back; the next start drops its torn tail")
	}
	if _, err := s.log.Seek(phys, io.SeekStart); err != nil {
		s.lg.Error().Err(err).Msg("cannot seek the change log")
	}
	s.logSize = phys
}

// writeErr names the file and marks a full disk with ErrDiskFull.
func (s *store) writeErr(op, path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %s %s: %v (free space in %s and retry)", ErrDiskFull, op, path, err, s.dir)
	}
	return fmt.Errorf("crdt: %s %s: %w", op, path, err)
}

// replaceSnapshot atomically replaces the snapshot (temp file, fsync,
// rename, fsync dir). It does not touch the log.
func (s *store) replaceSnapshot(data []byte) (int64, error) {
	enc := encodeSnapshot(data)
	path := filepath.Join(s.dir, snapFile)
	if err := atomicfile.WriteFile(path, enc, 0o600); err != nil {
		return 0, s.writeErr("write snapshot", path, err)
	}
	return int64(len(enc)), nil
}

// readLog returns the log's bytes between two logical offsets.
func (s *store) readLog(from, to int64) ([]byte, error) {
	b := make([]byte, to-from)
	if _, err := s.log.ReadAt(b, from-s.shift); err != nil {
		return nil, fmt.Errorf("crdt: read change log: %w", err)
	}
	return b, nil
}

func (s *store) close() error {
	if s.log == nil {
		return nil
	}
	err := s.log.Sync()
	if cerr := s.log.Close(); err == nil {
		err = cerr
	}
	s.log = nil
	return err
}
