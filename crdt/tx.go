package crdt

import (
	"fmt"
	"slices"

	am "github.com/automerge/automerge-go"
)

// Tx collects the writes of one Update. Writes are validated as they are
// recorded and applied together at commit, so an Update whose function
// returns an error leaves the document untouched (automerge-go exposes no
// rollback).
type Tx struct {
	ops  []func(d *am.Doc) error
	errs []error
	read *Doc
	// nodes is set when the Tx writes a node record.
	nodes bool
}

func (tx *Tx) add(err error, op func(d *am.Doc) error) {
	if err != nil {
		tx.errs = append(tx.errs, err)
		return
	}
	tx.ops = append(tx.ops, op)
}

// SetNode writes the node record at nodes/<id>, touching only the fields
// that differ from the current value so the change stays small.
func (tx *Tx) SetNode(id string, r NodeRecord) {
	cur, exists, _ := tx.read.Node(id)
	tx.nodes = true
	tx.add(checkKey("node id", id), func(d *am.Doc) error {
		p := d.Path(nodeKey(id))
		set := func(key string, changed bool, v any) error {
			if !changed && exists {
				return nil
			}
			return p.Path(key).Set(v)
		}
		return firstErr(
			set("name", cur.Name != r.Name, r.Name),
			setList(p.Path("addrs"), exists, cur.Addrs, r.Addrs),
			set("version", cur.Version != r.Version, r.Version),
			setList(p.Path("roles"), exists, cur.Roles, r.Roles),
			set("started_ms", cur.StartedMs != r.StartedMs, r.StartedMs),
			set("last_seen_ms", cur.LastSeenMs != r.LastSeenMs, r.LastSeenMs),
			set("alive", cur.Alive != r.Alive, r.Alive),
		)
	})
}

func setList(p *am.Path, exists bool, cur, want []string) error {
	if want == nil {
		want = []string{}
	}
	if exists && slices.Equal(cur, want) {
		return nil
	}
	return p.Set(want)
}

// SetItemName sets the display name of library/<item> (last writer wins).
func (tx *Tx) SetItemName(item, name string) {
	tx.add(checkKey("item id", item), func(d *am.Doc) error {
		return d.Path(itemNameKey(item)).Set(name)
	})
}

// SetHolder writes library/<item>/holders/<peer>.
func (tx *Tx) SetHolder(item, peer string, h Holder) {
	err := firstErr(checkKey("item id", item), checkKey("peer id", peer), checkHolderState(h.State))
	tx.add(err, func(d *am.Doc) error {
		return d.Path(holderKey(item, peer)).Set(h)
	})
}

// RemoveHolder deletes library/<item>/holders/<peer>.
func (tx *Tx) RemoveHolder(item, peer string) {
	err := firstErr(checkKey("item id", item), checkKey("peer id", peer))
	tx.add(err, func(d *am.Doc) error { return deleteKey(d, holderKey(item, peer)) })
}

// SetRoomCreds sets rooms/<topic>/creds (last writer wins).
func (tx *Tx) SetRoomCreds(topic, creds string) {
	tx.add(checkKey("room topic", topic), func(d *am.Doc) error {
		return d.Path(credsKey(topic)).Set(creds)
	})
}

// SetPresence sets rooms/<topic>/presence/<peer> to a lease expiry (Unix ms).
func (tx *Tx) SetPresence(topic, peer string, expiryMs int64) {
	err := firstErr(checkKey("room topic", topic), checkKey("peer id", peer))
	tx.add(err, func(d *am.Doc) error {
		return d.Path(presenceKey(topic, peer)).Set(expiryMs)
	})
}

// MaxRoomStateValue bounds one room state value: the state is small
// durable state that every replica keeps forever, not a data channel.
const MaxRoomStateValue = 16 << 10

// SetRoomState sets rooms/<topic>/state/<key> (last writer wins).
func (tx *Tx) SetRoomState(topic, key, value string) {
	err := firstErr(checkKey("room topic", topic), checkKey("state key", key))
	if err == nil && len(value) > MaxRoomStateValue {
		err = fmt.Errorf("%w: room state value is %d bytes, max %d", ErrInvalidValue, len(value), MaxRoomStateValue)
	}
	tx.add(err, func(d *am.Doc) error {
		return d.Path(roomStateKey(topic, key)).Set(value)
	})
}

func deleteKey(d *am.Doc, key string) error {
	v, err := d.Path(key).Get()
	if err != nil || v.IsVoid() {
		return err
	}
	return d.Path(key).Delete()
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
