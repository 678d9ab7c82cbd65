package mesh

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// legacyToken renders a secret as the legacy Token() did.
func legacyToken(s [32]byte) string {
	return legacyTokenPrefix + strings.ToLower(tokenEnc.EncodeToString(s[:]))
}

// testSecrets returns a few fixed secrets and some from a seeded generator.
func testSecrets(n int) [][32]byte {
	var zero, ones [32]byte
	for i := range ones {
		ones[i] = 0xff
	}
	out := [][32]byte{zero, ones}
	r := rand.New(rand.NewChaCha8([32]byte{'m', 'n'}))
	for len(out) < n {
		var s [32]byte
		for i := range s {
			s[i] = byte(r.Uint32())
		}
		out = append(out, s)
	}
	return out
}

// mustRefuse fails the test unless ParseToken refuses tok with one of its two
// sentinels and no fleet.
func mustRefuse(t *testing.T, what, tok string) {
	t.Helper()
	f, err := ParseToken(tok)
	if err == nil || f != nil {
		t.Fatalf("%s: %q accepted as fleet %s", what, tok, f.ID)
	}
	if !errors.Is(err, ErrTokenChecksum) && !errors.Is(err, ErrBadToken) {
		t.Fatalf("%s: %q: error %v wraps neither ErrTokenChecksum nor ErrBadToken", what, tok, err)
	}
}

func TestFleetTokenRoundTrip(t *testing.T) {
	f, err := NewFleet()
	if err != nil {
		t.Fatal(err)
	}
	tok := f.Token()
	if !strings.HasPrefix(tok, "mn2-") || len(tok) != 62 || tok != strings.ToLower(tok) {
		t.Fatalf("token %q: want mn2- and 58 lower-case base32 characters", tok)
	}
	if f.Legacy() {
		t.Fatal("a new fleet reports a legacy token")
	}
	wrapped := tok[:30] + "\n  " + tok[30:]
	for _, in := range []string{tok, " " + tok + "\n", "\t" + strings.ToUpper(tok) + "\r\n", wrapped} {
		g, err := ParseToken(in)
		if err != nil {
			t.Fatalf("parse %q: %v", in, err)
		}
		if g.ID != f.ID || g.Legacy() || g.Token() != tok {
			t.Fatalf("parse %q: ID %s legacy %v token %q; want ID %s, current, %q", in, g.ID, g.Legacy(), g.Token(), f.ID, tok)
		}
	}
}

// TestTokenKnownAnswer pins the token format and the fleet ID: the ID was
// computed from the README's example token by the code before the
// checksum existed, so existing fleets keep their IDs.
func TestTokenKnownAnswer(t *testing.T) {
	const (
		legacy  = "mn1-pp3jr5g5dqemmjnuxkqkv6ou3a6wmqqwlgum34pq4jbn6oxla7wq"
		current = "mn2-pp3jr5g5dqemmjnuxkqkv6ou3a6wmqqwlgum34pq4jbn6oxla7wtippype"
		id      = "adf7ef238d8f99de"
	)
	old, err := ParseToken(legacy)
	if err != nil {
		t.Fatal(err)
	}
	if old.ID != id || !old.Legacy() || old.Token() != current {
		t.Fatalf("legacy token: ID %s legacy %v token %q; want %s, true, %q", old.ID, old.Legacy(), old.Token(), id, current)
	}
	cur, err := ParseToken(current)
	if err != nil {
		t.Fatal(err)
	}
	if cur.ID != id || cur.Legacy() || cur.Token() != current {
		t.Fatalf("current token: ID %s legacy %v token %q", cur.ID, cur.Legacy(), cur.Token())
	}
}

func TestLegacyTokenSameFleet(t *testing.T) {
	for _, s := range testSecrets(8) {
		want := fleetFromSecret(s)
		for _, in := range []string{legacyToken(s), " " + strings.ToUpper(legacyToken(s)) + "\n"} {
			old, err := ParseToken(in)
			if err != nil {
				t.Fatalf("legacy %q: %v", in, err)
			}
			if !old.Legacy() || old.ID != want.ID {
				t.Fatalf("legacy %q: ID %s legacy %v; want %s, true", in, old.ID, old.Legacy(), want.ID)
			}
			cur, err := ParseToken(old.Token())
			if err != nil {
				t.Fatalf("reissued %q: %v", old.Token(), err)
			}
			if cur.Legacy() || cur.ID != old.ID || cur.Token() != want.Token() {
				t.Fatalf("reissued %q: ID %s legacy %v; want %s, false", old.Token(), cur.ID, cur.Legacy(), old.ID)
			}
		}
	}
}

// TestTokenChecksumCatchesTypos replaces every character of current tokens
// (prefix included) with every base32 character and some that are not,
// and swaps every pair of neighbouring characters: none may give a fleet.
func TestTokenChecksumCatchesTypos(t *testing.T) {
	const replacements = "abcdefghijklmnopqrstuvwxyz234567" + "0189-_.!é"
	for _, s := range testSecrets(4) {
		tok := fleetFromSecret(s).Token()
		for i := range len(tok) {
			for _, r := range replacements {
				if string(r) == tok[i:i+1] {
					continue
				}
				mustRefuse(t, "substitution", tok[:i]+string(r)+tok[i+1:])
			}
			if i+1 < len(tok) && tok[i] != tok[i+1] {
				mustRefuse(t, "transposition", tok[:i]+tok[i+1:i+2]+tok[i:i+1]+tok[i+2:])
			}
			mustRefuse(t, "deletion", tok[:i]+tok[i+1:])
			mustRefuse(t, "insertion", tok[:i]+"a"+tok[i:])
		}
	}
}

