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

// decodeLog splits a log file into its records. It returns every record
// before the first damage, the byte length of that valid prefix, and, if
// the file does not end cleanly after it, an error describing the damage.
func decodeLog(b []byte) (records [][]byte, valid int, err error) {
	if len(b) == 0 {
		return nil, 0, nil
	}
	if len(b) < len(logMagic) || string(b[:len(logMagic)]) != logMagic {
		return nil, 0, fmt.Errorf("%w: log header missing or not a meshnode change log", ErrCorrupt)
	}
	off := len(logMagic)
	for off < len(b) {
		if len(b)-off < recHeaderLen {
			return records, off, fmt.Errorf("%w: truncated record header at offset %d", ErrCorrupt, off)
		}
		n := int(binary.LittleEndian.Uint32(b[off:]))
		sum := binary.LittleEndian.Uint32(b[off+4:])
		if n > maxRecord || n > len(b)-off-recHeaderLen {
			return records, off, fmt.Errorf("%w: record at offset %d claims %d bytes, %d remain (truncated?)", ErrCorrupt, off, n, len(b)-off-recHeaderLen)
		}
		p := b[off+recHeaderLen : off+recHeaderLen+n]
		if crc32.Checksum(p, castagnoli) != sum {
			return records, off, fmt.Errorf("%w: record checksum mismatch at offset %d", ErrCorrupt, off)
		}
		records = append(records, p)
		off += recHeaderLen + n
	}
	return records, off, nil
}
