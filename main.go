// Command imageapi is a self-hosted image service: users sign up, get a JWT, upload photos, and a
// background worker makes thumbnails and a grayscale copy. One static binary runs the HTTP API, the
// worker, or both (-mode), over PostgreSQL, with optional Redis (cache) and RabbitMQ (queue).
//
// This file holds main, run, configuration, wiring, the route table and shutdown.
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "imageapi:", err)
		os.Exit(1)
	}
}

// Run modes, chosen with -mode.
const (
	modeAll     = "all"     // API and worker in one process
	modeAPI     = "api"     // HTTP API only (publishes jobs)
	modeWorker  = "worker"  // background worker only (serves /healthz, /readyz, /metrics)
	modeMigrate = "migrate" // apply migrations and exit
)

// run is the whole program: it parses flags, loads configuration, connects to the services, serves
// until ctx is cancelled, and shuts down gracefully. It returns instead of exiting so tests can drive it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, healthcheck, err := parseArgs(args, getenv, stderr)
	if err != nil {
		return err
	}
	if healthcheck {
		return probeReady(ctx, cfg.Addr)
	}
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: cfg.LogLevel}))
	pool, err := connectDB(ctx, cfg.DatabaseURL, log)
	if err != nil {
		return err
	}
	defer pool.Close()

	if cfg.Mode == modeWorker {
		if err := checkSchema(ctx, pool); err != nil {
			return err
		}
	} else if err := migrate(ctx, pool, log); err != nil {
		return err
	}
	if cfg.Mode == modeMigrate {
		return nil
	}

	a, err := newApp(ctx, cfg, pool, log)
	if err != nil {
		return err
	}
	defer a.close()
	a.governMemory()

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	srv := a.httpServer(a.routes())
	bgCtx, stopBackground := context.WithCancel(ctx)
	bgDone := make(chan struct{})
	go func() { a.background(bgCtx); close(bgDone) }()
	defer func() { stopBackground(); <-bgDone }()
	workerDone := make(chan struct{})
	workerCtx, stopWorker := context.WithCancel(ctx)
	if cfg.Mode == modeAll || cfg.Mode == modeWorker {
		// The worker stops taking jobs when ctx ends; the jobs in hand get SHUTDOWN_TIMEOUT to finish.
		go func() {
			a.queue.consume(workerCtx, cfg.Concurrency, cfg.ShutdownTimeout, a.handleJob)
			close(workerDone)
		}()
	} else {
		close(workerDone)
	}
	// Whatever ends run (a shutdown, a Serve error, a shutdown that timed out), the worker stops and
	// is waited for before the queue, the cache and the pool it uses close (deferred above). The wait
	// is bounded: its jobs are cancelled SHUTDOWN_TIMEOUT after it is told to stop, and stop soon after.
	defer func() { stopWorker(); <-workerDone }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", slog.String("addr", ln.Addr().String()), slog.String("mode", cfg.Mode))
	if cfg.MetricsAddr != metricsOnMain {
		closeMetrics, err := a.serveMetricsApart()
		switch {
		case err == nil:
			defer closeMetrics()
		case cfg.MetricsAddr == defaultMetricsAddr:
			// Another process on this host has the default port (a second replica, say): this one
			// runs without /metrics rather than not at all.
			log.Warn("no /metrics: its default listener is taken; set METRICS_ADDR", slog.Any("error", err))
		default:
			srv.Close()
			return err
		}
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", slog.Duration("timeout", cfg.ShutdownTimeout))
	// A fresh context: the root one is already cancelled and would make Shutdown wait for nothing.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	stopWorker()
	<-workerDone
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// parseArgs reads the flags, the env file they name, and the configuration; it reports whether this
// run is a -healthcheck probe.
func parseArgs(args []string, getenv func(string) string, stderr io.Writer) (config, bool, error) {
	fs := flag.NewFlagSet("imageapi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", modeAll, "what to run: all, api, worker or migrate")
	envFile := fs.String("env-file", ".env", "file of KEY=VALUE lines read when present; the real environment wins; empty: none")
	healthcheck := fs.Bool("healthcheck", false, "probe /readyz of the server at ADDR on this host and exit 0 when ready (for container health checks)")
	if err := fs.Parse(args); err != nil {
		return config{}, false, err
	}
	if *envFile != "" {
		dotenv, err := readDotenv(*envFile)
		if err != nil {
			return config{}, false, err
		}
		getenv = withFallback(getenv, dotenv)
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return config{}, false, err
	}
	switch *mode {
	case modeAll, modeAPI, modeWorker, modeMigrate:
	default:
		if !*healthcheck {
			return config{}, false, fmt.Errorf("unknown -mode %q (want all, api, worker or migrate)", *mode)
		}
	}
	cfg.Mode = *mode
	return cfg, *healthcheck, nil
}

// governMemory makes the Go runtime's memory limit follow what is reserved, unless GOMEMLIMIT says
// otherwise: the runtime and requests in flight (each upload holds two buffers and at most
// maxPreambleBytes of part headers), the running jobs'
// estimates and the password-hashing buffers.
func (a *app) governMemory() {
	if a.cfg.MemoryLimit <= 0 {
		return
	}
	g := &memoryGovernor{base: 16<<20 + int64(a.cfg.UploadsTotal)*(2*uploadBufferSize+maxPreambleBytes), max: a.cfg.MemoryLimit,
		parts: []func() int64{a.budget.inUse, a.hasher.held.Load}, set: debug.SetMemoryLimit}
	a.budget.onChange, a.hasher.onChange = g.update, g.update
	g.update()
}

// httpServer is the server for h, with the timeouts and limits every listener here has.
func (a *app) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       a.cfg.RequestTimeout,
		WriteTimeout:      a.cfg.RequestTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// defaultMetricsAddr is where /metrics is served unless METRICS_ADDR says otherwise: loopback, so
// that only this host (a local Prometheus or agent) reads it, never the public.
const defaultMetricsAddr = "127.0.0.1:9090"

// metricsOnMain is the METRICS_ADDR that serves /metrics on the main listener, to everyone.
const metricsOnMain = "main"

// serveMetricsApart serves /metrics on METRICS_ADDR, a listener of its own kept off the public port,
// until the returned func closes it.
func (a *app) serveMetricsApart() (func() error, error) {
	mln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s (METRICS_ADDR): %w", a.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", a.serveMetrics)
	msrv := a.httpServer(mux)
	go msrv.Serve(mln)
	a.log.Info("metrics listening", slog.String("addr", mln.Addr().String()))
	return msrv.Close, nil
}

