package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

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

// TestS3Outage: with the bucket unreachable, uploads and downloads answer 503 with Retry-After and
// leave no row and no object; metadata and lists still answer; /readyz names storage. A job that
// meets the outage waits, without using up its attempts, and finishes once the bucket is back.
func TestS3Outage(t *testing.T) {
	t.Parallel() // mostly waiting, on a database of its own
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

// countingTransport counts the requests sent through it.
type countingTransport struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// TestBucketRanges: a download from the bucket asks it a few times at most whatever the Range
// header (thousands of ranges are served as the whole file); an If-Range that does not match sends
// no Range to the bucket and serves the whole file; Content-Length always matches the body.
func TestBucketRanges(t *testing.T) {
	s := newTestServer(t, s3TestEnv(t))
	_, auth := s.signupAndLogin()
	data := readTestdata(t, "mid.jpg")
	v := s.mustUpload(auth, "r", "", "r.jpg", data)
	c := s.blobs.(*s3Blobs).c
	ct := &countingTransport{next: c.http.Transport}
	if ct.next == nil {
		ct.next = http.DefaultTransport
	}
	c.http.Transport = ct
	many := make([]string, 6000)
	for i := range many {
		many[i] = fmt.Sprintf("%d-%d", i*10, i*10+1)
	}
	for _, tc := range []struct {
		name     string
		header   []string
		status   int
		body     []byte // nil: a multipart body, checked by its parts' count
		parts    int
		requests int64 // at most
	}{
		{"one range", []string{"Range", "bytes=100-199"}, http.StatusPartialContent, data[100:200], 0, 1},
		{"a suffix", []string{"Range", "bytes=-10"}, http.StatusPartialContent, data[len(data)-10:], 0, 1},
		{"three ranges", []string{"Range", "bytes=0-9,100-109,200-209"}, http.StatusPartialContent, nil, 3, 4},
		{"6000 ranges", []string{"Range", "bytes=" + strings.Join(many, ",")}, http.StatusOK, data, 0, 1},
		{"If-Range of another file", []string{"Range", "bytes=0-0", "If-Range", `"other"`}, http.StatusOK, data, 0, 1},
		{"If-Range of this one", []string{"Range", "bytes=0-0", "If-Range", `"` + v.SHA256 + `"`}, http.StatusPartialContent, data[:1], 0, 1},
		{"If-Range with a date", []string{"Range", "bytes=0-0", "If-Range", "Mon, 07 Dec 2026 00:00:00 GMT"}, http.StatusOK, data, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ct.n.Load()
			for _, path := range []string{fmt.Sprintf("/api/v1/images/%d/file", v.ID), v.SignedURL} {
				r := s.do("GET", path, nil, append([]string{"Authorization", auth}, tc.header...)...)
				if r.status != tc.status {
					t.Fatalf("%s: %d, want %d", path, r.status, tc.status)
				}
				if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(r.body)) {
					t.Errorf("%s: Content-Length %s for a body of %d bytes", path, cl, len(r.body))
				}
				if tc.body != nil && !bytes.Equal(r.body, tc.body) {
					t.Errorf("%s: %d bytes, not the %d expected", path, len(r.body), len(tc.body))
				}
				if tc.parts > 0 {
					_, params, _ := mime.ParseMediaType(r.header.Get("Content-Type"))
					mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
					n := 0
					for p, err := mr.NextPart(); err == nil; p, err = mr.NextPart() {
						b, _ := io.ReadAll(p)
						if len(b) != 10 {
							t.Errorf("%s: a part of %d bytes", path, len(b))
						}
						n++
					}
					if n != tc.parts {
						t.Errorf("%s: %d parts, want %d", path, n, tc.parts)
					}
				}
			}
			if got := ct.n.Load() - before; got > 2*tc.requests {
				t.Errorf("%d bucket requests for two downloads, want at most %d", got, 2*tc.requests)
			}
		})
	}
}

