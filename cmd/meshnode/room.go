package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshnode/meshnode/node"
)

// runRoom handles `meshnode room state TOPIC [KEY [VALUE]]`.
func runRoom(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "state" {
		return fmt.Errorf("usage: meshnode room state TOPIC [KEY [VALUE]] [--data DIR] [--json]")
	}
	dir, asJSON, pos, err := clientArgs("room state", args[1:], 3)
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
	req, _ := http.NewRequest("GET", "http://"+c.addr+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (is `meshnode run` still running?): %w", c.addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if asJSON {
			fmt.Fprintln(out, data)
			continue
		}
		var ev node.Event
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("unreadable event from the daemon: %w", err)
		}
		fmt.Fprintln(out, formatEvent(ev))
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