// route is one entry of the route table.
type route struct {
	method, pattern string
	handler         http.HandlerFunc
	auth            bool // behind requireAuth
}

// routeTable lists every route this mode serves: the one route table. Collections answer with and
// without the trailing slash ({$}), so no client is sent a redirect (a 307 on a multipart POST
// breaks clients). Every route is documented in openapi.json; a test holds the two together.
func (a *app) routeTable() []route {
	rs := []route{
		{"GET", "/healthz", a.healthz, false},
		{"GET", "/readyz", a.readyz, false},
	}
	if a.cfg.MetricsAddr == metricsOnMain {
		rs = append(rs, route{"GET", "/metrics", a.serveMetrics, false})
	}
	if a.cfg.Mode == modeWorker {
		return rs
	}
	rs = append(rs,
		route{"GET", "/{$}", a.servePage, false},
		route{"GET", "/app/{file}", a.servePage, false},
		route{"GET", "/docs", a.serveDocs, false},
		route{"GET", "/docs/{file}", a.serveDocs, false},
		route{"GET", "/openapi.json", a.serveOpenAPI, false},
		route{"POST", "/api/v1/auth/signup", a.signup, false},
		route{"POST", "/api/v1/auth/token", a.token, false},
	)
	for _, p := range []string{"/api/v1/images", "/api/v1/images/{$}"} {
		rs = append(rs, route{"POST", p, a.uploadImage, true}, route{"GET", p, a.listImages, true})
	}
	return append(rs,
		route{"GET", "/api/v1/images/{id}", a.getImage, true},
		route{"PUT", "/api/v1/images/{id}", a.updateImage, true},
		route{"DELETE", "/api/v1/images/{id}", a.deleteImage, true},
		route{"GET", "/api/v1/images/{id}/file", a.downloadImage, true},
		route{"GET", "/api/v1/images/{id}/file/signed", a.downloadSigned, false},
	)
}

// routes wires the route table and the middleware around it.
func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routeTable() {
		var h http.Handler = rt.handler
		if rt.auth {
			h = a.requireAuth(h)
		}
		mux.Handle(rt.method+" "+rt.pattern, h)
	}
	return a.logRequests(recoverPanics(a.log, muxProblems(mux)))
}

