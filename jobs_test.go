package main

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// imageAttempts reads an image's attempts straight from its row.
func (s *testServer) imageAttempts(id int64) int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT attempts FROM images WHERE id = $1", id).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// TestJobPanicFailsImage: a job that panics fails its image at once with a server-error reason,
// is counted, leaves no file, and the worker goes on with the next job.
func TestJobPanicFailsImage(t *testing.T) {
	dir := t.TempDir()
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir})
	var calls atomic.Int64
	s.process = func(ctx context.Context, sc *scratch, path, ct string, opts processOptions) ([]encodedVariant, string, error) {
		if n := calls.Add(1); n == 1 {
			var counts []int
			counts[n]++ // an index out of range: the kind of bug that once took the process down
		}
		return makeVariants(ctx, sc, path, ct, opts)
	}
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	bad := s.mustUpload(auth, "unlucky", "", "a.png", tinyPNG(t, 20, 20))
	v := s.waitStatus(auth, bad.ID, 30*time.Second, statusFailed, statusReady)
	if v.Status != statusFailed || v.Error == nil || !strings.Contains(*v.Error, "server error") {
		t.Fatalf("status %s, error %v", v.Status, v.Error)
	}
	if n := s.imageAttempts(bad.ID); n != 1 {
		t.Errorf("attempts = %d, want 1: a panic is not retried", n)
	}
	if n := s.metrics.jobPanics.Load(); n != 1 {
		t.Errorf("panics counted: %d", n)
	}
	good := s.mustUpload(auth, "next", "", "a.png", tinyPNG(t, 20, 20))
	if v := s.waitStatus(auth, good.ID, 30*time.Second, statusReady, statusFailed); v.Status != statusReady {
		t.Fatalf("the worker stopped: %s", v.Status)
	}
	// The two originals and the good image's variants.
	if files := filesUnder(t, dir); len(files) != 2+len(variantSpecs) {
		t.Errorf("files = %v", files)
	}
}

// TestJobTimeout: a job past JOB_TIMEOUT stops (the decoders see the deadline) and its image fails
// with the limit in its reason; it is not retried.
func TestJobTimeout(t *testing.T) {
	s := newTestServer(t, map[string]string{"JOB_TIMEOUT": "200ms"})
	s.process = func(ctx context.Context, sc *scratch, path, ct string, opts processOptions) ([]encodedVariant, string, error) {
		<-ctx.Done() // as a decoder stuck in a hostile file's scans would, checking its context
		return nil, pathStandard, ctx.Err()
	}
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	img := s.mustUpload(auth, "slow", "", "a.png", tinyPNG(t, 20, 20))
	v := s.waitStatus(auth, img.ID, 30*time.Second, statusFailed, statusReady)
	if v.Status != statusFailed || v.Error == nil || !strings.Contains(*v.Error, "longer than the limit of 200ms") {
		t.Fatalf("status %s, error %v", v.Status, v.Error)
	}
	if n := s.imageAttempts(img.ID); n != 1 {
		t.Errorf("attempts = %d, want 1", n)
	}
}

// TestServerErrorsRetried: a failure that is the server's (not the image's) is retried, up to
// JOB_MAX_ATTEMPTS, then the image fails without the error's text reaching its owner.
func TestServerErrorsRetried(t *testing.T) {
	queue := testQueue(t)
	s := newTestServer(t, map[string]string{"BROKER_URL": needBroker(t), "QUEUE_NAME": queue, "JOB_RETRY_DELAY": "20ms"})
	var calls atomic.Int64
	s.process = func(context.Context, *scratch, string, string, processOptions) ([]encodedVariant, string, error) {
		calls.Add(1)
		return nil, pathStandard, errors.New("disk on fire at /srv/secret/path")
	}
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	img := s.mustUpload(auth, "unlucky", "", "a.png", tinyPNG(t, 20, 20))
	v := s.waitStatus(auth, img.ID, 30*time.Second, statusFailed, statusReady)
	if v.Status != statusFailed || v.Error == nil || *v.Error != "processing failed because of a server error" {
		t.Fatalf("status %s, error %v", v.Status, v.Error)
	}
	if n := s.imageAttempts(img.ID); n != 3 || calls.Load() != 3 {
		t.Errorf("attempts = %d, calls = %d, want 3", n, calls.Load())
	}
}

// TestAttemptsEnd: an image whose every attempt was claimed by a worker that then died (a crash, an
// out-of-memory kill) ends failed: the sweeper fails it instead of publishing it again, and a claim
// of it (a message still on its way) fails it too.
func TestAttemptsEnd(t *testing.T) {
	s := newTestServer(t, map[string]string{"JOB_MAX_ATTEMPTS": "2"})
	_, auth := s.signupAndLogin()
	ctx := context.Background()
	crash := func(id int64) {
		// A worker claims, then dies holding the lease, which runs out.
		if _, _, err := s.store.claimImage(ctx, id, time.Millisecond, 2); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	swept := s.mustUpload(auth, "swept", "", "a.png", tinyPNG(t, 20, 20))
	claimed := s.mustUpload(auth, "claimed", "", "a.png", tinyPNG(t, 20, 20))
	for range 2 {
		crash(swept.ID)
		crash(claimed.ID)
	}
	// The claim of a spent image fails it.
	if out, _ := s.handleJob(ctx, claimed.ID); out != jobDead {
		t.Fatalf("claim of a spent image: outcome %v", out)
	}
	// The sweeper fails the other instead of publishing it.
	ids, err := s.store.lostJobs(ctx, 0, time.Hour, 2, 100)
	if err != nil {
		t.Fatal(err)
	}
	s.sweepJobsOnce(ctx)
	for _, id := range ids {
		if id == swept.ID {
			t.Errorf("lostJobs lists the spent image %d", id)
		}
	}
	for _, id := range []int64{swept.ID, claimed.ID} {
		v := s.waitStatus(auth, id, time.Second, statusFailed)
		if v.Error == nil || *v.Error != exhaustedReason(2) {
			t.Errorf("image %d: error %v", id, v.Error)
		}
		if n := s.imageAttempts(id); n != 2 {
			t.Errorf("image %d: attempts %d, want 2", id, n)
		}
	}
	if s.metrics.jobsFailed.Load() != 2 {
		t.Errorf("failed counted %d, want 2", s.metrics.jobsFailed.Load())
	}
}

// TestPureRetryDelay: ×4 per attempt, capped, with no overflow for the largest JOB_MAX_ATTEMPTS.
func TestPureRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{{1, 2 * time.Second}, {2, 8 * time.Second}, {3, 32 * time.Second}, {6, 2048 * time.Second}, {7, maxRetryDelay}, {100, maxRetryDelay}} {
		if got := retryDelay(2*time.Second, tc.attempt); got != tc.want {
			t.Errorf("attempt %d: %v, want %v", tc.attempt, got, tc.want)
		}
	}
	if got := retryDelay(time.Hour, 2); got != maxRetryDelay {
		t.Errorf("a delay past the cap: %v", got)
	}
}

