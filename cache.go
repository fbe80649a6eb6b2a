// Cache: cache-aside over Redis for image metadata and list pages, invalidated by a per-user
// generation number, with PostgreSQL as the answer whenever Redis fails.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache timing. Redis is on the fast path: a slow Redis must cost a request little, not hang it.
const (
	cacheTimeout = 150 * time.Millisecond // one Redis call, dial included
	cacheTTL     = 5 * time.Minute        // an entry's life; generations make it stale long before
	genTTL       = 7 * 24 * time.Hour     // a user's generation counter, renewed by every write
	loadTimeout  = 10 * time.Second       // the shared database read behind concurrent misses
)

// cache is cache-aside over Redis. Every entry of a user is keyed by that user's generation number;
// every write bumps it (invalidate), so no reader can see an entry from before the write, and entries
// of old generations simply expire. A nil *cache caches nothing.
type cache struct {
	rdb    *redis.Client
	prefix string
	m      *metrics
	log    *slog.Logger
	flight flightGroup

	// Users whose invalidation failed (Redis down): their reads skip the cache until a later bump
	// succeeds, so this replica never serves what it could not invalidate.
	mu    sync.Mutex
	dirty map[int64]bool
}

// lookupScript reads a user's generation and the entry under it in one round trip.
// KEYS[1] = generation key; ARGV[1] .. gen .. ARGV[2] = entry key.
var lookupScript = redis.NewScript(`
local g = redis.call('GET', KEYS[1]) or '0'
return {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
`)

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
	// go-redis logs through a logger of its own (a process-wide setting): send it to ours, quietly.
	redis.SetLogger(redisLogger{log})
	return &cache{rdb: redis.NewClient(opt), prefix: prefix, m: m, log: log, dirty: map[int64]bool{}}, nil
}

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

// fetch returns the entry sub of user uid, from Redis when it has it, else from load — called once
// for any number of concurrent misses of one entry — and then stored. Redis failures are counted and
// answered from load; only load's errors reach the caller.
func fetch[T any](ctx context.Context, c *cache, uid int64, sub string, load func(context.Context) (T, error)) (T, error) {
	if c == nil {
		return load(ctx)
	}
	if c.isDirty(uid) {
		c.m.cacheMisses.Add(1)
		return load(ctx)
	}
	userPart := c.prefix + "u:" + strconv.FormatInt(uid, 10) + ":"
	rctx, cancel := context.WithTimeout(ctx, cacheTimeout)
	res, err := lookupScript.Run(rctx, c.rdb, []string{c.genKey(uid)}, userPart, ":"+sub).Slice()
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
// commits. When Redis cannot be told, this replica stops reading uid's entries until it can.
func (c *cache) invalidate(ctx context.Context, uid int64) {
	if c == nil {
		return
	}
	if err := c.bump(ctx, uid); err != nil {
		c.redisFailed("invalidate", err)
		c.mu.Lock()
		c.dirty[uid] = true
		c.mu.Unlock()
	}
}

func (c *cache) bump(ctx context.Context, uid int64) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cacheTimeout)
	defer cancel()
	pipe := c.rdb.TxPipeline()
	pipe.Incr(ctx, c.genKey(uid))
	pipe.Expire(ctx, c.genKey(uid), genTTL)
	_, err := pipe.Exec(ctx)
	return err
}

func (c *cache) isDirty(uid int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dirty[uid]
}

// repair retries the invalidations that failed, every interval until ctx ends, so users whose
// bump was lost are cached again once Redis is back.
func (c *cache) repair(ctx context.Context, interval time.Duration) {
	if c == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		users := make([]int64, 0, len(c.dirty))
		for uid := range c.dirty {
			users = append(users, uid)
		}
		c.mu.Unlock()
		for _, uid := range users {
			if c.bump(ctx, uid) != nil {
				break // still down; try again next tick
			}
			c.mu.Lock()
			delete(c.dirty, uid)
			c.mu.Unlock()
		}
	}
}

// redisFailed counts a Redis failure; the caller falls back to PostgreSQL.
func (c *cache) redisFailed(op string, err error) {
	c.m.cacheErrors.Add(1)
	c.log.Debug("cache unavailable", slog.String("op", op), slog.Any("error", err))
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