// app holds what the handlers and the worker share; its methods are the HTTP handlers.
type app struct {
	cfg      config
	log      *slog.Logger
	pool     *pgxpool.Pool
	store    *store
	blobs    blobStore
	scratch  *scratch // UPLOAD_DIR/tmp: local temp files, whichever store keeps the images
	signer   *urlSigner
	cache    *cache // nil: no cache
	queue    jobQueue
	metrics  *metrics
	tokens   *tokenIssuer
	accounts *liveAccounts // which token's account still exists
	hasher   *passwordHasher
	docs     docAssets     // Swagger UI and openapi.json
	page     docAssets     // the web page at /
	budget   *memoryBudget // WORKER_MEMORY, shared by the jobs running at once
	// Abuse limits (limits.go).
	authByAddr, signupByAddr *rateLimiter
	signins                  *signinThrottle
	uploads                  *uploadSlots
	// process makes an image's variants: makeVariants, replaced only by tests that need a job to
	// misbehave (a panic) in a way no image can make it any more.
	process func(ctx context.Context, sc *scratch, path, contentType string, opts processOptions) ([]encodedVariant, string, error)
	// closing ends the app's own goroutines (dropUnreferenced); settling counts them.
	closing  chan struct{}
	settling sync.WaitGroup
}

// newApp wires the services for cfg.Mode over an open, migrated database.
func newApp(ctx context.Context, cfg config, pool *pgxpool.Pool, log *slog.Logger) (*app, error) {
	st := &store{pool: pool}
	key := cfg.SecretKey
	if len(key) == 0 {
		var err error
		if key, err = st.sharedSecret(ctx, "jwt"); err != nil {
			return nil, err
		}
		log.Info("SECRET_KEY unset: using the key kept in the database")
	}
	hasher, err := newPasswordHasher(scryptParams{N: cfg.ScryptN, R: 8, P: 1}, cfg.HashConcurrency)
	if err != nil {
		return nil, err
	}
	// Temp files younger than the longest request may be another replica's upload in flight.
	sc, err := newScratch(cfg.UploadDir, max(cfg.RequestTimeout, time.Hour), log)
	if err != nil {
		return nil, err
	}
	blobs, err := newBlobStore(ctx, cfg, sc, log)
	if err != nil {
		return nil, err
	}
	m := &metrics{}
	c, err := newCache(cfg.RedisURL, cfg.RedisPrefix, m, log)
	if err != nil {
		return nil, err
	}
	// The cache is trusted once the outbox is drained: at once when Redis and the database answer.
	c.drainOnce(ctx, st)
	var q jobQueue
	switch {
	case cfg.BrokerURL != "":
		aq := newAMQPQueue(cfg.BrokerURL, cfg.QueueName, log)
		if !aq.waitConnected(5 * time.Second) {
			log.Warn("starting without the broker: jobs wait in the database until it is reachable")
		}
		q = aq
	case cfg.Mode == modeAll:
		q = newMemQueue(log)
	default:
		c.close()
		return nil, fmt.Errorf("-mode=%s needs BROKER_URL: only -mode=all can run jobs in-process", cfg.Mode)
	}
	return &app{
		cfg:      cfg,
		log:      log,
		pool:     pool,
		store:    st,
		blobs:    blobs,
		scratch:  sc,
		signer:   newURLSigner(key, cfg.SignedURLTTL),
		cache:    c,
		queue:    q,
		metrics:  m,
		tokens:   &tokenIssuer{key: key, ttl: cfg.TokenTTL, issuer: tokenIssuerName, now: time.Now},
		hasher:   hasher,
		accounts: newLiveAccounts(st),
		budget:   newMemoryBudget(cfg.WorkerMemory),
		// A limit of 0 turns that limiter off (allow answers yes to a nil one).
		authByAddr:   newRateLimiter(cfg.AuthAddrRate, time.Minute, cfg.LimiterKeys),
		signins:      newSigninThrottle(cfg.AuthFreeFailures, cfg.AuthAccountCeiling, cfg.AuthMaxDelay, cfg.LimiterKeys),
		signupByAddr: newRateLimiter(cfg.SignupAddrRate, time.Hour, cfg.LimiterKeys),
		uploads:      newUploadSlots(cfg.UploadsPerUser, cfg.UploadsPerAddr, cfg.UploadsTotal),
		process:      makeVariants,
		docs:         docAssets{files: docFiles},
		page:         docAssets{files: pageFiles, edit: pageEdit(cfg)},
		closing:      make(chan struct{}),
	}, nil
}

