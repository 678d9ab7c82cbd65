package frame

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
)

var errReset = errors.New("stream reset")

// Read tells a stream that ended between frames (io.EOF) from one that
// ended inside a frame (io.ErrUnexpectedEOF), and passes any other cause
// through.
func TestReadErrors(t *testing.T) {
	var one bytes.Buffer
	if err := Write(&one, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	frame := one.Bytes() // 0x05 "hello"
	for _, tc := range []struct {
		name string
		r    io.Reader
		want error
	}{
		{"clean end before a frame", bytes.NewReader(nil), io.EOF},
		{"half a length", bytes.NewReader([]byte{0x80}), io.ErrUnexpectedEOF},
		{"length, no body", bytes.NewReader(frame[:1]), io.ErrUnexpectedEOF},
		{"short body", bytes.NewReader(frame[:3]), io.ErrUnexpectedEOF},
		{"reset before a frame", iotest.ErrReader(errReset), errReset},
		{"reset in the length", io.MultiReader(bytes.NewReader([]byte{0x80}), iotest.ErrReader(errReset)), errReset},
		{"reset in the body", io.MultiReader(bytes.NewReader(frame[:3]), iotest.ErrReader(errReset)), errReset},
		{"too large", bytes.NewReader(frame), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit := 16
			if tc.want == ErrTooLarge {
				limit = 4
			}
			_, err := Read(bufio.NewReader(tc.r), limit)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == io.EOF && err != io.EOF {
				t.Fatalf("got %#v, want io.EOF itself", err)
			}
			if tc.want != io.EOF && errors.Is(err, io.EOF) {
				t.Fatalf("got %v, which a caller would take for a clean end", err)
			}
			if tc.want != io.ErrUnexpectedEOF && errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("got %v: the real cause was replaced by a short frame", err)
			}
		})
	}
}

// A read deadline that passes in the middle of a frame is reported as the
// deadline, not as a short frame.
func TestReadDeadlineMidFrame(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = b.Write([]byte{0x05, 'h', 'e'}) }()
	_ = a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err := Read(bufio.NewReader(a), 16)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want the deadline", err)
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	msgs := [][]byte{nil, []byte("a"), bytes.Repeat([]byte{7}, 300)}
	for _, m := range msgs {
		if err := Write(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	br := bufio.NewReader(&buf)
	for _, m := range msgs {
		got, err := Read(br, 1024)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("got %q %v, want %q", got, err, m)
		}
	}
	if _, err := Read(br, 1024); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

// Read never panics and never returns more than its limit, and what it
// reads writes and reads back the same.
func FuzzRead(f *testing.F) {
	f.Add([]byte{0x05, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		const limit = 64
		br := bufio.NewReader(bytes.NewReader(b))
		var msgs [][]byte
		var out bytes.Buffer
		for {
			p, err := Read(br, limit)
			if err != nil {
				if errors.Is(err, io.EOF) && err != io.EOF {
					t.Fatalf("wrapped io.EOF: %v", err)
				}
				break
			}
			if len(p) > limit {
				t.Fatalf("%d bytes past the limit %d", len(p), limit)
			}
			msgs = append(msgs, p)
			if err := Write(&out, p); err != nil {
				t.Fatal(err)
			}
		}
		br = bufio.NewReader(&out)
		for _, m := range msgs {
			if p, err := Read(br, limit); err != nil || !bytes.Equal(p, m) {
				t.Fatalf("read back %q %v, want %q", p, err, m)
			}
		}
	})
}
