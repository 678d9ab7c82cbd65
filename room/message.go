package room

import (
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/crypto/chacha20poly1305"
)

// Limits of one room message.
const (
	MaxPayload = 64 << 10
	MaxType    = 64
	// wireVersion is the first byte of every sealed message.
	wireVersion = 1
	// maxWire bounds a sealed message: header, sender, varints, type,
	// payload and tag.
	maxWire = 1 + chacha20poly1305.NonceSizeX + 10 + 64 + 30 + MaxType + MaxPayload + chacha20poly1305.Overhead
)

// Errors of the room transport.
var (
	ErrTooLarge   = errors.New("room: message too large")
	ErrBadMessage = errors.New("room: bad message")
)

// Message is one room message.
type Message struct {
	Sender peer.ID `json:"sender"`
	// Epoch is the sender's join of the room (Unix ms): a new join
	// restarts Seq, and anything from an older epoch is a replay.
	Epoch uint64 `json:"epoch"`
	// Seq numbers the sender's messages in one epoch, from 1.
	Seq     uint64 `json:"seq"`
	Type    string `json:"type"`
	Payload []byte `json:"payload"`

	// signed is the GossipSub message that carried it, with the sender's
	// signature: what the history protocol passes on, so that a joiner
	// can check who sent each message without trusting the responder.
	signed []byte
}

// key is what a message's sender and place in order is known by.
func (m Message) key() msgKey { return msgKey{m.Sender, m.Epoch, m.Seq} }

type msgKey struct {
	sender peer.ID
	epoch  uint64
	seq    uint64
}

// checkSize refuses what the room does not carry.
func checkSize(typ string, payload []byte) error {
	if len(typ) > MaxType {
		return fmt.Errorf("%w: type of %d bytes, max %d", ErrTooLarge, len(typ), MaxType)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: payload of %d bytes, max %d", ErrTooLarge, len(payload), MaxPayload)
	}
	return nil
}

// encodePlain is the plaintext of a message:
//
//	uvarint len(sender) | sender (peer ID bytes) | uvarint epoch |
//	uvarint seq | uvarint len(type) | type | payload
func encodePlain(m Message) []byte {
	s := []byte(m.Sender)
	b := make([]byte, 0, 32+len(s)+len(m.Type)+len(m.Payload))
	b = binary.AppendUvarint(b, uint64(len(s)))
	b = append(b, s...)
	b = binary.AppendUvarint(b, m.Epoch)
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, uint64(len(m.Type)))
	b = append(b, m.Type...)
	return append(b, m.Payload...)
}

// decodePlain parses a plaintext; it never panics.
func decodePlain(b []byte) (Message, error) {
	var m Message
	r := bytes.NewReader(b)
	n, err := binary.ReadUvarint(r)
	if err != nil || n == 0 || n > 128 || n > uint64(r.Len()) {
		return m, fmt.Errorf("%w: sender length", ErrBadMessage)
	}
	s := make([]byte, n)
	_, _ = r.Read(s)
	if m.Sender, err = peer.IDFromBytes(s); err != nil {
		return m, fmt.Errorf("%w: sender: %v", ErrBadMessage, err)
	}
	if m.Epoch, err = binary.ReadUvarint(r); err != nil {
		return m, fmt.Errorf("%w: epoch", ErrBadMessage)
	}
	if m.Seq, err = binary.ReadUvarint(r); err != nil || m.Seq == 0 {
		return m, fmt.Errorf("%w: sequence number", ErrBadMessage)
	}
	n, err = binary.ReadUvarint(r)
	if err != nil || n > MaxType || n > uint64(r.Len()) {
		return m, fmt.Errorf("%w: type length", ErrBadMessage)
	}
	t := make([]byte, n)
	_, _ = r.Read(t)
	m.Type = string(t)
	m.Payload = make([]byte, r.Len())
	_, _ = r.Read(m.Payload)
	if len(m.Payload) > MaxPayload {
		return m, fmt.Errorf("%w: payload of %d bytes", ErrTooLarge, len(m.Payload))
	}
	return m, nil
}

// sealer seals and opens one room's messages with a key derived from its
// secret. Sealed form:
//
//	version (1) | nonce (24) | XChaCha20-Poly1305(plaintext), with the
//	version and room ID as associated data
//
// so a message cannot be moved to another room or read without the creds.
type sealer struct {
	id      ID
	aead    cipher.AEAD
	ad      []byte
	histKey []byte // proves knowledge of the creds in history requests
}

func newSealer(c Creds) *sealer {
	key, err := hkdf.Key(sha256.New, c.Secret[:], c.ID[:], "meshnode room message v1", chacha20poly1305.KeySize)
	if err != nil {
		panic(err) // only for a length hkdf cannot produce
	}
	aead, _ := chacha20poly1305.NewX(key) // only fails on a wrong key size
	hk, _ := hkdf.Key(sha256.New, c.Secret[:], c.ID[:], "meshnode room history v1", 32)
	return &sealer{id: c.ID, aead: aead, ad: append([]byte{wireVersion}, c.ID[:]...), histKey: hk}
}

func (s *sealer) seal(m Message) ([]byte, error) {
	if err := checkSize(m.Type, m.Payload); err != nil {
		return nil, err
	}
	plain := encodePlain(m)
	out := make([]byte, 1+chacha20poly1305.NonceSizeX, 1+chacha20poly1305.NonceSizeX+len(plain)+s.aead.Overhead())
	out[0] = wireVersion
	_, _ = rand.Read(out[1:])
	return s.aead.Seal(out, out[1:], plain, s.ad), nil
}

func (s *sealer) open(b []byte) (Message, error) {
	if len(b) > maxWire {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	if len(b) < 1+chacha20poly1305.NonceSizeX+s.aead.Overhead() {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrBadMessage, len(b))
	}
	if b[0] != wireVersion {
		return Message{}, fmt.Errorf("%w: unknown version %d", ErrBadMessage, b[0])
	}
	n := 1 + chacha20poly1305.NonceSizeX
	plain, err := s.aead.Open(nil, b[1:n], b[n:], s.ad)
	if err != nil {
		return Message{}, fmt.Errorf("%w: does not authenticate with this room's key", ErrBadMessage)
	}
	return decodePlain(plain)
}
