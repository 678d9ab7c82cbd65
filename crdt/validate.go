package crdt

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"unicode/utf8"
)

// Validation: every change from a peer is decoded (ops.go) and checked
// against the schema before automerge sees it, on every path (gossip,
// sync, snapshot, the change log at start-up, POST /v1/doc/changes).
//
// Rules, each named by a Rule constant in the error:
//
//   - object: every operation sets or deletes a key of the root map; no
//     map, list or text object is made or written into (a JavaScript
//     string is a text object, one operation per character);
//   - schema: the key is one of doc.go's; type: its value has the key's
//     type (records are bytes, the rest strings; no counters);
//   - size: a key part is at most 256 bytes, a room state value 16 KiB, an
//     item name 1 KiB, a record 8 KiB, a change 1 MiB as received;
//   - signature: a single-writer key holds a record of the kind the key
//     takes, and the change that writes it is signed by the peer the key
//     names (record.go); such keys are never deleted (a holder withdraws
//     with a tombstone record);
//   - replay: a record's counter is above the counter of the record in
//     force at that key in the change's causal past;
//   - creds: room credentials decode.
//
// Every rule but replay depends on the change's bytes alone, so every
// node gives the same verdict on a change. Replay is decided against the
// change's causal past, which every node holds alike before it can apply
// the change: the fast path compares with the highest counter this node
// has seen at the key (an honest writer's counter is above all of its
// earlier ones, so honest changes always pass it); only a change that
// fails it pays for the exact check, a fork of the document at the
// change's dependencies. A replay that passes (one concurrent with the
// newer record) is harmless: readers take the highest counter ever
// written at a key (recindex.go). A snapshot is checked with the same
// rules, and is not adopted when a replay's verdict would need the exact
// check (the node syncs instead, change by change).

// Limits on what a change may carry.
const (
	// MaxChange bounds one change, as received and decompressed: a
	// library scan of 70,000 items fits.
	MaxChange = 16 << 20
	// MaxItemName bounds an item's display name.
	MaxItemName = 1 << 10
)

func refuse(rule, key, format string, a ...any) *RefusedError {
	return &RefusedError{Rule: rule, Key: key, Detail: fmt.Sprintf(format, a...)}
}

// checkOp checks one operation on its own: schema, type, size, the
// decoding of a record (its signature is the change's: see
// checkChangeLocked) and of creds. It returns the parsed key and, for a
// record, the record.
func (d *Doc) checkOp(op *Op) (schemaKey, *record, *RefusedError) {
	if !op.Root {
		return schemaKey{}, nil, refuse(RuleObject, "", "writes inside a nested object; the document holds only root keys")
	}
	if !op.KeyIsStr || op.Insert {
		return schemaKey{}, nil, refuse(RuleObject, "", "a list operation on the root map")
	}
	key := op.Key
	sk, rule, err := parseKey(key)
	if err != nil {
		return sk, nil, refuse(rule, clip(key), "%v", err)
	}
	switch op.Action {
	case ActSet:
	case ActDel:
		if _, ok := sk.signed(); ok {
			return sk, nil, refuse(RuleSignature, key, "deletes a single-writer record (its writer withdraws it with a signed record)")
		}
		return sk, nil, nil
	case ActMakeMap, ActMakeList, ActMakeText, ActMakeTable:
		return sk, nil, refuse(RuleObject, key, "makes a %s object where the schema has a scalar", actionName(op.Action))
	default:
		return sk, nil, refuse(RuleType, key, "action %s is not a set or a delete", actionName(op.Action))
	}
	if kind, ok := sk.signed(); ok {
		if op.Type != ValBytes {
			return sk, nil, refuse(RuleType, key, "a %s value where a record (bytes) belongs", typeName(op.Type))
		}
		if len(op.Value) > MaxRecord {
			return sk, nil, refuse(RuleSize, key, "a record of %d bytes (max %d)", len(op.Value), MaxRecord)
		}
		r, err := decodeRecord(op.Value)
		if err == nil && r.kind != kind {
			err = fmt.Errorf("%w: kind %d at a key of kind %d", errRecord, r.kind, kind)
		}
		if err != nil {
			return sk, nil, refuse(RuleType, key, "%v", err)
		}
		return sk, r, nil
	}
	if op.Type != ValStr {
		return sk, nil, refuse(RuleType, key, "a %s value where a string belongs", typeName(op.Type))
	}
	if !utf8.Valid(op.Value) {
		return sk, nil, refuse(RuleType, key, "a string that is not UTF-8")
	}
	switch sk.kind {
	case kItemName:
		if len(op.Value) > MaxItemName {
			return sk, nil, refuse(RuleSize, key, "an item name of %d bytes (max %d)", len(op.Value), MaxItemName)
		}
	case kRoomState:
		if len(op.Value) > MaxRoomStateValue {
			return sk, nil, refuse(RuleSize, key, "a room state value of %d bytes (max %d)", len(op.Value), MaxRoomStateValue)
		}
	case kCreds:
		if _, err := DecodeRoomCreds(string(op.Value)); err != nil {
			return sk, nil, refuse(RuleCreds, key, "room credentials that do not decode: %v", err)
		}
	case kCut:
		if _, err := parseProposal(string(op.Value)); err != nil {
			return sk, nil, refuse(RuleSchema, key, "%v", err)
		}
	}
	return sk, nil, nil
}

