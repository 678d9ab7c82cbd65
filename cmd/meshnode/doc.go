package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/meshnode/meshnode/internal/atomicfile"
	"github.com/meshnode/meshnode/node"
)

const docUsage = `usage: meshnode doc COMMAND [--data DIR]
  get FILE                 write the fleet document (automerge save format)
                           to FILE, or - for stdout
  push FILE [--json]       send automerge changes made elsewhere (as
                           getChanges or getLastLocalChange produce) from
                           FILE, or - for stdin; says per change whether it
                           was accepted, and exits 1 if any was refused`

// docTimeout bounds one document transfer: bodies run up to
// node.MaxChangesBody, and the node checks every change in a push.
const docTimeout = time.Minute

// runDoc handles `meshnode doc ...`: the document in the form any
// automerge implementation reads, and changes made by one.
func runDoc(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", docUsage)
	}
	switch args[0] {
	case "get":
		return runDocGet(args[1:], out)
	case "push":
		return runDocPush(args[1:], out)
	}
	return fmt.Errorf("unknown doc command %q\n%s", args[0], docUsage)
}

func runDocGet(args []string, out io.Writer) error {
	dir, _, pos, err := clientArgs("doc get", args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode doc get FILE (- for stdout)")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	resp, err := c.send("GET", "/v1/doc", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the document from the daemon: %w", err)
	}
	if pos[0] == "-" {
		_, err := out.Write(b)
		return err
	}
	if err := atomicfile.WriteFile(pos[0], b, 0o600); err != nil {
		return fmt.Errorf("writing the document: %w", err)
	}
	fmt.Fprintf(out, "wrote the document to %s (%d bytes)\n", pos[0], len(b))
	return nil
}

func runDocPush(args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("doc push", args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode doc push FILE (- for stdin)")
	}
	name, in := pos[0], io.Reader(os.Stdin)
	if name == "-" {
		name = "stdin"
	} else {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("reading the changes: %w", err)
		}
		defer f.Close()
		in = f
	}
	body, err := io.ReadAll(io.LimitReader(in, node.MaxChangesBody+1))
	if err != nil {
		return fmt.Errorf("reading the changes from %s: %w", name, err)
	}
	if len(body) > node.MaxChangesBody {
		return fmt.Errorf("%s holds over %d bytes of changes, more than the daemon takes at once: push them in parts", name, node.MaxChangesBody)
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	resp, err := c.send("POST", "/v1/doc/changes", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusUnprocessableEntity:
	default:
		return decodeError(resp)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	var res node.ChangesResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("unreadable answer from the daemon: %w", err)
	}
	if asJSON {
		if _, err := out.Write(raw); err != nil {
			return err
		}
	} else if err := printVerdicts(out, res); err != nil {
		return err
	}
	if res.Refused > 0 {
		return fmt.Errorf("%d of %d changes refused", res.Refused, len(res.Changes))
	}
	return nil
}

// printVerdicts prints one line per change, then the counts.
func printVerdicts(out io.Writer, res node.ChangesResult) error {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANGE\tVERDICT\tRULE\tWHY")
	for _, v := range res.Changes {
		switch {
		case v.Accepted && v.New:
			fmt.Fprintf(tw, "%s\taccepted\t-\t-\n", v.Hash)
		case v.Accepted:
			fmt.Fprintf(tw, "%s\taccepted\t-\talready in the document\n", v.Hash)
		default:
			rule := v.Rule
			if rule == "" {
				rule = "-"
			}
			fmt.Fprintf(tw, "%s\trefused\t%s\t%s\n", v.Hash, rule, v.Reason)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d accepted, %d refused\n", res.Accepted, res.Refused)
	return nil
}

// send is one request whose answer the caller reads itself (a body that
// is not JSON, or an error status that carries a result).
func (c *client) send(method, path string, body io.Reader) (*http.Response, error) {
	req, _ := http.NewRequest(method, "http://"+c.addr+path, body)
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := (&http.Client{Timeout: docTimeout}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is `meshnode run` still running?): %w", c.addr, err)
	}
	return resp, nil
}