// TestTokenSumCatchesBursts checks the claim behind tokenSum: every error
// burst of up to 12 bits (any two neighbouring characters, at any
// alignment) anywhere in the secret and checksum is detected. The check
// is affine in the payload, so whether an error pattern goes unnoticed
// does not depend on the secret; one secret proves it for all.
func TestTokenSumCatchesBursts(t *testing.T) {
	var s [32]byte
	copy(s[:], "any secret will do, see above..")
	sum := tokenSum(s)
	payload := append(s[:], sum[:]...)
	nbits := len(payload) * 8
	p := make([]byte, len(payload))
	for length := 1; length <= 12; length++ {
		for start := 0; start+length <= nbits; start++ {
			inner := max(length-2, 0)
			for mid := range 1 << inner {
				// first and last bit of the burst set, any bits between
				pattern := uint64(1) | uint64(mid)<<1 | uint64(1)<<(length-1)
				copy(p, payload)
				for b := range length {
					if pattern>>b&1 == 1 {
						bit := start + b
						p[bit/8] ^= 0x80 >> (bit % 8)
					}
				}
				got := tokenSum([32]byte(p[:32]))
				if string(got[:]) == string(p[32:]) {
					t.Fatalf("burst of %d bits at bit %d (pattern %b) goes unnoticed", length, start, pattern)
				}
			}
		}
	}
}

func TestTokenErrorsNameTheProblem(t *testing.T) {
	tok := fleetFromSecret(testSecrets(3)[2]).Token()
	sub := func(i int, c string) string { return tok[:i] + c + tok[i+1:] }
	// A typo in the last character that changes only its unused low bits
	// leaves the 36 bytes intact; it must still be refused.
	last := base32Value(rune(tok[len(tok)-1]))
	tail := sub(len(tok)-1, string("abcdefghijklmnopqrstuvwxyz234567"[last^1]))
	typo := sub(20, map[bool]string{true: "b", false: "a"}[tok[20] == 'a'])
	for _, tc := range []struct {
		in   string
		want error
		text string
	}{
		{"", ErrBadToken, "it is empty"},
		{" \n\t", ErrBadToken, "it is empty"},
		{"hello", ErrBadToken, `it must start with "mn2-"`},
		{"xx1-abc", ErrBadToken, `it must start with "mn2-"`},
		{"mn3-" + tok[4:], ErrBadToken, `version "mn3-" is not known to this meshnode`},
		{"MN10-abc", ErrBadToken, `version "mn10-" is not known`},
		{"mn2-", ErrBadToken, `0 characters after "mn2-", want 58 (copied whole?)`},
		{tok[:30], ErrBadToken, `26 characters after "mn2-", want 58`},
		{tok + "a", ErrBadToken, `59 characters after "mn2-", want 58`},
		{"mn2-!!!!", ErrBadToken, `'!' at position 5 is not a base32 character (a-z, 2-7)`},
		{sub(9, "0"), ErrBadToken, `'0' at position 10 is not a base32 character (a-z, 2-7) (the letter "o"?)`},
		{sub(4, "1"), ErrBadToken, `'1' at position 5 is not a base32 character (a-z, 2-7) (the letter "l" or "i"?)`},
		{sub(61, "8"), ErrBadToken, `'8' at position 62 is not a base32 character (a-z, 2-7) (the letter "b"?)`},
		{"mn1-abc", ErrBadToken, `3 characters after "mn1-", want 52`},
		{"mn1-" + tok[4:], ErrBadToken, `58 characters after "mn1-", want 52`},
		{typo, ErrTokenChecksum, "mesh: join token checksum mismatch: check for a typo"},
		{tail, ErrTokenChecksum, "mesh: join token checksum mismatch: check for a typo"},
	} {
		f, err := ParseToken(tc.in)
		if err == nil || f != nil {
			t.Fatalf("%q accepted", tc.in)
		}
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%q: error %q; want one wrapping %q and saying %q", tc.in, err, tc.want, tc.text)
		}
	}
}

// FuzzParseToken: ParseToken never panics; what it accepts round-trips
// through Token() to the same fleet; a current token is accepted only in
// its one canonical spelling (up to case and whitespace); what it refuses
// it refuses with one of its sentinels.
func FuzzParseToken(f *testing.F) {
	s := testSecrets(3)[2]
	tok := fleetFromSecret(s).Token()
	for _, seed := range []string{
		tok,
		legacyToken(s),
		" " + strings.ToUpper(tok) + "\r\n",
		tok[:31] + "\n" + tok[31:],
		tok[:61] + "b",
		tok[:40],
		tok + tok,
		"mn2-",
		"mn1-",
		"mn3-" + tok[4:],
		"mn2-" + strings.Repeat("0", 58),
		"mn2-" + strings.Repeat("a", 58),
		"mn2-" + strings.Repeat("\xff", 58),
		"mn1-" + tok[4:56],
		"MN2-\u212a",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fl, err := ParseToken(in)
		if err != nil {
			if fl != nil {
				t.Fatalf("%q: error %v and a fleet", in, err)
			}
			if !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrTokenChecksum) {
				t.Fatalf("%q: error %v wraps neither sentinel", in, err)
			}
			return
		}
		again, err := ParseToken(fl.Token())
		if err != nil {
			t.Fatalf("%q: its Token() %q does not parse: %v", in, fl.Token(), err)
		}
		if again.ID != fl.ID || again.Legacy() || again.Token() != fl.Token() {
			t.Fatalf("%q: Token() %q gives ID %s, want %s", in, fl.Token(), again.ID, fl.ID)
		}
		if norm := strings.ToLower(strings.Join(strings.Fields(in), "")); !fl.Legacy() && norm != fl.Token() {
			t.Fatalf("%q accepted, but its canonical token is %q", in, fl.Token())
		}
	})
}
