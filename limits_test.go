package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRateLimiter: a burst, then the refill rate; keys are independent; the table stays bounded.
func TestRateLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newRateLimiter(3, time.Minute, 2)
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, wait := l.allow("a")
	if ok || wait <= 0 || wait > 20*time.Second {
		t.Fatalf("past the burst: ok=%v wait=%v (want about 20 s)", ok, wait)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another key was limited")
	}
	now = now.Add(20 * time.Second)
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("no refill after 20 s")
	}
	// Full table: a third key is refused until the others have refilled and are forgotten.
	if ok, _ := l.allow("c"); ok {
		t.Fatal("the table grew past its bound")
	}
	now = now.Add(2 * time.Minute)
	if ok, _ := l.allow("c"); !ok {
		t.Fatal("refilled keys were not forgotten")
	}
	if len(l.buckets) != 1 {
		t.Fatalf("%d buckets kept", len(l.buckets))
	}
}

// TestClientKey: IPv4 addresses as they are; IPv6 by /64.
func TestClientKey(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.7:5555":             "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:443": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:80":      "192.0.2.7",
		"not an address":             "not an address",
	} {
		if got := clientKey(&http.Request{RemoteAddr: addr}); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}

// TestAuthRateLimits: sign-in attempts are limited per address and per username, sign-ups per
// address; the refusal is a 429 problem with Retry-After, and comes before any password hashing.
func TestAuthRateLimits(t *testing.T) {
	s := newTestServer(t, map[string]string{"AUTH_RATE_PER_ADDR": "5", "AUTH_RATE_PER_USER": "3", "SIGNUP_RATE_PER_ADDR": "2"})
	for i := range 2 {
		if r := s.do("POST", "/api/v1/auth/signup", credentials{fmt.Sprintf("rate_%s_%d", randomHex(3), i), "correct horse"}); r.status != 200 {
			t.Fatalf("signup %d: %d %s", i, r.status, r.body)
		}
	}
	r := s.do("POST", "/api/v1/auth/signup", credentials{"rate_" + randomHex(3), "correct horse"})
	r.problem(t, http.StatusTooManyRequests)
	if secs, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || secs < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	hashed := s.hasher.computed.Load()
	// Per username: the 4th attempt on one name is refused, existing or not.
	for i := range 3 {
		s.do("POST", "/api/v1/auth/token", credentials{"nobody_here", "wrong password"}).problem(t, http.StatusBadRequest)
		_ = i
	}
	r = s.do("POST", "/api/v1/auth/token", credentials{"NOBODY_HERE", "wrong password"})
	r.problem(t, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	// Per address: 5 in all, whatever the names.
	s.do("POST", "/api/v1/auth/token", credentials{"someone_else", "wrong password"}).problem(t, http.StatusBadRequest)
	s.do("POST", "/api/v1/auth/token", credentials{"someone_new", "wrong password"}).problem(t, http.StatusTooManyRequests)
	if n := s.hasher.computed.Load() - hashed; n != 4 {
		t.Errorf("%d hashes for 4 attempts let through", n)
	}
}

// TestSignupClosed: with SIGNUP=closed sign-up answers 403, and existing accounts still sign in.
func TestSignupClosed(t *testing.T) {
	open := newTestServer(t, nil)
	name, _ := open.signupAndLogin()
	closed := newTestServer(t, map[string]string{"SIGNUP": "closed"})
	p := closed.do("POST", "/api/v1/auth/signup", credentials{"stranger_" + randomHex(3), "correct horse"}).problem(t, http.StatusForbidden)
	if !strings.Contains(p.Detail, "closed") {
		t.Errorf("detail %q", p.Detail)
	}
	if r := closed.do("POST", "/api/v1/auth/token", credentials{name, "correct horse"}); r.status != 200 {
		t.Fatalf("existing account: %d %s", r.status, r.body)
	}
}

// TestUserQuota: uploads count against USER_QUOTA_BYTES; the one that would pass it gets a 413 and
// leaves nothing behind; deleting makes room; concurrent uploads cannot together pass it.
func TestUserQuota(t *testing.T) {
	dir := t.TempDir()
	img := tinyPNG(t, 40, 30)
	quota := 3*len(img) + len(img)/2 // room for three
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir, "USER_QUOTA_BYTES": strconv.Itoa(quota)})
	_, auth := s.signupAndLogin()
	var ids []int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	statuses := map[int]int{}
	for range 6 {
		wg.Go(func() {
			r := s.upload(auth, "q", "", "a.png", img)
			mu.Lock()
			defer mu.Unlock()
			statuses[r.status]++
			if r.status == http.StatusCreated {
				var v imageView
				r.json(t, &v)
				ids = append(ids, v.ID)
			} else {
				p := r.problem(t, http.StatusRequestEntityTooLarge)
				if !strings.Contains(p.Detail, "quota") {
					t.Errorf("detail %q", p.Detail)
				}
			}
		})
	}
	wg.Wait()
	if statuses[http.StatusCreated] != 3 || statuses[http.StatusRequestEntityTooLarge] != 3 {
		t.Fatalf("statuses %v, want 3 accepted and 3 refused", statuses)
	}
	originals := 0
	for _, f := range filesUnder(t, dir) {
		if strings.Count(f[len(dir):], ".") == 0 {
			originals++
		}
	}
	if originals != 3 {
		t.Errorf("%d originals on disk, want 3", originals)
	}
	s.do("DELETE", fmt.Sprint("/api/v1/images/", ids[0]), nil, "Authorization", auth)
	if r := s.upload(auth, "q", "", "a.png", img); r.status != http.StatusCreated {
		t.Fatalf("after a delete: %d %s", r.status, r.body)
	}
}

