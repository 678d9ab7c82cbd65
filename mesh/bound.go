package mesh

import "slices"

// prune deletes the least entries of m by cmp until at most keep remain.
// It sorts, so a caller lets its map grow a margin past keep before
// calling it, which keeps the cost per insert constant.
func prune[K comparable, V any](m map[K]V, keep int, cmp func(a, b V) int) {
	if len(m) <= keep {
		return
	}
	type kv struct {
		k K
		v V
	}
	all := make([]kv, 0, len(m))
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp(a.v, b.v) })
	for _, e := range all[:len(all)-max(keep, 0)] {
		delete(m, e.k)
	}
}
