package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSignedURLs: a signed link serves its file without a token until it expires; altered in any
// part, moved to another image or variant, or expired, it answers 403, the same for each.
func TestSignedURLs(t *testing.T) {
	s := newTestServer(t, nil)
	_, auth := s.signupAndLogin()
	a := s.mustUpload(auth, "a", "", "a.png", tinyPNG(t, 4, 4))
	b := s.mustUpload(auth, "b", "", "b.png", tinyPNG(t, 5, 5))
	if r := s.do("GET", a.SignedURL, nil); r.status != 200 || r.header.Get("Content-Type") != "image/png" {
		t.Fatalf("signed_url: %d %s", r.status, r.body)
	}
	u, _ := url.Parse(a.SignedURL)
	q := u.Query()
	alter := func(f func(q url.Values, path string) (url.Values, string)) string {
		q2, p := f(url.Values{"variant": {q.Get("variant")}, "owner": {q.Get("owner")}, "expires": {q.Get("expires")}, "signature": {q.Get("signature")}}, u.Path)
		return p + "?" + q2.Encode()
	}
	exp, _ := strconv.ParseInt(q.Get("expires"), 10, 64)
	var forbidden []byte
	for name, link := range map[string]string{
		"another image": alter(func(q url.Values, p string) (url.Values, string) {
			return q, strings.Replace(p, fmt.Sprintf("/images/%d/", a.ID), fmt.Sprintf("/images/%d/", b.ID), 1)
		}),
		"another variant": alter(func(q url.Values, p string) (url.Values, string) { q.Set("variant", "grayscale"); return q, p }),
		"another owner":   alter(func(q url.Values, p string) (url.Values, string) { q.Set("owner", "1"+q.Get("owner")); return q, p }),
		"a later expiry":  alter(func(q url.Values, p string) (url.Values, string) { q.Set("expires", fmt.Sprint(exp+3600)); return q, p }),
		"a changed digit": alter(func(q url.Values, p string) (url.Values, string) {
			q.Set("signature", flipHex(q.Get("signature")))
			return q, p
		}),
		"no signature": alter(func(q url.Values, p string) (url.Values, string) { q.Del("signature"); return q, p }),
		"a short signature": alter(func(q url.Values, p string) (url.Values, string) {
			q.Set("signature", q.Get("signature")[:10])
			return q, p
		}),
		"an unknown variant": alter(func(q url.Values, p string) (url.Values, string) { q.Set("variant", "../etc"); return q, p }),
		// The same link spelled another way: one spelling only.
		"expires=+…":       strings.Replace(a.SignedURL, "expires=", "expires=%2B", 1),
		"a leading zero":   strings.Replace(a.SignedURL, "expires=", "expires=0", 1),
		"owner=0…":         strings.Replace(a.SignedURL, "owner=", "owner=00", 1),
		"another param":    a.SignedURL + "&x=1",
		"a repeated param": a.SignedURL + "&variant=" + q.Get("variant"),
		"reordered":        u.Path + "?signature=" + q.Get("signature") + "&variant=" + q.Get("variant") + "&owner=" + q.Get("owner") + "&expires=" + q.Get("expires"),
		"upper-case hex":   strings.Replace(a.SignedURL, q.Get("signature"), strings.ToUpper(q.Get("signature")), 1),
	} {
		r := s.do("GET", link, nil)
		r.problem(t, http.StatusForbidden)
		if forbidden == nil {
			forbidden = r.body
		} else if !bytes.Equal(r.body, forbidden) {
			t.Errorf("%s: %s differs from another refusal's %s", name, r.body, forbidden)
		}
	}
	// Expired: a signer whose clock is past the expiry refuses the link it made.
	s.signer.now = func() time.Time { return time.Unix(exp+1, 0) }
	s.do("GET", a.SignedURL, nil).problem(t, http.StatusForbidden)
	s.signer.now = time.Now
	// The key is not the JWT's: the same secret gives different MACs for the two uses.
	if bytes.Equal(s.signer.key, s.tokens.key) {
		t.Error("signed URLs are signed with the JWT key")
	}
}

