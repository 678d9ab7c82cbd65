package main

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// meshnode ui prints a link that signs a browser in once: the first visit
// gets the session cookie and the dashboard, the second a plain refusal.
func TestCLIUI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startDaemon(t, dir)
	out, errOut, code := cli(t, "ui", "--data", dir)
	if code != 0 {
		t.Fatalf("meshnode ui: exit %d: %s", code, errOut)
	}
	link := regexp.MustCompile(`http://127\.0\.0\.1:[0-9]+/ui/login\?code=[A-Za-z0-9_-]+`).FindString(out)
	if link == "" {
		t.Fatalf("no sign-in link in %q", out)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	setCookie := resp.Header.Get("Set-Cookie")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/#session=") ||
		!strings.Contains(setCookie, "HttpOnly") || !strings.Contains(setCookie, "SameSite=Strict") {
		t.Fatalf("first visit: %d, Location %q, Set-Cookie %q", resp.StatusCode, resp.Header.Get("Location"), setCookie)
	}
	resp, err = noRedirect.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("second visit: %d, want 401", resp.StatusCode)
	}
}
