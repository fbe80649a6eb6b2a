package main

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	mrand "math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPureRateLimiter: a burst, then the refill rate; keys are independent; a full table evicts the
// oldest key instead of refusing a new one; a refund gives a token back.
func TestPureRateLimiter(t *testing.T) {
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
	l.refund("a")
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("a refunded token was not there")
	}
	now = now.Add(time.Second)
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another key was limited")
	}
	now = now.Add(20 * time.Second)
	if ok, _ := l.allow("a"); !ok {
		t.Fatal("no refill after 20 s")
	}
	// Full table: a third key is let in, evicting the least recently touched ("b").
	now = now.Add(time.Second)
	if ok, _ := l.allow("c"); !ok {
		t.Fatal("a full table refused a new key")
	}
	if n := len(l.table.entries); n != 2 {
		t.Fatalf("%d entries in a table of 2", n)
	}
	if _, ok := l.table.get(l.table.key("b")); ok {
		t.Error("the oldest key was not the one evicted")
	}
	now = now.Add(2 * time.Minute)
	l.allow("d")
	if n := len(l.table.entries); n != 1 {
		t.Fatalf("%d entries kept after every bucket refilled", n)
	}
}

// TestPureLimiterTableBytes: a full table costs at most limiterEntryBytes an entry, whatever the length of
// its keys (they are hashed), and stays at its bound.
func TestPureLimiterTableBytes(t *testing.T) {
	computeOnly(t) // a heap measurement: alone, not beside the race run's parallel tests
	const n = 50_000
	long := strings.Repeat("x", 4<<10)
	runtime.GC()
	before := heapBytes()
	tab := newLimiterTable(n)
	for i := range 2 * n {
		tab.put(tab.key(long+strconv.Itoa(i)), limiterEntry{n: 1, when: int64(i)})
	}
	runtime.GC()
	after := heapBytes()
	if len(tab.entries) != n {
		t.Fatalf("%d entries, bound %d", len(tab.entries), n)
	}
	per := (float64(after) - float64(before)) / n
	t.Logf("%.0f bytes an entry", per)
	if per > limiterEntryBytes {
		t.Errorf("%.0f bytes an entry, documented as at most %d", per, limiterEntryBytes)
	}
	runtime.KeepAlive(tab)
}

// TestPureSigninThrottle: failures, not attempts; per account and network with a growing delay, reset
// by a success; a stranger's guesses from elsewhere never hold back the owner at a network they
// signed in from; past the account's ceiling, unknown networks wait between attempts.
func TestPureSigninThrottle(t *testing.T) {
	now := time.Unix(1000, 0)
	th := newSigninThrottle(3, 10, time.Minute, 1000)
	th.now = func() time.Time { return now }
	attempt := func(user, net string, ok bool) time.Duration {
		t.Helper()
		if wait := th.begin(user, net); wait > 0 {
			return wait
		}
		if ok {
			th.succeeded(user, net)
		}
		return 0
	}
	// Successes cost nothing.
	for range 20 {
		if w := attempt("alice", "home", true); w != 0 {
			t.Fatalf("a correct password waited %s", w)
		}
	}
	// Three free failures, then 1 s, 2 s, 4 s… from the last one.
	for i := range 3 {
		if w := attempt("bob", "net1", false); w != 0 {
			t.Fatalf("free failure %d waited %s", i+1, w)
		}
	}
	if w := attempt("bob", "net1", false); w != time.Second {
		t.Fatalf("after 3 failures: wait %s, want 1s", w)
	}
	now = now.Add(time.Second)
	attempt("bob", "net1", false) // the 4th failure
	if w := attempt("bob", "NET1", false); w != 0 {
		t.Fatal("another network was held back by net1's failures")
	}
	if w := attempt("BOB", "net1", false); w != 2*time.Second {
		t.Fatalf("after 4 failures: wait %s, want 2s (usernames are case-insensitive)", w)
	}
	now = now.Add(2 * time.Second)
	if w := attempt("bob", "net1", true); w != 0 {
		t.Fatalf("the right password after the delay waited %s", w)
	}
	if w := attempt("bob", "net1", false); w != 0 {
		t.Fatal("a success did not reset the failures")
	}
	// A stranger spreads guesses for alice over many networks, past the ceiling of 10.
	for i := range 12 {
		attempt("alice", fmt.Sprintf("stranger%d", i), false)
	}
	if w := attempt("alice", "home", true); w != 0 {
		t.Fatalf("the owner at a network she signed in from waited %s", w)
	}
	for i := range 12 {
		attempt("alice", fmt.Sprintf("stranger%d", i), false)
	}
	if w := attempt("alice", "cafe", false); w == 0 || w > th.accountDelay {
		t.Fatalf("a new network past the account's ceiling waited %s, want up to %s", w, th.accountDelay)
	}
	now = now.Add(th.accountDelay)
	if w := attempt("alice", "cafe", true); w != 0 {
		t.Fatalf("after the account delay: waited %s", w)
	}
	// The delay is capped.
	for range 40 {
		now = now.Add(time.Hour)
		attempt("carol", "x", false)
	}
	if w := attempt("carol", "x", false); w != time.Minute {
		t.Fatalf("after 40 failures: wait %s, want the cap of 1m", w)
	}
}