// writerOps groups a change's record writes by writer, in op order.
type writerOps struct {
	order  []string
	byWho  map[string][]sigOp
	sample map[string]string // a key each writer wrote, for errors
}

func (w *writerOps) add(writer, key string, value []byte) {
	if w.byWho == nil {
		w.byWho, w.sample = map[string][]sigOp{}, map[string]string{}
	}
	if _, ok := w.byWho[writer]; !ok {
		w.order = append(w.order, writer)
		w.sample[writer] = key
	}
	w.byWho[writer] = append(w.byWho[writer], sigOp{key, value})
}

// verify checks that the change message signs every writer's writes.
func (w *writerOps) verify(ks *keys, message string) *RefusedError {
	if len(w.order) == 0 {
		return nil
	}
	sigs, err := parseSignatures(message)
	if err != nil {
		return refuse(RuleSignature, w.sample[w.order[0]], "%v", err)
	}
	for _, writer := range w.order {
		sig, ok := sigs[writer]
		if !ok {
			return refuse(RuleSignature, w.sample[writer], "writes a record of %s without %s's signature", writer, writer)
		}
		if err := ks.verify(writer, w.byWho[writer], sig); err != nil {
			return refuse(RuleSignature, w.sample[writer], "%v", err)
		}
	}
	return nil
}

// checkBytes runs the checks that depend on a change's bytes alone: its
// size, every op (checkOp) and, unless sigs is false (a change this node
// made and signed itself), its signatures. It returns the record writes,
// in op order.
func (d *Doc) checkBytes(c *ChangeOps, sigs bool) ([]recordWrite, *RefusedError) {
	if size := max(c.Size, c.BodySize); size > MaxChange {
		return nil, d.stamp(c, refuse(RuleSize, "", "a change of %d bytes (max %d)", size, MaxChange))
	}
	if isGenesisMessage(c.Message) {
		// Every node builds a genesis itself, or takes it in a snapshot
		// whose check verifies it (genesis.go); as a change it would be
		// unchecked, and would change what epoch a document is in.
		return nil, d.stamp(c, refuse(RuleEpoch, "", "a genesis message on a change; a genesis travels only in snapshots"))
	}
	var (
		signed writerOps
		writes []recordWrite
	)
	for i := range c.Ops {
		op := &c.Ops[i]
		sk, r, ref := d.checkOp(op)
		if ref != nil {
			return nil, d.stamp(c, ref)
		}
		if r != nil {
			signed.add(sk.writer, op.Key, op.Value)
			writes = append(writes, recordWrite{op.Key, r})
		}
	}
	if _, done := d.keys.wasChecked(c.Hash); sigs && !done {
		if ref := signed.verify(d.keys, c.Message); ref != nil {
			return nil, d.stamp(c, ref)
		}
		d.keys.passed(c)
	}
	return writes, nil
}

