package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/node"
)

// client talks to a running daemon's local API.
type client struct {
	addr, token string
	http        *http.Client
}

func clientFlags(name string, args []string) (dir string, asJSON bool, err error) {
	dir, asJSON, _, err = clientArgs(name, args, 0)
	return dir, asJSON, err
}

// clientArgs parses a client command's flags, which may come before,
// between or after its up to maxArgs positional arguments.
func clientArgs(name string, args []string, maxArgs int) (dir string, asJSON bool, pos []string, err error) {
	return clientArgsWith(flag.NewFlagSet("meshnode "+name, flag.ContinueOnError), args, maxArgs)
}

// clientArgsWith is clientArgs on a flag set that may hold more flags.
func clientArgsWith(fs *flag.FlagSet, args []string, maxArgs int) (dir string, asJSON bool, pos []string, err error) {
	fs.StringVar(&dir, "data", node.DefaultConfig().DataDir, "data directory of the node to ask")
	fs.BoolVar(&asJSON, "json", false, "print JSON for scripts")
	if v := os.Getenv(node.EnvPrefix + "DATA"); v != "" {
		dir = v
	}
	for {
		if err := fs.Parse(args); err != nil {
			return "", false, nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		if len(pos) == maxArgs {
			return "", false, nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return dir, asJSON, pos, nil
}

func newClient(dir string) (*client, error) {
	waitForDaemon(dir, node.FileAPIAddr)
	addr, tok, err := node.ReadClientInfo(dir)
	if err != nil {
		return nil, err
	}
	return &client{addr: addr, token: tok, http: &http.Client{Timeout: 10 * time.Second}}, nil
}

// A client command started together with the daemon (`meshnode run &`,
// then `meshnode status`) waits for it: up to daemonGrace for a daemon
// to take the data dir's lock, and up to daemonWait while the process
// that holds the lock has not yet written the file the command needs.
const (
	daemonGrace = time.Second
	daemonWait  = 5 * time.Second
)

// waitForDaemon returns once the data dir's file name exists, or once no
// daemon is starting there; the caller's read of the file says which.
func waitForDaemon(dir, name string) {
	start := time.Now()
	for {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return
		}
		waited := time.Since(start)
		if waited >= daemonWait || (waited >= daemonGrace && !daemonStarting(dir)) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonStarting reports whether the process named in the data dir's lock
// file is alive. The lock file outlives its daemon, and its pid may have
// been reused since: then the command waits daemonWait for nothing, and
// says no daemon is running.
func daemonStarting(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, node.FileLock))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// apiError is an error answer of the daemon: its HTTP status and the code
// and message of its JSON body ({"error":{"code","message"}}). Commands
// act on Code, never on the text.
type apiError struct {
	Status  int
	Code    string // empty when the body was not the API's JSON error
	Message string
}

func (e *apiError) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return e.Message + " (" + e.Code + ")"
}

// errCode is the API error code of err, or "" if err is not an answer of
// the daemon.
func errCode(err error) string {
	var e *apiError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// decodeError turns an error answer into an *apiError.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var body node.APIError
	if json.Unmarshal(b, &body) != nil || body.Error.Code == "" {
		return &apiError{Status: resp.StatusCode, Message: "daemon answered " + resp.Status}
	}
	e := &apiError{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
	if e.Code == "unauthorized" {
		e.Message += " (the daemon on this address does not take this data dir's token: is another daemon using its --api address?)"
	}
	return e
}

func (c *client) get(path string, v any) error {
	return c.do("GET", path, nil, v)
}

// do sends one request; an error answer is returned as an *apiError.
func (c *client) do(method, path string, body io.Reader, v any) error {
	req, _ := http.NewRequest(method, "http://"+c.addr+path, body)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (is `meshnode run` still running?): %w", c.addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func runClient(cmd string, args []string, out io.Writer) error {
	dir, asJSON, err := clientFlags(cmd, args)
	if err != nil {
		return err
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	var v any
	switch cmd {
	case "status":
		v = &node.Status{}
	case "nodes":
		v = &[]node.NodeInfo{}
	case "peers":
		v = &[]node.PeerInfo{}
	case "mesh":
		v = &mesh.MeshStatus{}
	}
	if err := c.get("/v1/"+cmd, v); err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	defer tw.Flush()
	switch x := v.(type) {
	case *node.Status:
		printDamage(out, x.Document)
		fmt.Fprintf(tw, "Node\t%s\nName\t%s\nFleet\t%s\nPeers\t%d\nUptime\t%s\nDocument\t%d bytes, %d heads\n",
			x.ID, x.Name, x.Fleet, x.Peers, time.Duration(x.UptimeSec*float64(time.Second)).Round(time.Second), x.DocBytes, len(x.Heads))
		for i, a := range x.Addrs {
			label := ""
			if i == 0 {
				label = "Addresses"
			}
			fmt.Fprintf(tw, "%s\t%s\n", label, a)
		}
		e := x.Document
		fmt.Fprintf(tw, "Epoch\t%d (%.0f%% of the document is history, %d bytes in force; %d switches here)\n",
			e.Epoch, 100*e.HistoryShare, e.StateBytes, e.Switches)
		if e.NextEpoch > 0 {
			fmt.Fprintf(tw, "Next epoch\t%d proposed; every node switches once it has seen it for the grace period\n", e.NextEpoch)
		}
		if w := x.Document.WaitingRecords; w > 0 {
			fmt.Fprintf(tw, "Waiting records\t%d (kept until a peer brings the changes they depend on)\n", w)
		}
	case *[]node.NodeInfo:
		fmt.Fprintln(tw, "NAME\tID\tSTATE\tLAST HEARD\tADDRESSES")
		for _, n := range *x {
			name := n.Name
			if n.Self {
				name += " (this node)"
			}
			heard := "-"
			if n.LastHeardMs > 0 {
				heard = time.Since(time.UnixMilli(n.LastHeardMs)).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", name, shortID(n.ID), n.State, heard, len(n.Addrs))
		}
	case *mesh.MeshStatus:
		last := "never"
		if !x.LastReconcile.IsZero() {
			last = time.Since(x.LastReconcile).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "Cap\t%d\nEligible\t%d\nLast reconcile\t%s (%d passes)\nOpened / dropped\t%d / %d\n\n",
			x.Cap, len(x.Eligible), last, x.Passes, x.Opened, x.Dropped)
		fmt.Fprintln(tw, "SUPPLEMENTARY\tAGE\tPATH")
		for _, sl := range x.Slots {
			path := "direct"
			if sl.Relayed {
				path = "relayed"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", shortID(sl.Peer), (time.Duration(sl.AgeSec) * time.Second).String(), path)
		}
		if len(x.Relays) > 0 {
			fmt.Fprintln(tw, "\nRELAY\tSLOT\tEXPIRES\tERROR")
			for _, r := range x.Relays {
				slot, exp := "none", "-"
				if r.Reserved {
					slot, exp = "reserved", time.Until(r.Expires).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortID(r.Relay), slot, exp, r.LastError)
			}
		}
		if len(x.RelayedPeers) > 0 || x.Upgrades > 0 {
			fmt.Fprintf(tw, "\nReached only through a relay\t%d (%d relayed connections replaced by direct ones)\n", len(x.RelayedPeers), x.Upgrades)
		}
		if len(x.Skipped) > 0 {
			fmt.Fprintln(tw, "\nSKIPPED\tWHY")
			for p, why := range x.Skipped {
				fmt.Fprintf(tw, "%s\t%s\n", shortID(p), why)
			}
		}
		if len(x.RecentDrops) > 0 {
			fmt.Fprintln(tw, "\nDROPPED\tWHY\tWHEN")
			for _, d := range x.RecentDrops {
				fmt.Fprintf(tw, "%s\t%s\t%s ago\n", shortID(d.Peer), d.Reason, time.Since(d.At).Round(time.Second))
			}
		}
	case *[]node.PeerInfo:
		fmt.Fprintln(tw, "ID\tTRANSPORT\tDIRECTION\tAUTHENTICATED\tADDRESS")
		for _, p := range *x {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", shortID(p.ID), p.Transport, p.Direction, p.Authenticated, p.Addr)
		}
	}
	return nil
}

// printDamage puts damage found in the document's files at the top of
// the status, where it cannot be missed.
func printDamage(out io.Writer, d node.DocumentStatus) {
	if len(d.Damage) == 0 {
		return
	}
	fmt.Fprintf(out, "WARNING: the document's files were damaged; found and recovered at this start (%d):\n", len(d.Damage))
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, x := range d.Damage {
		kept := x.KeptAs
		if kept == "" {
			kept = "-"
		}
		fmt.Fprintf(tw, "  File\t%s\n  Problem\t%s\n  Lost\t%s\n  Kept as\t%s\n\n", x.File, x.Problem, x.Lost, kept)
	}
	tw.Flush()
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:6] + "…" + id[len(id)-8:]
	}
	return id
}

// FleetToken is `meshnode fleet token --json`.
type FleetToken struct {
	Fleet string `json:"fleet"`
	Token string `json:"token"`
}

func runFleet(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "token" {
		return fmt.Errorf("usage: meshnode fleet token [--data DIR] [--json]")
	}
	dir, asJSON, err := clientFlags("fleet token", args[1:])
	if err != nil {
		return err
	}
	waitForDaemon(dir, node.FileToken)
	b, err := os.ReadFile(filepath.Join(dir, node.FileToken))
	if err != nil {
		return fmt.Errorf("no fleet in %s yet (start a node with `meshnode run --data %s`): %w", dir, dir, err)
	}
	tok := strings.TrimSpace(string(b))
	if !asJSON {
		fmt.Fprintln(out, tok)
		return nil
	}
	f, err := mesh.ParseToken(tok)
	if err != nil {
		return fmt.Errorf("fleet token file %s: %w", filepath.Join(dir, node.FileToken), err)
	}
	// The token as the daemon stores it: an mn1- token of an earlier
	// release is rewritten in the current form at its next start.
	return printJSON(out, FleetToken{Fleet: f.ID, Token: tok})
}
