// Fair limits: bounded limiter tables, sign-up and failed sign-in rate limits, the sign-in throttle
// per account and network, upload slots (per user, per client address, in all), the multipart
// preamble cap, and the upload pace (MIN_UPLOAD_RATE judged on average).
package main

import (
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// limiterTable is the state of a limiter, one small entry per key, bounded in entries and so in
// bytes: keys are kept only as 64-bit hashes under a seed of this process's own (a client can
// neither make two keys collide on purpose nor grow an entry with a long key), and when the table is
// full a new key evicts the least recently touched of a few sampled entries instead of being refused.
// About limiterEntryBytes bytes an entry (TestPureLimiterTableBytes measures it). Not safe for concurrent
// use: its owner locks.
type limiterTable struct {
	seed    maphash.Seed
	max     int
	entries map[uint64]limiterEntry
}

// limiterEntry is one key's state: a count (tokens, or failures) as of a time.
type limiterEntry struct {
	n    float64
	when int64 // Unix nanoseconds
}

// limiterEntryBytes bounds what one entry of a full limiterTable costs: 8 bytes of key and 16 of
// value in a Go map, with its groups' control words, free slots and the tombstones eviction leaves
// (about 70 bytes measured, TestPureLimiterTableBytes).
const limiterEntryBytes = 96

// evictionSample is how many entries a full table looks at to choose the one to evict.
const evictionSample = 8

func newLimiterTable(max int) *limiterTable {
	return &limiterTable{seed: maphash.MakeSeed(), max: max, entries: map[uint64]limiterEntry{}}
}

// key hashes a limiter key.
func (t *limiterTable) key(k string) uint64 { return maphash.String(t.seed, k) }

// get returns the entry for hashed key h, and whether there is one.
func (t *limiterTable) get(h uint64) (limiterEntry, bool) {
	e, ok := t.entries[h]
	return e, ok
}

// put stores e under h, first evicting an old entry when the table is full.
func (t *limiterTable) put(h uint64, e limiterEntry) {
	if _, ok := t.entries[h]; !ok && len(t.entries) >= t.max {
		var victim uint64
		oldest, seen := int64(math.MaxInt64), 0
		for k, v := range t.entries { // map order is random: a fair sample
			if v.when < oldest {
				victim, oldest = k, v.when
			}
			if seen++; seen == evictionSample {
				break
			}
		}
		delete(t.entries, victim)
	}
	t.entries[h] = e
}

// drop forgets h.
func (t *limiterTable) drop(h uint64) { delete(t.entries, h) }

// forget removes every entry stale says is as good as none.
func (t *limiterTable) forget(stale func(limiterEntry) bool) {
	for k, v := range t.entries {
		if stale(v) {
			delete(t.entries, k)
		}
	}
}

// rateLimiter is a set of token buckets, one per key: each holds up to burst tokens and refills at
// rate per second; a request takes one. Its table is bounded (limiterTable): buckets that have
// refilled completely are forgotten (they are as good as new), and when it is full the oldest give
// way, so a flood of addresses can neither grow memory nor shut others out.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu    sync.Mutex
	table *limiterTable
	swept time.Time
}

// newRateLimiter allows burst requests at once and n per period after that, for each key, keeping
// at most maxKeys keys.
func newRateLimiter(n int, period time.Duration, maxKeys int) *rateLimiter {
	return &rateLimiter{rate: float64(n) / period.Seconds(), burst: float64(n), now: time.Now, table: newLimiterTable(maxKeys)}
}

// allow takes a token from key's bucket. When there is none it returns false and how long until
// there is one.
func (l *rateLimiter) allow(key string) (bool, time.Duration) {
	if l == nil || l.burst <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	if now.Sub(l.swept) > full {
		l.table.forget(func(e limiterEntry) bool { return now.UnixNano()-e.when >= int64(full) })
		l.swept = now
	}
	h := l.table.key(key)
	b, ok := l.table.get(h)
	if !ok {
		b = limiterEntry{n: l.burst, when: now.UnixNano()}
	}
	b.n = min(l.burst, b.n+float64(now.UnixNano()-b.when)/1e9*l.rate)
	b.when = now.UnixNano()
	if b.n < 1 {
		l.table.put(h, b)
		return false, time.Duration((1 - b.n) / l.rate * float64(time.Second))
	}
	b.n--
	l.table.put(h, b)
	return true, 0
}

// refund gives back the token a request took: for limits that count failures, the request
// succeeded.
func (l *rateLimiter) refund(key string) {
	if l == nil || l.burst <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.table.key(key)
	if b, ok := l.table.get(h); ok {
		b.n = min(l.burst, b.n+1)
		l.table.put(h, b)
	}
}