// TestPureClientKey: IPv4 addresses as they are; IPv6 by /64.
func TestPureClientKey(t *testing.T) {
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

// TestAuthRateLimits: sign-in failures are limited per address, and per account and network (a
// stranger's guesses do not stop the owner); sign-ups per address; a name that is no username is
// refused before any limiter; a refusal is a 429 problem with Retry-After, before any hashing.
func TestAuthRateLimits(t *testing.T) {
	s := newTestServer(t, map[string]string{"AUTH_RATE_PER_ADDR": "8", "AUTH_FREE_FAILURES": "3", "SIGNUP_RATE_PER_ADDR": "2"})
	alice := "rate_" + randomHex(3)
	for i, name := range []string{alice, "rate_" + randomHex(3)} {
		if r := s.do("POST", "/api/v1/auth/signup", credentials{name, "correct horse"}); r.status != 200 {
			t.Fatalf("signup %d: %d %s", i, r.status, r.body)
		}
	}
	r := s.do("POST", "/api/v1/auth/signup", credentials{"rate_" + randomHex(3), "correct horse"})
	r.problem(t, http.StatusTooManyRequests)
	if secs, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || secs < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	hashed := s.hasher.computed.Load()
	// Junk names cost nothing and count nowhere.
	for range 20 {
		s.do("POST", "/api/v1/auth/token", credentials{strings.Repeat("x", 5000), "wrong password"}).problem(t, http.StatusBadRequest)
	}
	// Successes count nowhere either.
	for range 10 {
		if r := s.do("POST", "/api/v1/auth/token", credentials{alice, "correct horse"}); r.status != 200 {
			t.Fatalf("sign-in: %d %s", r.status, r.body)
		}
	}
	// Per account and network: three free failures on one name, existing or not, then a delay.
	for range 3 {
		s.do("POST", "/api/v1/auth/token", credentials{"nobody_here", "wrong password"}).problem(t, http.StatusBadRequest)
	}
	r = s.do("POST", "/api/v1/auth/token", credentials{"NOBODY_HERE", "wrong password"})
	r.problem(t, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q after the free failures, want 1", r.header.Get("Retry-After"))
	}
	// Per address: 8 failures a minute in all, whatever the names.
	for i := range 5 {
		s.do("POST", "/api/v1/auth/token", credentials{fmt.Sprintf("someone_%d", i), "wrong password"}).problem(t, http.StatusBadRequest)
	}
	s.do("POST", "/api/v1/auth/token", credentials{"someone_new", "wrong password"}).problem(t, http.StatusTooManyRequests)
	if n := s.hasher.computed.Load() - hashed; n != 18 {
		t.Errorf("%d hashes for 18 attempts let through", n)
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
	each := int64(len(img)) + reservationOf(t, img)
	quota := 3*each + each/2 // room for three, with their variants' reservations
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir, "USER_QUOTA_BYTES": strconv.FormatInt(quota, 10)})
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
	r := s.upload(auth, "q", "", "a.png", img)
	if r.status != http.StatusCreated {
		t.Fatalf("after a delete: %d %s", r.status, r.body)
	}
	if got := r.header.Get("X-Storage-Used"); got != strconv.FormatInt(3*each, 10) || r.header.Get("X-Storage-Quota") != strconv.FormatInt(quota, 10) {
		t.Errorf("X-Storage-Used %s of %s, want %d of %d", got, r.header.Get("X-Storage-Quota"), 3*each, quota)
	}
	// Processed, each image counts its original and its real variants (the reservation settled).
	startWorker(t, s)
	var v imageView
	r.json(t, &v)
	s.waitStatus(auth, v.ID, 30*time.Second, statusReady)
	var size, variants int64
	s.pool.QueryRow(context.Background(), `SELECT size, (SELECT sum((x->>'size')::bigint) FROM jsonb_each(variants) e(k, x)) FROM images WHERE id = $1`, v.ID).Scan(&size, &variants)
	var counted int64
	s.pool.QueryRow(context.Background(), `SELECT size + variant_bytes FROM images WHERE id = $1`, v.ID).Scan(&counted)
	if variants == 0 || counted != size+variants {
		t.Errorf("a ready image counts %d bytes, want its original's %d and its variants' %d", counted, size, variants)
	}
}

