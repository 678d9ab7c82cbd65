package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromium finds the browser the dashboard tests drive; .ci/run installs
// Debian's chromium when it is missing, so a missing one fails the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: the dashboard tests drive a real browser (apt-get install chromium; .ci/run does it)")
	return ""
}

// browser starts a headless Chromium for the test and returns a context
// of its first tab, and the console errors and exceptions of every tab,
// collected as they come.
func browser(t *testing.T) (context.Context, *consoleLog) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // CI runs as root
		chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-gpu", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 8*time.Minute)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	cl := &consoleLog{}
	cl.watch(ctx)
	if err := chromedp.Run(ctx, log.Enable()); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, cl
}

// consoleLog collects a tab's console errors, exceptions and failed loads.
type consoleLog struct {
	mu   sync.Mutex
	errs []string
}

func (c *consoleLog) watch(ctx context.Context) {
	chromedp.ListenTarget(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "exception: " + ev.ExceptionDetails.Error()
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.APITypeError {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value))
				}
				msg = "console.error: " + strings.Join(parts, " ")
			}
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.LevelError {
				msg = "log: " + ev.Entry.Text + " " + ev.Entry.URL
			}
		}
		if msg != "" {
			c.mu.Lock()
			c.errs = append(c.errs, msg)
			c.mu.Unlock()
		}
	})
}

func (c *consoleLog) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.errs
	c.errs = nil
	return out
}

// tab opens a new tab of the browser, watched by cl.
func tab(t *testing.T, ctx context.Context, cl *consoleLog) context.Context {
	t.Helper()
	tctx, cancel := chromedp.NewContext(ctx)
	t.Cleanup(cancel)
	cl.watch(tctx)
	if err := chromedp.Run(tctx, log.Enable()); err != nil {
		t.Fatal(err)
	}
	return tctx
}

// signIn asks n's API for a one-time code, as `meshnode ui` does, and
// opens the link in the tab: the dashboard's fleet page loads.
func signIn(t *testing.T, ctx context.Context, n *Node) string {
	t.Helper()
	var code UICode
	call := contractDo(t, n, "POST", "/v1/ui/code", nil)
	if err := json.Unmarshal(call.body, &code); call.status != http.StatusOK || err != nil || code.URL == "" {
		t.Fatalf("POST /v1/ui/code: %d %s", call.status, call.body)
	}
	run(t, ctx, chromedp.Navigate(code.URL), chromedp.WaitVisible(`#fleet-table`, chromedp.ByQuery))
	return code.URL
}

