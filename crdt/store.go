package crdt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// File names inside the document directory.
const (
	snapFile = "doc.snapshot"
	logFile  = "doc.log"
)

// store owns the snapshot and change-log files. It is not safe for
// concurrent use; Doc serialises access under its write lock.
type store struct {
	dir      string
	lg       zerolog.Logger
	log      *os.File
	logSize  int64
	records  int
	snapSize int64
}

// openStore reads what is on disk. A damaged snapshot is moved aside and a
// damaged log tail is cut off after keeping a full copy of the file; both
// are reported as errors in the log and in damage, never silently dropped.
func openStore(dir string, lg zerolog.Logger) (s *store, snap []byte, records [][]byte, damage []Damage, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("crdt: create document dir: %w", err)
	}
	s = &store{dir: dir, lg: lg}

	snapPath := filepath.Join(dir, snapFile)
	raw, err := os.ReadFile(snapPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, nil, nil, nil, fmt.Errorf("crdt: read snapshot: %w", err)
	default:
		snap, err = decodeSnapshot(raw)
		if err != nil {
			kept, kerr := s.keepDamaged(snapPath, true)
			if kerr != nil {
				return nil, nil, nil, nil, fmt.Errorf("crdt: %v, and moving it aside failed: %w", err, kerr)
			}
			damage = append(damage, Damage{File: snapPath, Problem: err.Error(), KeptAs: kept,
				Lost: "the snapshot's changes until a peer sends them again"})
			lg.Error().Str("file", snapPath).Str("kept_as", kept).Err(err).Msg("document snapshot damaged")
			snap = nil
		}
		s.snapSize = int64(len(raw))
	}

	logPath := filepath.Join(dir, logFile)
	raw, err = os.ReadFile(logPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil, nil, fmt.Errorf("crdt: read change log: %w", err)
	}
	records, valid, derr := decodeLog(raw)
	if derr != nil {
		kept, kerr := s.keepDamaged(logPath, false)
		if kerr != nil {
			return nil, nil, nil, nil, fmt.Errorf("crdt: %v, and keeping a copy failed: %w", derr, kerr)
		}
		damage = append(damage, Damage{File: logPath, Problem: derr.Error(), KeptAs: kept,
			Lost: fmt.Sprintf("%d bytes after the first %d valid records", len(raw)-valid, len(records))})
		lg.Error().Str("file", logPath).Str("kept_as", kept).Int("valid_records", len(records)).
			Int("valid_bytes", valid).Int("file_bytes", len(raw)).Err(derr).Msg("document change log damaged; recovered valid prefix")
		raw = raw[:valid]
	}
	if err := s.openLog(raw); err != nil {
		return nil, nil, nil, nil, err
	}
	s.records = len(records)
	return s, snap, records, damage, nil
}

// openLog (re)writes the log file to hold exactly the valid bytes.
func (s *store) openLog(valid []byte) error {
	path := filepath.Join(s.dir, logFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("crdt: open change log: %w", err)
	}
	if len(valid) < len(logMagic) {
		valid = []byte(logMagic)
	}
	if err := f.Truncate(int64(len(valid))); err != nil {
		f.Close()
		return fmt.Errorf("crdt: truncate change log: %w", err)
	}
	if _, err := f.WriteAt(valid[:len(logMagic)], 0); err != nil {
		f.Close()
		return fmt.Errorf("crdt: write change log header: %w", err)
	}
	if _, err := f.Seek(0, 2); err != nil {
		f.Close()
		return fmt.Errorf("crdt: seek change log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("crdt: sync change log: %w", err)
	}
	s.log, s.logSize = f, int64(len(valid))
	return nil
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

// append writes one record without waiting for the disk: callers that
// acknowledge a change call sync (which makes every earlier record durable
// too). Changes from peers are not fsynced on their own: a peer still has
// them, anti-entropy refetches what a power loss took, and no receiver
// pays an fsync on the delivery path.
func (s *store) append(payload []byte) error {
	rec := appendRecord(nil, payload)
	if _, err := s.log.Write(rec); err != nil {
		// Cut off whatever part of the record made it, so the next append
		// does not land after a torn one.
		_ = s.log.Truncate(s.logSize)
		_, _ = s.log.Seek(s.logSize, 0)
		return fmt.Errorf("crdt: append change log: %w", err)
	}
	s.logSize += int64(len(rec))
	s.records++
	return nil
}

// sync makes every record appended so far durable.
func (s *store) sync() error {
	if err := s.log.Sync(); err != nil {
		return fmt.Errorf("crdt: sync change log: %w", err)
	}
	return nil
}

// replaceSnapshot atomically replaces the snapshot (temp file, fsync,
// rename, fsync dir) and leaves the log as it is.
func (s *store) replaceSnapshot(data []byte) error {
	enc := encodeSnapshot(data)
	if err := atomicfile.WriteFile(filepath.Join(s.dir, snapFile), enc, 0o600); err != nil {
		return fmt.Errorf("crdt: write snapshot: %w", err)
	}
	s.snapSize = int64(len(enc))
	return nil
}

// writeSnapshot atomically replaces the snapshot and then empties the log,
// whose changes the snapshot now holds. A crash between the two steps only
// replays changes already in the snapshot, which automerge ignores.
func (s *store) writeSnapshot(data []byte) error {
	if err := s.replaceSnapshot(data); err != nil {
		return err
	}
	if err := s.log.Truncate(int64(len(logMagic))); err != nil {
		return fmt.Errorf("crdt: truncate change log: %w", err)
	}
	if _, err := s.log.Seek(int64(len(logMagic)), 0); err != nil {
		return fmt.Errorf("crdt: seek change log: %w", err)
	}
	if err := s.log.Sync(); err != nil {
		return fmt.Errorf("crdt: sync change log: %w", err)
	}
	s.logSize, s.records = int64(len(logMagic)), 0
	return nil
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
