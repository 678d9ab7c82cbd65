package room

import (
	"sort"
	"time"
)

// Status is one topic as GET /v1/rooms shows it.
type Status struct {
	Topic    string     `json:"topic"`
	Open     bool       `json:"open"`
	Hold     bool       `json:"offered"`
	Room     string     `json:"room,omitempty"` // advertised in the document
	Expires  int64      `json:"expires_ms,omitempty"`
	Present  []string   `json:"present"` // peers with a fresh lease (alive or not)
	Links    []LinkInfo `json:"links"`
	Stats    TopicStats `json:"stats"`
	CredsErr string     `json:"creds_error,omitempty"`
}

// LinkInfo is one link of a topic.
type LinkInfo struct {
	Room  string    `json:"room"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
	Peers int       `json:"peers"`
}

// Rooms returns every topic in the document or open here.
func (m *Manager) Rooms() ([]Status, error) {
	rooms, err := m.cfg.Doc.Rooms()
	if err != nil {
		return nil, err
	}
	var local map[string]topicStatus
	if err := m.do(func() { local = m.core.status() }); err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	names := map[string]bool{}
	for n := range rooms {
		names[n] = true
	}
	for n := range local {
		names[n] = true
	}
	out := make([]Status, 0, len(names))
	for n := range names {
		r := rooms[n]
		st := Status{Topic: n, Present: []string{}, Links: []LinkInfo{}}
		if r.Creds != "" {
			if c, err := DecodeCreds(r.Creds); err == nil {
				st.Room, st.Expires = c.ID.String(), c.Expires
				if err := c.Valid(now); err != nil {
					st.CredsErr = err.Error()
				}
			} else {
				st.CredsErr = err.Error()
			}
		}
		for p, exp := range r.Presence {
			if exp > now.UnixMilli() {
				st.Present = append(st.Present, p)
			}
		}
		sort.Strings(st.Present)
		if ts, ok := local[n]; ok {
			st.Open, st.Hold, st.Stats = ts.open, ts.hold, ts.stats
			st.Links = append(st.Links, ts.links...)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	return out, nil
}