func run(t *testing.T, ctx context.Context, actions ...chromedp.Action) {
	t.Helper()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// count returns how many elements match sel.
func count(t *testing.T, ctx context.Context, sel string) int {
	t.Helper()
	var n int
	run(t, ctx, chromedp.Evaluate(fmt.Sprintf(`document.querySelectorAll(%q).length`, sel), &n))
	return n
}

// waitCount waits until cond holds of the number of elements matching
// sel, and returns it.
func waitCount(t *testing.T, ctx context.Context, sel, what string, cond func(int) bool) int {
	t.Helper()
	var n int
	waitFor(t, 30*time.Second, what, func() bool {
		n = count(t, ctx, sel)
		return cond(n)
	})
	return n
}

// screenshots writes the page at 1280x800 and at 400 px wide under the
// test's artifact directory (go test -artifacts keeps them).
func screenshots(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	for _, size := range [][2]int64{{1280, 800}, {400, 800}} {
		var png []byte
		run(t, ctx, chromedp.EmulateViewport(size[0], size[1]), chromedp.Sleep(200*time.Millisecond), chromedp.FullScreenshot(&png, 100))
		file := filepath.Join(t.ArtifactDir(), fmt.Sprintf("%s-%dx%d.png", name, size[0], size[1]))
		if err := os.WriteFile(file, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(t, ctx, chromedp.EmulateViewport(1280, 800))
}

// sessionCookie returns the browser's HttpOnly, SameSite=Strict session
// cookie for n as a Cookie header value ("" when there is none): the page
// cannot read it, the browser's protocol can.
func sessionCookie(t *testing.T, ctx context.Context, n *Node) string {
	t.Helper()
	var cookie string
	run(t, ctx, chromedp.ActionFunc(func(ctx context.Context) error {
		cs, err := network.GetCookies().WithURLs([]string{"http://" + n.APIAddr()}).Do(ctx)
		for _, ck := range cs {
			if ck.Name == n.uiCookie() && ck.HTTPOnly && ck.SameSite == network.CookieSameSiteStrict {
				cookie = ck.Name + "=" + ck.Value
			}
		}
		return err
	}))
	return cookie
}

func noConsoleErrors(t *testing.T, cl *consoleLog, where string) {
	t.Helper()
	if errs := cl.take(); len(errs) > 0 {
		t.Fatalf("console errors on %s:\n%s", where, strings.Join(errs, "\n"))
	}
}

// The dashboard, driven in a real browser against three real nodes: every
// page loads without a console error and shows the fleet; a download
// started with its button completes; a message sent from one node's room
// page shows on another's; the mesh drawing has one edge per link and
// loses one when its peer dies; the page says so when its node stops.
func TestDashboard(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	files := map[string]testFile{"game.bin": {randBytes(12 << 20), 0o644}, "README": {[]byte("a game\n"), 0o644}}
	shareItem(t, c, a, "game", files)
	ctx, cl := browser(t)
	signIn(t, ctx, b)

	t.Run("pages", func(t *testing.T) {
		waitCount(t, ctx, `#fleet-table tbody tr`, "three nodes on the fleet page", func(n int) bool { return n == 3 })
		screenshots(t, ctx, "fleet")
		for _, p := range []struct{ page, sel string }{
			{"mesh", `svg.graph`}, {"library", `#library-table tr[data-item="game"]`}, {"rooms", `#join-form`}, {"node", `#node-status`},
		} {
			run(t, ctx, chromedp.Click(`#nav-`+p.page, chromedp.ByQuery), chromedp.WaitVisible(p.sel, chromedp.ByQuery))
			if p.page == "mesh" {
				waitCount(t, ctx, `svg.graph g.node`, "three nodes in the mesh drawing", func(n int) bool { return n == 3 })
			}
			screenshots(t, ctx, p.page)
		}
		noConsoleErrors(t, cl, "the five pages")
	})

	t.Run("download", func(t *testing.T) {
		run(t, ctx, chromedp.Click(`#nav-library`, chromedp.ByQuery),
			chromedp.WaitEnabled(`tr[data-item="game"] button[data-action="download"]`, chromedp.ByQuery),
			chromedp.Click(`tr[data-item="game"] button[data-action="download"]`, chromedp.ByQuery),
			chromedp.WaitVisible(`.transfer[data-state="done"]`, chromedp.ByQuery))
		var value, maxv string
		run(t, ctx, chromedp.AttributeValue(`.transfer[data-state="done"] progress`, "value", &value, nil, chromedp.ByQuery),
			chromedp.AttributeValue(`.transfer[data-state="done"] progress`, "max", &maxv, nil, chromedp.ByQuery))
		if value != maxv || value == "0" {
			t.Fatalf("the progress bar ended at %s of %s", value, maxv)
		}
		sameTree(t, treeOf(t, filepath.Join(shareDir(a), "game")), treeOf(t, filepath.Join(shareDir(b), "game")))
		screenshots(t, ctx, "library-done")
		noConsoleErrors(t, cl, "the library page")
	})

	t.Run("room", func(t *testing.T) {
		other := tab(t, ctx, cl)
		signIn(t, other, cc)
		for _, tc := range []context.Context{ctx, other} {
			run(t, tc, chromedp.Click(`#nav-rooms`, chromedp.ByQuery), chromedp.WaitVisible(`#join-topic`, chromedp.ByQuery),
				chromedp.SendKeys(`#join-topic`, "build-7", chromedp.ByQuery), chromedp.Click(`#join-form button[type=submit]`, chromedp.ByQuery),
				chromedp.WaitVisible(`#room-view[data-topic="build-7"]`, chromedp.ByQuery))
		}
		// The room exists once both are linked to the advertised room.
		waitFor(t, 30*time.Second, "both nodes linked to the room", func() bool {
			for _, n := range []*Node{b, cc} {
				st, err := n.Rooms.Rooms()
				if err != nil {
					return false
				}
				linked := false
				for _, r := range st {
					for _, l := range r.Links {
						linked = linked || (r.Topic == "build-7" && l.State == "connected" && l.Room == r.Room && l.Peers > 0)
					}
				}
				if !linked {
					return false
				}
			}
			return true
		})
		run(t, ctx, chromedp.SendKeys(`#send-text`, "hello from b", chromedp.ByQuery), chromedp.Click(`#send-form button[type=submit]`, chromedp.ByQuery))
		waitFor(t, 30*time.Second, "the message on the other node's page", func() bool {
			var text string
			_ = chromedp.Run(other, chromedp.Evaluate(`document.getElementById('room-messages') ? document.getElementById('room-messages').textContent : ''`, &text))
			return strings.Contains(text, "hello from b")
		})
		screenshots(t, other, "room")
		noConsoleErrors(t, cl, "the room pages")
	})

	t.Run("mesh", func(t *testing.T) {
		mctx := tab(t, ctx, cl)
		signIn(t, mctx, a)
		run(t, mctx, chromedp.Click(`#nav-mesh`, chromedp.ByQuery), chromedp.WaitVisible(`svg.graph`, chromedp.ByQuery))
		slots := func() map[string]bool {
			out := map[string]bool{}
			for _, s := range a.MeshStatus().Slots {
				out[s.Peer] = true
			}
			return out
		}
		edges := func() map[string]bool {
			var peers []string
			run(t, mctx, chromedp.Evaluate(`[...document.querySelectorAll('svg.graph line.edge')].map(e => e.dataset.peer)`, &peers))
			out := map[string]bool{}
			for _, p := range peers {
				out[p] = true
			}
			return out
		}
		same := func(x, y map[string]bool) bool {
			if len(x) != len(y) {
				return false
			}
			for k := range x {
				if !y[k] {
					return false
				}
			}
			return true
		}
		waitFor(t, 30*time.Second, "an edge per supplementary link, and two links", func() bool {
			s := slots()
			return len(s) == 2 && same(edges(), s)
		})
		c.stop(2) // node C dies
		waitFor(t, 60*time.Second, "C's edge gone, the drawing as /v1/mesh", func() bool {
			s, e := slots(), edges()
			return !e[cc.ID().String()] && same(e, s)
		})
		screenshots(t, mctx, "mesh-after-kill")
	})

	t.Run("node-stops", func(t *testing.T) {
		run(t, ctx, chromedp.Click(`#nav-node`, chromedp.ByQuery), chromedp.WaitVisible(`#node-status`, chromedp.ByQuery))
		c.stop(1) // the node this tab shows
		run(t, ctx, chromedp.WaitVisible(`#banner`, chromedp.ByQuery))
		var text string
		run(t, ctx, chromedp.Text(`#banner`, &text, chromedp.ByQuery))
		// (Another node that took the port would answer 401: the page
		// then asks for a new sign-in, which is as clear.)
		if !strings.Contains(text, "not reachable") && !strings.Contains(text, "meshnode ui") {
			t.Fatalf("banner after the node stopped: %q", text)
		}
		screenshots(t, ctx, "node-stopped")
	})
}

// Sign-in: a code works once; the API refuses a request with neither
// token nor cookie, and a cross-origin request that would change state
// even with the cookie; the dashboard's own requests pass.
func TestDashboardSignIn(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1)
	n := c.nodes[0]
	ctx, cl := browser(t)
	url := signIn(t, ctx, n)

	// The same link again, in a fresh browser: refused.
	other, _ := browser(t)
	var body string
	run(t, other, chromedp.Navigate(url), chromedp.Text(`body`, &body, chromedp.ByQuery))
	if !strings.Contains(body, "already used or has expired") {
		t.Fatalf("a second use of the code answered %q", body)
	}

	base := "http://" + n.APIAddr()
	get := func(path string, hdr map[string]string, method string) int {
		req, _ := http.NewRequest(method, base+path, nil)
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/v1/status", nil, "GET"); code != http.StatusUnauthorized {
		t.Fatalf("no token, no cookie: %d, want 401", code)
	}
	// The browser's session cookie (HttpOnly: the page cannot read it,
	// the browser's protocol can).
	cookie := sessionCookie(t, ctx, n)
	if cookie == "" {
		t.Fatal("no HttpOnly, SameSite=Strict session cookie after sign-in")
	}
	// The page's secret, which only this origin's pages can read.
	var page string
	run(t, ctx, chromedp.Evaluate(`localStorage.getItem('meshnode-session') || ''`, &page))
	if page == "" {
		t.Fatal("the page kept no session secret")
	}
	both := map[string]string{"Cookie": cookie, uiHeader: page}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range both {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	for _, c := range []struct {
		what, method, path string
		hdr                map[string]string
		want               int
	}{
		{"the cookie alone (another local service can receive it)", "GET", "/v1/status", map[string]string{"Cookie": cookie}, http.StatusUnauthorized},
		{"the page secret alone", "GET", "/v1/status", map[string]string{uiHeader: page}, http.StatusUnauthorized},
		{"cookie and secret", "GET", "/v1/status", both, http.StatusOK},
		{"cross-origin POST", "POST", "/v1/items/x/follow", with(map[string]string{"Origin": "http://evil.example"}), http.StatusForbidden},
		{"POST with no origin", "POST", "/v1/items/x/follow", both, http.StatusForbidden},
		{"a rebinding Host", "GET", "/v1/status", with(map[string]string{"Host": "evil.example:80"}), http.StatusForbidden},
		{"a session minting codes", "POST", "/v1/ui/code", with(map[string]string{"Origin": base}), http.StatusForbidden},
		{"same-origin POST", "POST", "/v1/items/x/follow", with(map[string]string{"Origin": base}), http.StatusOK},
	} {
		if code := get(c.path, c.hdr, c.method); code != c.want {
			t.Errorf("%s: %d, want %d", c.what, code, c.want)
		}
	}
	// From the page itself, a POST passes.
	var status int
	run(t, ctx, chromedp.Evaluate(`fetch('/v1/items/y/follow', {method: 'POST', headers: {'X-Meshnode-Session': localStorage.getItem('meshnode-session')}}).then(r => r.status)`, &status, func(p *runtime.EvaluateParams) *runtime.EvaluateParams {
		return p.WithAwaitPromise(true)
	}))
	if status != http.StatusOK {
		t.Fatalf("the dashboard's own POST: %d, want 200", status)
	}
	noConsoleErrors(t, cl, "the sign-in")

	// A new sign-in, then the first one's page reopened from the
	// browser's history: its stale secret does not replace the live one.
	signIn(t, ctx, n)
	var live string
	run(t, ctx, chromedp.Evaluate(`localStorage.getItem('meshnode-session') || ''`, &live))
	run(t, ctx, chromedp.Navigate(base+"/ui/#session="+page))
	waitFor(t, 20*time.Second, "the live secret back in place and the page working", func() bool {
		var kept string
		var rows int
		_ = chromedp.Run(ctx, chromedp.Evaluate(`localStorage.getItem('meshnode-session') || ''`, &kept),
			chromedp.Evaluate(`document.querySelectorAll('#fleet-table tbody tr').length`, &rows))
		return kept == live && rows == 1
	})
	cl.take() // the stale secret's 401 is expected
	cookie = sessionCookie(t, ctx, n)

	// The session ends (it expired, or the node restarted): the page says
	// what to do.
	n.ui.end(strings.TrimPrefix(cookie, n.uiCookie()+"="))
	var text string
	waitFor(t, 20*time.Second, "the session-expired banner", func() bool {
		_ = chromedp.Run(ctx, chromedp.Evaluate(`document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent`, &text))
		return strings.Contains(text, "meshnode ui")
	})
	screenshots(t, ctx, "session-expired")
}
