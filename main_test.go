package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	rtmetrics "runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// computeOnly marks a test of heavy pure computation: one goroutine, no service, nothing for the
// race detector to find, and ten times the time under it. Under -race it is skipped; it runs in the
// pure tests' own run without -race (go test -run '^(TestPure|Fuzz)' .), which its name must put it
// in: a test that needs no service is named TestPure….
func computeOnly(t *testing.T) {
	t.Helper()
	if !strings.HasPrefix(t.Name(), "TestPure") {
		t.Fatalf("%s is computeOnly: name it TestPure… so that the run without -race selects it", t.Name())
	}
	if raceEnabled {
		t.Skip("pure computation: the run without -race covers it (docs/testing.md)")
	}
}

// emptyPrefix deletes every object under prefix.
func emptyPrefix(ctx context.Context, c *s3Client, prefix string) error {
	return c.list(ctx, prefix, func(objs []s3Object) error {
		for _, o := range objs {
			if err := c.delete(ctx, o.Key); err != nil {
				return err
			}
		}
		return nil
	})
}

// backend is a blob store the image tests run against; forEachBackend runs a test once per entry.
type backend struct {
	name string
	env  func(t testing.TB) map[string]string // the configuration that selects it
}

var backends = []backend{
	{"fs", func(t testing.TB) map[string]string { return map[string]string{"UPLOAD_DIR": t.TempDir()} }},
	{"s3", s3TestEnv},
}

// forEachBackend runs test once per blob store, as subtests named for them. env selects the store
// (and a fresh UPLOAD_DIR); the test adds its own settings to it.
func forEachBackend(t *testing.T, test func(t *testing.T, env map[string]string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.env(t)) })
	}
}

// s3TestEnv selects this run's bucket, under a key prefix of the test's own that is emptied when the
// test ends.
func s3TestEnv(t testing.TB) map[string]string {
	bucket := needS3(t)
	prefix := "t" + randomHex(6) + "/"
	t.Cleanup(func() {
		c, err := newS3Client(s3Config{Endpoint: bucket.Endpoint, Bucket: bucket.Bucket, AccessKey: bucket.AccessKey, SecretKey: bucket.SecretKey, Prefix: prefix})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err = emptyPrefix(ctx, c, "")
			cancel()
		}
		if err != nil {
			t.Errorf("emptying S3 prefix %s: %v", prefix, err)
		}
	})
	return map[string]string{
		"UPLOAD_DIR":           t.TempDir(),
		"S3_BUCKET":            bucket.Bucket,
		"S3_ENDPOINT":          bucket.Endpoint,
		"S3_ACCESS_KEY_ID":     bucket.AccessKey,
		"S3_SECRET_ACCESS_KEY": bucket.SecretKey,
		"S3_PREFIX":            prefix,
	}
}

// with returns env with more settings added (a new map).
func with(env map[string]string, kv ...string) map[string]string {
	out := maps.Clone(env)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// storedKeys lists the keys s's blob store holds (originals and variants).
func (s *testServer) storedKeys() []string {
	s.t.Helper()
	var keys []string
	switch b := s.blobs.(type) {
	case *fsBlobs:
		filepath.WalkDir(filepath.Join(b.root, originalDir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(b.root, p)
				keys = append(keys, filepath.ToSlash(rel))
			}
			return nil
		})
	case *s3Blobs:
		err := b.c.list(context.Background(), originalDir+"/", func(objs []s3Object) error {
			for _, o := range objs {
				keys = append(keys, o.Key)
			}
			return nil
		})
		if err != nil {
			s.t.Fatalf("listing the bucket: %v", err)
		}
	}
	slices.Sort(keys)
	return keys
}

// createTestDatabase creates database name on the server adminURL points at and returns its URL.
func createTestDatabase(adminURL, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	cfg := conn.Config()
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name), nil
}