// signinThrottle slows password guessing without letting anyone turn it against an account's owner
// (NIST SP 800-63B §5.2.2). It counts failures, not attempts: an attempt is charged as a failure when
// it starts (so a burst in flight is counted) and the charge is cleared when it succeeds.
//   - Per account and client network: the first `free` failures cost nothing; after them each
//     attempt waits a delay that doubles with every further failure (base, 2×base, …, at most
//     maxDelay) counted from the last one. A stranger guessing alice's password slows only the
//     stranger's own network.
//   - Per account: after `ceiling` consecutive failures from anywhere (a guess spread over many
//     networks), attempts from networks the account has never signed in from wait accountDelay
//     between one another; networks it has signed in from before are not held back, so the owner
//     is never locked out. A success anywhere resets the count.
//
// Keys are the lower-cased username, alone or with the client's network (clientKey); each table is a
// bounded limiterTable. The throttle is per process: behind N replicas a guesser gets N times the
// attempts, still bounded.
type signinThrottle struct {
	free         int
	base         time.Duration
	maxDelay     time.Duration
	ceiling      int
	accountDelay time.Duration
	forgetAfter  time.Duration // an entry untouched this long is forgotten
	now          func() time.Time

	mu      sync.Mutex
	perNet  *limiterTable // username + network → failures
	account *limiterTable // username → consecutive failures
	known   *limiterTable // username + network → when it last signed in successfully
	swept   time.Time
}

// newSigninThrottle makes a throttle with free failures per account and network before delays, at
// most ceiling consecutive failures per account from unknown networks before they are slowed, and
// tables of at most maxKeys entries each.
func newSigninThrottle(free, ceiling int, maxDelay time.Duration, maxKeys int) *signinThrottle {
	return &signinThrottle{free: free, base: time.Second, maxDelay: maxDelay, ceiling: ceiling,
		accountDelay: 10 * time.Second, forgetAfter: 24 * time.Hour, now: time.Now,
		perNet: newLimiterTable(maxKeys), account: newLimiterTable(maxKeys), known: newLimiterTable(maxKeys)}
}

// delayAfter is the wait the perNet throttle asks after n failures.
func (t *signinThrottle) delayAfter(n float64) time.Duration {
	over := int(n) - t.free
	if over < 0 {
		return 0
	}
	if over >= 30 || t.base<<over >= t.maxDelay {
		return t.maxDelay
	}
	return t.base << over
}

