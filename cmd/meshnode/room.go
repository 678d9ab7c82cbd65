package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshnode/meshnode/node"
	"github.com/meshnode/meshnode/room"
)

const roomUsage = `usage: meshnode room COMMAND [--data DIR] [--json]
  list                     topics in the fleet and here: room, presence, links
  join TOPIC               open a topic: join the room the fleet advertises
  offer TOPIC              open a topic and keep a room up before anyone joins
  leave TOPIC              close a topic here
  send TOPIC TEXT [--type T]
                           send a message to the topic's room
  tail TOPIC               follow the topic's messages and room events
  state TOPIC [KEY [VALUE]]
                           list, read or set the room's durable state`

// runRoom handles `meshnode room ...`.
func runRoom(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", roomUsage)
	}
	switch args[0] {
	case "state":
		return runRoomState(args[1:], out)
	case "list":
		return runRoomList(args[1:], out)
	case "join", "offer", "leave":
		return runRoomAction(args[0], args[1:], out)
	case "send":
		return runRoomSend(args[1:], out)
	case "tail":
		return runRoomTail(args[1:], out)
	}
	return fmt.Errorf("unknown room command %q\n%s", args[0], roomUsage)
}

func runRoomList(args []string, out io.Writer) error {
	dir, asJSON, _, err := clientArgs("room list", args, 0)
	if err != nil {
		return err
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	var st []room.Status
	if err := c.get("/v1/rooms", &st); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, st)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tHERE\tROOM\tPRESENT\tLINK\tSENT\tRECEIVED\tGAPS")
	for _, s := range st {
		here := "-"
		switch {
		case s.Hold:
			here = "offered"
		case s.Open:
			here = "joined"
		}
		link := "-"
		for _, l := range s.Links {
			if l.Room == s.Room {
				link = fmt.Sprintf("%s (%d peers)", l.State, l.Peers)
			}
		}
		roomID := s.Room
		if len(roomID) > 12 {
			roomID = roomID[:12]
		}
		if s.CredsErr != "" {
			roomID += " (" + s.CredsErr + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n", s.Topic, here, roomID, len(s.Present), link, s.Stats.Sent, s.Stats.Received, s.Stats.Gaps)
	}
	return tw.Flush()
}

func runRoomAction(verb string, args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("room "+verb, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode room %s TOPIC", verb)
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	method := "POST"
	path := "/v1/rooms/" + url.PathEscape(pos[0]) + "/" + verb
	if verb == "leave" {
		method, path = "DELETE", "/v1/rooms/"+url.PathEscape(pos[0])+"/join"
	}
	var st room.Status
	if err := c.do(method, path, nil, &st); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, st)
	}
	switch verb {
	case "leave":
		fmt.Fprintf(out, "left %s\n", pos[0])
	default:
		fmt.Fprintf(out, "%s %s: the room is set up in the background; see `meshnode room list`\n", map[string]string{"join": "joined", "offer": "offered"}[verb], pos[0])
	}
	return nil
}

