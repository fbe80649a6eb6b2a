// Configuration: the config struct, read once from the environment (and a .env file) by loadConfig,
// with a default, a range and a check for every variable; docs/configuration.md documents each (README.md groups them).
package main

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// defaultMetricsAddr is where /metrics is served unless METRICS_ADDR says otherwise: loopback, so
// that only this host (a local Prometheus or agent) reads it, never the public.
const defaultMetricsAddr = "127.0.0.1:9090"

// metricsOnMain is the METRICS_ADDR that serves /metrics on the main listener, to everyone.
const metricsOnMain = "main"

// config is the service's whole configuration, read once by loadConfig.
type config struct {
	Mode string // -mode: all, api, worker or migrate

	// The services.
	DatabaseURL string
	BrokerURL   string // empty: jobs run in-process (mode all)
	RedisURL    string // empty: no cache
	RedisPrefix string // prefix of every Redis key, so several deployments can share one Redis
	QueueName   string // the RabbitMQ work queue; QueueName.retry and QueueName.dead beside it

	// The server.
	Addr            string
	MetricsAddr     string // the listener for /metrics (loopback by default); "main": the main one
	RequestTimeout  time.Duration
	ShutdownTimeout time.Duration
	LogLevel        slog.Level

	// Storage.
	UploadDir        string        // originals and variants (without S3_BUCKET), and temp files always
	S3               s3Config      // S3_BUCKET set: images live in that bucket, not under UPLOAD_DIR
	SignedURLTTL     time.Duration // lifetime of a signed_url
	DownloadRedirect bool          // (S3 only) downloads answer 307 to a presigned GET instead of the bytes

	// Accounts.
	SecretKey       []byte // empty: generated once and kept in the database
	TokenTTL        time.Duration
	SignupOpen      bool // SIGNUP=open; closed: only existing accounts sign in
	ScryptN         int  // scrypt cost for new password hashes (power of two)
	HashConcurrency int  // password hashes computed at once

	// Uploads, and the limits that keep the service fair (limits.go).
	MaxUploadBytes     int64
	MaxPixels          int64
	UserQuota          int64         // USER_QUOTA_BYTES: bytes one user may store, originals and variants; 0: unlimited
	UploadsPerUser     int           // uploads one user may have in flight
	UploadsPerAddr     int           // uploads one client address (IPv6: its /64) may have in flight
	UploadsTotal       int           // uploads the process takes in flight
	JobsPerUser        int           // images one user may have waiting for or in processing
	RendersPerUser     int           // display sizes one user's requests may have rendering at once
	MinUploadRate      int64         // bytes per second an upload must keep on average over each window; 0: off
	UploadRateWindow   time.Duration // the span MIN_UPLOAD_RATE is judged over
	AuthAddrRate       int           // failed sign-ins per minute per client address
	AuthFreeFailures   int           // failures per account and network before each attempt waits
	AuthMaxDelay       time.Duration // the longest of those waits
	AuthAccountCeiling int           // consecutive failures per account before unknown networks wait
	SignupAddrRate     int           // sign-ups per hour per client address
	LimiterKeys        int           // entries in each limiter table

	// Processing.
	Concurrency    int // WORKER_CONCURRENCY
	JPEGQuality    int
	JPEGDCT        bool
	JobTimeout     time.Duration // deadline of one job
	JobLease       time.Duration
	JobRetryDelay  time.Duration
	JobMaxAttempts int
	SweepInterval  time.Duration
	WorkerMemory   int64 // bytes the jobs running at once may need together (their estimates)
	MemoryLimit    int64 // the Go runtime's soft memory limit; 0: GOMEMLIMIT decides
}

