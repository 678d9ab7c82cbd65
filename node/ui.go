package node

import (
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The web dashboard: static files embedded in the binary, served on the
// API address under /ui/, and a sign-in that needs no typing of the
// token. `meshnode ui` asks the API (with the token) for a one-time code
// and opens /ui/login?code=...; that page trades the code, once, for a
// session: an HttpOnly, SameSite=Strict cookie, and a second secret that
// the redirect hands to the page in the URL fragment (never sent over the
// network), which the page keeps in its origin's storage and sends in the
// X-Meshnode-Session header (or, for an event stream, which cannot set
// headers, the session query parameter). Both are needed: browsers send
// cookies to every port of 127.0.0.1, so another local service could
// receive the cookie, but not the page's storage, which is per port.
//
// A request with a session must also name this node's API as its Host
// (no DNS rebinding), and one that changes state must come from the
// dashboard's own origin (Origin header, or Sec-Fetch-Site: same-origin).
// A session cannot mint sign-in codes (it could not make itself live
// forever), and at most uiMaxCodes codes and uiMaxSessions sessions live
// at once, the oldest dropped first.

//go:embed ui
var uiFiles embed.FS

const (
	uiCodeTTL     = 2 * time.Minute
	uiSessionTTL  = 12 * time.Hour
	uiMaxCodes    = 64
	uiMaxSessions = 32
	// uiHeader carries a session's page secret.
	uiHeader = "X-Meshnode-Session"
)

// uiSession is one signed-in browser: the page secret that must come
// with its cookie, and its expiry.
type uiSession struct {
	page    string
	expires time.Time
}

// uiAuth holds the one-time codes and the sessions, by cookie value. Safe
// for concurrent use.
type uiAuth struct {
	now func() time.Time

	mu       sync.Mutex
	codes    map[string]time.Time // code -> expiry
	sessions map[string]uiSession // cookie value -> session
}

func newUIAuth() *uiAuth {
	return &uiAuth{now: time.Now, codes: map[string]time.Time{}, sessions: map[string]uiSession{}}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newCode returns a fresh one-time code and its expiry.
func (a *uiAuth) newCode() (string, time.Time) {
	c, exp := randomToken(), a.now().Add(uiCodeTTL)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sweepLocked()
	for len(a.codes) >= uiMaxCodes {
		delete(a.codes, oldest(a.codes, func(t time.Time) time.Time { return t }))
	}
	a.codes[c] = exp
	return c, exp
}

// redeem trades a code, once, for a session: its cookie value and page
// secret.
func (a *uiAuth) redeem(code string) (cookie, page string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, found := a.codes[code]
	delete(a.codes, code)
	if !found || !a.now().Before(exp) {
		return "", "", false
	}
	a.sweepLocked()
	for len(a.sessions) >= uiMaxSessions {
		delete(a.sessions, oldest(a.sessions, func(s uiSession) time.Time { return s.expires }))
	}
	cookie, page = randomToken(), randomToken()
	a.sessions[cookie] = uiSession{page: page, expires: a.now().Add(uiSessionTTL)}
	return cookie, page, true
}

// valid reports whether a cookie value and page secret are a live
// session.
func (a *uiAuth) valid(cookie, page string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[cookie]
	return ok && a.now().Before(s.expires) && subtle.ConstantTimeCompare([]byte(s.page), []byte(page)) == 1
}

func (a *uiAuth) end(cookie string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.sessions, cookie)
}

func (a *uiAuth) sweepLocked() {
	now := a.now()
	for c, exp := range a.codes {
		if !now.Before(exp) {
			delete(a.codes, c)
		}
	}
	for c, s := range a.sessions {
		if !now.Before(s.expires) {
			delete(a.sessions, c)
		}
	}
}

// oldest returns the key of m whose time is the earliest.
func oldest[V any](m map[string]V, at func(V) time.Time) string {
	var key string
	var first time.Time
	for k, v := range m {
		if t := at(v); key == "" || t.Before(first) {
			key, first = k, t
		}
	}
	return key
}

// uiCookie names this node's session cookie. Browsers keep cookies per
// host, not per port: two nodes on one machine need two names.
func (n *Node) uiCookie() string {
	_, port, _ := net.SplitHostPort(n.APIAddr())
	return "meshnode_session_" + port
}

// UICode is POST /v1/ui/code: a one-time sign-in code for the dashboard.
type UICode struct {
	URL       string `json:"url"`
	Code      string `json:"code"`
	ExpiresMs int64  `json:"expires_ms"`
}

func (n *Node) handleUICode(w http.ResponseWriter, r *http.Request) {
	code, exp := n.ui.newCode()
	writeJSON(w, http.StatusOK, UICode{URL: "http://" + n.APIAddr() + "/ui/login?code=" + code, Code: code, ExpiresMs: exp.UnixMilli()})
}

func (n *Node) handleUILogout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(n.uiCookie()); err == nil {
		n.ui.end(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: n.uiCookie(), Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]bool{"signed_out": true})
}