// recordWrite is one record a change writes.
type recordWrite struct {
	key string
	r   *record
}

// checkChangeLocked checks one change whose dependencies this node
// holds (applied, or pending in the same batch: flush applies those, and
// is called before the exact replay check needs them in the document).
// over holds counters raised by earlier changes of the batch; it is
// updated with this change's. Call with mu held.
func (d *Doc) checkChangeLocked(c *ChangeOps, over map[string]uint64, flush func() error) *RefusedError {
	// Signatures before counters: the exact counter check costs a fork,
	// which only a writer's own change may make this node pay.
	writes, ref := d.checkBytes(c, true)
	if ref != nil {
		return ref
	}
	mine := map[string]uint64{}
	for _, w := range writes {
		key, r := w.key, w.r
		cur, seen := mine[key]
		if !seen {
			cur = d.counterLocked(key, over)
		}
		if r.counter <= cur {
			if seen {
				return d.stamp(c, refuse(RuleReplay, key, "counter %d after %d in the same change", r.counter, cur))
			}
			if err := flush(); err != nil {
				return d.stamp(c, refuse(RuleDecode, key, "the changes before it do not apply: %v", err))
			}
			past, err := d.counterAtLocked(c.Deps, key)
			if err != nil {
				return d.stamp(c, refuse(RuleDecode, key, "cannot read the document at its dependencies: %v", err))
			}
			if r.counter <= past {
				return d.stamp(c, refuse(RuleReplay, key, "counter %d is not above %d, the record's counter before this change", r.counter, past))
			}
		}
		mine[key] = r.counter
	}
	for k, v := range mine {
		over[k] = max(over[k], v)
	}
	return nil
}

func (d *Doc) stamp(c *ChangeOps, r *RefusedError) *RefusedError {
	r.Change = c.Hash
	return r
}

// Precheck runs the checks that depend on a change's bytes alone (every
// rule but replay, signatures included) without touching the document, so
// that a gossip validator can refuse a bad change before it is forwarded:
// honest nodes then never relay one. The change's signatures are
// remembered, so applying it next does not check them again. It returns
// an error wrapping *RefusedError. Safe for concurrent use; it takes no
// document lock.
func (d *Doc) Precheck(raw []byte) error {
	co, ref := d.decodeChecked(raw)
	if ref != nil {
		return ref
	}
	if _, ref := d.checkBytes(co, true); ref != nil {
		return ref
	}
	return nil
}

// decodeChecked decodes one whole change chunk from a peer, refusing one
// that is not exactly one change, or carries an action the schema has no
// use for (before its ops are decoded).
func (d *Doc) decodeChecked(raw []byte) (*ChangeOps, *RefusedError) {
	if len(raw) > MaxChange {
		return nil, refuse(RuleSize, "", "a change of %d bytes (max %d)", len(raw), MaxChange)
	}
	co, n, err := decodeChangeOnly(raw, rootScalar)
	if err != nil {
		h := Hash{}
		if c, _, perr := parseChange(raw); perr == nil {
			h = c.hash
		}
		return nil, decodeRefusal(h, err)
	}
	if n != len(raw) {
		return nil, d.stamp(co, refuse(RuleDecode, "", "%d bytes after the change", len(raw)-n))
	}
	return co, nil
}

// counterLocked returns the highest counter this node has seen for a
// signed key: from over (writes checked but not applied yet), else the
// record in force, which is the highest ever applied (recindex.go). Call
// with mu held.
func (d *Doc) counterLocked(key string, over map[string]uint64) uint64 {
	if v, ok := over[key]; ok {
		return v
	}
	if r, ok := d.recs.best(key); ok {
		return r.counter
	}
	return 0
}