// loadConfig reads the configuration from getenv, applies defaults and validates it. It is the only
// place that reads configuration.
func loadConfig(getenv func(string) string) (config, error) {
	r := &envReader{getenv: getenv}
	c := config{
		DatabaseURL: normalizeDatabaseURL(cmp.Or(getenv("DATABASE_URL"), "postgres://postgres@localhost:5432/imageapi?sslmode=disable")),
		BrokerURL:   getenv("BROKER_URL"),
		RedisURL:    getenv("REDIS_URL"),
		RedisPrefix: cmp.Or(getenv("REDIS_PREFIX"), "imageapi:"),
		QueueName:   cmp.Or(getenv("QUEUE_NAME"), "imageapi.jobs"),
		SecretKey:   []byte(getenv("SECRET_KEY")),
		Addr:        cmp.Or(getenv("ADDR"), ":8000"),
		UploadDir:   cmp.Or(getenv("UPLOAD_DIR"), "./uploads"),
		MetricsAddr: cmp.Or(strings.TrimSpace(getenv("METRICS_ADDR")), defaultMetricsAddr),
	}
	procs := int64(runtime.GOMAXPROCS(0))
	c.MaxUploadBytes = r.int("MAX_UPLOAD_BYTES", 25<<20, 1, 1<<40)
	c.MaxPixels = r.int("MAX_PIXELS", 50_000_000, 1, 1<<31)
	c.TokenTTL = r.duration("TOKEN_TTL", 24*time.Hour, time.Minute, 366*24*time.Hour)
	// With a bucket, each job also waits on the network (fetching its original, storing its
	// variants): twice as many at once keep the cores busy meanwhile. WORKER_MEMORY bounds them either way.
	jobsAtOnce := procs
	if strings.TrimSpace(getenv("S3_BUCKET")) != "" {
		jobsAtOnce *= 2
	}
	c.Concurrency = int(r.int("WORKER_CONCURRENCY", jobsAtOnce, 1, 1024))
	c.JPEGQuality = int(r.int("JPEG_QUALITY", 85, 1, 100))
	c.JPEGDCT = r.onOff("JPEG_DCT", true)
	c.ScryptN = int(r.int("SCRYPT_N", 1<<15, 2, 1<<20))
	c.HashConcurrency = int(r.int("HASH_CONCURRENCY", procs, 1, 256))
	c.RequestTimeout = r.duration("REQUEST_TIMEOUT", 5*time.Minute, time.Second, time.Hour)
	c.ShutdownTimeout = r.duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0, time.Hour)
	c.JobLease = r.duration("JOB_LEASE", 15*time.Second, time.Second, 24*time.Hour)
	c.JobRetryDelay = r.duration("JOB_RETRY_DELAY", 2*time.Second, time.Millisecond, time.Hour)
	c.JobMaxAttempts = int(r.int("JOB_MAX_ATTEMPTS", 3, 1, 100))
	c.JobTimeout = r.duration("JOB_TIMEOUT", 2*time.Minute, 100*time.Millisecond, 24*time.Hour)
	c.SweepInterval = r.duration("SWEEP_INTERVAL", 10*time.Second, 10*time.Millisecond, 24*time.Hour)
	c.UserQuota = r.size("USER_QUOTA_BYTES", 0, 0, 1<<50)
	c.UploadsPerUser = int(r.int("UPLOADS_PER_USER", 4, 1, 1024))
	c.UploadsPerAddr = int(r.int("UPLOADS_PER_ADDR", 16, 1, 65536))
	c.JobsPerUser = int(r.int("JOBS_PER_USER", 500, 1, 1_000_000))
	c.RendersPerUser = int(r.int("RENDERS_PER_USER", 2, 1, 1024))
	c.UploadsTotal = int(r.int("UPLOADS_IN_FLIGHT", 64, 1, 65536))
	c.MinUploadRate = r.size("MIN_UPLOAD_RATE", 10<<10, 0, 1<<30)
	c.UploadRateWindow = r.duration("UPLOAD_RATE_WINDOW", 10*time.Second, time.Second, 10*time.Minute)
	c.AuthAddrRate = int(r.int("AUTH_RATE_PER_ADDR", 30, 0, 1_000_000))
	c.AuthFreeFailures = int(r.int("AUTH_FREE_FAILURES", 5, 0, 1000))
	c.AuthMaxDelay = r.duration("AUTH_MAX_DELAY", 5*time.Minute, time.Second, 24*time.Hour)
	c.AuthAccountCeiling = int(r.int("AUTH_ACCOUNT_CEILING", 100, 1, 100))
	c.LimiterKeys = int(r.int("LIMITER_KEYS", maxRateKeys, 100, 100_000_000))
	c.SignupAddrRate = int(r.int("SIGNUP_RATE_PER_ADDR", 20, 0, 1_000_000))
	c.SignupOpen = r.choice("SIGNUP", "open", "open", "closed") == "open"
	c.WorkerMemory = r.size("WORKER_MEMORY", defaultWorkerMemory(systemMemory()), 32<<20, 1<<40)
	c.SignedURLTTL = r.duration("SIGNED_URL_TTL", time.Hour, time.Second, 7*24*time.Hour)
	c.DownloadRedirect = r.onOff("DOWNLOAD_REDIRECT", false)
	c.S3 = loadS3Config(getenv)
	if getenv("GOMEMLIMIT") == "" {
		// The heap may grow to what the jobs may hold, the password hashes in flight, and a margin for
		// the rest (requests, pools, buffers); past it the collector works harder, not the kernel's
		// OOM killer.
		c.MemoryLimit = c.WorkerMemory + int64(c.HashConcurrency)*128*8*int64(c.ScryptN) + 96<<20
	}
	if s := getenv("LOG_LEVEL"); s != "" {
		if err := c.LogLevel.UnmarshalText([]byte(s)); err != nil {
			r.errs = append(r.errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", s))
		}
	}
	return c, errors.Join(append(r.errs, c.validate()...)...)
}

