// Jobs: what a worker does with an image id (claim → produce the variants → settle the outcome),
// publishing a job, and the sweeper that publishes again whatever job may have been lost, with the
// advisory locks that let one replica at a time sweep.
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Advisory lock keys: each names one housekeeping task that one replica at a time runs.
const (
	lockSweepJobs     int64 = 0x696d6761_6a6f6273 // "imgajobs": publishing lost jobs again
	lockSweepFiles    int64 = 0x696d6761_73776570 // "imgaswep": removing orphaned files
	lockSweepIntents  int64 = 0x696d6761_696e7473 // "imgaints": removing the objects of lost writes
	lockSweepAccounts int64 = 0x696d6761_61636374 // "imgaacct": removing deleted accounts' data
)

// maxRetryDelay caps the delay before a retry, however many attempts JOB_MAX_ATTEMPTS allows.
const maxRetryDelay = time.Hour

// errJobPanicked is what a job that panicked returns: a bug, met by this image. The image fails at
// once (the same bytes would panic again) and the worker goes on.
var errJobPanicked = errors.New("job: processing panicked")

// handleJob makes the variants of image id. It claims the row (so a duplicate or redelivered message
// does nothing, and a row whose attempts are used up ends failed), produces the variants under
// JOB_TIMEOUT, records them in one update, and only then tells the queue the outcome. A server error
// is retried with growing delays up to JOB_MAX_ATTEMPTS attempts (a storage outage, however long, is
// retried without counting an attempt); what is wrong with the image
// itself, a timeout or a panic fails the image at once, with a reason its owner can read.
func (a *app) handleJob(ctx context.Context, id int64) (jobOutcome, time.Duration) {
	log := a.log.With(slog.Int64("image_id", id))
	// Bookkeeping runs to completion even during shutdown; only the image work stops early.
	bg := context.WithoutCancel(ctx)
	im, attempt, err := a.store.claimImage(bg, id, a.cfg.JobLease, a.cfg.JobMaxAttempts)
	switch {
	case errors.Is(err, errNotFound):
		return jobDone, 0 // gone, finished, or in a live worker's hands
	case errors.Is(err, errAttemptsExhausted):
		// Every attempt was claimed and none finished: the workers holding them died (a crash, an
		// out-of-memory kill). The claim failed the image.
		a.metrics.jobsFailed.Add(1)
		a.cache.invalidateOnce(bg, im.OwnerID)
		log.Warn("image failed: attempts used up", slog.Int("attempts", a.cfg.JobMaxAttempts))
		return jobDead, 0
	case err != nil:
		log.Warn("cannot claim job", slog.Any("error", err))
		return jobRetry, a.cfg.JobRetryDelay
	}
	a.cache.invalidateOnce(bg, im.OwnerID)
	start := time.Now()
	// The claim's lease is short; a heartbeat renews it while the job runs, so a worker that dies
	// gives its images back within a lease, and a slow live one keeps them.
	jobCtx, stopJob := context.WithCancelCause(ctx)
	beating := make(chan struct{})
	go func() { defer close(beating); a.heartbeat(jobCtx, log, id, attempt, stopJob) }()
	variants, placeholder, via, err := a.produceVariants(jobCtx, log, im)
	lost := errors.Is(context.Cause(jobCtx), errClaimLost)
	stopJob(nil)
	<-beating
	if lost {
		// Another worker holds the image now: this attempt's work is nobody's.
		a.removeVariants(log, variants)
		log.Warn("job given up: its claim was taken over", slog.Int("attempt", attempt))
		return jobDone, 0
	}
	if err == nil {
		err = a.store.finishImage(bg, id, attempt, variants, placeholder, a.cfg.UserQuota)
		if errors.Is(err, errQuota) {
			// Nothing recorded: the variants are nobody's, and the image fails with the reason.
			a.removeVariants(log, variants)
			err = &imageError{reason: fmt.Sprintf("its grayscale copy and thumbnails would take your images past your storage quota of %d bytes; delete some images and upload it again", a.cfg.UserQuota)}
		} else if errors.Is(err, errNotFound) {
			// Deleted (or taken over) while we worked: these files are nobody's.
			a.removeVariants(log, variants)
			return jobDone, 0
		} else if err != nil {
			var keys []string
			for _, v := range variants {
				keys = append(keys, v.Key)
			}
			// When the commit may have happened (the connection died with it in flight), the row
			// may point at the files: they go only once the database says it does not.
			a.dropUnreferenced(err, keys, func(ctx context.Context) (bool, error) {
				return a.store.variantsRecorded(ctx, id, keys)
			})
		}
	}
	defer a.cache.invalidateOnce(bg, im.OwnerID)
	return a.settleJob(ctx, log, id, attempt, via, start, err)
}

