// Cache: cache-aside over Redis for image metadata and list pages, invalidated by a per-user
// generation, with PostgreSQL as the answer whenever Redis fails, and an outbox in PostgreSQL so that
// no invalidation is ever lost.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache timing. Redis is on the fast path: a slow Redis must cost a request little, not hang it.
const (
	cacheTimeout = 150 * time.Millisecond // one Redis call, dial included
	cacheTTL     = 5 * time.Minute        // an entry's life; generations make it stale long before
	genTTL       = 7 * 24 * time.Hour     // a user's generation, renewed by every write
	loadTimeout  = 10 * time.Second       // the shared database read behind concurrent misses
	// drainInterval is how often every replica checks Redis and drains the outbox.
	drainInterval = 250 * time.Millisecond
	// invalidateRetry is how long a write keeps trying to bump its generation before it answers
	// anyway: longer than drainInterval, so that by then every replica that reads from Redis has
	// either drained the write's outbox row or seen Redis fail (and distrusts it).
	invalidateRetry = time.Second
)

// cache is cache-aside over Redis. Every entry of a user is keyed by that user's generation, a
// random token that every write replaces (invalidate), so no reader can see an entry from before the
// write, and entries of old generations simply expire. A token never recurs: a generation key that
// is lost (evicted, expired) is replaced by a new one, never by a value some old entry was cached
// under.
//
// Invalidations cannot be lost: each write also records one in PostgreSQL, in its own transaction
// (cache_outbox, filled by a trigger), and every replica drains that table into Redis. A replica that
// has seen Redis fail distrusts it — reads go to PostgreSQL — until it has drained the outbox with
// Redis answering again. A nil *cache caches nothing.
type cache struct {
	rdb    *redis.Client
	prefix string
	m      *metrics
	log    *slog.Logger
	flight flightGroup

	trusted  atomic.Bool  // false since a Redis failure, until a drain with Redis up completes
	failures atomic.Int64 // Redis failures so far: a drain trusts only if none happened during it
}

// lookupScript reads a user's generation and the entry under it in one round trip. A missing
// generation (evicted, expired) is set to the fresh token the caller brings, never back to a value
// entries were cached under.
// KEYS[1] = generation key; ARGV[1] .. gen .. ARGV[2] = entry key; ARGV[3] = fresh token;
// ARGV[4] = the generation's TTL in seconds.
var lookupScript = redis.NewScript(`
local g = redis.call('GET', KEYS[1])
if not g then
  g = ARGV[3]
  redis.call('SET', KEYS[1], g, 'EX', ARGV[4])
end
return {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
`)

// newGeneration returns a token no generation has had: 128 random bits. Every lookup brings one (in
// case the generation is missing), so it comes from math/rand/v2's per-process seeded generator, not
// the kernel: it must not repeat, it need not be secret.
func newGeneration() string {
	return fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
}

// newCache connects to the Redis at url (nil cache when url is empty). It does not fail when Redis is
// down: the cache then only counts errors until Redis is back.
func newCache(url, prefix string, m *metrics, log *slog.Logger) (*cache, error) {
	if url == "" {
		return nil, nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, errors.New("REDIS_URL: not a valid redis:// URL")
	}
	opt.DialTimeout = cacheTimeout
	opt.ReadTimeout = cacheTimeout
	opt.WriteTimeout = cacheTimeout
	opt.PoolTimeout = cacheTimeout
	opt.MaxRetries = -1   // a retry would double the time a dead Redis costs
	opt.DialerRetries = 1 // the default, 5 dials 100 ms apart, makes a dead Redis cost half a second
	// go-redis logs through a logger of its own, a process-wide setting: send it to ours, quietly,
	// once (the first cache's logger serves them all).
	setRedisLogger.Do(func() { redis.SetLogger(redisLogger{log}) })
	// Untrusted until the first drain: the outbox may hold what a replica could not invalidate.
	return &cache{rdb: redis.NewClient(opt), prefix: prefix, m: m, log: log}, nil
}

// setRedisLogger makes redis.SetLogger run once per process.
var setRedisLogger sync.Once

// redisLogger routes go-redis's own log lines to slog at debug level; the failures that matter are
// counted and logged where they are handled.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}

// close releases the Redis connections.
func (c *cache) close() {
	if c != nil {
		c.rdb.Close()
	}
}

// ping reports whether Redis answers, for /readyz.
func (c *cache) ping(ctx context.Context) error { return c.rdb.Ping(ctx).Err() }

func (c *cache) genKey(uid int64) string { return c.prefix + "gen:" + strconv.FormatInt(uid, 10) }