// validate checks what no single variable's range says: how settings fit together, and formats.
func (c config) validate() []error {
	var errs []error
	if c.ScryptN&(c.ScryptN-1) != 0 {
		errs = append(errs, fmt.Errorf("SCRYPT_N=%d: want a power of two", c.ScryptN))
	}
	if n := len(c.SecretKey); n > 0 && n < minSecretBytes {
		// The value itself is never echoed: it is a secret.
		errs = append(errs, fmt.Errorf("SECRET_KEY is %d bytes: want at least %d (or leave it unset to have one generated and kept in the database)", n, minSecretBytes))
	}
	for _, u := range []struct{ name, val, scheme string }{
		{"BROKER_URL", c.BrokerURL, "amqp"},
		{"REDIS_URL", c.RedisURL, "redis"},
	} {
		if u.val != "" && !strings.HasPrefix(u.val, u.scheme+"://") && !strings.HasPrefix(u.val, u.scheme+"s://") {
			errs = append(errs, fmt.Errorf("%s: want a %s:// URL", u.name, u.scheme))
		}
	}
	if c.DownloadRedirect && c.S3.Bucket == "" {
		errs = append(errs, errors.New("DOWNLOAD_REDIRECT=on needs S3_BUCKET: only a bucket can serve a presigned download"))
	}
	if c.S3.Bucket != "" && (c.S3.AccessKey == "" || c.S3.SecretKey == "") {
		errs = append(errs, errors.New("S3_BUCKET is set but no credentials are: set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"))
	}
	if c.S3.Endpoint != "" {
		if u, err := url.Parse(c.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("S3_ENDPOINT=%q: want an http:// or https:// URL", c.S3.Endpoint))
		}
	}
	return errs
}

// envReader reads typed variables, each with a default and a range, collecting one error per
// variable that is out of it (naming the variable; the value is echoed, for none of these is secret).
type envReader struct {
	getenv func(string) string
	errs   []error
}

// int reads a whole number from lo to hi.
func (r *envReader) int(name string, def, lo, hi int64) int64 {
	s := r.getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v < lo || v > hi {
		r.errs = append(r.errs, fmt.Errorf("%s=%q: want an integer from %d to %d", name, s, lo, hi))
		return def
	}
	return v
}