// settleJob records how attempt of image id ended (err, after the variants were recorded or not) and
// says what the queue should do with its message: done, retried after a delay, or dead.
func (a *app) settleJob(ctx context.Context, log *slog.Logger, id int64, attempt int, via string, start time.Time, err error) (jobOutcome, time.Duration) {
	bg := context.WithoutCancel(ctx)
	var ie *imageError
	switch {
	case err == nil:
		a.metrics.jobsDone.Add(1)
		if via == pathDCT {
			a.metrics.jobsDCT.Add(1)
		}
		a.metrics.jobNanos.Add(int64(time.Since(start)))
		log.Info("image processed", slog.Int("attempt", attempt), slog.String("path", via), slog.Duration("took", time.Since(start)))
		return jobDone, 0
	case ctx.Err() != nil:
		// Shutting down: hand the job back untouched; the message is requeued.
		if rerr := a.store.releaseImage(bg, id, attempt, false, true); rerr != nil {
			log.Warn("cannot release abandoned job", slog.Any("error", rerr))
		}
		return jobAbandoned, 0
	case errors.As(err, &ie):
		return a.failJob(bg, log, id, attempt, ie.reason, err)
	case errors.Is(err, context.DeadlineExceeded):
		return a.failJob(bg, log, id, attempt, fmt.Sprintf("processing took longer than the limit of %s", a.cfg.JobTimeout), err)
	case storageUnavailable(err):
		// The storage is out (a bucket unreachable, a disk full): not the image's fault, nor a try
		// that should count. The job waits for the storage however long the outage lasts.
		if rerr := a.store.releaseImage(bg, id, attempt, false, true); rerr != nil {
			log.Warn("cannot release job", slog.Any("error", rerr))
		}
		a.metrics.jobsRetried.Add(1)
		log.Warn("storage unavailable; the job will be retried", slog.Duration("in", a.cfg.JobRetryDelay), slog.Any("error", err))
		return jobRetry, a.cfg.JobRetryDelay
	case errors.Is(err, errJobPanicked), attempt >= a.cfg.JobMaxAttempts:
		// What went wrong here is the log's; the user reads only that it was not their image.
		return a.failJob(bg, log, id, attempt, "processing failed because of a server error", err)
	default:
		delay := retryDelay(a.cfg.JobRetryDelay, attempt)
		if rerr := a.store.releaseImage(bg, id, attempt, true, true); rerr != nil {
			log.Warn("cannot release failed job", slog.Any("error", rerr))
		}
		a.metrics.jobsRetried.Add(1)
		log.Info("image processing failed; will retry", slog.Int("attempt", attempt), slog.Duration("in", delay), slog.Any("error", err))
		return jobRetry, delay
	}
}

// errClaimLost is the cause a job is cancelled with when its claim was taken over.
var errClaimLost = errors.New("job: the claim was taken over")

// heartbeat renews the claim (id, attempt) every third of JOB_LEASE until ctx ends. When the claim
// is no longer this worker's (its lease ran out, during a database outage say, and another worker
// took the image), it stops the job with errClaimLost. A renewal that fails for another reason is
// tried again at the next beat.
func (a *app) heartbeat(ctx context.Context, log *slog.Logger, id int64, attempt int, stop context.CancelCauseFunc) {
	t := time.NewTicker(a.cfg.JobLease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := a.store.renewLease(context.WithoutCancel(ctx), id, attempt, a.cfg.JobLease)
		if errors.Is(err, errNotFound) {
			stop(errClaimLost)
			return
		}
		if err != nil {
			log.Warn("cannot renew the job's lease", slog.Any("error", err))
		}
	}
}

// failJob marks image id failed for good with reason (for its owner) after err (for the log).
func (a *app) failJob(ctx context.Context, log *slog.Logger, id int64, attempt int, reason string, err error) (jobOutcome, time.Duration) {
	if ferr := a.store.failImage(ctx, id, attempt, reason); ferr != nil {
		log.Warn("cannot record failure", slog.Any("error", ferr))
	}
	a.metrics.jobsFailed.Add(1)
	log.Warn("image failed", slog.Int("attempt", attempt), slog.String("reason", reason), slog.Any("error", err))
	return jobDead, 0
}