// begin is called before a sign-in attempt for username from network: it returns how long to wait
// when the attempt must not be tried yet, else charges it as a failure and returns 0.
func (t *signinThrottle) begin(username, network string) time.Duration {
	if t == nil || t.free <= 0 {
		return 0
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Sub(t.swept) > time.Hour {
		stale := func(e limiterEntry) bool { return now.UnixNano()-e.when > int64(t.forgetAfter) }
		t.perNet.forget(stale)
		t.account.forget(stale)
		t.known.forget(stale)
		t.swept = now
	}
	user := strings.ToLower(username)
	hn, ha := t.perNet.key(user+"\x00"+network), t.account.key(user)
	nf, _ := t.perNet.get(hn)
	if wait := time.Unix(0, nf.when).Add(t.delayAfter(nf.n)).Sub(now); nf.n > 0 && wait > 0 {
		return wait
	}
	af, _ := t.account.get(ha)
	if _, known := t.known.get(t.known.key(user + "\x00" + network)); !known && int(af.n) >= t.ceiling {
		if wait := time.Unix(0, af.when).Add(t.accountDelay).Sub(now); wait > 0 {
			return wait
		}
	}
	t.perNet.put(hn, limiterEntry{n: nf.n + 1, when: now.UnixNano()})
	t.account.put(ha, limiterEntry{n: af.n + 1, when: now.UnixNano()})
	return 0
}

// succeeded clears the failures of username (from network and in all) and remembers network as one
// it signs in from.
func (t *signinThrottle) succeeded(username, network string) {
	if t == nil || t.free <= 0 {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	user := strings.ToLower(username)
	t.perNet.drop(t.perNet.key(user + "\x00" + network))
	t.account.drop(t.account.key(user))
	t.known.put(t.known.key(user+"\x00"+network), limiterEntry{n: 1, when: now.UnixNano()})
}

// maxRateKeys is the default bound of each limiter table (LIMITER_KEYS): at limiterEntryBytes an
// entry, at most 9.6 MB each when full (five tables: under 50 MB).
const maxRateKeys = 100_000

// clientKey names the client of r for rate limits: its address, with an IPv6 address cut to its
// /64 (one host usually holds a whole /64). Behind a reverse proxy every client shares the proxy's
// address: limit there instead, or raise these limits.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// tooMany is the 429 for a rate limit, telling when to try again.
func tooMany(w http.ResponseWriter, wait time.Duration, what string) error {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return newError(http.StatusTooManyRequests, "too many %s; try again in %d s", what, secs)
}

// uploadSlots caps the uploads in flight: per user, per client address (an IPv6 /64), and in all.
// With the per-address cap, throwaway accounts from one network cannot take every slot.
type uploadSlots struct {
	perUser, perAddr, total int
	mu                      sync.Mutex
	byUser                  map[int64]int
	byAddr                  map[string]int // bounded by total: an address is here only while it has a slot
	all                     int
}

func newUploadSlots(perUser, perAddr, total int) *uploadSlots {
	return &uploadSlots{perUser: perUser, perAddr: perAddr, total: total, byUser: map[int64]int{}, byAddr: map[string]int{}}
}

// take reserves a slot for user at client address addr, or returns the error to answer with: 429
// when the user, or the address, has its uploads in flight already, 503 when the process has
// total; each with Retry-After.
func (s *uploadSlots) take(w http.ResponseWriter, user int64, addr string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byUser[user] >= s.perUser {
		w.Header().Set("Retry-After", "1")
		return nil, newError(http.StatusTooManyRequests, "you have %d uploads in progress already, the most at once; send the next when one ends", s.perUser)
	}
	if s.byAddr[addr] >= s.perAddr {
		w.Header().Set("Retry-After", "1")
		return nil, newError(http.StatusTooManyRequests, "your network has %d uploads in progress already, the most at once; send the next when one ends", s.perAddr)
	}
	if s.all >= s.total {
		w.Header().Set("Retry-After", "1")
		return nil, newError(http.StatusServiceUnavailable, "the server is receiving as many uploads as it takes at once; try again in a moment")
	}
	s.byUser[user]++
	s.byAddr[addr]++
	s.all++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.byUser[user]--; s.byUser[user] == 0 {
			delete(s.byUser, user)
		}
		if s.byAddr[addr]--; s.byAddr[addr] == 0 {
			delete(s.byAddr, addr)
		}
		s.all--
	}, nil
}

// errPreambleTooLarge is what preambleReader returns when the multipart body's preamble and part
// headers before the file's bytes pass their cap.
var errPreambleTooLarge = errors.New("multipart preamble and part headers too large")

// preambleReader caps what a multipart upload may send before its file part begins (the preamble,
// the headers of every part, and the fields before "file"), so that nobody makes the server hold
// megabytes of part headers (Go's multipart allows 10 MiB a part). It sits under the upload's
// bufio.Reader, which reads ahead: while closed it lets through max plus that buffer's size; the
// exact count is checked by consumed once the file part is found, and open lifts the cap.
type preambleReader struct {
	r     io.Reader
	limit int64 // bytes let through while closed
	n     int64 // bytes read so far
	open  bool
}

func (p *preambleReader) Read(b []byte) (int, error) {
	if !p.open {
		if p.n >= p.limit {
			return 0, errPreambleTooLarge
		}
		b = b[:min(int64(len(b)), p.limit-p.n)]
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// errTooSlow is what minRateReader returns when the client sends too slowly.
var errTooSlow = errors.New("upload too slow")

// errUploadTimeout is what minRateReader returns when an upload runs into REQUEST_TIMEOUT, however
// fast it came.
var errUploadTimeout = errors.New("upload took longer than the request timeout")

// minRateReader reads a request body that must arrive at rate bytes per second at least, on average
// over each window: a client that trickles (or stops) is cut off after a window instead of holding a
// slot, its buffers and a temp file until REQUEST_TIMEOUT, while one that keeps the rate is never cut
// short of REQUEST_TIMEOUT, however long it runs. Every read that brings bytes moves the connection's
// read deadline to a window ahead (never past the request's own deadline), so a read times out only
// when nothing at all came for a whole window.
type minRateReader struct {
	r        io.Reader
	rc       *http.ResponseController
	rate     int64
	window   time.Duration
	deadline time.Time // the request's own: REQUEST_TIMEOUT after it began
	start    time.Time // of the current window
	got      int64     // bytes in the current window
	now      func() time.Time
}

func newMinRateReader(w http.ResponseWriter, r io.Reader, rate int64, window time.Duration, deadline time.Time) *minRateReader {
	m := &minRateReader{r: r, rc: http.NewResponseController(w), rate: rate, window: window, deadline: deadline, now: time.Now}
	m.start = m.now()
	m.extend(m.start)
	return m
}

// extend moves the read deadline to a window after now, or to the request's deadline if sooner.
func (m *minRateReader) extend(now time.Time) {
	m.rc.SetReadDeadline(minTime(now.Add(m.window), m.deadline))
}

func (m *minRateReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	now := m.now()
	if n > 0 {
		m.got += int64(n)
		if elapsed := now.Sub(m.start); elapsed >= m.window {
			// The window's due: rate × its length, judged over the time it really lasted.
			if float64(m.got) < float64(m.rate)*elapsed.Seconds() {
				return n, fmt.Errorf("%w: %d bytes in %s", errTooSlow, m.got, elapsed.Round(time.Second))
			}
			m.start, m.got = now, 0
		}
		m.extend(now)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		if !now.Before(m.deadline) {
			return n, errUploadTimeout
		}
		return n, fmt.Errorf("%w: nothing arrived for %s", errTooSlow, m.window)
	}
	return n, err
}

// done lifts the deadline once the body is read (the response has its own).
func (m *minRateReader) done() { m.rc.SetReadDeadline(time.Time{}) }

// minTime is the earlier of a and b.
func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
