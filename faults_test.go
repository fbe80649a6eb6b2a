package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// TestKilledWorkerJobsReturn: a worker process SIGKILLed while it holds a job gives the image back
// within one lease (kept short by the heartbeat) and a sweep: another worker finishes it, once. The
// time from the kill to the image being taken up again is logged.
func TestKilledWorkerJobsReturn(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	// A database of its own: its workers' sweepers must not take other parallel tests' jobs.
	queue, dir, db := testQueue(t), t.TempDir(), freshDatabase(t)
	// A short lease and sweep: what is measured is that the image comes back within one of each.
	env := map[string]string{"DATABASE_URL": db, "BROKER_URL": needBroker(t), "QUEUE_NAME": queue,
		"UPLOAD_DIR": dir, "WORKER_CONCURRENCY": "1", "JOB_LEASE": "3s", "SWEEP_INTERVAL": "1s"}
	api := newTestServer(t, map[string]string{"DATABASE_URL": db, "MODE": modeAPI, "BROKER_URL": needBroker(t), "QUEUE_NAME": queue, "UPLOAD_DIR": dir})
	_, auth := api.signupAndLogin()
	doomed := startBinary(t, env, "-mode=worker")
	// A job that takes a while: the 49 MP 16-bit PNG (about 2 s).
	v := api.mustUpload(auth, "held", "", "big.png", png16Bomb(t, 7000, 7000))
	api.waitStatus(auth, v.ID, 30*time.Second, statusProcessing)
	doomed.stop(syscall.SIGKILL)
	killed := time.Now()
	startBinary(t, env, "-mode=worker")
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
	t.Logf("taken up again %.1f s after the worker was killed (JOB_LEASE 3s, SWEEP_INTERVAL 1s)", back.Seconds())
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
	u, err := url.Parse(needDB(t))
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
	proxy.restore()
	// A refused upload's file goes at once, or (if its insert may have committed as the connection
	// died) once the database answers that no row refers to it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after := len(filesUnder(t, dir))
		if after == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d files after the outage, %d before: the refused upload left one", after, before)
		}
	}
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
		var variants map[string]storedVariant
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

// faultRig is the fault-injection setup: two API replicas and a worker, each the real binary, whose
// PostgreSQL, Redis and RabbitMQ are reached through proxies the test cuts and restores.
type faultRig struct {
	t                 *testing.T
	db, redis, broker *tcpProxy
	env               map[string]string
	dbURL, dir        string
	api1, api2        *binaryServer
	worker            *binaryServer
	auth              string

	mu       sync.Mutex
	accepted []int64 // every image an upload through the faults was answered 201 for
}

// keep records ids as accepted.
func (r *faultRig) keep(ids ...int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accepted = append(r.accepted, ids...)
}

// newFaultRig starts the rig and signs a user in.
func newFaultRig(t *testing.T) *faultRig {
	via := func(raw string) (*tcpProxy, string) {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, u.Host)
		u.Host = p.addr()
		return p, u.String()
	}
	r := &faultRig{t: t, dir: t.TempDir(), dbURL: freshDatabase(t)}
	var dbVia, redisVia, brokerVia string
	r.db, dbVia = via(r.dbURL)
	r.redis, redisVia = via(needRedis(t))
	r.broker, brokerVia = via(needBroker(t))
	r.env = map[string]string{"DATABASE_URL": dbVia, "BROKER_URL": brokerVia, "QUEUE_NAME": testQueue(t),
		"UPLOAD_DIR": r.dir, "SWEEP_INTERVAL": "500ms", "REDIS_URL": redisVia, "REDIS_PREFIX": redisPrefix(t),
		"UPLOADS_PER_USER": "64", "UPLOADS_PER_ADDR": "64"}
	r.api1 = startBinary(t, r.env, "-mode=api")
	r.api2 = startBinary(t, r.env, "-mode=api")
	r.worker = startBinary(t, r.env, "-mode=worker")
	name := "f_" + randomHex(4)
	if resp := doRequest(t, r.api1.base, "POST", "/api/v1/auth/signup", credentials{name, "correct horse"}); resp.status != 200 {
		t.Fatalf("signup: %d %s", resp.status, resp.body)
	}
	var tok tokenResponse
	doRequest(t, r.api2.base, "POST", "/api/v1/auth/token", credentials{name, "correct horse"}).json(t, &tok)
	r.auth = "Bearer " + tok.AccessToken
	return r
}