// sweepersLeading reports whether s's database shows both sweepers' advisory locks held.
func sweepersLeading(t *testing.T, s *testServer) bool {
	var n int
	err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
	if err != nil {
		// The pool has one connection, which a sweeper may hold for a moment: ask again.
		return false
	}
	return n >= 2
}

// TestSmallPool: with a pool of one connection (pool_max_conns, which an operator may set), the
// sweepers hold their advisory locks on connections of their own, so jobs and requests still get
// the pool's one connection: uploads become ready.
func TestSmallPool(t *testing.T) {
	// A database of its own: the advisory locks seen there are this server's sweepers'.
	s := newTestServer(t, map[string]string{"DATABASE_URL": freshDatabase(t) + "&pool_max_conns=1", "SWEEP_INTERVAL": "50ms"})
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	// The sweepers lead once they hold their locks: wait for that, so the uploads meet them.
	for deadline := time.Now().Add(10 * time.Second); !sweepersLeading(t, s); {
		if time.Now().After(deadline) {
			t.Fatal("the sweepers took no lock within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 3 {
		v := s.mustUpload(auth, "small", "", "a.png", tinyPNG(t, 20, 20))
		if got := s.waitStatus(auth, v.ID, 20*time.Second, statusReady, statusFailed); got.Status != statusReady {
			t.Fatalf("status %s", got.Status)
		}
	}
}

// TestHeartbeatKeepsSlowJob: a job that runs for several leases is never taken twice: its worker
// renews the lease while it works, so the sweeper (running all along) sees nothing lost.
func TestHeartbeatKeepsSlowJob(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	// A database of its own: its sweeper must not take other parallel tests' jobs.
	s := newTestServer(t, map[string]string{"DATABASE_URL": freshDatabase(t), "JOB_LEASE": "1s", "SWEEP_INTERVAL": "50ms", "WORKER_CONCURRENCY": "2"})
	var calls atomic.Int64
	s.process = func(ctx context.Context, sc *scratch, path, ct string, opts processOptions) ([]encodedVariant, string, error) {
		calls.Add(1)
		select {
		case <-time.After(3500 * time.Millisecond): // three and a half leases
		case <-ctx.Done():
			return nil, pathStandard, ctx.Err()
		}
		return makeVariants(ctx, sc, path, ct, opts)
	}
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "slow", "", "a.png", tinyPNG(t, 20, 20))
	if got := s.waitStatus(auth, v.ID, 30*time.Second, statusReady, statusFailed); got.Status != statusReady {
		t.Fatalf("status %s", got.Status)
	}
	if n := s.imageAttempts(v.ID); n != 1 || calls.Load() != 1 {
		t.Errorf("attempts %d, runs %d: the slow job was taken twice", n, calls.Load())
	}
}

// TestClaimTakenOver: when another worker has taken the image (this one's lease ran out, during a
// database outage say), the heartbeat notices, the job stops, and it writes nothing to the row.
func TestClaimTakenOver(t *testing.T) {
	dir := t.TempDir()
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir, "JOB_LEASE": "1s"})
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "contested", "", "a.png", tinyPNG(t, 20, 20))
	s.process = func(ctx context.Context, sc *scratch, path, ct string, opts processOptions) ([]encodedVariant, string, error) {
		// Meanwhile another worker claims it: the attempt it counts is not ours.
		if _, err := s.pool.Exec(context.Background(), "UPDATE images SET attempts = attempts + 1, lease_until = now() + interval '1 hour' WHERE id = $1", v.ID); err != nil {
			return nil, "", err
		}
		outs, via, err := makeVariants(ctx, sc, path, ct, opts)
		if err != nil {
			return nil, via, err
		}
		<-ctx.Done() // still working when the heartbeat finds out
		return outs, via, nil
	}
	if out, _ := s.handleJob(context.Background(), v.ID); out != jobDone {
		t.Fatalf("outcome %v, want done (the image is the other worker's)", out)
	}
	var status string
	var variants map[string]storedVariant
	s.pool.QueryRow(context.Background(), "SELECT status, variants FROM images WHERE id = $1", v.ID).Scan(&status, &variants)
	if status != statusProcessing || len(variants) != 0 {
		t.Errorf("row %s with %d variants: the old claim wrote to it", status, len(variants))
	}
	if files := filesUnder(t, dir); len(files) != 1 {
		t.Errorf("files %v: the given-up job's variants stayed", files)
	}
}
