// Command meshnode runs a meshnode daemon (`meshnode run`) and talks to a
// running one through its local API (status, nodes, peers, fleet token).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/node"
)

const usage = `meshnode: a fleet of nodes sharing one replicated document.

Usage:
  meshnode run [flags]          start a node (meshnode run -h lists flags)
  meshnode status [--json]      this node: id, fleet, addresses, document
  meshnode nodes [--json]       the fleet's nodes and their state
  meshnode peers [--json]       live connections
  meshnode mesh [--json]        supplementary mesh connections, relays, and why
  meshnode library [ITEM] [--json]
                                every item in the fleet, and its state here;
                                with ITEM, its versions, latest first
  meshnode get ITEM             download an item, with live progress
  meshnode follow ITEM          keep ITEM at its latest version by itself
  meshnode unfollow ITEM        stop that
  meshnode ui                   sign in to the node's web dashboard (prints a link)
  meshnode events [--json]      follow the node's events, one per line
  meshnode room list|join|offer|leave|send|tail|state ...
                                live rooms: meshnode room for the details
  meshnode doc get FILE         the fleet document, for any automerge library
  meshnode doc push FILE        send changes made with one (- for stdin)
  meshnode fleet token [--json] print the token other machines join with

Client commands take --data DIR to pick a node (default: the same data dir
as meshnode run).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runDaemon(args[1:], stdout, stderr)
	case "status", "nodes", "peers", "mesh":
		err = runClient(args[0], args[1:], stdout)
	case "fleet":
		err = runFleet(args[1:], stdout)
	case "room":
		err = runRoom(args[1:], stdout)
	case "doc":
		err = runDoc(args[1:], stdout)
	case "events":
		err = runEvents(args[1:], stdout)
	case "library":
		err = runLibrary(args[1:], stdout)
	case "get":
		err = runGet(args[1:], stdout, stderr)
	case "follow", "unfollow":
		err = runFollow(args[0], args[1:], stdout)
	case "ui":
		err = runUI(args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meshnode: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshnode %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func newLogger(level string, w io.Writer) zerolog.Logger {
	lvl, _ := zerolog.ParseLevel(level)
	var out io.Writer = w
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}

func runDaemon(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshnode run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg, err := node.LoadConfig(fs, args, os.Environ())
	if err != nil {
		return err
	}
	cfg.Logger = newLogger(cfg.LogLevel, stderr)
	node.RouteLibp2pLogs(cfg.Logger)
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	if n.FleetCreated {
		fmt.Fprintf(stdout, "Created a new fleet %s.\nOn another machine, join it with:\n\n  meshnode run --join %s\n\n", n.Fleet.ID, n.Fleet.Token())
	}
	fmt.Fprintf(stdout, "Node %s (%s) in fleet %s\nAPI on %s; listening on:\n", n.ID(), cfg.Name, n.Fleet.ID, n.APIAddr())
	for _, a := range n.Addrs() {
		fmt.Fprintf(stdout, "  %s\n", a)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return n.Run(ctx)
}