// dropTestDatabase drops database name, disconnecting whoever is still on it.
func dropTestDatabase(adminURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// freshDatabase creates an empty database for one test and drops it when the test ends.
func freshDatabase(t testing.TB) string {
	t.Helper()
	name := "imageapi_test_" + randomHex(6)
	admin := needDBServer(t).admin
	url, err := createTestDatabase(admin, name)
	if err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		if err := dropTestDatabase(admin, name); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return url
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// testEnv is the environment every test server starts from: this run's database, cheap password
// hashing (the RFC vectors prove the algorithm; cost only slows the suite), and a temp upload dir.
func testEnv(t testing.TB, overrides map[string]string) func(string) string {
	env := map[string]string{
		"DATABASE_URL": "", // needDB(t), unless the test names its own
		"SCRYPT_N":     "1024",
		"UPLOAD_DIR":   t.TempDir(),
		"ADDR":         "127.0.0.1:0",
		"LOG_LEVEL":    "warn",
		// The suite signs up and uploads far faster than any person: the abuse limits are off here
		// and tested on their own (limits_test.go).
		"AUTH_RATE_PER_ADDR":   "0",
		"AUTH_FREE_FAILURES":   "0",
		"SIGNUP_RATE_PER_ADDR": "0",
		"UPLOADS_PER_USER":     "1024",
		"UPLOADS_PER_ADDR":     "1024",
		"METRICS_ADDR":         metricsOnMain, // the tests read /metrics through the handler
	}
	for k, v := range overrides {
		env[k] = v
	}
	if env["DATABASE_URL"] == "" {
		env["DATABASE_URL"] = needDB(t)
	}
	return func(k string) string { return env[k] }
}

// testServer is an app wired to the real services behind an httptest server.
type testServer struct {
	*app
	srv *httptest.Server
	t   testing.TB
}

// newTestServer starts the real handler, migrated, on the test database (or as overridden).
func newTestServer(t testing.TB, overrides map[string]string) *testServer {
	t.Helper()
	s, err := openTestServer(t, overrides)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openTestServer is newTestServer returning its error, for use from other goroutines.
func openTestServer(t testing.TB, overrides map[string]string) (*testServer, error) {
	cfg, err := loadConfig(testEnv(t, overrides))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg.Mode = modeAll
	if m := overrides["MODE"]; m != "" {
		cfg.Mode = m
	}
	log := slog.New(slog.NewJSONHandler(testLogWriter{t}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx := context.Background()
	pool, err := connectDB(ctx, cfg.DatabaseURL, log)
	if err != nil {
		return nil, err
	}
	t.Cleanup(pool.Close)
	if err := migrate(ctx, pool, log); err != nil {
		return nil, err
	}
	a, err := newApp(ctx, cfg, pool, log)
	if err != nil {
		return nil, err
	}
	t.Cleanup(a.close)
	ts := &testServer{app: a, t: t, srv: httptest.NewServer(a.routes())}
	t.Cleanup(ts.srv.Close)
	return ts, nil
}

// httptestServer serves h for the rest of the test and returns its URL.
func httptestServer(t testing.TB, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// testLogWriter sends the server's log lines to the test's log, shown when the test fails.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// response is what a test request got back.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into v, failing the test when it is not JSON.
func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body is not JSON (%v): %s", err, r.body)
	}
}

// problem decodes a problem+json body and checks its shape: content type, status and a detail.
func (r response) problem(t testing.TB, wantStatus int) problem {
	t.Helper()
	if r.status != wantStatus {
		t.Fatalf("status = %d, want %d; body: %s", r.status, wantStatus, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	var p problem
	r.json(t, &p)
	if p.Status != wantStatus || p.Detail == "" || p.Title == "" {
		t.Fatalf("problem = %+v: want status %d, a title and a detail", p, wantStatus)
	}
	return p
}

// do sends a request to the test server. body may be nil, a []byte, a string, or any value to
// send as JSON; header pairs follow.
func (s *testServer) do(method, path string, body any, header ...string) response {
	s.t.Helper()
	return doRequest(s.t, s.srv.URL, method, path, body, header...)
}

// testClient is the tests' HTTP client: it answers a redirect instead of following it, so a test
// sees what the server said.
var testClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func doRequest(t testing.TB, base, method, path string, body any, header ...string) response {
	t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, ct = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// signupAndLogin creates a fresh user and returns its name and a bearer header value.
func (s *testServer) signupAndLogin() (string, string) {
	s.t.Helper()
	name := "u_" + randomHex(5)
	if r := s.do("POST", "/api/v1/auth/signup", credentials{name, "correct horse"}); r.status != 200 {
		s.t.Fatalf("signup: %d %s", r.status, r.body)
	}
	r := s.do("POST", "/api/v1/auth/token", credentials{name, "correct horse"})
	if r.status != 200 {
		s.t.Fatalf("token: %d %s", r.status, r.body)
	}
	var tok tokenResponse
	r.json(s.t, &tok)
	return name, "Bearer " + tok.AccessToken
}

// TestRun starts the real program the way main does, signs up through it, and stops it with its
// context: run must return nil after a graceful shutdown.
func TestRun(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-mode=api", "-env-file="}, testEnv(t, map[string]string{"ADDR": addr, "LOG_LEVEL": "info", "BROKER_URL": needBroker(t), "QUEUE_NAME": testQueue(t)}), &out, &out)
	}()
	base := "http://" + addr
	waitReady(t, base, done)
	name := "run_" + randomHex(4)
	if r := doRequest(t, base, "POST", "/api/v1/auth/signup", credentials{name, "password123"}); r.status != 200 {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	if err := run(ctx, []string{"-healthcheck", "-env-file="}, testEnv(t, map[string]string{"ADDR": addr}), io.Discard, io.Discard); err != nil {
		t.Errorf("-healthcheck against a ready server: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) {
		t.Errorf("log lacks the stop line:\n%s", out.String())
	}
	if strings.Contains(out.String(), "password123") {
		t.Errorf("log contains a password:\n%s", out.String())
	}
	if err := run(context.Background(), []string{"-healthcheck", "-env-file="}, testEnv(t, map[string]string{"ADDR": addr}), io.Discard, io.Discard); err == nil {
		t.Error("-healthcheck against a stopped server succeeded")
	}
}

func TestRunRejectsBadMode(t *testing.T) {
	err := run(context.Background(), []string{"-mode=everything", "-env-file="}, testEnv(t, nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "everything") {
		t.Fatalf("err = %v", err)
	}
}

// waitReady polls base/healthz until it answers 200, or fails when run returns first.
func waitReady(t testing.TB, base string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		default:
		}
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("server did not become healthy")
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestReadyz(t *testing.T) {
	s := newTestServer(t, nil)
	if r := s.do("GET", "/readyz", nil); r.status != 200 {
		t.Fatalf("readyz: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/healthz", nil); r.status != 200 {
		t.Fatalf("healthz: %d %s", r.status, r.body)
	}
	s.pool.Close() // the database is now unreachable for this server
	p := s.do("GET", "/readyz", nil).problem(t, http.StatusServiceUnavailable)
	if !strings.Contains(p.Detail, "database") {
		t.Errorf("detail %q does not name the database", p.Detail)
	}
	if r := s.do("GET", "/healthz", nil); r.status != 200 {
		t.Fatalf("healthz must not depend on the database: %d", r.status)
	}
}

// heapBytes is the live and not-yet-swept heap, read without stopping the world.
func heapBytes() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// sampleHeap records the heap's peak until stop is called, which returns the growth over base.
func sampleHeap() (stop func() float64) {
	runtime.GC()
	base := heapBytes()
	var peak atomic.Uint64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if h := heapBytes(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() float64 {
		close(done)
		<-sampled
		return float64(peak.Load()-min(base, peak.Load())) / (1 << 20)
	}
}

// peakRSSMiB is this process's peak resident set (VmHWM), in MiB; 0 where /proc is missing. It covers
// the whole process, so it speaks for one benchmark only when the run selects just that one.
func peakRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}