func runRoomSend(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("room send", flag.ContinueOnError)
	typ := fs.String("type", "text", "message type")
	dir, asJSON, pos, err := clientArgsWith(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("usage: meshnode room send TOPIC TEXT [--type T]")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(node.SendRequest{Type: *typ, Text: pos[1]})
	var m node.RoomMessage
	// Right after a join the room is still being set up: wait for it a
	// little rather than fail.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.do("POST", "/v1/rooms/"+url.PathEscape(pos[0])+"/messages", strings.NewReader(string(body)), &m)
		if err == nil {
			break
		}
		switch code := errCode(err); {
		case code == "not_joined":
			return fmt.Errorf("%w; `meshnode room join %s` opens it here", err, pos[0])
		case code != "not_connected" || time.Now().After(deadline):
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	if asJSON {
		return printJSON(out, m)
	}
	fmt.Fprintf(out, "sent #%d\n", m.Seq)
	return nil
}

// runRoomTail follows a topic: `TIME SENDER#SEQ TYPE TEXT` per message,
// and a line per room event.
func runRoomTail(args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("room tail", args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode room tail TOPIC")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	if !asJSON {
		defer fmt.Fprintf(out, "stopped following %s\n", pos[0])
	}
	return c.streamHello("/v1/rooms/"+url.PathEscape(pos[0])+"/events", func() {
		if !asJSON {
			fmt.Fprintf(out, "following %s (interrupt to stop)\n", pos[0])
		}
	}, func(data string) error {
		if asJSON {
			fmt.Fprintln(out, data)
			return nil
		}
		var ev node.RoomEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("unreadable event from the daemon: %w", err)
		}
		now := time.Now().UTC().Format("15:04:05.000")
		switch {
		case ev.Message != nil:
			text := ev.Message.Text
			if text == "" && len(ev.Message.Payload) > 0 {
				text = fmt.Sprintf("(%d bytes)", len(ev.Message.Payload))
			}
			sender := ev.Message.Sender.String()
			fmt.Fprintf(out, "%s %s#%d %s %s\n", now, sender[max(0, len(sender)-8):], ev.Message.Seq, ev.Message.Type, text)
		case ev.Gap != nil:
			fmt.Fprintf(out, "%s gap: messages %d-%d of %s never arrived\n", now, ev.Gap.From, ev.Gap.To, ev.Gap.Sender)
		default:
			fmt.Fprintf(out, "%s %s %s %s\n", now, ev.Type, ev.Room, ev.Why)
		}
		return nil
	})
}

// runRoomState handles `meshnode room state TOPIC [KEY [VALUE]]`.
func runRoomState(args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("room state", args, 3)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return fmt.Errorf("usage: meshnode room state TOPIC [KEY [VALUE]]: a topic is needed")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	base := "/v1/rooms/" + url.PathEscape(pos[0]) + "/state"
	switch len(pos) {
	case 1:
		st := map[string]string{}
		if err := c.get(base, &st); err != nil {
			return err
		}
		if asJSON {
			return printJSON(out, st)
		}
		keys := make([]string, 0, len(st))
		for k := range st {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tVALUE")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\n", k, st[k])
		}
		return tw.Flush()
	default:
		var v node.RoomStateValue
		path := base + "/" + url.PathEscape(pos[1])
		if len(pos) == 3 {
			err = c.do("PUT", path, strings.NewReader(pos[2]), &v)
		} else {
			err = c.get(path, &v)
		}
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(out, v)
		}
		fmt.Fprintln(out, v.Value)
		return nil
	}
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// runEvents tails the node's event stream until the daemon stops or the
// command is interrupted: one line per event, as JSON with --json, else
// `TIME TYPE key=value ...` with lists joined by commas.
func runEvents(args []string, out io.Writer) error {
	dir, asJSON, err := clientFlags("events", args)
	if err != nil {
		return err
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	return c.stream("/v1/events", func(data string) error {
		if asJSON {
			fmt.Fprintln(out, data)
			return nil
		}
		var ev node.Event
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("unreadable event from the daemon: %w", err)
		}
		fmt.Fprintln(out, formatEvent(ev))
		return nil
	})
}

// stream reads a server-sent event stream and calls fn with each event's
// data until the stream ends (the daemon stopped: not an error).
func (c *client) stream(path string, fn func(data string) error) error {
	return c.streamHello(path, func() {}, fn)
}

// streamHello is stream, calling hello once the daemon has accepted the
// subscription.
func (c *client) streamHello(path string, hello func(), fn func(data string) error) error {
	req, _ := http.NewRequest("GET", "http://"+c.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (is `meshnode run` still running?): %w", c.addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	hello()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if err := fn(data); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event stream broke: %w", err)
	}
	return nil
}

func formatEvent(ev node.Event) string {
	var b strings.Builder
	b.WriteString(ev.Time.UTC().Format(time.RFC3339Nano))
	b.WriteString(" ")
	b.WriteString(ev.Type)
	keys := make([]string, 0, len(ev.Data))
	for k := range ev.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := ev.Data[k]
		if list, ok := v.([]any); ok {
			parts := make([]string, len(list))
			for i, x := range list {
				parts[i] = fmt.Sprint(x)
			}
			v = strings.Join(parts, ",")
		}
		fmt.Fprintf(&b, " %s=%v", k, v)
	}
	return b.String()
}
