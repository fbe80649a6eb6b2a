package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestS3Client: the calls the blob store makes, against the real endpoint: a put S3 checks against
// its SHA-256 (a wrong one is refused), get with a range, head, a listing over several pages,
// missing keys, and delete.
func TestS3Client(t *testing.T) {
	env := s3TestEnv(t)
	c, err := newS3Client(s3Config{Endpoint: env["S3_ENDPOINT"], Bucket: env["S3_BUCKET"], AccessKey: env["S3_ACCESS_KEY_ID"],
		SecretKey: env["S3_SECRET_ACCESS_KEY"], Prefix: env["S3_PREFIX"]})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := readTestdata(t, "mid.jpg")
	key := newKey()
	sum := sha256Hex(data)
	wrong := sha256Hex([]byte("something else"))
	if err := c.put(ctx, key, bytes.NewReader(data), int64(len(data)), wrong, "image/jpeg"); err == nil {
		t.Fatal("a put whose bytes do not match its SHA-256 was stored")
	}
	if err := c.put(ctx, key, bytes.NewReader(data), int64(len(data)), sum, "image/jpeg"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.head(ctx, key); err != nil || n != int64(len(data)) {
		t.Fatalf("head: %d, %v", n, err)
	}
	resp, err := c.get(ctx, key, http.Header{"Range": {"bytes=10-19"}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[10:20]) {
		t.Fatalf("ranged get: %d, %q", resp.StatusCode, got)
	}
	if _, err := c.get(ctx, newKey(), nil); !errors.Is(err, errNotFound) {
		t.Fatalf("get of a missing key: %v", err)
	}
	if _, err := c.head(ctx, newKey()); !errors.Is(err, errNotFound) {
		t.Fatalf("head of a missing key: %v", err)
	}
	// Listing in pages: 1000 per page is the most S3 gives; here the page is forced small.
	var many []string
	for i := range 7 {
		k := fmt.Sprintf("o/zz/page%d", i)
		many = append(many, k)
		if err := c.put(ctx, k, strings.NewReader("x"), 1, sha256Hex([]byte("x")), "text/plain"); err != nil {
			t.Fatal(err)
		}
	}
	pages, listed := 0, 0
	err = c.listPaged(ctx, "o/zz/", 3, func(objs []s3Object) error {
		pages++
		listed += len(objs)
		return nil
	})
	if err != nil || pages != 3 || listed != 7 {
		t.Fatalf("listing: %d pages, %d objects, %v; want 3 pages of 7", pages, listed, err)
	}
	for _, k := range append(many, key) {
		if err := c.delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.delete(ctx, key); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	if _, err := c.head(ctx, key); !errors.Is(err, errNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

// TestS3Bucket: a bucket that does not exist is made at start; with credentials the endpoint refuses,
// start fails naming the bucket.
func TestS3Bucket(t *testing.T) {
	name := "imageapi-test-" + randomHex(6)
	cfg := needS3(t)
	cfg.Bucket = name
	c, err := newS3Client(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		if resp, err := c.do(ctx, s3Request{method: http.MethodDelete}); err == nil {
			resp.Body.Close()
		}
	})
	s := newTestServer(t, map[string]string{"S3_BUCKET": name, "S3_ENDPOINT": cfg.Endpoint,
		"AWS_ACCESS_KEY_ID": cfg.AccessKey, "AWS_SECRET_ACCESS_KEY": cfg.SecretKey})
	if err := s.blobs.ping(ctx); err != nil {
		t.Fatalf("the new bucket does not answer: %v", err)
	}
	_, err = openTestServer(t, map[string]string{"S3_BUCKET": "imageapi-test-" + randomHex(6), "S3_ENDPOINT": cfg.Endpoint,
		"S3_ACCESS_KEY_ID": "nobody", "S3_SECRET_ACCESS_KEY": "wrong-secret"})
	if err == nil || !strings.Contains(err.Error(), "imageapi-test-") {
		t.Fatalf("start with refused credentials: %v; want an error naming the bucket", err)
	}
}

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

// TestDownloadRedirect: with DOWNLOAD_REDIRECT=on a download, by token or signed link, answers 307 to
// a presigned S3 GET that serves the bytes with the right type and name, for about a minute.
func TestDownloadRedirect(t *testing.T) {
	s := newTestServer(t, with(s3TestEnv(t), "DOWNLOAD_REDIRECT", "on"))
	_, auth := s.signupAndLogin()
	data := tinyPNG(t, 6, 6)
	v := s.mustUpload(auth, "moon", "", "m.png", data)
	for _, r := range []response{
		s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", v.ID), nil, "Authorization", auth),
		s.do("GET", v.SignedURL, nil),
	} {
		loc := r.header.Get("Location")
		if r.status != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, needS3(t).Endpoint+"/") || !strings.Contains(loc, "X-Amz-Expires=60") {
			t.Fatalf("redirect: %d Location %q", r.status, loc)
		}
		resp, err := http.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("Content-Type") != "image/png" ||
			!strings.Contains(resp.Header.Get("Content-Disposition"), "moon.png") {
			t.Fatalf("presigned GET: %d %s %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), len(body))
		}
	}
	// A presigned URL altered is refused by S3 itself.
	r := s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", v.ID), nil, "Authorization", auth)
	resp, err := http.Get(strings.Replace(r.header.Get("Location"), "X-Amz-Expires=60", "X-Amz-Expires=600", 1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("altered presigned URL: %d", resp.StatusCode)
	}
}

// TestS3Outage: with the bucket unreachable, uploads and downloads answer 503 with Retry-After and
// leave no row and no object; metadata and lists still answer; /readyz names storage. A job that
// meets the outage waits, without using up its attempts, and finishes once the bucket is back.
func TestS3Outage(t *testing.T) {
	proxy := startProxy(t, strings.TrimPrefix(needS3(t).Endpoint, "http://"))
	env := with(s3TestEnv(t), "S3_ENDPOINT", "http://"+proxy.addr(), "DATABASE_URL", freshDatabase(t),
		"BROKER_URL", needBroker(t), "QUEUE_NAME", testQueue(t), "JOB_RETRY_DELAY", "100ms", "JOB_MAX_ATTEMPTS", "2")
	s := newTestServer(t, with(env, "MODE", modeAPI))
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "before", "", "a.png", tinyPNG(t, 8, 8))

	proxy.cut()
	r := s.upload(auth, "during", "", "b.png", tinyPNG(t, 9, 9))
	r.problem(t, http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	d := s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", v.ID), nil, "Authorization", auth)
	d.problem(t, http.StatusServiceUnavailable)
	if d.header.Get("ETag") != "" || d.header.Get("Retry-After") == "" {
		t.Errorf("download 503 headers: %v", d.header)
	}
	if g := s.do("GET", fmt.Sprintf("/api/v1/images/%d", v.ID), nil, "Authorization", auth); g.status != 200 {
		t.Errorf("metadata during the outage: %d", g.status)
	}
	if l := s.do("GET", "/api/v1/images/", nil, "Authorization", auth); l.status != 200 || l.header.Get("X-Total-Count") != "1" {
		t.Errorf("list during the outage: %d total %q", l.status, l.header.Get("X-Total-Count"))
	}
	rz := s.do("GET", "/readyz", nil)
	if p := rz.problem(t, http.StatusServiceUnavailable); !strings.Contains(p.Detail, "storage") {
		t.Errorf("/readyz: %s", p.Detail)
	}
	if files := filesUnder(t, env["UPLOAD_DIR"]); len(files) != 0 {
		t.Errorf("temp files left by the refused upload: %v", files)
	}

	// The worker starts during the outage: its job for "before" cannot fetch the original. It
	// retries every 100 ms, far more often than JOB_MAX_ATTEMPTS allows, and none counts.
	w := newTestServer(t, with(env, "MODE", modeWorker, "UPLOAD_DIR", t.TempDir()))
	startWorker(t, w)
	for deadline := time.Now().Add(30 * time.Second); w.metrics.jobsRetried.Load() < 5; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the job was retried %d times in 30 s, want 5", w.metrics.jobsRetried.Load())
		}
	}
	var attempts int
	var status string
	s.pool.QueryRow(context.Background(), "SELECT attempts, status FROM images WHERE id = $1", v.ID).Scan(&attempts, &status)
	if status == statusFailed || status == statusReady || attempts > 1 {
		t.Errorf("during the outage the job is %s after %d attempts; want it waiting, attempts not used up", status, attempts)
	}
	proxy.restore()
	if got := s.waitStatus(auth, v.ID, 30*time.Second, statusReady, statusFailed); got.Status != statusReady {
		t.Fatalf("the job that met the outage ended %s: %v", got.Status, *got.Error)
	}
	if got := s.storedKeys(); len(got) != 1+len(variantSpecs) {
		t.Errorf("stored after the outage: %v, want the image's files and nothing else", got)
	}
	if s.do("GET", "/readyz", nil).status != 200 {
		t.Error("/readyz after the outage")
	}
}

// TestScaleOut: two API processes and two worker processes of the real binary, each with an empty
// UPLOAD_DIR of its own, share nothing but PostgreSQL, RabbitMQ and one bucket: an image uploaded
// through one API is processed by some worker and served, every variant, by the other API, by
// token and by signed link; a delete through the first removes every object, and no UPLOAD_DIR
// holds a file afterwards.
func TestScaleOut(t *testing.T) {
	t.Parallel() // mostly waiting for processes: it overlaps the others
	db, queue, s3env := freshDatabase(t), testQueue(t), s3TestEnv(t)
	var dirs []string
	procEnv := func() map[string]string {
		dirs = append(dirs, t.TempDir())
		return with(s3env, "DATABASE_URL", db, "BROKER_URL", needBroker(t), "QUEUE_NAME", queue, "UPLOAD_DIR", dirs[len(dirs)-1],
			"SECRET_KEY", "scale-out-test-secret-0123456789abcdef")
	}
	apis := []*binaryServer{startBinary(t, procEnv(), "-mode=api"), startBinary(t, procEnv(), "-mode=api")}
	for range 2 {
		startBinary(t, procEnv(), "-mode=worker")
	}
	call := func(base, method, path string, body any, header ...string) response {
		return doRequest(t, base, method, path, body, header...)
	}
	auth := signupVia(t, apis[0].base)
	var ids []int64
	for i, name := range []string{"mid.jpg", "photo.png", "small.webp"} {
		body, ct := multipartBody(t, "file", name, readTestdata(t, name))
		r := call(apis[i%2].base, "POST", "/api/v1/images/?name="+name, body, "Authorization", auth, "Content-Type", ct)
		if r.status != 201 {
			t.Fatalf("upload %s: %d %s", name, r.status, r.body)
		}
		var v imageView
		r.json(t, &v)
		ids = append(ids, v.ID)
	}
	for i, id := range ids {
		other := apis[(i+1)%2].base
		var v imageView
		for deadline := time.Now().Add(time.Minute); v.Status != statusReady; time.Sleep(100 * time.Millisecond) {
			call(other, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth).json(t, &v)
			if v.Status == statusFailed || time.Now().After(deadline) {
				t.Fatalf("image %d: %s", id, v.Status)
			}
		}
		for name, meta := range v.Variants {
			byToken := call(other, "GET", meta.URL, nil, "Authorization", auth)
			bySignature := call(apis[i%2].base, "GET", meta.SignedURL, nil)
			if byToken.status != 200 || int64(len(byToken.body)) != meta.Size || !bytes.Equal(bySignature.body, byToken.body) {
				t.Fatalf("image %d %s: %d (%d bytes), signed %d", id, name, byToken.status, len(byToken.body), bySignature.status)
			}
		}
		if r := call(other, "GET", v.URL, nil, "Authorization", auth); r.status != 200 || sha256Hex(r.body) != v.SHA256 {
			t.Fatalf("original through the other API: %d", r.status)
		}
	}
	for i, id := range ids {
		if r := call(apis[i%2].base, "DELETE", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth); r.status != 204 {
			t.Fatalf("delete %d: %d", id, r.status)
		}
	}
	cfg := needS3(t)
	cfg.Prefix = s3env["S3_PREFIX"]
	s3c, _ := newS3Client(cfg)
	left := 0
	s3c.list(context.Background(), "", func(objs []s3Object) error { left += len(objs); return nil })
	if left != 0 {
		t.Errorf("%d objects left after deleting every image", left)
	}
	// Every process's UPLOAD_DIR holds nothing but its empty temp directory.
	for _, d := range dirs {
		if files := filesUnder(t, d); len(files) != 0 {
			t.Errorf("files left in an UPLOAD_DIR: %v", files)
		}
	}
	for _, a := range apis {
		a.stop(syscall.SIGTERM)
	}
}

// signupVia signs a new user up through the API at base and returns its Authorization header.
func signupVia(t *testing.T, base string) string {
	t.Helper()
	user := "u" + randomHex(6)
	creds := fmt.Sprintf(`{"username":%q,"password":"correct horse battery staple"}`, user)
	for _, path := range []string{"/api/v1/auth/signup", "/api/v1/auth/token"} {
		resp, err := http.Post(base+path, "application/json", strings.NewReader(creds))
		if err != nil {
			t.Fatal(err)
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		err = json.NewDecoder(resp.Body).Decode(&tok)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, err)
		}
		if path == "/api/v1/auth/token" {
			return "Bearer " + tok.AccessToken
		}
	}
	return ""
}

// sha256Hex is the hex SHA-256 of b.
func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// BenchmarkStorage compares the two blob stores through the API: uploads of the 13.4 MP JPEG, 8 at
// once, and downloads of it, 8×GOMAXPROCS at once, streamed by the API or (s3-redirect) fetched from
// the bucket after a 307. The filesystem is the baseline of the bucket (SeaweedFS on the same machine).
func BenchmarkStorage(b *testing.B) {
	photo := readTestdata(b, "large.jpg")
	body, ct := multipartBody(b, "file", "large.jpg", photo)
	for _, be := range backends {
		s := newTestServer(b, with(be.env(b), "LOG_LEVEL", "error"))
		_, auth := s.signupAndLogin()
		v := s.mustUpload(auth, "bench", "", "large.jpg", photo)
		b.Run("upload/"+be.name, func(b *testing.B) {
			b.SetBytes(int64(len(photo)))
			benchPOST(b, 8, s.srv.URL+"/api/v1/images/?name=bench", body, "Content-Type", ct, "Authorization", auth)
		})
		b.Run("download/"+be.name, func(b *testing.B) {
			b.SetBytes(int64(len(photo)))
			benchGET(b, s.srv.URL+v.URL, "Authorization", auth)
		})
	}
	// The bucket's own GET, through DOWNLOAD_REDIRECT's 307 (the client follows it): what the API
	// no longer carries.
	s := newTestServer(b, with(s3TestEnv(b), "LOG_LEVEL", "error", "DOWNLOAD_REDIRECT", "on"))
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "bench", "", "large.jpg", photo)
	b.Run("download/s3-redirect", func(b *testing.B) {
		b.SetBytes(int64(len(photo)))
		benchGET(b, s.srv.URL+v.URL, "Authorization", auth)
	})
}