// size reads a byte count: a whole number, with an optional KiB, MiB or GiB suffix.
func (r *envReader) size(name string, def, lo, hi int64) int64 {
	s := strings.TrimSpace(r.getenv(name))
	if s == "" {
		return def
	}
	unit := int64(1)
	for suffix, u := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if num, ok := strings.CutSuffix(s, suffix); ok {
			s, unit = strings.TrimSpace(num), u
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v > hi/unit || v*unit < lo {
		r.errs = append(r.errs, fmt.Errorf("%s=%q: want a byte count from %d to %d (KiB, MiB and GiB suffixes allowed)", name, r.getenv(name), lo, hi))
		return def
	}
	return v * unit
}

// duration reads a Go duration from lo to hi.
func (r *envReader) duration(name string, def, lo, hi time.Duration) time.Duration {
	s := r.getenv(name)
	if s == "" {
		return def
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || v < lo || v > hi {
		r.errs = append(r.errs, fmt.Errorf("%s=%q: want a duration from %s to %s", name, s, lo, hi))
		return def
	}
	return v
}

// onOff reads a switch: on, true, 1 or yes; off, false, 0 or no.
func (r *envReader) onOff(name string, def bool) bool {
	switch s := strings.ToLower(strings.TrimSpace(r.getenv(name))); s {
	case "":
		return def
	case "on", "true", "1", "yes":
		return true
	case "off", "false", "0", "no":
		return false
	}
	r.errs = append(r.errs, fmt.Errorf("%s=%q: want on or off", name, r.getenv(name)))
	return def
}

// choice reads one of the words allowed (case-insensitive).
func (r *envReader) choice(name, def string, allowed ...string) string {
	s := strings.ToLower(strings.TrimSpace(r.getenv(name)))
	if s == "" {
		return def
	}
	if !slices.Contains(allowed, s) {
		r.errs = append(r.errs, fmt.Errorf("%s=%q: want %s", name, r.getenv(name), strings.Join(allowed, " or ")))
		return def
	}
	return s
}

// loadS3Config reads the S3_* variables; the credentials fall back to AWS's own variable names.
func loadS3Config(getenv func(string) string) s3Config {
	first := func(names ...string) string {
		for _, n := range names {
			if v := strings.TrimSpace(getenv(n)); v != "" {
				return v
			}
		}
		return ""
	}
	return s3Config{
		Bucket:    first("S3_BUCKET"),
		Endpoint:  first("S3_ENDPOINT"),
		Region:    cmp.Or(first("S3_REGION"), "us-east-1"),
		Prefix:    first("S3_PREFIX"),
		AccessKey: first("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
		SecretKey: first("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
	}
}

// normalizeDatabaseURL accepts the seed's SQLAlchemy-style URLs (postgresql+asyncpg://…) by dropping
// the driver suffix, so an existing .env keeps working.
func normalizeDatabaseURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	if base, _, hasDriver := strings.Cut(scheme, "+"); hasDriver {
		return base + "://" + rest
	}
	return u
}

// readDotenv reads KEY=VALUE lines from path. A missing file is not an error. Blank lines and lines
// starting with # are skipped; "export " before a key and matching quotes around a value are removed.
func readDotenv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return nil, fmt.Errorf("env file %s:%d: want KEY=VALUE", path, n)
		}
		val = strings.TrimSpace(val)
		if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
			val = val[1 : len(val)-1]
		}
		vals[key] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file %s: %w", path, err)
	}
	return vals, nil
}

// withFallback returns a getenv that answers from primary and, where primary has nothing, from
// fallback: the real environment wins over the .env file.
func withFallback(primary func(string) string, fallback map[string]string) func(string) string {
	return func(k string) string {
		if v := primary(k); v != "" {
			return v
		}
		return fallback[k]
	}
}
