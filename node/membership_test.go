package node

import (
	"testing"
	"time"

	"github.com/meshnode/meshnode/mesh"
)

// A peer that has just authenticated shows alive at once, on both sides,
// not stale until the next heartbeat tick.
func TestNewPeerAliveWithoutWaitingForATick(t *testing.T) {
	t.Parallel()
	slow := func(_ int, c *Config) {
		c.HeartbeatInterval = 10 * time.Second
		c.StaleAfter = 40 * time.Second
	}
	c := newCluster(t, 2, slow)
	waitFor(t, 20*time.Second, "both authenticated", func() bool { return c.allAuthenticated(1) })
	waitFor(t, 5*time.Second, "each node to see the other alive", func() bool {
		for i, n := range c.nodes {
			other := c.nodes[1-i].ID()
			if n.Membership.Members()[other].State != mesh.StateAlive {
				return false
			}
		}
		return true
	})
}