// TestSignedURLExpires: a link with a TTL of seconds works until its last second and is refused from
// its expiry on, on the signer's clock (injected: no waiting on the real one).
func TestSignedURLExpires(t *testing.T) {
	s := newTestServer(t, map[string]string{"SIGNED_URL_TTL": "5s"})
	now := time.Now()
	var mu sync.Mutex
	s.signer.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	set := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "brief", "", "a.png", tinyPNG(t, 4, 4))
	if r := s.do("GET", v.SignedURL, nil); r.status != 200 {
		t.Fatalf("a fresh link: %d", r.status)
	}
	u, _ := url.Parse(v.SignedURL)
	exp, _ := strconv.ParseInt(u.Query().Get("expires"), 10, 64)
	if life := exp - now.Unix(); life < 3 || life > 5 {
		t.Errorf("a 5 s link lives %d s", life)
	}
	set(time.Unix(exp, 0).Add(-time.Millisecond))
	if r := s.do("GET", v.SignedURL, nil); r.status != 200 {
		t.Fatalf("in its last millisecond: %d", r.status)
	}
	set(time.Unix(exp, 0))
	s.do("GET", v.SignedURL, nil).problem(t, http.StatusForbidden)
}

// TestPureSignedURLExpiry: a link lives between ¾ of SIGNED_URL_TTL and all of it, and is the same
// link for a quarter of it (so a page asking again soon gets the browser's cached image).
func TestPureSignedURLExpiry(t *testing.T) {
	s := newURLSigner([]byte("k"), time.Hour)
	im := imageRecord{ID: 7, OwnerID: 3}
	for _, at := range []int64{1_700_000_000, 1_700_000_899, 1_700_000_900, 1_700_003_599} {
		s.now = func() time.Time { return time.Unix(at, 0) }
		life := s.expiry() - at
		if life < 2700 || life > 3600 {
			t.Errorf("at %d: a link lives %d s, want 2700–3600", at, life)
		}
	}
	short := newURLSigner([]byte("k"), 2*time.Second)
	for _, at := range []int64{1_700_000_000, 1_700_000_001} {
		short.now = func() time.Time { return time.Unix(at, 0) }
		if life := short.expiry() - at; life != 2 {
			t.Errorf("SIGNED_URL_TTL=2s: a link lives %d s", life)
		}
	}
	s.now = func() time.Time { return time.Unix(1_700_000_100, 0) }
	first := s.url(im, "thumb_100")
	s.now = func() time.Time { return time.Unix(1_700_000_100+600, 0) }
	if s.url(im, "thumb_100") != first {
		t.Error("the link changed within a quarter of the TTL")
	}
}

// flipHex changes the first hex digit of s.
func flipHex(s string) string {
	if s == "" {
		return "0"
	}
	c := byte('0')
	if s[0] == '0' {
		c = '1'
	}
	return string(c) + s[1:]
}

// TestPureSignedURLSpelling: a link is spelled as url.Values would spell it (the one spelling check
// accepts), its signature the HMAC-SHA256 of its parts under the signer's key, from any goroutine.
func TestPureSignedURLSpelling(t *testing.T) {
	s := newURLSigner([]byte("secret"), time.Hour)
	s.now = func() time.Time { return time.Unix(1_700_000_100, 0) }
	var wg sync.WaitGroup
	for _, variant := range []string{variantOriginal, "thumb_500", "gray-w1280", "a b&c=d/é"} {
		wg.Go(func() {
			for range 50 {
				for _, im := range []imageRecord{{ID: 1, OwnerID: 1}, {ID: 9_007_199_254_740_993, OwnerID: 42}} {
					exp := s.expiry()
					sig := fmt.Sprintf("%x", hmacSHA256(s.key, fmt.Sprintf("%d\n%s\n%d\n%d", im.ID, variant, im.OwnerID, exp)))
					want := fmt.Sprintf("/api/v1/images/%d/file/signed?%s", im.ID, url.Values{
						"variant": {variant}, "owner": {strconv.FormatInt(im.OwnerID, 10)},
						"expires": {strconv.FormatInt(exp, 10)}, "signature": {sig},
					}.Encode())
					if got := s.url(im, variant); got != want {
						t.Errorf("%q: %s, want %s", variant, got, want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkPureSignURL: one signed link (an Image in a list carries up to a dozen).
func BenchmarkPureSignURL(b *testing.B) {
	s := newURLSigner([]byte("secret"), time.Hour)
	im := imageRecord{ID: 123456, OwnerID: 42}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.url(im, "w1280")
	}
}
