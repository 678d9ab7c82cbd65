// Package frame reads and writes length-prefixed messages on streams.
//
// Wire format: uvarint(len(payload)) | payload. A zero-length frame is a
// valid, empty message. Readers pass a limit; a longer frame is an error and
// its body is never allocated.
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrTooLarge is returned for a frame longer than the reader's limit.
var ErrTooLarge = errors.New("frame: too large")

// Write writes one frame with a single Write call.
func Write(w io.Writer, payload []byte) error {
	b := make([]byte, 0, binary.MaxVarintLen64+len(payload))
	b = binary.AppendUvarint(b, uint64(len(payload)))
	_, err := w.Write(append(b, payload...))
	return err
}

// Read reads one frame of at most limit bytes. io.EOF means the stream
// ended cleanly before a frame began.
func Read(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("frame: read length: %w", err)
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("frame: read %d-byte body: %w", n, io.ErrUnexpectedEOF)
	}
	return b, nil
}