// close releases what newApp acquired (the database pool belongs to run).
func (a *app) close() {
	close(a.closing)
	a.settling.Wait()
	a.queue.close()
	a.cache.close()
}

// background runs the app's housekeeping until ctx ends: retrying failed cache invalidations,
// publishing lost jobs again, and sweeping orphaned files; the last two one replica at a time.
func (a *app) background(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { a.cache.drain(ctx, a.store) })
	wg.Go(func() { a.sweepLostJobs(ctx, a.cfg.SweepInterval) })
	wg.Go(func() {
		for ctx.Err() == nil {
			a.holdingLock(ctx, lockSweepFiles, orphanGrace, func() { a.removeOrphans(ctx) })
			select {
			case <-ctx.Done():
			case <-time.After(orphanGrace):
			}
		}
	})
	wg.Wait()
}

// removeOrphans runs the blob store's orphan sweep once and logs what it did.
func (a *app) removeOrphans(ctx context.Context) {
	n, err := a.blobs.sweepOrphans(ctx, time.Now().Add(-orphanGrace), a.store.fileKeysExist)
	if err != nil && ctx.Err() == nil {
		a.log.Warn("orphan sweep failed", slog.Any("error", err))
	}
	if n > 0 {
		a.log.Info("removed orphaned files", slog.Int("count", n))
	}
}

// config is the service's whole configuration, read once by loadConfig.
type config struct {
	Mode             string
	DatabaseURL      string
	BrokerURL        string
	RedisURL         string
	RedisPrefix      string // prefix of every Redis key, so several deployments can share one Redis
	QueueName        string // the RabbitMQ work queue; QueueName.retry and QueueName.dead beside it
	JobLease         time.Duration
	JobRetryDelay    time.Duration
	JobMaxAttempts   int
	JobTimeout       time.Duration // deadline of one job
	WorkerMemory     int64         // bytes the jobs running at once may need together (their estimates)
	SignupOpen       bool          // SIGNUP=open; closed: only existing accounts sign in
	UserQuota        int64         // USER_QUOTA_BYTES: original bytes one user may keep; 0: unlimited
	UploadsPerUser   int           // uploads one user may have in flight
	UploadsTotal     int           // uploads the process takes in flight
	UploadsPerAddr   int           // uploads one client address (IPv6: its /64) may have in flight
	JobsPerUser      int           // images one user may have waiting for or in processing
	MinUploadRate    int64         // bytes per second an upload must keep up on average over each window; 0: off
	UploadRateWindow time.Duration // UPLOAD_RATE_WINDOW: the span MIN_UPLOAD_RATE is judged over
	AuthAddrRate     int           // failed sign-ins per minute per client address
	// Sign-in throttle per account (signinThrottle): failures free per account and network before
	// delays, the delay's ceiling, and consecutive failures per account before unknown networks wait.
	AuthFreeFailures   int
	AuthMaxDelay       time.Duration
	AuthAccountCeiling int
	LimiterKeys        int           // entries in each limiter table
	SignupAddrRate     int           // sign-ups per hour per client address
	MetricsAddr        string        // a listener of its own for /metrics; empty: the main one
	S3                 s3Config      // S3_BUCKET set: images live in that bucket, not under UPLOAD_DIR
	SignedURLTTL       time.Duration // lifetime of a signed_url
	// DownloadRedirect (S3 only): downloads answer 307 to a presigned S3 GET instead of the bytes.
	DownloadRedirect bool
	MemoryLimit      int64 // the Go runtime's soft memory limit; 0: GOMEMLIMIT decides
	SweepInterval    time.Duration
	SecretKey        []byte // empty: generated once and kept in the database
	Addr             string
	UploadDir        string
	MaxUploadBytes   int64
	MaxPixels        int64
	TokenTTL         time.Duration
	Concurrency      int // WORKER_CONCURRENCY
	JPEGQuality      int
	JPEGDCT          bool
	ScryptN          int // scrypt cost for new password hashes (power of two)
	HashConcurrency  int // password hashes computed at once
	RequestTimeout   time.Duration
	ShutdownTimeout  time.Duration
	LogLevel         slog.Level
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

// probeReady asks the server listening on addr (on this host) whether it is ready; nil means 200.
func probeReady(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("healthcheck: ADDR %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /readyz answered %s", resp.Status)
	}
	return nil
}