// TestUploadSlots: a user with UPLOADS_PER_USER uploads in flight gets 429 for the next; with
// UPLOADS_IN_FLIGHT in flight in all, anyone gets 503; both with Retry-After; a slot is free again
// when its upload ends.
func TestUploadSlots(t *testing.T) {
	s := newTestServer(t, map[string]string{"UPLOADS_PER_USER": "1", "UPLOADS_IN_FLIGHT": "2", "MIN_UPLOAD_RATE": "0"})
	_, alice := s.signupAndLogin()
	_, bob := s.signupAndLogin()
	_, carol := s.signupAndLogin()
	// Two uploads held open: the body's first part is sent, the rest waits.
	hold := func(auth string) (*io.PipeWriter, <-chan int) {
		pr, pw := io.Pipe()
		mw := multipart.NewWriter(pw)
		req, _ := http.NewRequest("POST", s.srv.URL+"/api/v1/images/?name=held", pr)
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		done := make(chan int, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
		fw, _ := mw.CreateFormFile("file", "a.png")
		fw.Write(tinyPNG(t, 10, 10)[:20])
		return pw, done
	}
	pa, doneA := hold(alice)
	pb, doneB := hold(bob)
	waitSlots(t, s, 2)
	r := s.upload(alice, "second", "", "a.png", tinyPNG(t, 10, 10))
	r.problem(t, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	r = s.upload(carol, "third", "", "a.png", tinyPNG(t, 10, 10))
	r.problem(t, http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	pa.CloseWithError(io.ErrUnexpectedEOF)
	pb.CloseWithError(io.ErrUnexpectedEOF)
	<-doneA
	<-doneB
	// The client gives up at once; the server frees the slots when its reads fail.
	waitSlots(t, s, 0)
	if r := s.upload(carol, "later", "", "a.png", tinyPNG(t, 10, 10)); r.status != http.StatusCreated {
		t.Fatalf("after the held uploads ended: %d %s", r.status, r.body)
	}
}

// waitSlots waits until s has n uploads in flight.
func waitSlots(t *testing.T, s *testServer, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.uploads.mu.Lock()
		all := s.uploads.all
		s.uploads.mu.Unlock()
		if all == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d uploads in flight, want %d", all, n)
		}
	}
}

// TestSlowUploadCutOff: an upload that trickles below MIN_UPLOAD_RATE is cut off with 408 after
// one window (not REQUEST_TIMEOUT), its slot and temp file freed.
func TestSlowUploadCutOff(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	dir := t.TempDir()
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir, "MIN_UPLOAD_RATE": "1MiB", "UPLOADS_PER_USER": "1"})
	_, auth := s.signupAndLogin()
	body, ct := multipartBody(t, "file", "a.jpg", readTestdata(t, "mid.jpg"))
	u, _ := url.Parse(s.srv.URL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/images/?name=slow HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", auth, ct, len(body))
	conn.Write(body[:1000])
	// Then a trickle: 100 bytes a second, far under 1 MiB/s.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 1000; i < len(body); i += 100 {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if _, err := conn.Write(body[i : i+100]); err != nil {
				return
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(minRateWindow + 10*time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer within a window and a margin: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	r.problem(t, http.StatusRequestTimeout)
	if r := s.upload(auth, "next", "", "a.png", tinyPNG(t, 10, 10)); r.status != http.StatusCreated {
		t.Fatalf("the slot was not freed: %d %s", r.status, r.body)
	}
	for _, f := range filesUnder(t, dir) {
		if strings.HasPrefix(f, filepath.Join(dir, tmpDir)+"/") {
			t.Errorf("temp file left: %s", f)
		}
	}
}

// TestMetricsAddr: with METRICS_ADDR, /metrics is served there and not on the main listener.
func TestMetricsAddr(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	srv := startBinary(t, map[string]string{"METRICS_ADDR": maddr})
	if r := doRequest(t, srv.base, "GET", "/metrics", nil); r.status != http.StatusNotFound {
		t.Errorf("/metrics on the public listener: %d", r.status)
	}
	r := doRequest(t, "http://"+maddr, "GET", "/metrics", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte("imageapi_jobs_done_total")) {
		t.Errorf("/metrics on METRICS_ADDR: %d %s", r.status, r.body)
	}
}

// TestBadKeysRefused: a storage key that is not one the store makes never becomes a path.
func TestBadKeysRefused(t *testing.T) {
	b := &fsBlobs{root: t.TempDir()}
	for _, k := range []string{"../etc/passwd", "o/../../etc/passwd", "/etc/passwd", "o/ab/..", "x/ab/cd", "o/AB/cd", "o/ab/c d", "o\\ab", ""} {
		if p, err := b.path(k); err == nil {
			t.Errorf("%q became %s", k, p)
		}
	}
	if _, err := b.path(newKey() + ".thumb_100.0a1b2c3d.jpg"); err != nil {
		t.Errorf("a variant key: %v", err)
	}
}
