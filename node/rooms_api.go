package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/meshnode/meshnode/room"
)

func (n *Node) roomRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/rooms", n.handleRooms)
	mux.HandleFunc("POST /v1/rooms/{topic}/join", withTopic(n.roomAction(n.Rooms.Join)))
	mux.HandleFunc("DELETE /v1/rooms/{topic}/join", withTopic(n.roomAction(n.Rooms.Leave)))
	mux.HandleFunc("POST /v1/rooms/{topic}/offer", withTopic(n.roomAction(n.Rooms.Offer)))
	mux.HandleFunc("POST /v1/rooms/{topic}/rotate", withTopic(n.roomAction(func(t string) error { _, err := n.Rooms.Rotate(t); return err })))
	mux.HandleFunc("POST /v1/rooms/{topic}/messages", withTopic(n.handleRoomSend))
	mux.HandleFunc("GET /v1/rooms/{topic}/events", withTopic(n.handleRoomEvents))
}

// validTopic is the one check of a topic that every room route, state
// included, makes before anything else: room.ValidTopic, the check Join
// makes, and UTF-8, which the document requires and room.ValidTopic does
// not check.
func validTopic(topic string) error {
	if !utf8.ValidString(topic) {
		return fmt.Errorf("%w: %q is not UTF-8", room.ErrBadTopic, topic)
	}
	return room.ValidTopic(topic)
}

// withTopic answers 400 bad_topic for a route's topic that validTopic
// refuses, and runs h otherwise.
func withTopic(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := validTopic(r.PathValue("topic")); err != nil {
			roomError(w, err, roomFailed)
			return
		}
		h(w, r)
	}
}

func (n *Node) handleRooms(w http.ResponseWriter, r *http.Request) {
	st, err := n.Rooms.Rooms()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "doc_read", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// roomError answers a room error with the status that fits it; an error
// that is none of the room package's goes to other.
func roomError(w http.ResponseWriter, err error, other func(http.ResponseWriter, error)) {
	switch {
	case errors.Is(err, room.ErrBadTopic):
		writeError(w, http.StatusBadRequest, "bad_topic", err.Error())
	case errors.Is(err, room.ErrNotJoined):
		writeError(w, http.StatusConflict, "not_joined", err.Error())
	case errors.Is(err, room.ErrNotConnected):
		writeError(w, http.StatusConflict, "not_connected", err.Error()+"; the room is being set up, try again in a moment")
	case errors.Is(err, room.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", err.Error())
	case errors.Is(err, room.ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "stopping", err.Error()+"; the node is stopping")
	default:
		other(w, err)
	}
}

// roomFailed answers an error of a room operation that does not write
// the document.
func roomFailed(w http.ResponseWriter, err error) {
	writeError(w, http.StatusInternalServerError, "room", err.Error())
}

// roomAction runs fn on the topic and answers with the topic's status.
// fn's only errors besides the room package's are document writes (the
// presence lease, the credentials).
func (n *Node) roomAction(fn func(topic string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		topic := r.PathValue("topic")
		if err := fn(topic); err != nil {
			roomError(w, err, n.docWriteError)
			return
		}
		st, _ := n.Rooms.Rooms()
		for _, s := range st {
			if s.Topic == topic {
				writeJSON(w, http.StatusOK, s)
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"topic": topic})
	}
}

// SendRequest is the body of POST /v1/rooms/{topic}/messages: a type and
// either text or a base64 payload.
type SendRequest struct {
	Type    string `json:"type"`
	Text    string `json:"text,omitempty"`
	Payload []byte `json:"payload,omitempty"`
}

// RoomMessage is a room message as the API shows it: the payload in
// base64, and as text too when it is UTF-8.
type RoomMessage struct {
	room.Message
	Text string `json:"text,omitempty"`
}

func apiMessage(m room.Message) RoomMessage {
	out := RoomMessage{Message: m}
	if utf8.Valid(m.Payload) {
		out.Text = string(m.Payload)
	}
	return out
}

func (n *Node) handleRoomSend(w http.ResponseWriter, r *http.Request) {
	var req SendRequest
	// A payload of MaxPayload bytes in base64 or escaped text fits in 4x.
	body, ok := readBody(w, r, 4*room.MaxPayload, "message body")
	if !ok {
		return
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_body", "want JSON {\"type\": ..., \"text\": ...} or {\"type\": ..., \"payload\": base64}: "+err.Error())
		return
	}
	payload := req.Payload
	if req.Text != "" {
		if len(payload) > 0 {
			writeError(w, http.StatusBadRequest, "bad_body", "give text or payload, not both")
			return
		}
		payload = []byte(req.Text)
	}
	m, err := n.Rooms.Send(r.Context(), r.PathValue("topic"), req.Type, payload)
	if err != nil {
		roomError(w, err, roomFailed)
		return
	}
	writeJSON(w, http.StatusOK, apiMessage(m))
}

// RoomEvent is one event of GET /v1/rooms/{topic}/events.
type RoomEvent struct {
	room.Event
	Message *RoomMessage `json:"message,omitempty"`
}

func (n *Node) handleRoomEvents(w http.ResponseWriter, r *http.Request) {
	ch, cancel, err := n.Rooms.Subscribe(r.PathValue("topic"), 1024)
	if err != nil {
		roomError(w, err, roomFailed)
		return
	}
	defer cancel()
	streamSSE(n, w, r, "meshnode room "+r.PathValue("topic"), ch, func(ev room.Event) (string, any) {
		out := RoomEvent{Event: ev}
		if ev.Message != nil {
			m := apiMessage(*ev.Message)
			out.Message = &m
		}
		return ev.Type, out
	})
}

// streamSSE writes each value from ch as a server-sent event until the
// client goes, the channel closes or the node stops.
func streamSSE[T any](n *Node, w http.ResponseWriter, r *http.Request, hello string, ch <-chan T, render func(T) (string, any)) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "no_streaming", "streaming unsupported")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": %s\n\n", hello)
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-n.apiStopping:
			return // end the stream cleanly: the node is stopping
		case <-keep.C:
			if !n.stillAuthorized(r) {
				return // the session ended (sign-out, expiry)
			}
			fmt.Fprint(w, ": keep-alive\n\n")
			fl.Flush()
		case v, ok := <-ch:
			if !ok {
				return
			}
			typ, body := render(v)
			b, _ := json.Marshal(body)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b)
			fl.Flush()
		}
	}
}