// upload sends a small PNG to base and returns the new image's id.
func (r *faultRig) upload(base string, i int) (int64, error) {
	body, ct := multipartBody(r.t, "file", "a.png", tinyPNG(r.t, 30+i%50, 20))
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/images/?name=f%d", base, i), bytes.NewReader(body))
	req.Header.Set("Authorization", r.auth)
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

// get reads image id through base.
func (r *faultRig) get(base string, id int64) (int, imageView) {
	resp := doRequest(r.t, base, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", r.auth)
	var v imageView
	if resp.status == 200 {
		resp.json(r.t, &v)
	}
	return resp.status, v
}

// waitReady waits until every image of ids is ready.
func (r *faultRig) waitReady(ids []int64) {
	for _, id := range ids {
		deadline := time.Now().Add(time.Minute)
		for {
			_, v := r.get(r.api1.base, id)
			if v.Status == statusReady {
				break
			}
			if v.Status == statusFailed || time.Now().After(deadline) {
				r.t.Fatalf("image %d: %s %v", id, v.Status, v.Error)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestFaultInjection runs the rig through the faults an operator meets, in order: RabbitMQ cut during
// uploads; RabbitMQ cut and the worker stopped while it drains; Redis cut under four readers; a
// rename through one replica while Redis is cut, read through the other; a generation key lost; a
// PostgreSQL cut; RabbitMQ restarted with messages queued; an API replica stopped mid-upload. It ends
// with an integrity pass (every row's original hashes to its sha256, every recorded variant exists,
// no file without a row). Its figures are logged (go test -run FaultInjection -v .).
func TestFaultInjection(t *testing.T) {
	r := newFaultRig(t)
	r.brokerCutDuringUploads()
	r.brokerCutWhileDraining()
	r.redisCutUnderReaders()
	id := r.redisPartitionedRename()
	r.generationLost()
	r.databaseCut(id)
	r.brokerRestarted()
	r.apiStoppedMidUpload()
	r.waitReady(r.accepted)
	t.Logf("%d uploads accepted through the faults, all ready", len(r.accepted))
	integrityPass(t, r.dbURL, r.dir)
}

// brokerCutDuringUploads is the fault: RabbitMQ cut during uploads: every upload accepted, all ready once it returns.
func (r *faultRig) brokerCutDuringUploads() {
	t := r.t
	r.broker.cut()
	for i := range 10 {
		id, err := r.upload([]string{r.api1.base, r.api2.base}[i%2], i)
		if err != nil {
			t.Fatalf("upload %d during the broker cut: %v", i, err)
		}
		r.keep(id)
	}
	r.broker.restore()
	r.waitReady(r.accepted)
}

// brokerCutWhileDraining is the fault: RabbitMQ cut, then the worker stopped (SIGTERM), while it drains 20 jobs: none lost.
func (r *faultRig) brokerCutWhileDraining() {
	t := r.t
	var draining []int64
	for i := range 20 {
		id, err := r.upload(r.api1.base, 20+i)
		if err != nil {
			t.Fatal(err)
		}
		draining = append(draining, id)
	}
	r.broker.cut()
	time.Sleep(300 * time.Millisecond)
	r.broker.restore()
	r.worker.stop(syscall.SIGTERM)
	r.worker = startBinary(t, r.env, "-mode=worker")
	r.waitReady(draining)
	r.keep(draining...)
}

// redisCutUnderReaders is the fault: Redis cut for 2 s under 4 readers: every read answered (from PostgreSQL).
func (r *faultRig) redisCutUnderReaders() {
	t := r.t
	var reads, failed atomic.Int64
	stopReaders := make(chan struct{})
	var readers sync.WaitGroup
	for i := range 4 {
		readers.Go(func() {
			base := []string{r.api1.base, r.api2.base}[i%2]
			for {
				select {
				case <-stopReaders:
					return
				default:
				}
				if code, _ := r.get(base, r.accepted[i]); code != 200 {
					failed.Add(1)
				}
				reads.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	r.redis.cut()
	time.Sleep(2 * time.Second)
	r.redis.restore()
	time.Sleep(500 * time.Millisecond)
	close(stopReaders)
	readers.Wait()
	t.Logf("Redis cut for 2 s under 4 readers: %d reads, %d failed", reads.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d of %d reads failed while Redis was cut", failed.Load(), reads.Load())
	}
}

// redisPartitionedRename is the fault: a rename through API 1 while Redis is cut, then reads through API 2 once Redis is back: never the old name. It returns the renamed image.
func (r *faultRig) redisPartitionedRename() int64 {
	t := r.t
	id := r.accepted[0]
	r.get(r.api2.base, id)
	r.get(r.api2.base, id) // cached by API 2
	r.redis.cut()
	if resp := doRequest(t, r.api1.base, "PUT", fmt.Sprint("/api/v1/images/", id), map[string]string{"name": "renamed"}, "Authorization", r.auth); resp.status != 200 {
		t.Fatalf("rename during the Redis cut: %d %s", resp.status, resp.body)
	}
	r.redis.restore()
	stale := 0
	for range 100 {
		if _, v := r.get(r.api2.base, id); v.Name != "renamed" {
			stale++
		}
	}
	t.Logf("Redis partition: %d stale reads of 100 through the other replica after the write", stale)
	if stale > 0 {
		t.Errorf("%d stale reads after the Redis partition", stale)
	}
	return id
}

// generationLost is the fault: a generation key lost (as eviction takes it) after two writes: no stale list.
func (r *faultRig) generationLost() {
	t := r.t
	opt, _ := redis.ParseURL(needRedis(t))
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	list := func() int {
		resp := doRequest(t, r.api2.base, "GET", "/api/v1/images/?limit=100", nil, "Authorization", r.auth)
		n, _ := strconv.Atoi(resp.header.Get("X-Total-Count"))
		return n
	}
	before := list()
	for i := range 2 {
		nid, err := r.upload(r.api1.base, 100+i)
		if err != nil {
			t.Fatal(err)
		}
		r.keep(nid)
	}
	keys, _ := rdb.Keys(context.Background(), r.env["REDIS_PREFIX"]+"gen:*").Result()
	rdb.Del(context.Background(), keys...)
	for range 3 {
		if n := list(); n != before+2 {
			t.Errorf("after losing the generation: %d images listed, want %d", n, before+2)
		}
	}
}

// databaseCut is the fault: PostgreSQL cut for 2 s: 503 with Retry-After, never 500; back at once (reading image id).
func (r *faultRig) databaseCut(id int64) {
	t := r.t
	r.db.cut()
	codes := map[int]int{}
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		resp := doRequest(t, r.api2.base, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", r.auth)
		codes[resp.status]++
		if resp.status == 503 && resp.header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	}
	r.db.restore()
	t.Logf("PostgreSQL cut: status codes %v", codes)
	if codes[500] > 0 || codes[200] == 20 {
		t.Errorf("during the PostgreSQL cut: %v, want 503s (or cached 200s) and no 500", codes)
	}
	if code, _ := r.get(r.api1.base, id); code != 200 {
		t.Errorf("after the PostgreSQL cut: %d", code)
	}
}

// brokerRestarted is the fault: RabbitMQ restarted with messages queued (the worker stopped meanwhile): none lost.
func (r *faultRig) brokerRestarted() {
	t := r.t
	r.worker.stop(syscall.SIGTERM)
	var queued []int64
	for i := range 5 {
		nid, err := r.upload(r.api1.base, 200+i)
		if err != nil {
			t.Fatal(err)
		}
		queued = append(queued, nid)
	}
	for _, args := range [][]string{{"stop_app"}, {"start_app"}, {"await_startup"}} {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %s: %v\n%s", args[0], err, out)
		}
	}
	r.worker = startBinary(t, r.env, "-mode=worker")
	r.waitReady(queued)
	r.keep(queued...)
}

// apiStoppedMidUpload is the fault: API 2 stopped (SIGTERM) in the middle of uploads: what it accepted is kept; API 1 takes all.
func (r *faultRig) apiStoppedMidUpload() {
	t := r.t
	var wg sync.WaitGroup
	for i := 300; i < 320; i++ {
		wg.Go(func() {
			nid, err := r.upload([]string{r.api1.base, r.api2.base}[i%2], i)
			if err != nil && i%2 == 0 {
				t.Errorf("upload %d to the replica that stays: %v", i, err)
			}
			if err == nil {
				r.keep(nid)
			}
		})
		if i == 310 {
			r.api2.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	wg.Wait()
}