// serveUI answers the routes that need no token: the dashboard's files
// and its sign-in. It reports whether it answered.
func (n *Node) serveUI(w http.ResponseWriter, r *http.Request) bool {
	p := r.URL.Path
	switch {
	case p == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	case p == "/ui/login" && r.Method == http.MethodGet:
		n.uiLogin(w, r)
	case strings.HasPrefix(p, "/ui/") && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		sub, _ := fs.Sub(uiFiles, "ui")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		http.StripPrefix("/ui/", http.FileServerFS(sub)).ServeHTTP(w, r)
	default:
		return false
	}
	return true
}

func (n *Node) uiLogin(w http.ResponseWriter, r *http.Request) {
	if !n.sameHost(r) {
		http.Error(w, "this address is not the node's API address", http.StatusForbidden)
		return
	}
	cookie, page, ok := n.ui.redeem(r.URL.Query().Get("code"))
	if !ok {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("This sign-in code was already used or has expired.\nRun `meshnode ui` again for a new one.\n"))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: n.uiCookie(), Value: cookie, Path: "/", MaxAge: int(uiSessionTTL.Seconds()), HttpOnly: true, SameSite: http.SameSiteStrictMode})
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, "/ui/#session="+page, http.StatusSeeOther)
}

// sameHost reports whether the request names this node's API address
// (or localhost at its port) as its Host: a page of another site that
// rebinds its name to 127.0.0.1 names its own.
func (n *Node) sameHost(r *http.Request) bool {
	addr := n.APIAddr()
	if r.Host == addr {
		return true
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	host, p, err := net.SplitHostPort(r.Host)
	return err == nil && p == port && (host == "localhost" || host == "127.0.0.1" || host == "::1")
}

// cookieAuth checks a request that carries no bearer token: a live
// session cookie, this node's Host, and for a request that changes state
// the dashboard's own origin. It returns the HTTP status and code to
// refuse with (0 when allowed).
func (n *Node) cookieAuth(r *http.Request) (int, string, string) {
	page := r.Header.Get(uiHeader)
	if page == "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/events") {
		page = r.URL.Query().Get("session") // an event stream cannot set headers
	}
	c, err := r.Cookie(n.uiCookie())
	if err != nil || !n.ui.valid(c.Value, page) {
		return http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token (it is in the data dir's " + FileAPIToken + "), or the dashboard session expired: run `meshnode ui` to sign in again"
	}
	if !n.sameHost(r) {
		return http.StatusForbidden, "wrong_host", "the request's Host is not this node's API address"
	}
	if r.URL.Path == "/v1/ui/code" {
		return http.StatusForbidden, "token_only", "sign-in codes are for the API token's holder (meshnode ui), not for a dashboard session"
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return 0, "", ""
	}
	origin := r.Header.Get("Origin")
	own := "http://" + r.Host
	if origin == own || (origin == "" && r.Header.Get("Sec-Fetch-Site") == "same-origin") {
		return 0, "", ""
	}
	return http.StatusForbidden, "cross_origin", "a request that changes state must come from the dashboard's own page (Origin " + own + ")"
}

// stillAuthorized reports whether a long request (an event stream) may
// go on: its token, or its session, is still good.
func (n *Node) stillAuthorized(r *http.Request) bool {
	if n.bearerOK(r) {
		return true
	}
	status, _, _ := n.cookieAuth(r)
	return status == 0
}

// bearerOK reports whether the request carries the API token.
func (n *Node) bearerOK(r *http.Request) bool {
	want := []byte("Bearer " + n.apiToken)
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) == 1
}
