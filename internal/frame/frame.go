// Package frame reads and writes length-prefixed messages on streams.
//
// Wire format: uvarint(len(payload)) | payload. A zero-length frame is a
// valid, empty message. Readers pass a limit; a longer frame is an error and
// its body is never allocated.
//
// Read errors keep their cause: io.EOF (unwrapped) means the stream ended
// cleanly between frames, io.ErrUnexpectedEOF that it ended inside one,
// and anything else (a reset, a passed deadline) is the stream's own
// error, wrapped with what was being read.
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

// Read reads one frame of at most limit bytes.
func Read(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := ReadLen(r, limit)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if err := ReadBody(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// ReadLen reads a frame's length, which must be at most limit; the
// caller then reads that many bytes of body, with ReadBody.
func ReadLen(r io.ByteReader, limit int) (int, error) {
	n, err := binary.ReadUvarint(r)
	switch {
	case err == io.EOF:
		return 0, io.EOF // nothing of a frame read: a clean end
	case err != nil:
		return 0, fmt.Errorf("frame: read length: %w", err)
	case n > uint64(limit):
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, limit)
	}
	return int(n), nil
}

// ReadBody fills b with the next bytes of a frame whose length was read:
// the stream ending first is io.ErrUnexpectedEOF.
func ReadBody(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("frame: read %d-byte body: %w", len(b), err)
	}
	return nil
}
