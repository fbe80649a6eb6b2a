package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
		opt, _ := redis.ParseURL(testRedisURL)
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
	s := newTestServer(t, map[string]string{"REDIS_URL": testRedisURL, "REDIS_PREFIX": redisPrefix(t)})
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
	c, err := newCache(testRedisURL, redisPrefix(t), m, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
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
			v, err := fetch(context.Background(), c, 1, "img:1", load)
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
	if v, _ := fetch(context.Background(), c, 1, "img:1", load); v != "value" || loads.Load() != 1 {
		t.Fatalf("after the shared load: %q, %d loads", v, loads.Load())
	}
	// A failed load is not cached and reaches every caller.
	boom := errors.New("boom")
	if _, err := fetch(context.Background(), c, 1, "img:2", func(context.Context) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

// TestCacheDirtyAfterLostInvalidation: when a write cannot bump the generation, this replica stops
// reading that user's entries (they might be stale) until a bump succeeds.
func TestCacheDirtyAfterLostInvalidation(t *testing.T) {
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	m := &metrics{}
	prefix := redisPrefix(t)
	c, _ := newCache(testRedisURL, prefix, m, log)
	defer c.close()
	load := func(v string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return v, nil }
	}
	fetch(context.Background(), c, 7, "img:1", load("old")) // cached as "old"
	// The same cache, as seen by a replica that cannot reach Redis for its invalidation.
	dead, _ := newCache("redis://127.0.0.1:1/0", prefix, m, log)
	defer dead.close()
	dead.invalidate(context.Background(), 7)
	if !dead.isDirty(7) {
		t.Fatal("a failed invalidation did not mark the user dirty")
	}
	// The dead replica's Redis "comes back" (same prefix, working client): it must not serve the
	// entry it could not invalidate until repair bumps the generation.
	dead.rdb = c.rdb
	if v, _ := fetch(context.Background(), dead, 7, "img:1", load("new")); v != "new" {
		t.Fatalf("dirty user served %q from the cache", v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { dead.repair(ctx, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for dead.isDirty(7) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if dead.isDirty(7) {
		t.Fatal("repair did not clear the user")
	}
	if v, _ := fetch(context.Background(), c, 7, "img:1", load("new")); v != "new" {
		t.Fatalf("after repair the old entry is still served: %q", v)
	}
}
