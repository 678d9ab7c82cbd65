package main

import (
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	s := ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	for _, c := range []struct {
		q    float64
		want int
	}{{0.5, 5}, {0.9, 9}, {1, 10}, {0, 1}} {
		if got := quantile(s, c.q); got != time.Duration(c.want)*time.Millisecond {
			t.Errorf("quantile(1..10, %v) = %v, want %d ms", c.q, got, c.want)
		}
	}
	if got := quantile(nil, 0.5); got != 0 {
		t.Errorf("quantile(nil) = %v", got)
	}
}

// view builds a /v1/mesh answer with slots to the given peers.
func view(capacity, maxSeen int, peers ...string) meshView {
	v := meshView{Cap: capacity, MaxSlotsSeen: maxSeen}
	for _, p := range peers {
		v.Slots = append(v.Slots, struct {
			Peer string `json:"peer"`
		}{p})
	}
	return v
}

func TestSummarizeMesh(t *testing.T) {
	ds := []*daemon{{name: "a", id: "A"}, {name: "b", id: "B"}, {name: "c", id: "C"}, {name: "d", id: "D"}}
	views := []meshView{
		view(2, 2, "B", "X"), // X: a killed node, outside the set
		view(2, 1, "A"),
		view(2, 3, "D"), // held 3 once: over the cap
		view(1, 0),
	}
	s := summarizeMesh(ds, views, 2)
	if s.components != 2 || s.largest != 2 {
		t.Errorf("components %d largest %d, want 2 and 2", s.components, s.largest)
	}
	if s.maxNow != 2 || s.maxSeen != 3 {
		t.Errorf("maxNow %d maxSeen %d, want 2 and 3", s.maxNow, s.maxSeen)
	}
	if len(s.over) != 1 || len(s.badCap) != 1 {
		t.Errorf("over %v badCap %v, want c over the cap and d with another cap", s.over, s.badCap)
	}
}

func TestViewGap(t *testing.T) {
	a, b, k := &daemon{id: "A"}, &daemon{id: "B"}, &daemon{id: "K"}
	w := viewWant{alive: []*daemon{a, b}, gone: []*daemon{k}}
	if g := w.gap(map[string]string{"A": "alive", "B": "alive", "K": "stale"}); g != "" {
		t.Errorf("complete view: gap %q", g)
	}
	if g := w.gap(map[string]string{"A": "alive", "K": "alive"}); g == "" {
		t.Error("B missing and K alive: no gap reported")
	}
}
