package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshnode/meshnode/node"
	"github.com/meshnode/meshnode/transfer"
)

// runLibrary prints the fleet's library with this node's state per item,
// or one item's versions, latest first.
func runLibrary(args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs("library", args, 1)
	if err != nil {
		return err
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	var items []transfer.ItemView
	if err := c.get("/v1/library", &items); err != nil {
		return err
	}
	if len(pos) == 1 {
		return printVersions(out, items, pos[0], asJSON)
	}
	if asJSON {
		return printJSON(out, items)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ITEM\tSIZE\tFILES\tHOLDERS\tVERSIONS\tGEN\tHERE\tFOLLOWING")
	for _, it := range items {
		var size, files, gen int64
		holders := 0
		for _, v := range it.Versions {
			if v.Manifest == it.Latest {
				size, files, holders, gen = v.Size, v.Files, len(v.Holders), v.Gen
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", it.ID, humanBytes(float64(size)), files, holders, len(it.Versions), gen, it.Local, following(it))
	}
	return tw.Flush()
}

// following renders an item's follow state: "-", "yes", or when it last
// brought a new version.
func following(it transfer.ItemView) string {
	switch {
	case !it.Following:
		return "-"
	case it.FollowUpdated == 0:
		return "yes"
	}
	return "updated " + time.UnixMilli(it.FollowUpdated).Format(time.DateTime)
}

// printVersions prints item id's versions, latest first.
func printVersions(out io.Writer, items []transfer.ItemView, id string, asJSON bool) error {
	for _, it := range items {
		if it.ID != id {
			continue
		}
		if asJSON {
			return printJSON(out, it)
		}
		fmt.Fprintf(out, "%s: here %s, following %s\n", it.ID, it.Local, following(it))
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tGEN\tPARENT\tSIZE\tFILES\tHOLDERS\tPARTIAL\tUPDATED")
		for _, v := range it.Versions {
			mark := ""
			if v.Manifest == it.Latest {
				mark = " (latest)"
			}
			if v.Manifest == it.LocalVer {
				mark += " (here)"
			}
			parent := "-"
			if v.Parent != "" {
				parent = short(v.Parent)
			}
			fmt.Fprintf(tw, "%s%s\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", short(v.Manifest), mark, v.Gen, parent, humanBytes(float64(v.Size)), v.Files,
				len(v.Holders), len(v.Partial), time.UnixMilli(v.Updated).Format(time.DateTime))
		}
		return tw.Flush()
	}
	return fmt.Errorf("no item %q in the library", id)
}

// short abbreviates a manifest hash (a peer's entry may hold any string).
func short(h string) string { return h[:min(16, len(h))] }

// runFollow follows or unfollows an item.
func runFollow(name string, args []string, out io.Writer) error {
	dir, asJSON, pos, err := clientArgs(name, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode %s ITEM [--data DIR]", name)
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	method := "POST"
	if name == "unfollow" {
		method = "DELETE"
	}
	var st node.FollowStatus
	if err := c.do(method, "/v1/items/"+url.PathEscape(pos[0])+"/follow", nil, &st); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, st)
	}
	if st.Following {
		fmt.Fprintf(out, "following %s: this node downloads each new version by itself\n", st.Item)
	} else {
		fmt.Fprintf(out, "no longer following %s\n", st.Item)
	}
	return nil
}

// runGet downloads an item and shows a live progress line until it ends.
func runGet(args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("meshnode get", flag.ContinueOnError)
	var manifest string
	fs.StringVar(&manifest, "manifest", "", "version to fetch (default: the latest, the highest generation held complete)")
	dir, _, pos, err := clientArgsWith(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: meshnode get ITEM [--manifest HASH] [--data DIR]")
	}
	c, err := newClient(dir)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(node.DownloadRequest{Manifest: manifest})
	var st transfer.TransferStatus
	if err := c.do("POST", "/v1/items/"+url.PathEscape(pos[0])+"/download", bytes.NewReader(body), &st); err != nil {
		return err
	}
	tty := isTerminal(errOut)
	last := ""
	for {
		// Answered at once when the download ends, else after 250ms
		// with the figures for the progress line (a daemon of an earlier
		// version answers at once: then wait here).
		asked := time.Now()
		if err := c.get("/v1/transfers/"+st.ID+"?wait=250ms", &st); err != nil {
			return err
		}
		if st.State == transfer.TransferRunning && time.Since(asked) < 100*time.Millisecond {
			time.Sleep(250*time.Millisecond - time.Since(asked))
		}
		line := progressLine(st)
		if tty {
			fmt.Fprintf(errOut, "\r\033[K%s", line)
		} else if line != last && time.Since(st.Started) > 0 {
			fmt.Fprintln(errOut, line)
		}
		last = line
		switch st.State {
		case transfer.TransferDone:
			if tty {
				fmt.Fprintln(errOut)
			}
			fmt.Fprintf(out, "%s: %s at %s (%s fetched, %s reused, %s resumed) in %.1fs\n", st.Item, humanBytes(float64(st.Total)), st.Manifest[:16],
				humanBytes(float64(st.Fetched)), humanBytes(float64(st.Reused)), humanBytes(float64(st.Resumed)), st.ElapsedSec)
			return nil
		case transfer.TransferFailed, transfer.TransferCancelled:
			if tty {
				fmt.Fprintln(errOut)
			}
			return fmt.Errorf("%s %s: %s", st.Item, st.State, st.Error)
		}
	}
}

// progressLine: a bar, bytes, rate, ETA and sources.
func progressLine(st transfer.TransferStatus) string {
	frac := 0.0
	if st.Total > 0 {
		frac = float64(st.Done) / float64(st.Total)
	}
	const width = 24
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	eta := "-"
	if st.RateBps > 0 && st.Done < st.Total {
		eta = (time.Duration(float64(st.Total-st.Done)/st.RateBps) * time.Second).Round(time.Second).String()
	}
	moved := ""
	if n := len(st.MovedFrom); n > 0 {
		moved = fmt.Sprintf(" (moved to version %s)", st.Manifest[:16])
	}
	return fmt.Sprintf("%s [%s] %3.0f%% %s/%s %s/s ETA %s from %d source(s)%s", st.Item, bar, 100*frac,
		humanBytes(float64(st.Done)), humanBytes(float64(st.Total)), humanBytes(st.RateBps), eta, len(st.BySource), moved)
}

func humanBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", b, units[i])
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
