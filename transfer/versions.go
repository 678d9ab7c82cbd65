package transfer

import (
	"sort"

	"github.com/meshnode/meshnode/crdt"
)

// Versions of an item and their order.
//
// A version's generation (crdt.Holder.Gen) is fixed by the node that first
// publishes it: one more than the highest generation the item's complete
// holders have in the document then, with the version it replaced there
// as its parent. Every other holder copies both: from the document, or,
// for a download, from what the document said when it started, so the
// order is the same on every replica and a node that restarts, or comes
// back with an old copy, republishes the old version's generation and
// cannot make it latest again. A node that publishes a version the
// document does not know without having held the item before (a node
// reinstalled next to an old copy, an item folder restored) gives it
// generation 0: it does not outrank what the fleet already has. Only
// complete holders' claims count: a partial entry cannot promote a
// version.
//
// The latest version is the complete one of the highest generation.
// Among versions of one generation (published concurrently), the greater
// manifest hash wins, which no later write moves; versions of generation
// 0 (written by nodes that predate generations) keep the order they had
// before, the most recently updated first.

// rank is what orders two versions: generation, then for generation 0
// the update time, then the manifest hash.
type rank struct {
	gen     int64
	updated int64
	m       string
}

func (a rank) above(b rank) bool {
	if a.gen != b.gen {
		return a.gen > b.gen
	}
	if a.gen == 0 && a.updated != b.updated {
		return a.updated > b.updated
	}
	return a.m > b.m
}

func (v *ItemVersion) rank() rank { return rank{v.Gen, v.Updated, v.Manifest} }

// versionsOf groups item it's holder entries by version, highest rank
// first. A version's generation, parent and update time are the highest
// any of its complete holders claims; a holder fetching a newer version
// (Next) counts as its partial holder.
func versionsOf(it crdt.Item) []ItemVersion {
	byM := map[string]*ItemVersion{}
	for p, h := range it.Holders {
		iv := byM[h.Manifest]
		if iv == nil {
			iv = &ItemVersion{Manifest: h.Manifest, Size: h.Size, Files: h.Files, Holders: []string{}}
			byM[h.Manifest] = iv
		}
		if h.State != crdt.HolderComplete {
			iv.Partial = append(iv.Partial, p)
			continue
		}
		iv.Holders = append(iv.Holders, p)
		iv.Updated = max(iv.Updated, h.UpdatedMs)
		if h.Gen > iv.Gen || (h.Gen == iv.Gen && h.Parent > iv.Parent) {
			iv.Gen, iv.Parent = h.Gen, h.Parent
		}
	}
	for p, h := range it.Holders {
		if iv := byM[h.Next]; h.Next != "" && iv != nil {
			iv.Partial = append(iv.Partial, p)
		}
	}
	out := make([]ItemVersion, 0, len(byM))
	for _, iv := range byM {
		sort.Strings(iv.Holders)
		sort.Strings(iv.Partial)
		out = append(out, *iv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rank().above(out[j].rank()) })
	return out
}

// latestOf returns the manifest of item it's latest version that a node
// other than skip holds complete ("" when none).
func latestOf(it crdt.Item, skip string) string { return latestIn(versionsOf(it), skip) }

// latestIn is latestOf over versions as versionsOf returns them.
func latestIn(vs []ItemVersion, skip string) string {
	for _, v := range vs {
		for _, p := range v.Holders {
			if p != skip {
				return v.Manifest
			}
		}
	}
	return ""
}

// lineage returns the generation and parent that version m of item it is
// published with by a node whose previous complete version was prev (""
// for none): the version's own where a complete holder has it; else,
// for a node that held the item, those of a new version, one generation
// above every version of the item, with prev as its parent; else 1 for
// the item's first version and 0 for a version the node brings with no
// history of the item (see above).
func lineage(it crdt.Item, m, prev string) (gen int64, parent string) {
	vs := versionsOf(it)
	if v, ok := findVersion(vs, m); ok {
		return v.Gen, v.Parent
	}
	switch top, held := topGen(vs); {
	case prev != "" && prev != m:
		return min(top+1, crdt.MaxGen), prev
	case held:
		return 0, ""
	}
	return 1, ""
}

// topGen returns the highest generation of the versions held complete,
// and whether there is any.
func topGen(vs []ItemVersion) (top int64, held bool) {
	for _, v := range vs {
		if len(v.Holders) > 0 {
			top, held = max(top, v.Gen), true
		}
	}
	return top, held
}

// knownVersion returns version m of item it as its complete holders have
// it; false when none holds it complete.
func knownVersion(it crdt.Item, m string) (ItemVersion, bool) { return findVersion(versionsOf(it), m) }

// findVersion is knownVersion over versions as versionsOf returns them.
func findVersion(vs []ItemVersion, m string) (ItemVersion, bool) {
	for _, v := range vs {
		if v.Manifest == m && len(v.Holders) > 0 {
			return v, true
		}
	}
	return ItemVersion{}, false
}

// lineageOf returns version m of it's lineage as the document has it;
// the zero heldVersion when no complete holder has m. A download carries
// it (Transfer.lin, job.json) and remembers it before its swap
// (lineage.go), so that it publishes the version with it even if by then
// no other complete holder is left to say so.
func lineageOf(it crdt.Item, m string) heldVersion {
	v, ok := knownVersion(it, m)
	if !ok {
		return heldVersion{}
	}
	return heldVersion{Manifest: m, Gen: v.Gen, Parent: v.Parent}
}
