package crdt

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Compaction folds the change log into a new snapshot. It runs in its own
// goroutine, kicked when the log outgrows its thresholds, and holds syncMu
// (so no fsync runs under it) but holds mu only for short steps: the
// snapshot is encoded under mu (automerge's Save holds the document's own
// lock anyway), written and fsynced outside it; the new log (waiting
// changes plus records appended meanwhile) is written and fsynced outside
// mu, and only the last few records and the rename happen under it.

// kickCompactionLocked wakes the compactor when the log is due.
func (d *Doc) kickCompactionLocked() {
	if d.st.logSize > max(d.cfg.CompactBytes, d.st.snapSize) || d.st.records >= d.cfg.CompactRecords {
		select {
		case d.compactKick <- struct{}{}:
		default:
		}
	}
}

// compactLoop runs compactions until Close.
func (d *Doc) compactLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.stop:
			return
		case <-d.compactKick:
		}
		d.syncMu.Lock()
		err := d.compact()
		d.syncMu.Unlock()
		d.deliver()
		if err != nil {
			d.lg.Error().Err(err).Msg("document compaction failed; the change log keeps every record, retrying after the next change")
			select {
			case <-d.stop:
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// compact writes a snapshot of the document and replaces the log by one
// holding only what the snapshot lacks: waiting changes and records
// appended while it ran. Call with syncMu held and mu not held. A crash at
// any point leaves either the old files or a snapshot plus a log whose
// records it partly holds already, which replay ignores.
func (d *Doc) compact() error {
	d.mu.Lock()
	if d.st.log == nil || d.broken != nil {
		// After a switch cut short the snapshot on disk is ahead of the
		// document in memory: it must not be replaced by this one.
		d.mu.Unlock()
		return nil
	}
	data := d.saveLocked()
	off0, recs0 := d.st.end(), d.st.records
	var waiting []byte
	for _, c := range d.waiting {
		waiting = append(waiting, c.raw...)
	}
	d.mu.Unlock()

	size, err := d.st.replaceSnapshot(data)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.st.snapSize = size
	off1, heads1 := d.st.end(), *d.heads.Load()
	d.mu.Unlock()

	b := d.st.logStart()
	nrec := 0
	if d.st.marker != nil {
		nrec = 1
	}
	if len(waiting) > 0 {
		b, nrec = appendRecord(b, waiting), nrec+1
	}
	mid, err := d.st.readLog(off0, off1)
	if err != nil {
		return err
	}
	b = append(b, mid...)
	path := filepath.Join(d.st.dir, logFile)
	tmp, err := os.CreateTemp(d.st.dir, "."+logFile+".tmp-*")
	if err != nil {
		return d.st.writeErr("create change log", path, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return d.st.writeErr("create change log", tmp.Name(), err)
	}
	if _, err := tmp.Write(b); err != nil {
		return d.st.writeErr("write change log", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return d.st.writeErr("sync change log", tmp.Name(), err)
	}

	d.mu.Lock()
	off2, recs2 := d.st.end(), d.st.records
	tail, err := d.st.readLog(off1, off2)
	if err == nil {
		_, err = tmp.Write(tail)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		d.mu.Unlock()
		return d.st.writeErr("replace change log", path, err)
	}
	done = true
	d.st.log.Close()
	d.st.log = tmp
	d.st.logSize = int64(len(b) + len(tail))
	d.st.shift = off2 - d.st.logSize
	d.st.records = nrec + recs2 - recs0
	d.mu.Unlock()

	if err := syncDir(d.st.dir); err != nil {
		return d.st.writeErr("sync document dir", d.st.dir, err)
	}
	// The new log is durable up to off1 (fsynced before the rename).
	d.markSynced(off1, heads1)
	d.compactions.Add(1)
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
