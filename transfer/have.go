package transfer

import "sync"

// chunkSet records which chunks of a manifest a download holds verified
// and written. It is shared between the download, which adds to it, and
// the server, which serves those chunks to other downloaders.
type chunkSet struct {
	mu   sync.Mutex
	bits []byte
	n    int
}

func newChunkSet(n int) *chunkSet { return &chunkSet{bits: make([]byte, (n+7)/8), n: n} }

func (c *chunkSet) add(g int) {
	c.mu.Lock()
	c.bits[g/8] |= 1 << (g % 8)
	c.mu.Unlock()
}

func (c *chunkSet) has(g int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return g >= 0 && g < c.n && bitSet(c.bits, g)
}

// bitmap returns a copy of the set's bits.
func (c *chunkSet) bitmap() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.bits...)
}
