// Command imageapi is a self-hosted image service: users sign up, get a JWT, upload photos, and a
// background worker makes thumbnails and a grayscale copy. One static binary runs the HTTP API, the
// worker, or both (-mode), over PostgreSQL, with optional Redis (cache) and RabbitMQ (queue).
//
// This file holds main, run (and serve: start, wait, stop in order), the wiring of the app, and the
// route table. Where everything else lives: docs/CONTRIBUTING.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
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

// run is the whole program: it parses flags, loads configuration, connects to the database, brings
// the schema up to date, wires the app and serves until ctx is cancelled. It returns instead of
// exiting so tests can drive it.
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
		// A worker never migrates: it refuses a schema older than itself.
		err = checkSchema(ctx, pool)
	} else {
		err = migrate(ctx, pool, log)
	}
	if err != nil || cfg.Mode == modeMigrate {
		return err
	}
	a, err := newApp(ctx, cfg, pool, log)
	if err != nil {
		return err
	}
	defer a.close()
	a.governMemory()
	return a.serve(ctx)
}

// serve runs the app until ctx ends or its listener fails. In order: it starts the housekeeping, the
// worker (modes all and worker), the listener and the metrics listener; waits; then stops the
// listener (requests in flight get SHUTDOWN_TIMEOUT), the worker (it takes no more jobs, and the
// jobs in hand get SHUTDOWN_TIMEOUT), and the housekeeping, each waited for, so that the queue, the
// cache and the pool they use are closed only after them (by run).
func (a *app) serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Addr, err)
	}
	housekeeping := startTask(ctx, a.background)
	defer housekeeping.stop()
	worker := startTask(ctx, a.work)
	defer worker.stop()
	srv := a.httpServer(a.routes())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	a.log.Info("listening", slog.String("addr", ln.Addr().String()), slog.String("mode", a.cfg.Mode))
	if closeMetrics, err := a.serveMetricsApart(); err != nil {
		srv.Close()
		return err
	} else if closeMetrics != nil {
		defer closeMetrics()
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("shutting down", slog.Duration("timeout", a.cfg.ShutdownTimeout))
	// A fresh context: the root one is already cancelled and would make Shutdown wait for nothing.
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	worker.stop()
	housekeeping.stop()
	a.log.Info("stopped")
	return nil
}

// work runs the worker until ctx ends, in the modes that have one: it stops taking jobs then, and the
// jobs in hand get SHUTDOWN_TIMEOUT to finish.
func (a *app) work(ctx context.Context) {
	if a.cfg.Mode == modeAll || a.cfg.Mode == modeWorker {
		a.queue.consume(ctx, a.cfg.Concurrency, a.cfg.ShutdownTimeout, a.handleJob)
	}
}

// task is a goroutine with a context of its own: stop cancels it and waits for the goroutine to
// return (once; later calls return at once).
type task struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startTask runs fn in a goroutine until the returned task is stopped or ctx ends.
func startTask(ctx context.Context, fn func(context.Context)) *task {
	ctx, cancel := context.WithCancel(ctx)
	t := &task{cancel: cancel, done: make(chan struct{})}
	go func() { defer close(t.done); fn(ctx) }()
	return t
}

func (t *task) stop() {
	t.cancel()
	<-t.done
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

// serveMetricsApart serves /metrics on METRICS_ADDR, a listener of its own kept off the public port,
// until the returned func closes it; with METRICS_ADDR=main (served by the main listener), or when
// the default address is another process's, it returns a nil func.
func (a *app) serveMetricsApart() (func() error, error) {
	if a.cfg.MetricsAddr == metricsOnMain {
		return nil, nil
	}
	mln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil && a.cfg.MetricsAddr == defaultMetricsAddr {
		// Another process on this host has the default port (a second replica, say): this one
		// runs without /metrics rather than not at all.
		a.log.Warn("no /metrics: its default listener is taken; set METRICS_ADDR", slog.Any("error", err))
		return nil, nil
	}
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
		route{"GET", "/api/v1/auth/me", a.me, true},
		route{"DELETE", "/api/v1/auth/me", a.deleteAccount, true},
		route{"POST", "/api/v1/auth/password", a.changePassword, true},
		route{"POST", "/api/v1/auth/logout-all", a.logoutAll, true},
		route{"GET", "/api/v1/auth/keys", a.listKeys, true},
		route{"POST", "/api/v1/auth/keys", a.createKey, true},
		route{"DELETE", "/api/v1/auth/keys/{id}", a.deleteKey, true},
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
	accounts *liveAccounts // each account's token generation, as recently seen
	apiKeys  *apiKeyCache  // API keys by their secret's hash, as recently seen
	cursors  cursorCodec   // list cursors, signed
	renders  renders       // display sizes being rendered, one at a time each
	hasher   *passwordHasher
	docs     docAssets     // Swagger UI and openapi.json
	page     docAssets     // the web page at /
	budget   *memoryBudget // WORKER_MEMORY, shared by the jobs running at once
	// intentGrace is the age past which a blob intent is taken for a lost write (intentGraceFor).
	intentGrace time.Duration
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
		cfg:         cfg,
		log:         log,
		pool:        pool,
		store:       st,
		blobs:       blobs,
		scratch:     sc,
		signer:      newURLSigner(key, cfg.SignedURLTTL),
		cache:       c,
		queue:       q,
		metrics:     m,
		tokens:      &tokenIssuer{key: key, ttl: cfg.TokenTTL, issuer: tokenIssuerName, now: time.Now},
		hasher:      hasher,
		accounts:    newLiveAccounts(st),
		apiKeys:     newAPIKeyCache(st, key),
		cursors:     newCursorCodec(key),
		budget:      newMemoryBudget(cfg.WorkerMemory),
		intentGrace: intentGraceFor(cfg),
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
// publishing lost jobs again, removing what deleted accounts left, removing the objects of writes
// that never got their row (intents), and sweeping orphaned files; all but the first one replica at
// a time.
func (a *app) background(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { a.cache.drain(ctx, a.store) })
	wg.Go(func() { a.sweeping(ctx, lockSweepJobs, a.cfg.SweepInterval, a.sweepJobsOnce) })
	wg.Go(func() { a.sweeping(ctx, lockSweepAccounts, a.cfg.SweepInterval, a.sweepAccounts) })
	wg.Go(func() { a.sweeping(ctx, lockSweepIntents, a.cfg.SweepInterval, a.sweepIntents) })
	wg.Go(func() { a.sweeping(ctx, lockSweepFiles, orphanGrace, a.removeOrphans) })
	wg.Wait()
}

// sweeping runs fn every interval until ctx ends, in one replica at a time: the one holding the
// advisory lock; the others wait their turn.
func (a *app) sweeping(ctx context.Context, lock int64, interval time.Duration, fn func(context.Context)) {
	for ctx.Err() == nil {
		a.holdingLock(ctx, lock, interval, func() { fn(ctx) })
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
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