// counterAtLocked returns the counter of the record in force at key in
// the document as of deps: the exact replay check.
func (d *Doc) counterAtLocked(deps []Hash, key string) (uint64, error) {
	if len(deps) == 0 {
		return 0, nil
	}
	f, err := d.doc().Fork(deps...)
	if err != nil {
		return 0, err
	}
	x, err := indexDocument(f.Save())
	if err != nil {
		return 0, err
	}
	if r, ok := x.best(key); ok {
		return r.counter, nil
	}
	return 0, nil
}

// ErrSnapshotNeedsSync is returned by MergeSnapshot for a snapshot that
// passes every check on its bytes but holds a change whose replay check
// needs the document at that change's dependencies: the snapshot is not
// adopted, and the caller syncs with the peer instead, which takes each
// change through the same checks as gossip. It is not the peer's fault:
// an honest document can hold such a change (a concurrent replay that
// every node accepted).
var ErrSnapshotNeedsSync = errors.New("crdt: snapshot holds a change that needs the full replay check; sync instead")

// checkDocument checks every operation of a document chunk (a peer's
// snapshot, or one merged into the change log) with the rules of a
// change: the same checks on each operation's bytes, the signature of
// every change of its history that wrote records (the chunk keeps each
// change's message, and an op belongs to the change of its actor whose
// op range holds it), checked on every core, and no record deleted or
// overwritten by anything but a record. Replays: walking the changes in
// their stored (causal) order, every record write must raise its key's
// counter; needsSync reports one that does not, whose verdict needs the
// change path's exact check. It returns the document's record index.
func (d *Doc) checkDocument(b []byte) (_ *recIndex, needsSync bool, _ *RefusedError) {
	doc, err := decodeDocumentOnly(b, rootScalar)
	if err != nil {
		return nil, false, decodeRefusal(Hash{}, err)
	}
	return d.checkDecoded(doc)
}

// checkDecoded is checkDocument on a decoded chunk, which the decoder
// has already limited to sets and deletes: nested objects, text and list
// operations are refused from the action column, before any operation
// is read.
func (d *Doc) checkDecoded(doc *DocOps) (_ *recIndex, needsSync bool, _ *RefusedError) {
	x := newRecIndexFor(len(doc.Ops))
	// Each actor's changes by seq, to find the change an op belongs to.
	byActor := make([][]int, len(doc.Actors))
	for i, m := range doc.Meta {
		byActor[m.Actor] = append(byActor[m.Actor], i)
	}
	for _, cs := range byActor {
		slices.SortFunc(cs, func(x, y int) int { return cmp.Compare(doc.Meta[x].Seq, doc.Meta[y].Seq) })
	}
	type write struct {
		counter uint64
		writer  string
		op      sigOp
		rec     *record
	}
	isRecord := make(map[OpID]bool, len(doc.Ops))
	perChange := make([][]write, len(doc.Meta))
	for i := range doc.Ops {
		op := &doc.Ops[i]
		sk, r, ref := d.checkOp(op)
		if ref != nil {
			return nil, false, ref
		}
		if r == nil {
			x.markShared(op)
			continue
		}
		x.offer(op.Key, opKey{string(doc.Actors[op.ID.Actor]), op.ID.Counter}, r)
		isRecord[op.ID] = true
		cs := byActor[op.ID.Actor]
		j, _ := slices.BinarySearchFunc(cs, op.ID.Counter, func(ci int, c uint64) int { return cmp.Compare(doc.Meta[ci].MaxOp, c) })
		if j == len(cs) {
			return nil, false, refuse(RuleDecode, op.Key, "an operation outside every change's op range")
		}
		perChange[cs[j]] = append(perChange[cs[j]], write{op.ID.Counter, sk.writer, sigOp{op.Key, op.Value}, r})
	}
	for i := range doc.Ops {
		op := &doc.Ops[i]
		if !isRecord[op.ID] {
			continue
		}
		for _, s := range op.Succ {
			if !isRecord[s] {
				return nil, false, refuse(RuleSignature, op.Key, "the record was deleted or overwritten by a value that is not a record")
			}
		}
	}
	var jobs []func() *RefusedError
	gen, hdr, err := genesisOf(doc)
	if err != nil {
		return nil, false, refuse(RuleEpoch, "", "%v", err)
	}
	// top is the highest counter written at each key so far, in causal
	// order, and topVal its bytes: the same record written again (two
	// nodes carrying one write across a cut, carry.go) is no replay.
	top, topVal := map[string]uint64{}, map[string][]byte{}
	raise := func(w write) {
		if c := w.rec.counter; c > top[w.op.key] {
			top[w.op.key], topVal[w.op.key] = c, w.op.value
		} else if c < top[w.op.key] || !bytes.Equal(w.op.value, topVal[w.op.key]) {
			needsSync = true
		}
	}
	for ci, ws := range perChange {
		if ci == gen {
			// The genesis's records are covered by the signatures its
			// header carries from the parent epoch (genesis.go). It sets
			// each key once: a second value at a key would be one no
			// signature is checked for.
			recs := make(map[string][]byte, len(ws))
			for _, w := range ws {
				if _, dup := recs[w.op.key]; dup {
					return nil, false, refuse(RuleEpoch, w.op.key, "the genesis sets a key twice")
				}
				recs[w.op.key] = w.op.value
				raise(w)
			}
			gj, ref := verifyGenesis(d.keys, hdr, recs)
			if ref != nil {
				return nil, false, ref
			}
			jobs = append(jobs, gj...)
			continue
		}
		if len(ws) == 0 {
			continue
		}
		slices.SortFunc(ws, func(x, y write) int { return cmp.Compare(x.counter, y.counter) })
		var g writerOps
		for _, w := range ws {
			g.add(w.writer, w.op.key, w.op.value)
			raise(w)
		}
		msg := doc.Meta[ci].Message
		jobs = append(jobs, func() *RefusedError { return g.verify(d.keys, msg) })
	}
	if ref := runChecks(jobs); ref != nil {
		return nil, false, ref
	}
	return x, needsSync, nil
}

