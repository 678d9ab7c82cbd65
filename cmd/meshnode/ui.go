package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"

	"github.com/meshnode/meshnode/node"
)

// runUI prints a one-time sign-in link to the node's dashboard and, where
// a desktop is present, opens it in the browser.
func runUI(args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("ui", args, 0)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("usage: meshnode ui [--data DIR] [--json]")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	var code node.UICode
	if err := c.do("POST", "/v1/ui/code", nil, &code); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, code)
	}
	fmt.Fprintf(out, "Open the dashboard (this link signs you in once, within 2 minutes):\n\n  %s\n\n", code.URL)
	if opener := desktopOpener(); opener != "" {
		if err := exec.Command(opener, code.URL).Start(); err == nil {
			fmt.Fprintln(out, "Opened in your browser.")
		}
	}
	return nil
}

// desktopOpener returns the command that opens a URL on this desktop, or
// "" where there is no desktop (a server, an SSH session).
func desktopOpener() string {
	switch runtime.GOOS {
	case "darwin":
		return "open"
	case "linux", "freebsd", "openbsd", "netbsd":
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return ""
		}
		if p, err := exec.LookPath("xdg-open"); err == nil {
			return p
		}
	}
	return ""
}