// lossyS3 is an HTTP proxy to the S3 endpoint that passes requests on unchanged (the Host header
// too, so signatures hold) and, when told, loses the answer to a PUT of an original after the store
// has kept it (the connection is cut), or refuses DELETEs.
type lossyS3 struct {
	target        *url.URL
	losePuts      atomic.Bool
	refuseDeletes atomic.Bool
}

func (p *lossyS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodDelete && p.refuseDeletes.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.RequestURI = p.target.Scheme, p.target.Host, ""
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if r.Method == http.MethodPut && p.losePuts.Load() && strings.Contains(r.URL.Path, "/"+originalDir+"/") && !strings.Contains(path.Base(r.URL.Path), ".") {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close() // stored, but the answer never arrives
		}
		return
	}
	maps.Copy(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// TestBucketNeverLeaks: when the connection is cut after the bucket stored an upload's original, the
// upload answers 503 and the object goes: at once when the bucket answers a DELETE, else (the
// process having died meanwhile) by the intent sweep of any replica. No object is left without a row.
func TestBucketNeverLeaks(t *testing.T) {
	t.Parallel() // on a database of its own
	bucket := needS3(t)
	env := with(s3TestEnv(t), "DATABASE_URL", freshDatabase(t))
	direct, err := newS3Client(s3Config{Endpoint: bucket.Endpoint, Bucket: bucket.Bucket, AccessKey: bucket.AccessKey, SecretKey: bucket.SecretKey, Prefix: env["S3_PREFIX"]})
	if err != nil {
		t.Fatal(err)
	}
	objects := func() []string {
		var keys []string
		if err := direct.list(context.Background(), originalDir+"/", func(objs []s3Object) error {
			for _, o := range objs {
				keys = append(keys, o.Key)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return keys
	}
	target, _ := url.Parse(bucket.Endpoint)
	proxy := &lossyS3{target: target}
	lossy := newTestServer(t, with(env, "S3_ENDPOINT", httptestServer(t, proxy)))
	_, auth := lossy.signupAndLogin()
	intents := func() int {
		var n int
		lossy.pool.QueryRow(context.Background(), "SELECT count(*) FROM blob_intents").Scan(&n)
		return n
	}

	// The bucket answers DELETEs: the object goes at once.
	proxy.losePuts.Store(true)
	lossy.upload(auth, "lost", "", "a.png", tinyPNG(t, 8, 8)).problem(t, http.StatusServiceUnavailable)
	for deadline := time.Now().Add(30 * time.Second); len(objects()) > 0 || intents() > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after a lost answer: objects %v, %d intents", objects(), intents())
		}
	}

	// It does not, and the process dies before it could: another replica's intent sweep removes it.
	proxy.refuseDeletes.Store(true)
	lossy.upload(auth, "lost", "", "a.png", tinyPNG(t, 8, 8)).problem(t, http.StatusServiceUnavailable)
	lossy.settling.Wait() // its attempt to remove the object, which the bucket refuses, is over
	if n := len(objects()); n != 1 || intents() != 1 {
		t.Fatalf("before the sweep: %d objects, %d intents; want the lost one and its intent", n, intents())
	}
	var rows int
	lossy.pool.QueryRow(context.Background(), "SELECT count(*) FROM images").Scan(&rows)
	if rows != 0 {
		t.Fatalf("%d rows for refused uploads", rows)
	}
	other := newTestServer(t, env)
	other.sweepIntents(context.Background()) // not old enough yet: kept
	if len(objects()) != 1 {
		t.Fatal("the sweep removed an object younger than its grace")
	}
	other.intentGrace = 0
	ok := other.mustUpload(auth, "kept", "", "b.png", tinyPNG(t, 8, 8))
	other.sweepIntents(context.Background())
	if keys := objects(); len(keys) != 1 || intents() != 0 {
		t.Fatalf("after the sweep: objects %v, %d intents; want only the kept upload's", keys, intents())
	}
	if r := other.do("GET", fmt.Sprintf("/api/v1/images/%d/file", ok.ID), nil, "Authorization", auth); r.status != 200 {
		t.Fatalf("the kept upload: %d", r.status)
	}
}