// cacheAside returns the entry sub of user uid, from Redis when it has it, else from load — called once
// for any number of concurrent misses of one entry — and then stored. Redis failures are counted and
// answered from load; only load's errors reach the caller.
func cacheAside[T any](ctx context.Context, c *cache, uid int64, sub string, load func(context.Context) (T, error)) (T, error) {
	if c == nil {
		return load(ctx)
	}
	if !c.trusted.Load() {
		c.m.cacheMisses.Add(1)
		return load(ctx)
	}
	userPart := c.prefix + "u:" + strconv.FormatInt(uid, 10) + ":"
	rctx, cancel := context.WithTimeout(ctx, cacheTimeout)
	res, err := lookupScript.Run(rctx, c.rdb, []string{c.genKey(uid)}, userPart, ":"+sub, newGeneration(), int64(genTTL/time.Second)).Slice()
	cancel()
	if err != nil || len(res) != 2 {
		c.redisFailed("lookup", err)
		c.m.cacheMisses.Add(1)
		return load(ctx)
	}
	gen, _ := res[0].(string)
	if s, ok := res[1].(string); ok {
		var v T
		if json.Unmarshal([]byte(s), &v) == nil {
			c.m.cacheHits.Add(1)
			return v, nil
		}
	}
	c.m.cacheMisses.Add(1)
	key := userPart + gen + ":" + sub
	v, err := c.flight.do(key, func() (any, error) {
		// The load is shared: one caller going away must not fail the others.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		c.m.cacheLoads.Add(1)
		v, err := load(lctx)
		if err != nil {
			return v, err
		}
		if b, err := json.Marshal(v); err == nil {
			// Stored under the generation read before the load: if a write bumped it meanwhile,
			// this entry is already unreachable.
			if err := c.rdb.Set(lctx, key, b, cacheTTL).Err(); err != nil {
				c.redisFailed("store", err)
			}
		}
		return v, nil
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v.(T), nil
}

// invalidate makes every cached entry of user uid unreachable. Call it after the database write
// commits. When Redis does not answer it keeps trying for up to invalidateRetry before it returns:
// the write's outbox row covers it in any case, and by then every replica that could serve the old
// entry has drained that row or distrusts Redis.
func (c *cache) invalidate(ctx context.Context, uid int64) {
	if c == nil {
		return
	}
	deadline := time.Now().Add(invalidateRetry)
	for {
		err := c.bump(ctx, uid)
		if err == nil {
			return
		}
		c.redisFailed("invalidate", err)
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(drainInterval / 5)
	}
}

// invalidateOnce is invalidate without the wait, for writes no client is waiting to read back (a
// worker's status changes, the sweeper's): one try, and the outbox covers a failure.
func (c *cache) invalidateOnce(ctx context.Context, uid int64) {
	if c == nil {
		return
	}
	if err := c.bump(ctx, uid); err != nil {
		c.redisFailed("invalidate", err)
	}
}

// bump replaces user uid's generation with a new token.
func (c *cache) bump(ctx context.Context, uid int64) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cacheTimeout)
	defer cancel()
	return c.rdb.Set(ctx, c.genKey(uid), newGeneration(), genTTL).Err()
}

// outbox is what drain reads and clears: the store's cache_outbox.
type outbox interface {
	pendingInvalidations(ctx context.Context, limit int) ([]pendingInvalidation, error)
	clearInvalidations(ctx context.Context, owner, maxID int64) error
}

// drain runs every drainInterval until ctx ends: it checks that Redis answers, bumps the generation
// of every user in the outbox and clears their rows, and trusts Redis again once a whole pass ran
// with no Redis failure anywhere in this replica. Without Redis (c nil) it only clears the outbox.
func (c *cache) drain(ctx context.Context, ob outbox) {
	t := time.NewTicker(drainInterval)
	defer t.Stop()
	for {
		c.drainOnce(ctx, ob)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// drainOnce is one pass of drain.
func (c *cache) drainOnce(ctx context.Context, ob outbox) {
	var failuresBefore int64
	if c != nil {
		failuresBefore = c.failures.Load()
		pctx, cancel := context.WithTimeout(ctx, cacheTimeout)
		err := c.rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			c.redisFailed("ping", err)
			return
		}
	}
	for {
		pending, err := ob.pendingInvalidations(ctx, 500)
		if err != nil {
			return // the database is away: try again next tick, distrust unchanged
		}
		for _, p := range pending {
			if c != nil {
				if err := c.bump(ctx, p.owner); err != nil {
					c.redisFailed("drain", err)
					return
				}
			}
			if err := ob.clearInvalidations(ctx, p.owner, p.maxID); err != nil {
				return
			}
		}
		if len(pending) < 500 {
			break
		}
	}
	if c != nil && c.failures.Load() == failuresBefore && !c.trusted.Load() {
		c.trusted.Store(true)
		c.log.Info("cache trusted again: the outbox is drained")
	}
}

// redisFailed counts a Redis failure and stops trusting the cache until a drain completes; the
// caller falls back to PostgreSQL.
func (c *cache) redisFailed(op string, err error) {
	c.m.cacheErrors.Add(1)
	c.failures.Add(1)
	if c.trusted.Swap(false) {
		c.log.Warn("cache distrusted until the outbox is drained", slog.String("op", op), slog.Any("error", err))
	}
}

// flightGroup runs one call per key at a time; callers arriving while it runs share its result.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	val  any
	err  error
}

// do runs fn for key unless a call for key is already running, in which case it waits for that
// call's result instead.
func (g *flightGroup) do(key string, fn func() (any, error)) (val any, err error) {
	g.mu.Lock()
	if c, ok := g.calls[key]; ok {
		g.mu.Unlock()
		<-c.done
		return c.val, c.err
	}
	if g.calls == nil {
		g.calls = map[string]*flightCall{}
	}
	c := &flightCall{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			// Waiters must not hang, nor read a nil value as a result.
			c.val, c.err = nil, fmt.Errorf("panic in shared load: %v", r)
		}
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
		val, err = c.val, c.err
	}()
	c.val, c.err = fn()
	return c.val, c.err
}
