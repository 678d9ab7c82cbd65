package transfer

import (
	"strings"
	"testing"

	"github.com/meshnode/meshnode/crdt"
)

func TestVersionOrder(t *testing.T) {
	t.Parallel()
	m := func(c string) string { return strings.Repeat(c, 64) }
	complete := func(man string, gen, upd int64, parent string) crdt.Holder {
		return crdt.Holder{Manifest: man, State: crdt.HolderComplete, Gen: gen, UpdatedMs: upd, Parent: parent}
	}
	it := crdt.Item{Holders: map[string]crdt.Holder{
		"old":     complete(m("1"), 1, 900, ""), // updated last, but of generation 1
		"pub":     complete(m("2"), 2, 100, m("1")),
		"updater": {Manifest: m("1"), State: crdt.HolderComplete, Gen: 1, UpdatedMs: 50, Next: m("2")},
		"fresh":   {Manifest: m("2"), State: crdt.HolderPartial, Gen: 2, Parent: m("1"), UpdatedMs: 60},
		"legacy":  complete(m("0"), 0, 999, ""),
	}}
	vs := versionsOf(it)
	if len(vs) != 3 || vs[0].Manifest != m("2") || vs[1].Manifest != m("1") || vs[2].Manifest != m("0") {
		t.Fatalf("order %v, want generations 2, 1, 0", vs)
	}
	if got := vs[0].Partial; len(got) != 2 || got[0] != "fresh" || got[1] != "updater" {
		t.Fatalf("v2's partial holders %v, want the partial one and the one fetching it as Next", got)
	}
	if vs[0].Parent != m("1") || vs[0].Gen != 2 {
		t.Fatalf("v2 is gen %d parent %s", vs[0].Gen, vs[0].Parent)
	}
	if got := latestOf(it, ""); got != m("2") {
		t.Fatalf("latest %s", got)
	}
	if got := latestOf(it, "pub"); got != m("1") {
		t.Fatalf("latest held by another than pub: %s, want v1", got)
	}
	// Publishing: a known version keeps its lineage; a new one goes one
	// generation above every version, with what the publisher held as
	// its parent.
	if g, p := lineage(it, m("1"), ""); g != 1 || p != "" {
		t.Fatalf("known v1: gen %d parent %q", g, p)
	}
	if g, p := lineage(it, m("3"), m("1")); g != 3 || p != m("1") {
		t.Fatalf("new v3: gen %d parent %q", g, p)
	}
	if g, p := lineage(it, m("0"), m("0")); g != 0 || p != "" {
		t.Fatalf("legacy v0 republished: gen %d parent %q, want it to keep 0", g, p)
	}
	// A version the document does not know, from a node that never held
	// the item (a reinstall beside an old copy), does not outrank the
	// fleet's; the item's very first version is generation 1.
	if g, _ := lineage(it, m("9"), ""); g != 0 {
		t.Fatalf("an unknown version with no history here: gen %d, want 0", g)
	}
	if g, _ := lineage(crdt.Item{}, m("9"), ""); g != 1 {
		t.Fatalf("an item's first version: gen %d, want 1", g)
	}
	// A partial entry's claim does not promote a version.
	hostile := crdt.Item{Holders: map[string]crdt.Holder{
		"pub":  complete(m("2"), 2, 100, m("1")),
		"old":  complete(m("1"), 1, 100, ""),
		"liar": {Manifest: m("1"), State: crdt.HolderPartial, Gen: crdt.MaxGen, UpdatedMs: 999},
	}}
	if got := latestOf(hostile, ""); got != m("2") {
		t.Fatalf("a partial entry claiming MaxGen made %s latest", got)
	}
	// Two versions of one generation: the greater hash, whatever their
	// update times; in generation 0, the later update.
	tie := crdt.Item{Holders: map[string]crdt.Holder{"x": complete(m("a"), 4, 99, ""), "y": complete(m("b"), 4, 10, "")}}
	if got := latestOf(tie, ""); got != m("b") {
		t.Fatalf("tie broken to %s", got)
	}
	legacy := crdt.Item{Holders: map[string]crdt.Holder{"x": complete(m("a"), 0, 99, ""), "y": complete(m("b"), 0, 10, "")}}
	if got := latestOf(legacy, ""); got != m("a") {
		t.Fatalf("generation 0 ordered to %s, want the later update", got)
	}
	// A partial entry's update time does not promote a version either.
	legacy.Holders["z"] = crdt.Holder{Manifest: m("b"), State: crdt.HolderPartial, UpdatedMs: 500}
	if got := latestOf(legacy, ""); got != m("a") {
		t.Fatalf("a partial entry's update time made %s latest", got)
	}
	// A download of v3 (its lineage known when it started) whose last
	// complete holder left does not move back to v1, the only version
	// others still hold; nor does a node move to a version below its own.
	gone := crdt.Item{Holders: map[string]crdt.Holder{
		"old":  complete(m("1"), 1, 100, ""),
		"self": complete(m("2"), 2, 100, m("1")),
	}}
	if v, ok := newerVersion(gone, m("3"), "self", heldVersion{Manifest: m("3"), Gen: 3, Parent: m("2")}, nil); ok {
		t.Fatalf("the download of v3 would move to %s", v)
	}
	if v, ok := newerVersion(gone, m("9"), "self", heldVersion{}, &Served{Hash: mustHash(t, m("2"))}); ok {
		t.Fatalf("a node holding v2 would move to %s", v)
	}
}

func mustHash(t *testing.T, s string) Hash {
	t.Helper()
	h, err := ParseHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