// reservationOf is what an upload of data reserves for its variants.
func reservationOf(t testing.TB, data []byte) int64 {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	im, _ := sniffFile(f, int64(len(data)))
	h, err := readImageHeader(context.Background(), im)
	if err != nil {
		t.Fatal(err)
	}
	return h.variantBytes()
}

// TestQuotaCountsVariants: a small file whose grayscale copy would be large (a 1-bit PNG of
// alternating noisy rows: 12 MB of gray pixels from a few kilobytes) is refused at upload when its
// variants would not fit the quota; and a worker whose real variants would pass the quota records
// nothing and fails the image with that reason.
func TestQuotaCountsVariants(t *testing.T) {
	bomb := alternatingRowsPNG(t, 40000, 300)
	t.Logf("a %d-byte PNG reserves %d bytes for its variants", len(bomb), reservationOf(t, bomb))
	s := newTestServer(t, map[string]string{"USER_QUOTA_BYTES": "2MiB"})
	_, auth := s.signupAndLogin()
	p := s.upload(auth, "bomb", "", "a.png", bomb).problem(t, http.StatusRequestEntityTooLarge)
	if !strings.Contains(p.Detail, "quota") {
		t.Errorf("detail %q", p.Detail)
	}
	// Settling: the worker's real sizes are checked against the quota again.
	small := s.mustUpload(auth, "small", "", "a.png", tinyPNG(t, 40, 30))
	ctx := context.Background()
	_, attempt, err := s.store.claimImage(ctx, small.ID, time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	huge := map[string]storedVariant{"grayscale": {Width: 40, Height: 30, Size: 3 << 20, ContentType: "image/png", Key: "o/ab/cdef"}}
	if err := s.store.finishImage(ctx, small.ID, attempt, huge, "", s.cfg.UserQuota); !errors.Is(err, errQuota) {
		t.Fatalf("finishing past the quota: %v", err)
	}
	var status string
	var variantBytes int64
	s.pool.QueryRow(ctx, "SELECT status, variant_bytes FROM images WHERE id = $1", small.ID).Scan(&status, &variantBytes)
	if status != statusProcessing || variantBytes != reservationOf(t, tinyPNG(t, 40, 30)) {
		t.Errorf("after a refused finish: %s with %d bytes reserved", status, variantBytes)
	}
}

// alternatingRowsPNG is a w×h 1-bit gray PNG whose rows alternate between two random ones: it
// compresses to almost nothing, its 8-bit grayscale copy hardly at all. (Go's encoder writes
// image.Gray at 8 bits, so the file is put together here.)
func alternatingRowsPNG(t testing.TB, w, h int) []byte {
	stride := (w + 7) / 8
	rows := [2][]byte{make([]byte, 1+stride), make([]byte, 1+stride)} // filter byte 0, then the bits
	for _, r := range rows {
		for x := 1; x < len(r); x++ {
			r[x] = byte(mrand.IntN(256))
		}
	}
	var idat bytes.Buffer
	zw := zlib.NewWriter(&idat)
	for y := range h {
		zw.Write(rows[y%2])
	}
	zw.Close()
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	ihdr := binary.BigEndian.AppendUint32(nil, uint32(w))
	ihdr = binary.BigEndian.AppendUint32(ihdr, uint32(h))
	chunk("IHDR", append(ihdr, 1, 0, 0, 0, 0)) // depth 1, gray, deflate, no filter variants, no interlace
	chunk("IDAT", idat.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}

// TestUploadSlots: a user with UPLOADS_PER_USER uploads in flight gets 429 for the next, so does a
// client address with UPLOADS_PER_ADDR (whatever accounts it uses); with UPLOADS_IN_FLIGHT in flight
// in all, anyone gets 503; each with Retry-After; a slot is free again when its upload ends.
func TestUploadSlots(t *testing.T) {
	s := newTestServer(t, map[string]string{"UPLOADS_PER_USER": "1", "UPLOADS_PER_ADDR": "2", "UPLOADS_IN_FLIGHT": "3", "MIN_UPLOAD_RATE": "0"})
	_, alice := s.signupAndLogin()
	_, bob := s.signupAndLogin()
	_, carol := s.signupAndLogin()
	_, dave := s.signupAndLogin()
	// from is a client whose connections come from a loopback address of its own.
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	// Uploads held open: the body's first part is sent, the rest waits.
	hold := func(c *http.Client, auth string) (*io.PipeWriter, <-chan int) {
		pr, pw := io.Pipe()
		mw := multipart.NewWriter(pw)
		req, _ := http.NewRequest("POST", s.srv.URL+"/api/v1/images/?name=held", pr)
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		done := make(chan int, 1)
		go func() {
			resp, err := c.Do(req)
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
	send := func(c *http.Client, auth string) response {
		body, ct := multipartBody(t, "file", "a.png", tinyPNG(t, 10, 10))
		req, _ := http.NewRequest("POST", s.srv.URL+"/api/v1/images/?name=x", bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", ct)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return response{status: resp.StatusCode, header: resp.Header, body: b}
	}
	one, two := from("127.0.0.1"), from("127.0.0.2")
	pa, doneA := hold(one, alice)
	pb, doneB := hold(one, bob)
	waitSlots(t, s, 2)
	for name, r := range map[string]response{
		"a user's second":          send(two, alice),
		"a third from one address": send(one, carol),
	} {
		p := r.problem(t, http.StatusTooManyRequests)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: 429 without Retry-After", name)
		}
		t.Logf("%s: %s", name, p.Detail)
	}
	pc, doneC := hold(two, carol)
	waitSlots(t, s, 3)
	r := send(two, dave)
	r.problem(t, http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	for _, p := range []*io.PipeWriter{pa, pb, pc} {
		p.CloseWithError(io.ErrUnexpectedEOF)
	}
	<-doneA
	<-doneB
	<-doneC
	// The client gives up at once; the server frees the slots when its reads fail.
	waitSlots(t, s, 0)
	if r := send(one, carol); r.status != http.StatusCreated {
		t.Fatalf("after the held uploads ended: %d %s", r.status, r.body)
	}
}

// TestMultipartPreambleCap: more than maxPreambleBytes before the file's bytes (a huge part header,
// or big fields before "file") is a 413 before the file is read; headers within it are fine.
func TestMultipartPreambleCap(t *testing.T) {
	s := newTestServer(t, nil)
	_, auth := s.signupAndLogin()
	img := tinyPNG(t, 10, 10)
	build := func(headerPad, fieldBytes int) ([]byte, string) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		if fieldBytes > 0 {
			fw, _ := mw.CreateFormField("note")
			fw.Write(bytes.Repeat([]byte("n"), fieldBytes))
		}
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="file"; filename="a.png"`)
		h.Set("Content-Type", "image/png")
		if headerPad > 0 {
			h.Set("X-Pad", strings.Repeat("p", headerPad))
		}
		fw, _ := mw.CreatePart(h)
		fw.Write(img)
		mw.Close()
		return b.Bytes(), mw.FormDataContentType()
	}
	for _, tc := range []struct {
		name              string
		headerPad, fields int
		want              int
	}{
		{"short headers", 100, 0, http.StatusCreated},
		{"a 60 KiB header", 60 << 10, 0, http.StatusCreated},
		{"a 1 MiB header", 1 << 20, 0, http.StatusRequestEntityTooLarge},
		{"a 70 KiB header", 70 << 10, 0, http.StatusRequestEntityTooLarge},
		{"a 1 MiB field first", 0, 1 << 20, http.StatusRequestEntityTooLarge},
	} {
		body, ct := build(tc.headerPad, tc.fields)
		r := s.do("POST", "/api/v1/images/?name=p", body, "Authorization", auth, "Content-Type", ct)
		if tc.want == http.StatusCreated {
			if r.status != tc.want {
				t.Errorf("%s: %d %s", tc.name, r.status, r.body)
			}
			continue
		}
		r.problem(t, tc.want)
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
	conn.SetReadDeadline(time.Now().Add(s.cfg.UploadRateWindow + 10*time.Second))
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

// TestMetricsAddr: /metrics is never on the main listener unless METRICS_ADDR=main: with an address,
// it is served there; unset, on loopback.
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
	// Unset, it is not on the public listener either (but on loopback, or nowhere when that port is
	// another process's).
	plain := startBinary(t, map[string]string{"METRICS_ADDR": ""})
	if r := doRequest(t, plain.base, "GET", "/metrics", nil); r.status != http.StatusNotFound {
		t.Errorf("/metrics on the public listener by default: %d", r.status)
	}
}

// TestUploadPace: an upload that keeps MIN_UPLOAD_RATE on average is never cut, however many windows
// it spans (a phone on a weak link: 1.5 MB at 100 KB/s; a 20 MB file at 1 MiB/s); one that keeps half
// the rate, or stops, is cut with 408 after a window. Real sockets, real pacing.
func TestUploadPace(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	photo := readTestdata(t, "large.jpg")
	big := bmpOfSize(t, 20_000_000)
	for _, tc := range []struct {
		name       string
		env        map[string]string
		data       []byte
		rate       int // bytes a second sent
		stallAfter int // stop sending after this many bytes; 0: never
		want       int
	}{
		{"1.5MB at 100KB/s", nil, photo, 100_000, 0, http.StatusCreated},
		{"20MB at 1MiB/s", nil, big, 1 << 20, 0, http.StatusCreated},
		{"half the rate", map[string]string{"MIN_UPLOAD_RATE": "200000", "UPLOAD_RATE_WINDOW": "2s"}, photo, 100_000, 0, http.StatusRequestTimeout},
		{"a stall", map[string]string{"UPLOAD_RATE_WINDOW": "2s"}, photo, 400_000, 500_000, http.StatusRequestTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTestServer(t, tc.env)
			_, auth := s.signupAndLogin()
			body, ct := multipartBody(t, "file", "a", tc.data)
			if tc.stallAfter > 0 {
				body = body[:tc.stallAfter]
			}
			start := time.Now()
			r := pacedUpload(t, s.srv.URL, auth, ct, body, len(body)+boolInt(tc.stallAfter > 0), tc.rate)
			took := time.Since(start)
			if tc.want == http.StatusCreated && r.status != tc.want {
				t.Fatalf("after %s: %d %s", took.Round(time.Millisecond), r.status, r.body)
			}
			if tc.want != http.StatusCreated {
				p := r.problem(t, tc.want)
				t.Logf("after %s: %s", took.Round(time.Millisecond), p.Detail)
			}
		})
	}
}

// boolInt is 1 for true.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pacedUpload posts body over a raw connection, declaring contentLength, at rate bytes a second
// (in tenths of a second), and returns the answer.
func pacedUpload(t *testing.T, base, auth, ct string, body []byte, contentLength, rate int) response {
	t.Helper()
	u, _ := url.Parse(base)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/images/?name=paced HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", auth, ct, contentLength)
	go func() {
		start := time.Now()
		for sent := 0; sent < len(body); {
			// Whatever is due by now, so the average holds however the scheduler wakes us.
			due := min(len(body), int(time.Since(start).Seconds()*float64(rate))+rate/10)
			if due > sent {
				if _, err := conn.Write(body[sent:due]); err != nil {
					return
				}
				sent = due
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// bmpOfSize is a valid 24-bit BMP of about n bytes (a gray gradient), made in memory.
func bmpOfSize(t testing.TB, n int) []byte {
	t.Helper()
	w := 2000
	h := n / (w * 3)
	row := w * 3
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	b.WriteString("BM")
	le(uint32(54 + row*h))
	le(uint32(0))
	le(uint32(54))
	le(uint32(40))
	le(int32(w))
	le(int32(h))
	le(uint16(1))
	le(uint16(24))
	le(uint32(0))
	le(uint32(row * h))
	le(int32(2835))
	le(int32(2835))
	le(uint32(0))
	le(uint32(0))
	line := make([]byte, row)
	for y := range h {
		for x := range line {
			line[x] = byte(x/3 + y)
		}
		b.Write(line)
	}
	return b.Bytes()
}
