package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// pingRedis reports whether the Redis at url answers.
func pingRedis(url string) error {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// redisPrefix returns a key prefix for one test and deletes the test's keys when it ends.
func redisPrefix(t testing.TB) string {
	prefix := "imageapi_test_" + randomHex(4) + ":"
	t.Cleanup(func() {
		opt, _ := redis.ParseURL(needRedis(t))
		c := redis.NewClient(opt)
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return prefix
}

// TestCacheReadsSeeWrites: with Redis on, reads are served from it, and a read after every kind of
// write sees the write.
func TestCacheReadsSeeWrites(t *testing.T) {
	s := newTestServer(t, map[string]string{"REDIS_URL": needRedis(t), "REDIS_PREFIX": redisPrefix(t)})
	_, auth := s.signupAndLogin()
	m := s.metrics
	list := func() (string, string) {
		t.Helper()
		r := s.do("GET", "/api/v1/images/", nil, "Authorization", auth)
		if r.status != 200 {
			t.Fatalf("list: %d %s", r.status, r.body)
		}
		var vs []imageView
		r.json(t, &vs)
		var names []string
		for _, v := range vs {
			names = append(names, v.Name)
		}
		return strings.Join(names, ","), r.header.Get("X-Total-Count")
	}
	get := func(id int64) response {
		return s.do("GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth)
	}
	check := func(what, gotNames, gotTotal, wantNames, wantTotal string) {
		t.Helper()
		if gotNames != wantNames || gotTotal != wantTotal {
			t.Fatalf("%s: list = [%s] total %s, want [%s] total %s", what, gotNames, gotTotal, wantNames, wantTotal)
		}
	}
	n, total := list()
	check("empty", n, total, "", "0")
	hits := m.cacheHits.Load()
	n, total = list()
	check("empty again", n, total, "", "0")
	if m.cacheHits.Load() != hits+1 {
		t.Fatalf("second identical list was not a cache hit")
	}

	a := s.mustUpload(auth, "a", "", "a.png", tinyPNG(t, 2, 2))
	n, total = list()
	check("after upload", n, total, "a", "1")

	var v imageView
	get(a.ID).json(t, &v)
	hits = m.cacheHits.Load()
	get(a.ID).json(t, &v)
	if m.cacheHits.Load() != hits+1 || v.Name != "a" {
		t.Fatalf("second get was not a cache hit (%+v)", v)
	}
	if r := s.do("PUT", fmt.Sprint("/api/v1/images/", a.ID), map[string]any{"name": "renamed", "tags": "t"}, "Authorization", auth); r.status != 200 {
		t.Fatalf("put: %d", r.status)
	}
	get(a.ID).json(t, &v)
	if v.Name != "renamed" || strings.Join(v.Tags, ",") != "t" {
		t.Fatalf("get after put = %+v", v)
	}
	n, total = list()
	check("after put", n, total, "renamed", "1")
	b := s.mustUpload(auth, "b", "", "b.png", tinyPNG(t, 3, 2))
	n, total = list()
	check("after second upload", n, total, "b,renamed", "2")
	if r := s.do("DELETE", fmt.Sprint("/api/v1/images/", a.ID), nil, "Authorization", auth); r.status != 204 {
		t.Fatalf("delete: %d", r.status)
	}
	get(a.ID).problem(t, http.StatusNotFound)
	s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", a.ID), nil, "Authorization", auth).problem(t, http.StatusNotFound)
	n, total = list()
	check("after delete", n, total, "b", "1")
	if r := get(b.ID); r.status != 200 {
		t.Fatalf("get b: %d", r.status)
	}
	// Another user's cache is another user's: bob cannot read alice's cached image.
	_, bob := s.signupAndLogin()
	s.do("GET", fmt.Sprint("/api/v1/images/", b.ID), nil, "Authorization", bob).problem(t, http.StatusNotFound)
	if m.cacheErrors.Load() != 0 {
		t.Errorf("%d cache errors with Redis up", m.cacheErrors.Load())
	}
	if r := s.do("GET", "/readyz", nil); r.status != 200 || !strings.Contains(string(r.body), `"cache":"ok"`) {
		t.Errorf("readyz: %d %s", r.status, r.body)
	}
}

// TestCacheDown: with Redis unreachable every route still answers correctly, from PostgreSQL, and the
// failures are counted; readiness reports the cache down.
func TestCacheDown(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	s := newTestServer(t, map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0"})
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "a", "x", "a.png", tinyPNG(t, 2, 2))
	path := fmt.Sprint("/api/v1/images/", v.ID)
	if r := s.do("GET", path, nil, "Authorization", auth); r.status != 200 {
		t.Fatalf("get: %d", r.status)
	}
	if r := s.do("GET", "/api/v1/images/?tag=x", nil, "Authorization", auth); r.status != 200 || r.header.Get("X-Total-Count") != "1" {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	if r := s.do("PUT", path, map[string]string{"name": "b"}, "Authorization", auth); r.status != 200 {
		t.Fatalf("put: %d", r.status)
	}
	var got imageView
	s.do("GET", path, nil, "Authorization", auth).json(t, &got)
	if got.Name != "b" {
		t.Fatalf("get after put: %+v", got)
	}
	if r := s.do("GET", path+"/file", nil, "Authorization", auth); r.status != 200 {
		t.Fatalf("file: %d", r.status)
	}
	if r := s.do("DELETE", path, nil, "Authorization", auth); r.status != 204 {
		t.Fatalf("delete: %d", r.status)
	}
	s.do("GET", path, nil, "Authorization", auth).problem(t, http.StatusNotFound)
	if s.metrics.cacheErrors.Load() == 0 {
		t.Error("Redis failures were not counted")
	}
	p := s.do("GET", "/readyz", nil).problem(t, http.StatusServiceUnavailable)
	if !strings.Contains(p.Detail, "cache") {
		t.Errorf("readyz detail %q does not name the cache", p.Detail)
	}
	if r := s.do("GET", "/metrics", nil); !strings.Contains(string(r.body), "imageapi_cache_errors_total ") {
		t.Errorf("metrics lack the cache error counter:\n%s", r.body)
	}
}

// TestCacheSingleFlight: concurrent misses of one entry make one database read.
func TestCacheSingleFlight(t *testing.T) {
	m := &metrics{}
	c, err := newCache(needRedis(t), redisPrefix(t), m, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	c.drainOnce(context.Background(), &store{pool: openPool(t)}) // trusted, as newApp leaves it
	const n = 20
	var loads atomic.Int32
	load := func(ctx context.Context) (string, error) {
		loads.Add(1)
		// Hold the load until every caller has missed, so all of them overlap it.
		deadline := time.Now().Add(5 * time.Second)
		for m.cacheMisses.Load() < n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		return "value", nil
	}
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Go(func() {
			v, err := cacheAside(context.Background(), c, 1, "img:1", load)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		})
	}
	wg.Wait()
	if loads.Load() != 1 {
		t.Fatalf("%d loads for %d concurrent misses, want 1", loads.Load(), n)
	}
	for _, r := range results {
		if r != "value" {
			t.Fatalf("results = %v", results)
		}
	}
	// Now it is cached: no further load.
	if v, _ := cacheAside(context.Background(), c, 1, "img:1", load); v != "value" || loads.Load() != 1 {
		t.Fatalf("after the shared load: %q, %d loads", v, loads.Load())
	}
	// A failed load is not cached and reaches every caller.
	boom := errors.New("boom")
	if _, err := cacheAside(context.Background(), c, 1, "img:2", func(context.Context) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

// openPool opens a pool on this run's database for the test.
func openPool(t testing.TB) *pgxpool.Pool {
	pool, err := pgxpool.New(context.Background(), needDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// startDrain runs s's outbox drain until the test ends, as every replica's background does.
func startDrain(t testing.TB, s *testServer) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.cache.drain(ctx, s.store); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// replicas starts two API replicas on this run's database and one Redis key prefix, both draining
// the outbox, each with an image named "old name" of one user cached; the first (or, with both, each)
// reaches Redis through a proxy the test can cut. read returns the image's name through a replica.
func replicas(t *testing.T, bothCut bool) (a, b *testServer, cut *tcpProxy, rename func(*testServer, string), read func(*testServer) string) {
	prefix := redisPrefix(t)
	ru, err := url.Parse(needRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	cut = startProxy(t, ru.Host)
	viaProxy := *ru
	viaProxy.Host = cut.addr()
	bURL := needRedis(t)
	if bothCut {
		bURL = viaProxy.String()
	}
	a = newTestServer(t, map[string]string{"REDIS_URL": viaProxy.String(), "REDIS_PREFIX": prefix})
	b = newTestServer(t, map[string]string{"REDIS_URL": bURL, "REDIS_PREFIX": prefix})
	startDrain(t, a)
	startDrain(t, b)
	_, auth := a.signupAndLogin()
	v := a.mustUpload(auth, "old name", "", "a.png", tinyPNG(t, 8, 8))
	item := fmt.Sprint("/api/v1/images/", v.ID)
	read = func(s *testServer) string {
		var got imageView
		s.do("GET", item, nil, "Authorization", auth).json(t, &got)
		return got.Name
	}
	rename = func(s *testServer, name string) {
		if r := s.do("PUT", item, map[string]string{"name": name}, "Authorization", auth); r.status != 200 {
			t.Fatalf("rename: %d %s", r.status, r.body)
		}
	}
	for range 2 { // cached in Redis through B
		if n := read(b); n != "old name" {
			t.Fatalf("before: %q", n)
		}
	}
	return a, b, cut, rename, read
}

// TestCacheReadYourWritesAcrossReplicas: a rename through replica A while A cannot reach Redis, then
// reads through replica B (which can): B never serves the old name, although its cache held it.
// A's write recorded its invalidation in PostgreSQL; B drained it into Redis before A answered.
func TestCacheReadYourWritesAcrossReplicas(t *testing.T) {
	a, b, cut, rename, read := replicas(t, false)
	hits := b.metrics.cacheHits.Load()
	cut.cut()
	rename(a, "new name")
	stale := 0
	for range 50 {
		if read(b) != "new name" {
			stale++
		}
	}
	if stale > 0 {
		t.Errorf("%d of 50 reads through B after the write served the old name", stale)
	}
	if b.metrics.cacheHits.Load() == hits {
		t.Error("B never used its cache: the test proves nothing")
	}
	cut.restore()
	for range 10 {
		if n := read(a); n != "new name" {
			t.Fatalf("A after Redis is back: %q", n)
		}
	}
}

// TestCacheFullOutage: when Redis is cut from every replica, a replica that saw it fail (its drain
// pings it) distrusts its cache until the outbox is drained, so a write made during the cut is never
// read back stale once Redis returns, through any replica.
func TestCacheFullOutage(t *testing.T) {
	a, b, cut, rename, read := replicas(t, true)
	cut.cut()
	rename(a, "new name")
	// B made no request during the cut: only its drain can see Redis fail. Wait until it has.
	for deadline := time.Now().Add(10 * drainInterval); b.cache.trusted.Load(); time.Sleep(drainInterval / 10) {
		if time.Now().After(deadline) {
			t.Fatal("B's drain never saw Redis fail")
		}
	}
	cut.restore()
	stale := 0
	for range 100 {
		if read(b) != "new name" {
			stale++
		}
	}
	if stale > 0 {
		t.Errorf("%d of 100 reads through B after Redis returned served the old name", stale)
	}
}

// TestCacheLostGeneration: a user's generation key lost from Redis (evicted under allkeys-lru, or
// expired) is replaced by a token never used before, so entries cached under earlier generations
// never come back.
func TestCacheLostGeneration(t *testing.T) {
	prefix := redisPrefix(t)
	s := newTestServer(t, map[string]string{"REDIS_URL": needRedis(t), "REDIS_PREFIX": prefix})
	_, auth := s.signupAndLogin()
	count := func() int {
		r := s.do("GET", "/api/v1/images/", nil, "Authorization", auth)
		var vs []imageView
		r.json(t, &vs)
		return len(vs)
	}
	opt, _ := redis.ParseURL(needRedis(t))
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	genKeys := func() []string {
		keys, _ := rdb.Keys(context.Background(), prefix+"gen:*").Result()
		return keys
	}
	for want := range 3 {
		if n := count(); n != want { // cached under the current generation
			t.Fatalf("list of %d, want %d", n, want)
		}
		count()
		s.mustUpload(auth, "x", "", "a.png", tinyPNG(t, 8, 8))
		// The generation key goes, as eviction would take it.
		for _, k := range genKeys() {
			rdb.Del(context.Background(), k)
		}
		if n := count(); n != want+1 {
			t.Fatalf("after losing the generation: list of %d, want %d (an old entry came back)", n, want+1)
		}
	}
}