// runChecks runs independent checks on every core and returns a refusal
// if any refuses.
func runChecks(jobs []func() *RefusedError) *RefusedError {
	workers := min(runtime.GOMAXPROCS(0), max(1, len(jobs)/8))
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first *RefusedError
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < len(jobs); j += workers {
				if ref := jobs[j](); ref != nil {
					mu.Lock()
					if first == nil {
						first = ref
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// rootScalar is the decoders' action filter: the schema has only sets
// and deletes of root keys, so a change with any other action is refused
// before its ops are decoded (a text bomb costs no memory to refuse).
func rootScalar(a Action) bool { return a == ActSet || a == ActDel }

// decodeRefusal turns a decoder's error into a refusal.
func decodeRefusal(h Hash, err error) *RefusedError {
	var ae *ActionError
	if errors.As(err, &ae) {
		rule := RuleType
		switch ae.Action {
		case ActMakeMap, ActMakeList, ActMakeText, ActMakeTable:
			rule = RuleObject
		}
		return &RefusedError{Change: h, Rule: rule, Detail: fmt.Sprintf("has a %s operation; the schema has only sets and deletes of root keys (refused before its ops were read)", actionName(ae.Action))}
	}
	return &RefusedError{Change: h, Rule: RuleDecode, Detail: err.Error()}
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func actionName(a Action) string {
	switch a {
	case ActMakeMap:
		return "map"
	case ActSet:
		return "set"
	case ActMakeList:
		return "list"
	case ActDel:
		return "delete"
	case ActMakeText:
		return "text"
	case ActInc:
		return "counter increment"
	case ActMakeTable:
		return "table"
	}
	return fmt.Sprintf("action %d", a)
}

func typeName(t ValueType) string {
	names := []string{"null", "false", "true", "uint", "int", "float", "string", "bytes", "counter", "timestamp"}
	if int(t) < len(names) {
		return names[t]
	}
	return fmt.Sprintf("type %d", t)
}
