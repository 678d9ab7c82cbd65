package room

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// Creds are a room's credentials, advertised in the document at
// rooms/<topic>/creds. Whoever holds them can read and write the room.
type Creds struct {
	ID      ID       // random; names the room's topic
	Secret  [32]byte // keys the room's messages
	Created int64    // Unix ms
	Expires int64    // Unix ms
}

// ID identifies a room.
type ID [16]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// credsVersion is the encoding version this package writes and reads
// (the document checks the layout: crdt.DecodeRoomCreds).
const credsVersion = 1

// ErrBadCreds is returned for credentials that do not decode or are not
// valid now.
var ErrBadCreds = errors.New("room: bad credentials")

// NewCreds mints fresh credentials valid from now for ttl.
func NewCreds(now time.Time, ttl time.Duration) Creds {
	var c Creds
	_, _ = rand.Read(c.ID[:])
	_, _ = rand.Read(c.Secret[:])
	c.Created = now.UnixMilli()
	c.Expires = now.Add(ttl).UnixMilli()
	return c
}

// Encode returns the document form: unpadded base64url of
//
//	version (1) | room ID (16) | secret (32) | created ms (8, BE) | expires ms (8, BE)
func (c Creds) Encode() string {
	b := make([]byte, 0, crdt.CredsLen)
	b = append(b, credsVersion)
	b = append(b, c.ID[:]...)
	b = append(b, c.Secret[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Created))
	b = binary.BigEndian.AppendUint64(b, uint64(c.Expires))
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCreds parses the document form. It rejects malformed input, an
// unknown version, and times that make no sense; Valid checks expiry.
func DecodeCreds(s string) (Creds, error) {
	var c Creds
	b, err := crdt.DecodeRoomCreds(s)
	if err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadCreds, err)
	}
	copy(c.ID[:], b[1:17])
	copy(c.Secret[:], b[17:49])
	c.Created = int64(binary.BigEndian.Uint64(b[49:57]))
	c.Expires = int64(binary.BigEndian.Uint64(b[57:65]))
	return c, nil
}

// Valid reports whether the credentials are usable at now.
func (c Creds) Valid(now time.Time) error {
	if now.UnixMilli() >= c.Expires {
		return fmt.Errorf("%w: expired %s", ErrBadCreds, time.UnixMilli(c.Expires).UTC().Format(time.RFC3339))
	}
	return nil
}

// ParseCreds decodes and checks expiry: the form a reader of the
// document wants.
func ParseCreds(s string, now time.Time) (Creds, error) {
	c, err := DecodeCreds(s)
	if err != nil {
		return c, err
	}
	return c, c.Valid(now)
}