// retryDelay is the delay before the attempt after attempt: base, then ×4 each time (2s, 8s, 32s…),
// at most maxRetryDelay (and never a shift that overflows).
func retryDelay(base time.Duration, attempt int) time.Duration {
	d := base
	for range max(0, attempt-1) {
		if d >= maxRetryDelay/4 {
			return maxRetryDelay
		}
		d *= 4
	}
	return min(d, maxRetryDelay)
}

// produceVariants makes image im's variants and places them under their keys. It first estimates
// the job's peak memory from the file's header and waits for that much of WORKER_MEMORY (an image
// that needs more than all of it fails), then works within JOB_TIMEOUT. A panic anywhere in it is
// recovered, logged with its stack and counted, and returned as errJobPanicked; on any error no
// file of it is left behind.
func (a *app) produceVariants(ctx context.Context, log *slog.Logger, im imageRecord) (variants map[string]storedVariant, placeholder, via string, err error) {
	var outs []encodedVariant
	defer func() {
		if v := recover(); v != nil {
			a.metrics.jobPanics.Add(1)
			log.Error("job panicked", slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("%w: %v", errJobPanicked, v)
		}
		if err != nil {
			for _, v := range outs {
				os.Remove(v.tmpPath)
			}
			a.removeVariants(log, variants)
			variants = nil
		}
	}()
	// Fetching the original (from a bucket, it is a download) is bounded like the work itself.
	fctx, cancelFetch := context.WithTimeout(ctx, a.cfg.JobTimeout)
	path, done, err := a.blobs.localCopy(fctx, im.FileKey)
	if err != nil && fctx.Err() != nil && ctx.Err() == nil {
		// The storage, not the image, was too slow: retried like an outage.
		err = fmt.Errorf("%w: fetching the original took over %s: %w", errStorageUnavailable, a.cfg.JobTimeout, err)
	}
	cancelFetch()
	if err != nil {
		return nil, "", "", err
	}
	defer done()
	need, err := jobMemory(ctx, path, a.cfg.JPEGDCT)
	if err != nil {
		return nil, "", "", err
	}
	// Wait for the bytes before the clock starts: a job queued behind large ones is not late.
	release, err := a.budget.acquire(ctx, need)
	if errors.Is(err, errOverBudget) {
		return nil, "", "", badImage("processing this image needs about %s of memory, over this server's limit of %s (WORKER_MEMORY)",
			formatMiB(need), formatMiB(a.cfg.WorkerMemory))
	}
	if err != nil {
		return nil, "", "", err
	}
	defer release()
	tctx, cancel := context.WithTimeout(ctx, a.cfg.JobTimeout)
	defer cancel()
	outs, via, err = a.process(tctx, a.scratch, path, im.ContentType,
		processOptions{jpegQuality: a.cfg.JPEGQuality, maxPixels: a.cfg.MaxPixels, dct: a.cfg.JPEGDCT})
	if err != nil {
		return nil, "", via, err
	}
	placeholder = placeholderOfVariants(log, outs)
	variants, err = a.placeVariants(ctx, im, outs)
	if err != nil {
		return variants, "", via, err // the deferred cleanup removes what was placed, and the rest
	}
	return variants, placeholder, via, nil
}

// placeVariants stores outs, the variants made of im, under fresh keys, all at once (in a bucket,
// each is a request whose answer the others need not wait for), and returns those it placed. Their
// keys are recorded as intents first: should the worker die, or a put's answer be lost, before
// finishImage records them, the intent sweep removes them. A fresh key each time: a variant's key
// names its content (it is its ETag).
func (a *app) placeVariants(ctx context.Context, im imageRecord, outs []encodedVariant) (map[string]storedVariant, error) {
	errs := make([]error, len(outs))
	placed := make([]storedVariant, len(outs))
	keys := make([]string, len(outs))
	for i, v := range outs {
		placed[i] = v.file
		placed[i].Key = cmp.Or(v.key, variantKey(im.FileKey, v.name, v.ext))
		keys[i] = placed[i].Key
	}
	if err := a.store.recordIntents(ctx, keys...); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i, v := range outs {
		wg.Go(func() {
			if errs[i] = syncTemp(v); errs[i] == nil {
				errs[i] = a.blobs.place(ctx, v.tmpPath, placed[i].Key, v.file.ContentType, v.sha256)
			}
		})
	}
	wg.Wait()
	variants := map[string]storedVariant{}
	for i, v := range outs {
		if errs[i] == nil {
			variants[v.name] = placed[i] // removed again by the caller if another failed
		}
	}
	return variants, errors.Join(errs...)
}

// syncTemp puts v's temp file on the disk if writing it did not: before a row can point at it.
func syncTemp(v encodedVariant) error {
	if v.synced {
		return nil
	}
	f, err := os.Open(v.tmpPath)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// placeholderOfVariants is the BlurHash of the thumb_100 among outs (read back from its temp file,
// whichever path made it); empty, and logged, when there is none or it cannot be read: a missing
// placeholder costs a page a moment of blank, not the image.
func placeholderOfVariants(log *slog.Logger, outs []encodedVariant) string {
	for _, v := range outs {
		if v.name != "thumb_100" {
			continue
		}
		f, err := os.Open(v.tmpPath)
		if err != nil {
			log.Warn("no placeholder", slog.Any("error", err))
			return ""
		}
		defer f.Close()
		img, _, err := image.Decode(bufio.NewReader(f))
		if err != nil {
			log.Warn("no placeholder", slog.Any("error", err))
			return ""
		}
		return placeholderOf(img)
	}
	return ""
}

// jobMemory estimates the peak bytes of processing the image file at path, from its header alone.
// Its errors are imageErrors (not an image, a broken header, too many scans) or the file's.
func jobMemory(ctx context.Context, path string, dct bool) (int64, error) {
	h, err := headerOf(ctx, path)
	if err != nil {
		return 0, err
	}
	return h.jobBytes(dct), nil
}

// headerOf reads the header of the image file at path.
func headerOf(ctx context.Context, path string) (imageHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return imageHeader{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return imageHeader{}, err
	}
	im, ok := sniffFile(f, st.Size())
	if !ok {
		return imageHeader{}, badImage("not an image format this service decodes")
	}
	return readImageHeader(ctx, im)
}

// dropUnreferenced removes the files of keys after a write that should have recorded them failed
// with err: at once when the write surely changed nothing; else (the connection died with the commit
// in flight) once referenced, asked again every half second for up to a minute, says no row refers to
// them. Were the database away for longer, the orphan sweep removes them later.
func (a *app) dropUnreferenced(err error, keys []string, referenced func(context.Context) (bool, error)) {
	if len(keys) == 0 {
		return
	}
	if notApplied(err) {
		if rerr := a.blobs.remove(context.Background(), keys...); rerr != nil {
			a.log.Warn("cannot remove files nothing refers to", slog.Any("keys", keys), slog.Any("error", rerr))
		}
		return
	}
	a.settling.Go(func() {
		check := func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			used, err := referenced(ctx)
			if err != nil {
				if databaseUnavailable(err) {
					a.pool.Reset() // connections that died with the outage: make new ones
				}
				return false
			}
			if !used {
				a.blobs.remove(ctx, keys...)
			}
			return true
		}
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
			if check() {
				return
			}
			select {
			case <-a.closing:
				check() // one last try on the way out
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
}

// dropLost removes objects whose put failed though the store may have kept them: at once, in the
// background, within a short deadline; when the store does not answer, their intents stay and the
// intent sweep removes them later.
func (a *app) dropLost(keys ...string) {
	a.settling.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.blobs.remove(ctx, keys...); err != nil {
			a.log.Warn("cannot remove the objects of failed writes; the intent sweep will", slog.Any("keys", keys), slog.Any("error", err))
			return
		}
		if err := a.store.clearIntents(ctx, keys); err != nil {
			a.log.Warn("cannot clear intents", slog.Any("keys", keys), slog.Any("error", err))
		}
	})
}

// intentGraceFor is how old an intent must be before the sweep takes its object for lost: longer
// than any request (an upload's put and insert) or job (its variants' puts and finishImage) can last.
func intentGraceFor(cfg config) time.Duration {
	return max(cfg.RequestTimeout, cfg.JobTimeout+cfg.JobLease) + time.Minute
}

// sweepIntents removes, once, the objects of intents older than intentGrace that no row refers to
// (a put whose answer was lost, a process that died between a put and its row), and forgets every
// such intent whose object is gone or referred to. An object the store cannot remove now keeps its
// intent for the next sweep.
func (a *app) sweepIntents(ctx context.Context) {
	for ctx.Err() == nil {
		stale, err := a.store.staleIntents(ctx, a.intentGrace, 500)
		if err != nil || len(stale) == 0 {
			if err != nil && ctx.Err() == nil {
				a.log.Warn("intent sweep failed", slog.Any("error", err))
			}
			return
		}
		var lost, done []string
		for key, referenced := range stale {
			if referenced {
				done = append(done, key)
			} else {
				lost = append(lost, key)
			}
		}
		if len(lost) > 0 {
			if err := a.blobs.remove(ctx, lost...); err != nil {
				a.log.Warn("intent sweep: cannot remove lost objects", slog.Int("count", len(lost)), slog.Any("error", err))
				lost = nil
			} else {
				a.log.Info("removed the objects of lost writes", slog.Int("count", len(lost)))
			}
		}
		if err := a.store.clearIntents(ctx, append(done, lost...)); err != nil || len(done)+len(lost) < len(stale) {
			return
		}
	}
}

// removeVariants deletes the placed files of variants; a file left behind is logged (the orphan
// sweep removes it later).
func (a *app) removeVariants(log *slog.Logger, variants map[string]storedVariant) {
	var keys []string
	for _, v := range variants {
		keys = append(keys, v.Key)
	}
	if err := a.blobs.remove(context.Background(), keys...); err != nil {
		log.Warn("cannot remove variant files", slog.Any("error", err))
	}
}

// enqueue publishes image id's job and records the confirm. A failure is only logged: the row stays
// pending with no confirm, and the sweeper publishes it again.
func (a *app) enqueue(ctx context.Context, id int64) {
	ctx = context.WithoutCancel(ctx)
	if err := a.queue.publish(ctx, id, a.priorityOf(ctx, id)); err != nil {
		a.metrics.publishErrors.Add(1)
		a.log.Warn("job not queued; the sweeper will retry", slog.Int64("image_id", id), slog.Any("error", err))
		return
	}
	if err := a.store.markQueued(ctx, id); err != nil {
		a.log.Warn("job queued but not recorded", slog.Int64("image_id", id), slog.Any("error", err))
	}
}

// priorityOf is the queue priority of image id's job: from its place among its owner's unfinished
// jobs (jobPriority). When that cannot be read, the middle priority: the job still goes out.
func (a *app) priorityOf(ctx context.Context, id int64) uint8 {
	rank, err := a.store.jobRank(ctx, id)
	if err != nil {
		if !errors.Is(err, errNotFound) {
			a.log.Warn("job priority unknown", slog.Int64("image_id", id), slog.Any("error", err))
		}
		return maxJobPriority / 2
	}
	return jobPriority(rank)
}

// sweepJobsOnce publishes again the jobs that may be lost (never confirmed, or held past their lease
// by a worker that died), after failing those whose attempts are used up: a job that keeps killing
// its worker ends instead of coming back for ever. background runs it every SWEEP_INTERVAL, in one
// replica at a time (sweeping).
func (a *app) sweepJobsOnce(ctx context.Context) {
	owners, err := a.store.failExhaustedJobs(ctx, a.cfg.JobMaxAttempts)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("sweep: cannot fail exhausted jobs", slog.Any("error", err))
		}
		return
	}
	for _, owner := range owners {
		a.metrics.jobsFailed.Add(1)
		a.cache.invalidateOnce(ctx, owner)
	}
	if len(owners) > 0 {
		a.log.Warn("sweep: images failed with their attempts used up", slog.Int("count", len(owners)))
	}
	ids, err := a.store.lostJobs(ctx, 5*time.Second, 15*time.Minute, a.cfg.JobMaxAttempts, 500)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("sweep: cannot list lost jobs", slog.Any("error", err))
		}
		return
	}
	var queued []int64
	for _, id := range ids {
		if err := a.queue.publish(ctx, id, a.priorityOf(ctx, id)); err != nil {
			a.metrics.publishErrors.Add(1)
			break // the broker is down: try again next round
		}
		queued = append(queued, id)
	}
	if len(queued) > 0 {
		a.metrics.jobsRequeued.Add(int64(len(queued)))
		a.log.Info("sweep: jobs published again", slog.Int("count", len(queued)))
		if err := a.store.markQueued(ctx, queued...); err != nil {
			a.log.Warn("sweep: cannot record", slog.Any("error", err))
		}
	}
}

// holdingLock runs fn every interval for as long as this process holds the session advisory lock
// key (taking it if free), and returns when it cannot take it, loses it, or ctx ends. The lock lives
// on a connection of its own, outside the pool: fn needs pool connections, and with a small pool
// (pool_max_conns) a pinned one could be the one it waits for.
func (a *app) holdingLock(ctx context.Context, key int64, interval time.Duration, fn func()) {
	conn, err := pgx.ConnectConfig(ctx, a.pool.Config().ConnConfig.Copy())
	if err != nil {
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil || !got {
		return
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key)
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if err := conn.Ping(ctx); err != nil {
			return // the session, and with it the lock, is gone
		}
	}
}
