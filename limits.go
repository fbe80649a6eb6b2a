// Abuse limits: rate limits on signing up and signing in (per client address and per username),
// caps on uploads in flight (per user and per process), and a minimum upload rate.
package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// rateLimiter is a set of token buckets, one per key: each holds up to burst tokens and refills at
// rate per second; a request takes one. The set is bounded: buckets that have refilled completely
// are forgotten (they are as good as new), and past maxKeys live buckets a new key is refused, so a
// flood of addresses cannot grow memory without bound.
type rateLimiter struct {
	rate    float64 // tokens per second
	burst   float64
	maxKeys int
	now     func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

// bucket is one key's tokens as of when.
type bucket struct {
	tokens float64
	when   time.Time
}

// newRateLimiter allows burst requests at once and n per period after that, for each key.
func newRateLimiter(n int, period time.Duration, maxKeys int) *rateLimiter {
	return &rateLimiter{rate: float64(n) / period.Seconds(), burst: float64(n), maxKeys: maxKeys,
		now: time.Now, buckets: map[string]*bucket{}}
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
	if now.Sub(l.swept) > full || len(l.buckets) >= l.maxKeys {
		for k, b := range l.buckets {
			if now.Sub(b.when) >= full {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.maxKeys {
			return false, time.Second
		}
		b = &bucket{tokens: l.burst, when: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.when).Seconds()*l.rate)
	b.when = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	}
	b.tokens--
	return true, 0
}

// maxRateKeys bounds each limiter's table: about 100 bytes a key, so 10 MB at most.
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

// uploadSlots caps the uploads in flight, per user and in all.
type uploadSlots struct {
	perUser, total int
	mu             sync.Mutex
	byUser         map[int64]int
	all            int
}

func newUploadSlots(perUser, total int) *uploadSlots {
	return &uploadSlots{perUser: perUser, total: total, byUser: map[int64]int{}}
}

// take reserves a slot for user, or returns the error to answer with: 429 when the user has
// perUser uploads in flight, 503 when the process has total; both with Retry-After.
func (s *uploadSlots) take(w http.ResponseWriter, user int64) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byUser[user] >= s.perUser {
		w.Header().Set("Retry-After", "1")
		return nil, newError(http.StatusTooManyRequests, "you have %d uploads in progress already, the most at once; send the next when one ends", s.perUser)
	}
	if s.all >= s.total {
		w.Header().Set("Retry-After", "1")
		return nil, newError(http.StatusServiceUnavailable, "the server is receiving as many uploads as it takes at once; try again in a moment")
	}
	s.byUser[user]++
	s.all++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.byUser[user]--; s.byUser[user] == 0 {
			delete(s.byUser, user)
		}
		s.all--
	}, nil
}

// errTooSlow is what minRateReader returns when the client sends too slowly.
var errTooSlow = errors.New("upload too slow")

// minRateReader reads a request body that must arrive at rate bytes per second at least, judged
// over each window: a client that trickles (or stops) is cut off after one window instead of holding
// a slot, its buffers and a temp file until REQUEST_TIMEOUT. It moves the connection's read deadline
// forward one window at a time, so a read that blocks does not outlast the window either.
type minRateReader struct {
	r      io.Reader
	rc     *http.ResponseController
	rate   int64
	window time.Duration
	start  time.Time // of the current window
	got    int64     // bytes in the current window
	now    func() time.Time
}

func newMinRateReader(w http.ResponseWriter, r io.Reader, rate int64, window time.Duration) *minRateReader {
	m := &minRateReader{r: r, rc: http.NewResponseController(w), rate: rate, window: window, now: time.Now}
	m.start = m.now()
	m.rc.SetReadDeadline(m.start.Add(window))
	return m
}

func (m *minRateReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.got += int64(n)
	if now := m.now(); now.Sub(m.start) >= m.window {
		if m.got < m.rate*int64(m.window/time.Second) {
			return n, fmt.Errorf("%w: %d bytes in %s", errTooSlow, m.got, now.Sub(m.start).Round(time.Second))
		}
		m.start, m.got = now, 0
		m.rc.SetReadDeadline(now.Add(m.window))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return n, fmt.Errorf("%w: nothing for %s", errTooSlow, m.window)
	}
	return n, err
}

// done lifts the deadline once the body is read (the response has its own).
func (m *minRateReader) done() { m.rc.SetReadDeadline(time.Time{}) }
