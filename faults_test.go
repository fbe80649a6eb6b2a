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
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestKilledWorkerJobsReturn: a worker process SIGKILLed while it holds a job gives the image back
// within one lease (kept short by the heartbeat) and a sweep: another worker finishes it, once. The
// time from the kill to the image being taken up again is logged.
func TestKilledWorkerJobsReturn(t *testing.T) {
	queue := testQueue(t)
	dir := t.TempDir()
	env := map[string]string{"DATABASE_URL": testDB.url, "BROKER_URL": testBrokerURL, "QUEUE_NAME": queue,
		"UPLOAD_DIR": dir, "WORKER_CONCURRENCY": "1"}
	api := newTestServer(t, map[string]string{"MODE": modeAPI, "BROKER_URL": testBrokerURL, "QUEUE_NAME": queue, "UPLOAD_DIR": dir})
	_, auth := api.signupAndLogin()
	doomed := startBinary(t, env, "-mode=worker")
	// A job that takes a while: the 49 MP 16-bit PNG (about 2 s).
	v := api.mustUpload(auth, "held", "", "big.png", png16Bomb(t, 7000, 7000))
	api.waitStatus(auth, v.ID, 30*time.Second, statusProcessing)
	if err := doomed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	doomed.cmd.Process.Wait()
	startBinary(t, env, "-mode=worker") // defaults: JOB_LEASE 15s, SWEEP_INTERVAL 10s
	var back time.Duration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		var attempts int
		var status string
		api.pool.QueryRow(context.Background(), "SELECT attempts, status FROM images WHERE id = $1", v.ID).Scan(&attempts, &status)
		if attempts == 2 && back == 0 {
			back = time.Since(killed)
		}
		if status == statusReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s (attempts %d) a minute after its worker died", status, attempts)
		}
	}
	t.Logf("taken up again %.1f s after the worker was killed (JOB_LEASE 15s, SWEEP_INTERVAL 10s)", back.Seconds())
	if r := api.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=thumb_100", v.ID), nil, "Authorization", auth); r.status != http.StatusOK {
		t.Errorf("thumbnail: %d", r.status)
	}
}

// tcpProxy forwards connections to a target until cut: then it drops every connection it carries
// and refuses new ones (closing them at once), as a network partition with resets would, until
// restored. It stands between the service and PostgreSQL, Redis or RabbitMQ in the fault tests.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]bool
	down   bool
}

// startProxy listens on a free local port and forwards to target until the test ends.
func startProxy(t testing.TB, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}

// cut drops every connection and refuses new ones until restore.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
}

func (p *tcpProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// TestDatabaseOutage: while PostgreSQL is cut off, every route that needs it answers 503
// problem+json with Retry-After (never 500), an upload leaves no file behind, /healthz still
// answers and /readyz says what is down; once it is back, the same requests succeed.
func TestDatabaseOutage(t *testing.T) {
	u, err := url.Parse(testDB.url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startProxy(t, u.Host)
	u.Host = proxy.addr()
	dir := t.TempDir()
	s := newTestServer(t, map[string]string{"DATABASE_URL": u.String(), "UPLOAD_DIR": dir})
	name, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "before", "", "a.png", tinyPNG(t, 8, 8))
	item := fmt.Sprint("/api/v1/images/", v.ID)
	requests := []struct {
		method, path string
		body         func() (any, []string)
	}{
		{"GET", "/api/v1/images/", nil},
		{"GET", item, nil},
		{"GET", item + "/file", nil},
		{"PUT", item, func() (any, []string) { return map[string]string{"name": "renamed"}, nil }},
		{"POST", "/api/v1/auth/token", func() (any, []string) { return credentials{name, "correct horse"}, nil }},
		{"POST", "/api/v1/auth/signup", func() (any, []string) { return credentials{"new_" + randomHex(3), "correct horse"}, nil }},
		{"POST", "/api/v1/images/?name=during", func() (any, []string) {
			b, ct := multipartBody(t, "file", "a.png", tinyPNG(t, 9, 9))
			return b, []string{"Content-Type", ct}
		}},
		{"DELETE", item, nil},
	}
	send := func(method, path string, body func() (any, []string)) response {
		var b any
		var h []string
		if body != nil {
			b, h = body()
		}
		return s.do(method, path, b, append([]string{"Authorization", auth}, h...)...)
	}
	before := len(filesUnder(t, dir))
	proxy.cut()
	for _, rq := range requests {
		r := send(rq.method, rq.path, rq.body)
		r.problem(t, http.StatusServiceUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: 503 without Retry-After", rq.method, rq.path)
		}
	}
	if r := s.do("GET", "/healthz", nil); r.status != 200 {
		t.Errorf("/healthz: %d", r.status)
	}
	if p := s.do("GET", "/readyz", nil).problem(t, http.StatusServiceUnavailable); !strings.Contains(p.Detail, "database") {
		t.Errorf("/readyz: %s", p.Detail)
	}
	if after := len(filesUnder(t, dir)); after != before {
		t.Errorf("%d files after the outage, %d before: the refused upload left one", after, before)
	}
	proxy.restore()
	for _, rq := range requests {
		r := send(rq.method, rq.path, rq.body)
		if r.status >= 500 {
			t.Errorf("after the outage: %s %s: %d %s", rq.method, rq.path, r.status, r.body)
		}
	}
}

// integrityPass checks the store against the database: every row's original hashes to its sha256,
// every variant it records exists, and no file under UPLOAD_DIR/o belongs to no row.
func integrityPass(t *testing.T, dbURL, dir string) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rows, err := pool.Query(context.Background(), "SELECT file_key, sha256, variants FROM images")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for rows.Next() {
		var key, sum string
		var variants map[string]variantFile
		if err := rows.Scan(&key, &sum, &variants); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, key))
		if err != nil {
			t.Errorf("row's original %s: %v", key, err)
			continue
		}
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
			t.Errorf("original %s does not hash to its row's sha256", key)
		}
		want[filepath.Join(dir, key)] = true
		for name, v := range variants {
			if _, err := os.Stat(filepath.Join(dir, v.Key)); err != nil {
				t.Errorf("variant %s of %s: %v", name, key, err)
			}
			want[filepath.Join(dir, v.Key)] = true
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, f := range filesUnder(t, filepath.Join(dir, originalDir)) {
		if !want[f] {
			t.Errorf("file without a row: %s", f)
		}
	}
}

