package room

import "time"

// LinkState is how far a link to a room has come.
type LinkState int

// Link states.
const (
	Connecting LinkState = iota // joined the room's topic, no participant reached yet
	Connected
)

func (s LinkState) String() string {
	if s == Connected {
		return "connected"
	}
	return "connecting"
}

// Link is this node's membership of one room.
type Link struct {
	Room  ID
	State LinkState
	Since time.Time // when it started connecting
}

// View is everything the reconciler decides from, for one topic.
type View struct {
	Now time.Time
	// Open: this node has the topic open (joined or offered).
	Open bool
	// Hold: an offer keeps a room up even with no other participant.
	Hold bool
	// Creds is rooms/<topic>/creds as the document holds it ("" if none).
	Creds string
	// PeerPresent: another participant holds a fresh lease and is alive.
	PeerPresent bool
	// Links are this node's current links (two while migrating).
	Links []Link
	// ConnectTimeout: a link connecting longer than this is swept.
	ConnectTimeout time.Duration
}

// ActionKind says what an Action does.
type ActionKind int

// Action kinds.
const (
	// Mint: write Creds to the document (last writer wins).
	Mint ActionKind = iota
	// Connect: join the room of Creds.
	Connect
	// Drop: leave Room.
	Drop
)

// Action is one step for the shell to take, in order.
type Action struct {
	Kind  ActionKind
	Creds Creds // Mint, Connect
	Room  ID    // Drop
	Why   string
}

// Reconcile decides, for one topic, what to do now. It is pure: mint
// supplies fresh credentials when they are needed. Connections to a new
// room come before drops of old ones, so a participant is never without a
// room while it migrates, and an old room's close finds the state already
// moved on.
func Reconcile(v View, mint func() Creds) []Action {
	if !v.Open {
		return dropAll(v.Links, nil, "topic closed here")
	}
	if !v.PeerPresent && !v.Hold {
		return dropAll(v.Links, nil, "no other participant present")
	}
	c, err := ParseCreds(v.Creds, v.Now)
	if err != nil {
		why := "no room advertised"
		if v.Creds != "" {
			why = err.Error()
		}
		n := mint()
		acts := []Action{{Kind: Mint, Creds: n, Why: why}, {Kind: Connect, Creds: n, Why: "minted"}}
		return append(acts, dropAll(v.Links, nil, "replaced by a minted room")...)
	}
	var target *Link
	for i := range v.Links {
		if v.Links[i].Room == c.ID {
			target = &v.Links[i]
		}
	}
	var acts []Action
	switch {
	case target == nil:
		acts = append(acts, Action{Kind: Connect, Creds: c, Why: "the document advertises this room"})
	case target.State == Connecting && v.Now.Sub(target.Since) > v.ConnectTimeout:
		acts = append(acts, Action{Kind: Drop, Room: c.ID, Why: "stuck connecting; swept, retried next pass"})
	}
	return append(acts, dropAll(v.Links, &c.ID, "the document advertises another room")...)
}

// dropAll drops every link except keep.
func dropAll(links []Link, keep *ID, why string) []Action {
	var acts []Action
	for _, l := range links {
		if keep == nil || l.Room != *keep {
			acts = append(acts, Action{Kind: Drop, Room: l.Room, Why: why})
		}
	}
	return acts
}
