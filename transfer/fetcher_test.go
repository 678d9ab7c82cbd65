package transfer

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"testing/iotest"
	"time"

	"github.com/meshnode/meshnode/internal/frame"
)

// A chunk response read fails with its real cause: a clean end before a
// response is io.EOF, a stream that ends inside one io.ErrUnexpectedEOF,
// and a reset or a passed deadline is reported as itself, so the
// download's error says what happened to the source.
func TestReadChunkResponseErrors(t *testing.T) {
	var ok bytes.Buffer
	if err := frame.Write(&ok, Response{Status: StatusOK, Payload: []byte("chunk")}.Encode()); err != nil {
		t.Fatal(err)
	}
	resp := ok.Bytes() // length, status, "chunk"
	errReset := errors.New("stream reset")
	for _, tc := range []struct {
		name string
		r    io.Reader
		want error
	}{
		{"clean end before a response", bytes.NewReader(nil), io.EOF},
		{"length, no status", bytes.NewReader(resp[:1]), io.ErrUnexpectedEOF},
		{"short body", bytes.NewReader(resp[:4]), io.ErrUnexpectedEOF},
		{"reset before the status", io.MultiReader(bytes.NewReader(resp[:1]), iotest.ErrReader(errReset)), errReset},
		{"reset in the body", io.MultiReader(bytes.NewReader(resp[:4]), iotest.ErrReader(errReset)), errReset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readChunkResponse(bufio.NewReader(tc.r), make([]byte, ChunkSize))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want != io.EOF && errors.Is(err, io.EOF) {
				t.Fatalf("got %v, which reads as a clean end", err)
			}
			if tc.want != io.ErrUnexpectedEOF && errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("got %v: the real cause was replaced by a short frame", err)
			}
		})
	}
	b, err := readChunkResponse(bufio.NewReader(bytes.NewReader(resp)), make([]byte, ChunkSize))
	if err != nil || string(b) != "chunk" {
		t.Fatalf("whole response: %q %v", b, err)
	}

	a, c := net.Pipe()
	defer a.Close()
	defer c.Close()
	go func() { _, _ = c.Write(resp[:4]) }()
	_ = a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := readChunkResponse(bufio.NewReader(a), make([]byte, ChunkSize)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline inside a response: got %v, want the deadline", err)
	}
}
