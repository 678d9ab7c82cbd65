package transfer

import (
	"sort"

	"github.com/meshnode/meshnode/crdt"
)

// Versions of an item and their order.
//
// A version's generation (crdt.Holder.Gen) is fixed by the node that first
// publishes it: one more than the highest generation the item has in the
// document then, with the version it replaced there as its parent. Every
// other holder copies both from the document, so the order is the same on
// every replica and a node that restarts, or comes back with an old copy,
// republishes the old version's generation and cannot make it latest
// again. The latest version is the complete one of the highest
// generation; among equals (versions published concurrently, or written
// by nodes that predate generations, all 0) the most recently updated,
// then the greater manifest hash.

// rank is what orders two versions: generation, update time, manifest.
type rank struct {
	gen     int64
	updated int64
	m       string
}

func (a rank) above(b rank) bool {
	if a.gen != b.gen {
		return a.gen > b.gen
	}
	if a.updated != b.updated {
		return a.updated > b.updated
	}
	return a.m > b.m
}

func (v *ItemVersion) rank() rank { return rank{v.Gen, v.Updated, v.Manifest} }

// versionsOf groups item it's holder entries by version, highest rank
// first. A version's generation and parent are the highest any of its
// holders claims; a holder fetching a newer version (Next) counts as its
// partial holder.
func versionsOf(it crdt.Item) []ItemVersion {
	byM := map[string]*ItemVersion{}
	for p, h := range it.Holders {
		iv := byM[h.Manifest]
		if iv == nil {
			iv = &ItemVersion{Manifest: h.Manifest, Size: h.Size, Files: h.Files}
			byM[h.Manifest] = iv
		}
		if h.State == crdt.HolderComplete {
			iv.Holders = append(iv.Holders, p)
		} else {
			iv.Partial = append(iv.Partial, p)
		}
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
func latestOf(it crdt.Item, skip string) string {
	for _, v := range versionsOf(it) {
		for _, p := range v.Holders {
			if p != skip {
				return v.Manifest
			}
		}
	}
	return ""
}

// lineage returns the generation and parent that version m of item it is
// published with: the version's own where the document knows it, else
// those of a new version, one generation above every version of the item
// and with the version the publisher held before (prev) as its parent.
func lineage(it crdt.Item, m, prev string) (gen int64, parent string) {
	if v, ok := knownVersion(it, m); ok && v.Gen > 0 {
		return v.Gen, v.Parent
	}
	var top int64
	for _, h := range it.Holders {
		top = max(top, h.Gen)
	}
	if prev == m {
		prev = ""
	}
	return min(top+1, crdt.MaxGen), prev
}

// knownVersion returns version m of item it as its holder entries have it.
func knownVersion(it crdt.Item, m string) (ItemVersion, bool) {
	for _, v := range versionsOf(it) {
		if v.Manifest == m {
			return v, true
		}
	}
	return ItemVersion{}, false
}
