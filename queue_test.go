package main

import (
	"bytes"
	"context"
	"fmt"
	stdimage "image"
	"image/color"
	"image/gif"
	_ "image/jpeg"
	_ "image/png"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// pingBroker reports whether the RabbitMQ at url accepts a connection.
func pingBroker(url string) error {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		return err
	}
	return conn.Close()
}

// testQueue returns a queue name for one test and deletes its three queues when the test ends.
func testQueue(t testing.TB) string {
	name := "imageapi_test_" + randomHex(4)
	t.Cleanup(func() {
		conn, err := amqp.Dial(needBroker(t))
		if err != nil {
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		for _, q := range []string{name, name + ".retry", name + ".dead"} {
			ch.QueueDelete(q, false, false, false)
		}
	})
	return name
}

// startWorker runs s's worker (consuming its queue) and its housekeeping (sweeper included) until
// the test ends, and waits for both to stop then.
func startWorker(t testing.TB, s *testServer) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.queue.consume(ctx, s.cfg.Concurrency, s.cfg.ShutdownTimeout, s.handleJob) })
	wg.Go(func() { s.background(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// waitStatus polls image id until its status is one of want, and returns it.
func (s *testServer) waitStatus(auth string, id int64, timeout time.Duration, want ...string) imageView {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var v imageView
	for {
		r := s.do("GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth)
		if r.status != 200 {
			s.t.Fatalf("get %d: %d %s", id, r.status, r.body)
		}
		r.json(s.t, &v)
		if slices.Contains(want, v.Status) {
			return v
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("image %d is %s after %s, want %v (error %v)", id, v.Status, timeout, want, v.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// decodeBody decodes a downloaded variant.
func decodeBody(t testing.TB, b []byte) (stdimage.Image, string) {
	t.Helper()
	img, format, err := stdimage.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("variant does not decode: %v", err)
	}
	return img, format
}

// TestProcessEndToEnd: every supported format goes upload → ready through RabbitMQ, and each variant
// downloads, decodes, has the right type and size, is upright, and the grayscale is truly gray.
func TestProcessEndToEnd(t *testing.T) {
	t.Parallel() // mostly waiting for the worker: it overlaps the others
	forEachBackend(t, testProcessEndToEnd)
}

func testProcessEndToEnd(t *testing.T, env map[string]string) {
	t.Parallel() // the two stores at once, each on a database of its own (its sweeper sees only its jobs)
	s := newTestServer(t, with(env, "BROKER_URL", needBroker(t), "QUEUE_NAME", testQueue(t), "DATABASE_URL", freshDatabase(t)))
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	cases := endToEndCases(t)
	// Every image is uploaded first: the worker processes them while earlier ones are checked.
	ids := make([]int64, len(cases))
	for i, tc := range cases {
		ids[i] = s.mustUpload(auth, tc.name, "", tc.name, tc.data).ID
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := s.waitStatus(auth, ids[i], time.Minute, statusReady, statusFailed)
			if v.Status != statusReady || v.Error != nil {
				t.Fatalf("status %s, error %v", v.Status, *v.Error)
			}
			if len(v.Variants) != len(variantSpecs) {
				t.Fatalf("variants = %v", v.Variants)
			}
			if v.Placeholder == nil || len(*v.Placeholder) != 28 {
				t.Fatalf("placeholder = %v, want a 28-character BlurHash", v.Placeholder)
			}
			for _, spec := range variantSpecs {
				checkVariant(t, s, auth, tc, spec, v.Variants[spec.name])
			}
		})
	}
}

// endToEndCase is a file of each format, with what its variants must be.
type endToEndCase struct {
	name       string
	data       []byte
	outType    string
	w, h       int    // as displayed
	t500, t100 [2]int // the thumbnails' sizes: fitted, rounded to nearest, never enlarged
	hasAlpha   bool
}

// endToEndCases are the files testProcessEndToEnd uploads: the photos in testdata, and GIF, BMP and
// TIFF made here.
func endToEndCases(t *testing.T) []endToEndCase {
	pal := stdimage.NewPaletted(stdimage.Rect(0, 0, 60, 40), color.Palette{color.NRGBA{200, 30, 30, 255}, color.NRGBA{20, 200, 60, 255}, color.NRGBA{0, 0, 0, 0}})
	for i := range pal.Pix {
		pal.Pix[i] = uint8(i % 3)
	}
	// A larger GIF, transparent but for a band across the middle: its thumbnails must keep that.
	bigPal := stdimage.NewPaletted(stdimage.Rect(0, 0, 1200, 800), pal.Palette)
	for y := range 800 {
		for x := range 1200 {
			if y < 300 || y >= 500 {
				bigPal.Pix[y*bigPal.Stride+x] = 2
			} else {
				bigPal.Pix[y*bigPal.Stride+x] = uint8(x / 100 % 2)
			}
		}
	}
	var gifBuf, bigGIF, bmpBuf, tiffBuf bytes.Buffer
	gif.Encode(&gifBuf, pal, nil)
	gif.Encode(&bigGIF, bigPal, nil)
	bmp.Encode(&bmpBuf, toRGBA(pal))
	tiff.Encode(&tiffBuf, toRGBA(pal), nil)
	return []endToEndCase{
		{"large.jpg", readTestdata(t, "large.jpg"), "image/jpeg", 4224, 3168, [2]int{500, 375}, [2]int{100, 75}, false},
		{"mid-orient6.jpg", readTestdata(t, "mid-orient6.jpg"), "image/jpeg", 1600, 2560, [2]int{313, 500}, [2]int{63, 100}, false},
		{"photo.png", readTestdata(t, "photo.png"), "image/png", 2048, 1024, [2]int{500, 250}, [2]int{100, 50}, true},
		{"small.webp", readTestdata(t, "small.webp"), "image/png", 320, 200, [2]int{320, 200}, [2]int{100, 63}, false},
		{"gif", gifBuf.Bytes(), "image/gif", 60, 40, [2]int{60, 40}, [2]int{60, 40}, true},
		{"big.gif", bigGIF.Bytes(), "image/gif", 1200, 800, [2]int{500, 333}, [2]int{100, 67}, true},
		{"bmp", bmpBuf.Bytes(), "image/png", 60, 40, [2]int{60, 40}, [2]int{60, 40}, false},
		{"tiff", tiffBuf.Bytes(), "image/png", 60, 40, [2]int{60, 40}, [2]int{60, 40}, true},
	}
}

// checkVariant downloads one variant of an end-to-end case (by token and signed link) and checks
// its type, size, dimensions, grayness and transparency.
func checkVariant(t *testing.T, s *testServer, auth string, tc endToEndCase, spec variantSpec, meta variantJSON) {
	t.Helper()
	r := s.do("GET", meta.URL, nil, "Authorization", auth)
	if r.status != 200 || r.header.Get("Content-Type") != tc.outType || meta.ContentType != tc.outType || int64(len(r.body)) != meta.Size {
		t.Fatalf("%s: %d %s (%d bytes), meta %+v", spec.name, r.status, r.header.Get("Content-Type"), len(r.body), meta)
	}
	if sr := s.do("GET", meta.SignedURL, nil); sr.status != 200 || !bytes.Equal(sr.body, r.body) {
		t.Fatalf("%s: signed_url answers %d, %d bytes", spec.name, sr.status, len(sr.body))
	}
	img, _ := decodeBody(t, r.body)
	b := img.Bounds()
	if b.Dx() != meta.Width || b.Dy() != meta.Height {
		t.Fatalf("%s decodes %v, meta says %dx%d", spec.name, b, meta.Width, meta.Height)
	}
	if spec.box == 0 {
		if b.Dx() != tc.w || b.Dy() != tc.h {
			t.Fatalf("%s is %v, want %dx%d", spec.name, b, tc.w, tc.h)
		}
	} else {
		want := map[int][2]int{500: tc.t500, 100: tc.t100}[spec.box]
		if b.Dx() != want[0] || b.Dy() != want[1] {
			t.Fatalf("%s is %v, want %dx%d", spec.name, b, want[0], want[1])
		}
	}
	if spec.grayscale {
		assertGray(t, img)
	}
	if tc.hasAlpha && opaque(img) {
		t.Fatalf("%s lost the source's transparency", spec.name)
	}
}

// assertGray fails unless every pixel of img has R = G = B.
func assertGray(t testing.TB, img stdimage.Image) {
	t.Helper()
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += max(1, b.Dy()/200) {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			if c.A != 0 && (c.R != c.G || c.G != c.B) {
				t.Fatalf("pixel (%d,%d) = %v is not gray", x, y, c)
			}
		}
	}
}

// opaque reports whether every pixel of img is fully opaque.
func opaque(img stdimage.Image) bool {
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if _, _, _, a := img.At(x, y).RGBA(); a != 0xffff {
				return false
			}
		}
	}
	return true
}

// TestBrokerOutage: while the API cannot reach RabbitMQ every upload still answers 201 (the row is
// the truth); once a process that can reach it runs, the sweeper publishes the jobs and every image
// becomes ready, none lost.
func TestBrokerOutage(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	// A database of its own: no other test's sweeper may take these jobs, nor its sweeper theirs.
	queue, dir, db := testQueue(t), t.TempDir(), freshDatabase(t)
	down := newTestServer(t, map[string]string{"DATABASE_URL": db, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/", "QUEUE_NAME": queue, "UPLOAD_DIR": dir})
	_, auth := down.signupAndLogin()
	var ids []int64
	for i := range 5 {
		ids = append(ids, down.mustUpload(auth, fmt.Sprint("during outage ", i), "", "a.png", tinyPNG(t, 40+i, 30)).ID)
	}
	if down.metrics.publishErrors.Load() != 5 {
		t.Fatalf("%d publish errors counted, want 5", down.metrics.publishErrors.Load())
	}
	p := down.do("GET", "/readyz", nil).problem(t, 503)
	if !strings.Contains(p.Detail, "broker") {
		t.Errorf("readyz detail %q does not name the broker", p.Detail)
	}
	// The broker is back (a server that reaches it, on the same database and queue).
	up := newTestServer(t, map[string]string{"DATABASE_URL": db, "BROKER_URL": needBroker(t), "QUEUE_NAME": queue, "UPLOAD_DIR": dir, "SWEEP_INTERVAL": "100ms"})
	startWorker(t, up)
	for _, id := range ids {
		if v := up.waitStatus(auth, id, 30*time.Second, statusReady, statusFailed); v.Status != statusReady {
			t.Fatalf("image %d ended %s", id, v.Status)
		}
	}
	if up.metrics.jobsRequeued.Load() < 5 {
		t.Errorf("sweeper requeued %d jobs, want at least 5", up.metrics.jobsRequeued.Load())
	}
}

// TestWorkerKilledMidJob: a worker that took a job and died (its claim stays, its message is gone)
// does not lose the image: after the lease the sweeper publishes it again and it becomes ready —
// once, with one set of variant files.
func TestWorkerKilledMidJob(t *testing.T) {
	dir := t.TempDir()
	queue := testQueue(t)
	s := newTestServer(t, map[string]string{"BROKER_URL": needBroker(t), "QUEUE_NAME": queue, "UPLOAD_DIR": dir,
		"JOB_LEASE": "1s", "SWEEP_INTERVAL": "100ms"})
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "victim", "", "a.png", tinyPNG(t, 64, 48))
	// The dead worker: it claimed the job and its message went with it.
	ctx := context.Background()
	if _, _, err := s.store.claimImage(ctx, v.ID, time.Second, 3); err != nil {
		t.Fatal(err)
	}
	purgeQueue(t, queue)
	startWorker(t, s)
	got := s.waitStatus(auth, v.ID, 30*time.Second, statusReady, statusFailed)
	if got.Status != statusReady {
		t.Fatalf("status %s", got.Status)
	}
	var attempts int
	s.pool.QueryRow(ctx, "SELECT attempts FROM images WHERE id = $1", v.ID).Scan(&attempts)
	if attempts != 2 {
		t.Errorf("attempts = %d, want 2 (the dead worker's and the one that finished)", attempts)
	}
	// A duplicate message (the sweeper may have sent one) finds nothing to do: one original and one
	// file per variant.
	if out, _ := s.handleJob(ctx, v.ID); out != jobDone {
		t.Fatalf("a duplicate: outcome %v", out)
	}
	if n := len(filesUnder(t, filepath.Join(dir, originalDir))); n != 1+len(variantSpecs) {
		t.Errorf("%d files, want %d", n, 1+len(variantSpecs))
	}
	if s.metrics.jobsDone.Load() != 1 {
		t.Errorf("processed %d times, want once", s.metrics.jobsDone.Load())
	}
}

// purgeQueue drops every message waiting in queue.
func purgeQueue(t testing.TB, queue string) {
	conn, err := amqp.Dial(needBroker(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueuePurge(queue, false); err != nil {
		t.Fatal(err)
	}
}

// queueDepth returns how many messages wait in queue.
func queueDepth(t testing.TB, queue string) int {
	conn, err := amqp.Dial(needBroker(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// TestPoisonImage: a truncated JPEG ends failed at its first attempt (its bytes will not change)
// with a readable reason, its message sits in the dead-letter queue, and the worker goes on serving
// others.
func TestPoisonImage(t *testing.T) {
	queue := testQueue(t)
	s := newTestServer(t, map[string]string{"BROKER_URL": needBroker(t), "QUEUE_NAME": queue, "JOB_RETRY_DELAY": "50ms"})
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	bad := s.mustUpload(auth, "truncated", "", "t.jpg", readTestdata(t, "bad/truncated.jpg"))
	v := s.waitStatus(auth, bad.ID, 30*time.Second, statusFailed, statusReady)
	if v.Status != statusFailed || v.Error == nil || !strings.Contains(*v.Error, "corrupt or truncated") {
		t.Fatalf("poison image: status %s, error %v", v.Status, v.Error)
	}
	var attempts int
	s.pool.QueryRow(context.Background(), "SELECT attempts FROM images WHERE id = $1", bad.ID).Scan(&attempts)
	if attempts != 1 {
		t.Errorf("attempts = %d, want 1", attempts)
	}
	deadline := time.Now().Add(5 * time.Second)
	for queueDepth(t, queue+".dead") != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := queueDepth(t, queue+".dead"); n != 1 {
		t.Fatalf("dead-letter queue holds %d messages, want 1", n)
	}
	p := s.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=thumb_100", bad.ID), nil, "Authorization", auth).problem(t, 409)
	if !strings.Contains(p.Detail, "failed") {
		t.Errorf("409 detail %q", p.Detail)
	}
	good := s.mustUpload(auth, "good", "", "a.png", tinyPNG(t, 10, 10))
	if v := s.waitStatus(auth, good.ID, 30*time.Second, statusReady, statusFailed); v.Status != statusReady {
		t.Fatalf("the worker stopped serving: %s", v.Status)
	}
}

// TestInProcessQueue: with BROKER_URL empty (mode all) jobs run in-process, with the same results.
func TestInProcessQueue(t *testing.T) {
	s := newTestServer(t, map[string]string{"JOB_RETRY_DELAY": "20ms"})
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	good := s.mustUpload(auth, "good", "", "m.jpg", readTestdata(t, "mid.jpg"))
	bad := s.mustUpload(auth, "bad", "", "t.jpg", readTestdata(t, "bad/truncated.jpg"))
	if v := s.waitStatus(auth, good.ID, 30*time.Second, statusReady, statusFailed); v.Status != statusReady || v.Variants["thumb_100"].Width != 100 {
		t.Fatalf("good: %+v", v)
	}
	if v := s.waitStatus(auth, bad.ID, 30*time.Second, statusFailed, statusReady); v.Status != statusFailed {
		t.Fatalf("bad: %+v", v)
	}
}

// TestDuplicateJobIsHarmless: a message for an image already done does nothing, and does not redo
// the work; nor does one for a deleted image.
func TestDuplicateJobIsHarmless(t *testing.T) {
	s := newTestServer(t, nil)
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "once", "", "a.png", tinyPNG(t, 20, 20))
	ctx := context.Background()
	if out, _ := s.handleJob(ctx, v.ID); out != jobDone {
		t.Fatalf("first run: %v", out)
	}
	first := s.waitStatus(auth, v.ID, time.Second, statusReady)
	if out, _ := s.handleJob(ctx, v.ID); out != jobDone {
		t.Fatalf("duplicate: %v", out)
	}
	again := s.waitStatus(auth, v.ID, time.Second, statusReady)
	if s.metrics.jobsDone.Load() != 1 || again.Variants["thumb_100"].URL != first.Variants["thumb_100"].URL || again.UpdatedAt != first.UpdatedAt {
		t.Fatalf("the duplicate redid the work: %d jobs, %+v", s.metrics.jobsDone.Load(), again.Variants)
	}
	s.do("DELETE", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth)
	if out, _ := s.handleJob(ctx, v.ID); out != jobDone {
		t.Fatalf("deleted image: %v", out)
	}
}

// TestAbandonedJob: a job whose context ends (shutdown) hands the image back, pending, with the
// attempt not counted and no file left behind.
func TestAbandonedJob(t *testing.T) {
	dir := t.TempDir()
	s := newTestServer(t, map[string]string{"UPLOAD_DIR": dir})
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "interrupted", "", "m.jpg", readTestdata(t, "mid.jpg"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if out, _ := s.handleJob(ctx, v.ID); out != jobAbandoned {
		t.Fatalf("outcome %v, want abandoned", out)
	}
	got := s.waitStatus(auth, v.ID, time.Second, statusPending)
	if len(got.Variants) != 0 {
		t.Fatalf("variants recorded: %v", got.Variants)
	}
	var attempts int
	s.pool.QueryRow(context.Background(), "SELECT attempts FROM images WHERE id = $1", v.ID).Scan(&attempts)
	if attempts != 0 {
		t.Errorf("attempts = %d, want 0", attempts)
	}
	if files := filesUnder(t, dir); len(files) != 1 {
		t.Errorf("files = %v, want only the original", files)
	}
	// And the next worker finishes it.
	if out, _ := s.handleJob(context.Background(), v.ID); out != jobDone {
		t.Fatalf("retry: %v", out)
	}
	s.waitStatus(auth, v.ID, time.Second, statusReady)
}

// TestBrokerReconnect: when the connection drops, publisher and consumer reconnect by themselves,
// and jobs go on being processed.
func TestBrokerReconnect(t *testing.T) {
	s := newTestServer(t, map[string]string{"BROKER_URL": needBroker(t), "QUEUE_NAME": testQueue(t), "SWEEP_INTERVAL": "100ms"})
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	first := s.mustUpload(auth, "before", "", "a.png", tinyPNG(t, 30, 30))
	s.waitStatus(auth, first.ID, 30*time.Second, statusReady)
	q := s.queue.(*amqpQueue)
	for range 2 {
		conn, _, wake := q.current()
		conn.Close() // as a broker restart or a network cut would
		select {
		case <-wake:
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnection within 10 s")
		}
		v := s.mustUpload(auth, "after", "", "a.png", tinyPNG(t, 31, 30))
		if got := s.waitStatus(auth, v.ID, 30*time.Second, statusReady, statusFailed); got.Status != statusReady {
			t.Fatalf("after reconnect: %s", got.Status)
		}
	}
	if r := s.do("GET", "/readyz", nil); r.status != 200 {
		t.Fatalf("readyz after reconnect: %d %s", r.status, r.body)
	}
}

// TestStatusChangesReachTheCache: with Redis on, the worker's status changes invalidate the cache,
// so a client polling a cached image sees it become ready.
func TestStatusChangesReachTheCache(t *testing.T) {
	s := newTestServer(t, map[string]string{"REDIS_URL": needRedis(t), "REDIS_PREFIX": redisPrefix(t)})
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "watched", "", "a.png", tinyPNG(t, 30, 30))
	s.waitStatus(auth, v.ID, time.Second, statusPending) // now cached as pending
	s.do("GET", "/api/v1/images/", nil, "Authorization", auth)
	if out, _ := s.handleJob(context.Background(), v.ID); out != jobDone {
		t.Fatalf("job: %v", out)
	}
	hits := s.metrics.cacheHits.Load()
	if got := s.waitStatus(auth, v.ID, time.Second, statusReady, statusPending); got.Status != statusReady {
		t.Fatalf("cached read after processing: %s", got.Status)
	}
	var list []imageView
	s.do("GET", "/api/v1/images/", nil, "Authorization", auth).json(t, &list)
	if list[0].Status != statusReady {
		t.Fatalf("cached list after processing: %s", list[0].Status)
	}
	if s.metrics.cacheHits.Load() != hits {
		t.Fatalf("a stale entry was served")
	}
}

// BenchmarkEndToEnd uploads n copies of a photo (8 clients at once) to a process running the API and
// one worker on RabbitMQ, and reports images per second from the first upload to the last one ready;
// it fails if any image is lost or fails. Run it with -benchtime 1x (and -cpu 1 for one core).
// BenchmarkEndToEnd measures n uploads, 8 at a time, until every image is ready: on the filesystem,
// and for the 13 MP photo in the bucket too (the filesystem run is its baseline).
func BenchmarkEndToEnd(b *testing.B) {
	for _, tc := range []struct {
		file  string
		n     int
		dct   string
		store string
	}{{"mid.jpg", 200, "on", "fs"}, {"large.jpg", 50, "on", "fs"}, {"large.jpg", 50, "on", "s3"}, {"large.jpg", 50, "off", "fs"}} {
		b.Run(fmt.Sprintf("%s/%d/dct=%s/%s", tc.file, tc.n, tc.dct, tc.store), func(b *testing.B) {
			env := map[string]string{}
			if tc.store == "s3" {
				env = s3TestEnv(b)
			}
			benchEndToEnd(b, tc.file, tc.n, with(env, "JPEG_DCT", tc.dct))
		})
	}
}

// processCPU is the CPU time this process has used (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchEndToEnd(b *testing.B, file string, n int, env map[string]string) {
	s := newTestServer(b, with(env, "BROKER_URL", needBroker(b), "QUEUE_NAME", testQueue(b), "LOG_LEVEL", "error"))
	startWorker(b, s)
	_, auth := s.signupAndLogin()
	body, ct := multipartBody(b, "file", file, readTestdata(b, file))
	var uid int64
	s.pool.QueryRow(context.Background(), "SELECT id FROM users ORDER BY id DESC LIMIT 1").Scan(&uid)
	s.metrics.jobsDCT.Store(0)
	for b.Loop() {
		s.pool.Exec(context.Background(), "DELETE FROM images WHERE owner_id = $1", uid)
		cpuStart := processCPU()
		start := time.Now()
		var wg sync.WaitGroup
		next := make(chan struct{}, n)
		for range n {
			next <- struct{}{}
		}
		close(next)
		for range 8 {
			wg.Go(func() {
				for range next {
					req, _ := http.NewRequest("POST", s.srv.URL+"/api/v1/images/?name=e2e", bytes.NewReader(body))
					req.Header.Set("Authorization", auth)
					req.Header.Set("Content-Type", ct)
					resp, err := http.DefaultClient.Do(req)
					if err != nil || resp.StatusCode != 201 {
						b.Errorf("upload: %v %v", err, resp)
						return
					}
					resp.Body.Close()
				}
			})
		}
		wg.Wait()
		uploaded := time.Since(start)
		for {
			var ready, failed int
			s.pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE status = 'ready'), count(*) FILTER (WHERE status = 'failed')
				FROM images WHERE owner_id = $1`, uid).Scan(&ready, &failed)
			if failed > 0 {
				b.Fatalf("%d images failed", failed)
			}
			if ready == n {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Fatalf("only %d of %d ready after 10 minutes", ready, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.ReportMetric(float64(n)/elapsed.Seconds(), "images/s")
		b.ReportMetric(uploaded.Seconds(), "upload-s")
		b.ReportMetric(elapsed.Seconds(), "total-s")
		b.ReportMetric(float64(s.metrics.jobsDCT.Load()), "dct-jobs")
		// This process's own CPU (API and worker): the storage's, a process of its own, is apart.
		b.ReportMetric((processCPU() - cpuStart).Seconds(), "cpu-s")
	}
}

// TestPureJobPriority: each user's first job outranks everyone's second, and ranks fall in powers of two.
func TestPureJobPriority(t *testing.T) {
	for rank, want := range map[int64]uint8{0: 9, 1: 9, 2: 8, 3: 8, 4: 7, 7: 7, 8: 6, 255: 2, 256: 1, 511: 1, 512: 0, 1 << 40: 0} {
		if got := jobPriority(rank); got != want {
			t.Errorf("rank %d: priority %d, want %d", rank, got, want)
		}
	}
}

// TestPureMemQueueOrder: the in-process queue hands out the highest priority first, first in first out
// within one.
func TestPureMemQueueOrder(t *testing.T) {
	q := newMemQueue(slog.New(slog.DiscardHandler))
	for i, p := range []uint8{3, 3, 9, 0, 9, 5, 200} {
		q.publish(context.Background(), int64(i), p)
	}
	var got []int64
	for {
		id, _, ok := q.next()
		if !ok {
			break
		}
		got = append(got, id)
	}
	if want := []int64{2, 4, 6, 5, 0, 1, 3}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

// TestFairAcrossUsers: with one worker, a user's backlog queued first delays another user's image
// by at most one job, through RabbitMQ and through the in-process queue alike.
func TestFairAcrossUsers(t *testing.T) {
	for _, queue := range []string{"rabbitmq", "in-process"} {
		t.Run(queue, func(t *testing.T) {
			env := map[string]string{"WORKER_CONCURRENCY": "1"}
			if queue == "rabbitmq" {
				env = with(env, "BROKER_URL", needBroker(t), "QUEUE_NAME", testQueue(t))
			}
			s := newTestServer(t, with(env, "DATABASE_URL", freshDatabase(t)))
			_, heavy := s.signupAndLogin()
			_, light := s.signupAndLogin()
			var first imageView
			for i := range 8 {
				v := s.mustUpload(heavy, fmt.Sprint("backlog ", i), "", "a.png", tinyPNG(t, 30, 30))
				if i == 0 {
					first = v
				}
			}
			mine := s.mustUpload(light, "mine", "", "b.png", tinyPNG(t, 31, 31))
			startWorker(t, s)
			s.waitStatus(light, mine.ID, 30*time.Second, statusReady)
			// How many of the backlog were finished before it (their updated_at is when they were).
			var before int
			err := s.pool.QueryRow(context.Background(), `
				SELECT count(*) FROM images
				WHERE id <> $1 AND status = 'ready' AND updated_at < (SELECT updated_at FROM images WHERE id = $1)`, mine.ID).Scan(&before)
			if err != nil {
				t.Fatal(err)
			}
			if before > 1 {
				t.Fatalf("%d of the other user's backlog went first, want at most 1", before)
			}
			s.waitStatus(heavy, first.ID, 30*time.Second, statusReady)
		})
	}
}

// TestJobsPerUser: past JOBS_PER_USER unfinished images a user's upload is 429 with Retry-After,
// before its body is read; another user is not affected.
func TestJobsPerUser(t *testing.T) {
	s := newTestServer(t, map[string]string{"JOBS_PER_USER": "2"})
	_, alice := s.signupAndLogin()
	_, bob := s.signupAndLogin()
	for range 2 {
		s.mustUpload(alice, "a", "", "a.png", tinyPNG(t, 4, 4))
	}
	r := s.upload(alice, "a", "", "a.png", tinyPNG(t, 4, 4))
	r.problem(t, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	s.mustUpload(bob, "b", "", "b.png", tinyPNG(t, 4, 4))
	// As the backlog is worked off, uploads are taken again.
	startWorker(t, s)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if r := s.upload(alice, "a", "", "a.png", tinyPNG(t, 4, 4)); r.status == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still refused after the backlog was processed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BenchmarkFairness: one user's backlog of 50 heavy images (a 1-bit PNG of 32768×1525 alternating
// noisy rows, about 20 KB, whose full-size grayscale takes seconds to encode), then another user's
// photo (large.jpg): that photo's time to ready, against the same photo on an idle worker, in one
// run, with one job at a time (WORKER_CONCURRENCY=1).
//
//	go test -run '^$' -bench Fairness -benchtime 3x .
func BenchmarkFairness(b *testing.B) {
	heavyBody := alternatingRowsPNG(b, 32768, 1525)
	photo := readTestdata(b, "large.jpg")
	s := newTestServer(b, map[string]string{"WORKER_CONCURRENCY": "1", "BROKER_URL": needBroker(b), "QUEUE_NAME": testQueue(b),
		"LOG_LEVEL": "error", "DATABASE_URL": freshDatabase(b)})
	startWorker(b, s)
	_, heavy := s.signupAndLogin()
	_, light := s.signupAndLogin()
	timeToReady := func(auth string, body []byte) time.Duration {
		start := time.Now()
		v := s.mustUpload(auth, "mine", "", "a", body)
		s.waitStatus(auth, v.ID, 5*time.Minute, statusReady)
		return time.Since(start)
	}
	var idle, loaded, oneHeavy []time.Duration
	for b.Loop() {
		oneHeavy = append(oneHeavy, timeToReady(heavy, heavyBody))
		idle = append(idle, timeToReady(light, photo))
		for i := range 50 {
			s.mustUpload(heavy, fmt.Sprint("heavy ", i), "", "heavy.png", heavyBody)
		}
		loaded = append(loaded, timeToReady(light, photo))
		// Clear the backlog before the next round: the job in hand ends (its row is gone) and the
		// queue's messages find nothing to do.
		s.pool.Exec(context.Background(), "DELETE FROM images")
		time.Sleep(3 * time.Second)
	}
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	b.ReportMetric(med(idle).Seconds(), "idle-s")
	b.ReportMetric(med(loaded).Seconds(), "behind-backlog-s")
	b.ReportMetric((med(loaded) - med(idle)).Seconds(), "delay-s")
	b.ReportMetric(med(oneHeavy).Seconds(), "heavy-job-s")
	// First in first out, the photo would wait for the whole backlog: about 50 × heavy-job-s.
}
