package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk formats. Both are little-endian and checksummed with CRC-32C so a
// torn write or a flipped bit is detected rather than loaded.
//
//	snapshot file: "MNSNAP1\n" | crc32c(data) u32 | len(data) u64 | data
//	log file:      "MNLOG01\n" | record*
//	               (in epoch 1 and later the first record is the epoch
//	               marker, switch.go: "MNEPOCH1" | epoch ID [32] | number)
//	record:        len(payload) u32 | crc32c(payload) u32 | payload
//
// data is automerge's Save() output; a log payload is automerge's
// SaveChanges() output for one or more changes.
const (
	snapMagic = "MNSNAP1\n"
	logMagic  = "MNLOG01\n"

	snapHeaderLen = len(snapMagic) + 4 + 8
	recHeaderLen  = 8

	// maxRecord bounds one log record; larger lengths are damage, not data.
	maxRecord = 256 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt marks damaged on-disk data.
var ErrCorrupt = errors.New("crdt: corrupt data")

func encodeSnapshot(data []byte) []byte {
	b := make([]byte, snapHeaderLen, snapHeaderLen+len(data))
	copy(b, snapMagic)
	binary.LittleEndian.PutUint32(b[len(snapMagic):], crc32.Checksum(data, castagnoli))
	binary.LittleEndian.PutUint64(b[len(snapMagic)+4:], uint64(len(data)))
	return append(b, data...)
}

// decodeSnapshot returns the automerge bytes inside a snapshot file.
func decodeSnapshot(b []byte) ([]byte, error) {
	if len(b) < snapHeaderLen || string(b[:len(snapMagic)]) != snapMagic {
		return nil, fmt.Errorf("%w: snapshot header missing or not a meshnode snapshot", ErrCorrupt)
	}
	sum := binary.LittleEndian.Uint32(b[len(snapMagic):])
	n := binary.LittleEndian.Uint64(b[len(snapMagic)+4:])
	data := b[snapHeaderLen:]
	if uint64(len(data)) != n {
		return nil, fmt.Errorf("%w: snapshot holds %d bytes, header says %d (truncated?)", ErrCorrupt, len(data), n)
	}
	if crc32.Checksum(data, castagnoli) != sum {
		return nil, fmt.Errorf("%w: snapshot checksum mismatch", ErrCorrupt)
	}
	return data, nil
}

func appendRecord(b, payload []byte) []byte {
	var h [recHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(payload, castagnoli))
	return append(append(b, h[:]...), payload...)
}

// logRecord is one intact record of a change log: its payload and the
// offset of its header in the file.
type logRecord struct {
	off     int
	payload []byte
}

// logGap is a run of bytes in a change log that holds no intact record.
type logGap struct {
	off, n int
	why    string
}

// amMagic opens every automerge chunk (change or document). A record's
// payload must start with it, which makes a false resynchronisation on
// random bytes (a length and CRC-32C that happen to match) even less
// likely than 2^-32 per offset.
const amMagic = "\x85\x6f\x4a\x83"

// decodeLog splits a log file into its intact records. Damage does not end
// the scan: after a record that fails its length or checksum, it looks for
// the next offset where an intact record starts, so one flipped byte costs
// one record, not the rest of the file. gaps lists every damaged run; a
// file whose header is not a change log's yields no records and one gap.
func decodeLog(b []byte) (records []logRecord, gaps []logGap) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < len(logMagic) || string(b[:len(logMagic)]) != logMagic {
		return nil, []logGap{{0, len(b), "log header missing or not a meshnode change log"}}
	}
	off := len(logMagic)
	for off < len(b) {
		p, why := recordAt(b, off)
		if why == "" {
			records = append(records, logRecord{off: off, payload: p})
			off += recHeaderLen + len(p)
			continue
		}
		next := off + 1
		for next < len(b) {
			if _, w := recordAt(b, next); w == "" {
				break
			}
			next++
		}
		gaps = append(gaps, logGap{off: off, n: next - off, why: why})
		off = next
	}
	return records, gaps
}

// recordAt returns the payload of the record whose header starts at off, or
// why there is no intact record there.
func recordAt(b []byte, off int) ([]byte, string) {
	if len(b)-off < recHeaderLen {
		return nil, "truncated record header"
	}
	n := int(binary.LittleEndian.Uint32(b[off:]))
	if n > maxRecord || n > len(b)-off-recHeaderLen {
		return nil, fmt.Sprintf("record claims %d bytes, %d remain (truncated?)", n, len(b)-off-recHeaderLen)
	}
	p := b[off+recHeaderLen : off+recHeaderLen+n]
	if off == len(logMagic) {
		if _, ok := parseMarker(p); ok && crc32.Checksum(p, castagnoli) == binary.LittleEndian.Uint32(b[off+4:]) {
			return p, "" // the epoch marker (switch.go)
		}
	}
	if len(p) < len(amMagic) || string(p[:len(amMagic)]) != amMagic {
		return nil, "record payload is not an automerge chunk"
	}
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(b[off+4:]) {
		return nil, "record checksum mismatch"
	}
	return p, ""
}