// TestFaultsRealProcesses: two API replicas and a worker, each the real binary, on RabbitMQ reached
// through a proxy. Uploads during a broker cut are all accepted and all become ready once it
// returns; an API replica stopped (SIGTERM) in the middle of uploads loses none that it accepted;
// at the end every row's files are intact and no file is without a row.
func TestFaultsRealProcesses(t *testing.T) {
	bu, err := url.Parse(testBrokerURL)
	if err != nil {
		t.Fatal(err)
	}
	broker := startProxy(t, bu.Host)
	viaProxy := *bu
	viaProxy.Host = broker.addr()
	dir := t.TempDir()
	dbURL := freshDatabase(t)
	env := map[string]string{"DATABASE_URL": dbURL, "BROKER_URL": viaProxy.String(), "QUEUE_NAME": testQueue(t),
		"UPLOAD_DIR": dir, "SWEEP_INTERVAL": "500ms", "REDIS_URL": testRedisURL, "REDIS_PREFIX": redisPrefix(t),
		"UPLOADS_PER_USER": "64"}
	api1 := startBinary(t, env, "-mode=api")
	api2 := startBinary(t, env, "-mode=api")
	startBinary(t, env, "-mode=worker")
	name := "f_" + randomHex(4)
	if r := doRequest(t, api1.base, "POST", "/api/v1/auth/signup", credentials{name, "correct horse"}); r.status != 200 {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	var tok tokenResponse
	doRequest(t, api2.base, "POST", "/api/v1/auth/token", credentials{name, "correct horse"}).json(t, &tok)
	auth := "Bearer " + tok.AccessToken
	upload := func(base string, i int) (int64, error) {
		body, ct := multipartBody(t, "file", "a.png", tinyPNG(t, 30+i, 20))
		req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/images/?name=f%d", base, i), bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		var v imageView
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return 0, err
		}
		return v.ID, nil
	}
	var accepted []int64
	broker.cut()
	for i := range 10 {
		id, err := upload([]string{api1.base, api2.base}[i%2], i)
		if err != nil {
			t.Fatalf("upload %d during the broker cut: %v", i, err)
		}
		accepted = append(accepted, id)
	}
	broker.restore()
	// Uploads to api2 while it is told to stop: each is either accepted (and then kept) or refused.
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 10; i < 30; i++ {
		wg.Go(func() {
			id, err := upload([]string{api1.base, api2.base}[i%2], i)
			if err != nil && i%2 == 0 {
				t.Errorf("upload %d to the replica that stays: %v", i, err)
			}
			if err == nil {
				mu.Lock()
				accepted = append(accepted, id)
				mu.Unlock()
			}
		})
		if i == 20 {
			api2.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	wg.Wait()
	for _, id := range accepted {
		deadline := time.Now().Add(time.Minute)
		for {
			var v imageView
			doRequest(t, api1.base, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth).json(t, &v)
			if v.Status == statusReady {
				break
			}
			if v.Status == statusFailed || time.Now().After(deadline) {
				t.Fatalf("image %d: %s %v", id, v.Status, v.Error)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("%d uploads accepted (10 during the broker cut), all ready", len(accepted))
	integrityPass(t, dbURL, dir)
}

// TestOutageClassification: what counts as a dependency outage (503) and what stays a bug (500).
func TestOutageClassification(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("store: insert image: %w", err) }
	for _, err := range []error{
		wrap(&net.OpError{Op: "read", Err: syscall.ECONNRESET}),
		wrap(io.ErrUnexpectedEOF),
		wrap(&pgconn.PgError{Code: "57P01"}),
		wrap(&pgconn.PgError{Code: "08006"}),
		wrap(&pgconn.PgError{Code: "53300"}),
	} {
		if !databaseUnavailable(err) {
			t.Errorf("%v: not an outage", err)
		}
	}
	for _, err := range []error{wrap(&pgconn.PgError{Code: "23505"}), wrap(errors.New("bug")), wrap(readError{io.ErrUnexpectedEOF})} {
		if databaseUnavailable(err) {
			t.Errorf("%v: taken for an outage", err)
		}
	}
	for _, err := range []error{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, fmt.Errorf("place: %w", &os.LinkError{Op: "rename", Err: syscall.EROFS})} {
		if !storageUnavailable(err) {
			t.Errorf("%v: not a storage outage", err)
		}
	}
	if storageUnavailable(&os.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}) {
		t.Error("a missing file taken for a storage outage")
	}
}
