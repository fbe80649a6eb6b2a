package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	stdimage "image"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPureDisplaySizeNames: the ladder's names, and nothing else.
func TestPureDisplaySizeNames(t *testing.T) {
	for name, want := range map[string]struct {
		width int
		gray  bool
		ok    bool
	}{
		"w160": {160, false, true}, "w2560": {2560, false, true}, "gray-w1280": {1280, true, true},
		"w1000": {}, "w01280": {}, "w": {}, "gray-": {}, "gray-w+640": {}, "W640": {}, "thumb_100": {}, "w640 ": {},
	} {
		w, gray, ok := displaySize(name)
		if w != want.width || gray != want.gray || ok != want.ok {
			t.Errorf("%q: %d %v %v, want %+v", name, w, gray, ok, want)
		}
	}
}

// TestDisplaySizes: a display size is made on its first request (scaled to its width, turned upright,
// gray for gray-w…), stored and listed in variants, then served from storage with its ETag, 304 and
// ranges, by token or by its signed link (srcset lists them all); concurrent first requests make one
// file; a size at least as wide as the image is the full-size file; one off the ladder is 422, one
// asked before the image is ready 409; the image's deletion removes them.
func TestDisplaySizes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, env map[string]string) {
		env = with(env, "DATABASE_URL", freshDatabase(t))
		s := newTestServer(t, env)
		_, auth := s.signupAndLogin()
		pending := s.mustUpload(auth, "pending", "", "a.png", tinyPNG(t, 300, 200))
		file := func(id int64, variant string, header ...string) response {
			return s.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=%s", id, variant), nil, append([]string{"Authorization", auth}, header...)...)
		}
		p := file(pending.ID, "w160").problem(t, http.StatusConflict)
		if !strings.Contains(p.Detail, "pending") {
			t.Errorf("409 detail %q", p.Detail)
		}
		startWorker(t, s)
		photo := readTestdata(t, "mid-orient6.jpg") // stored sideways: 1600×2560 as displayed
		v := s.mustUpload(auth, "photo", "", "p.jpg", photo)
		v = s.waitStatus(auth, v.ID, 30*time.Second, statusReady)
		if !strings.Contains(v.Srcset, "variant=w640") || !strings.Contains(v.Srcset, "1600w") || strings.Contains(v.Srcset, "w1920") {
			t.Errorf("srcset %q", v.Srcset)
		}
		file(v.ID, "w1000").problem(t, http.StatusUnprocessableEntity)

		first := firstRequestsOnce(t, s, file, v.ID)
		var got imageView
		s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth).json(t, &got)
		w640, ok := got.Variants["w640"]
		if !ok || w640.Width != 640 || w640.Size != int64(len(first.body)) {
			t.Fatalf("variants after: %+v", got.Variants)
		}
		if r := file(v.ID, "w640", "If-None-Match", first.header.Get("ETag")); r.status != http.StatusNotModified {
			t.Errorf("If-None-Match: %d", r.status)
		}
		if r := file(v.ID, "w640", "Range", "bytes=0-9"); r.status != http.StatusPartialContent || !bytes.Equal(r.body, first.body[:10]) {
			t.Errorf("Range: %d", r.status)
		}
		if r := s.do("GET", w640.SignedURL, nil); r.status != 200 || !bytes.Equal(r.body, first.body) {
			t.Errorf("signed_url: %d", r.status)
		}
		// A size not made yet, through its srcset link (no token): made then.
		link := ""
		for _, part := range strings.Split(got.Srcset, ", ") {
			if strings.Contains(part, "variant=w320") {
				link = strings.Fields(part)[0]
			}
		}
		if r := s.do("GET", link, nil); r.status != 200 {
			t.Errorf("srcset's w320 link: %d %s", r.status, r.body)
		}
		// The request that makes a size is answered from the file as it is stored, as a stored one is:
		// a range of it, with the ETag the stored file then has, and the download name.
		part := file(v.ID, "w160", "Range", "bytes=0-9")
		whole := file(v.ID, "w160")
		if part.status != http.StatusPartialContent || len(part.body) != 10 || whole.status != 200 || !bytes.HasPrefix(whole.body, part.body) ||
			part.header.Get("ETag") == "" || part.header.Get("ETag") != whole.header.Get("ETag") || part.header.Get("Content-Disposition") != whole.header.Get("Content-Disposition") {
			t.Errorf("a first request with Range: %d %q %q; then %d %q", part.status, part.header.Get("ETag"), part.header.Get("Content-Disposition"), whole.status, whole.header.Get("ETag"))
		}
		// Gray; and as wide as the image or wider: the full-size file.
		gray := file(v.ID, "gray-w320")
		grayImg, _ := decodeBody(t, gray.body)
		assertGray(t, grayImg)
		if r := file(v.ID, "w1920"); r.status != 200 || !bytes.Equal(r.body, photo) {
			t.Errorf("w1920 of a 1600-wide photo: %d, not the original", r.status)
		}
		// Past the quota: 413, nothing stored (a replica whose quota is what the user stores now).
		var used int64
		s.pool.QueryRow(context.Background(), "SELECT bytes FROM image_counts WHERE tag = '' AND n > 0").Scan(&used)
		tight := newTestServer(t, with(env, "USER_QUOTA_BYTES", fmt.Sprint(used+100)))
		tight.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=w960", v.ID), nil, "Authorization", auth).problem(t, http.StatusRequestEntityTooLarge)
		// With no room at all, refused before rendering: a render would wait for this replica's
		// memory, all taken, and run out of JOB_TIMEOUT (503).
		full := newTestServer(t, with(env, "USER_QUOTA_BYTES", fmt.Sprint(used), "JOB_TIMEOUT", "100ms"))
		release, err := full.budget.acquire(context.Background(), full.cfg.WorkerMemory)
		if err != nil {
			t.Fatal(err)
		}
		full.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=w960", v.ID), nil, "Authorization", auth).problem(t, http.StatusRequestEntityTooLarge)
		release()
		// Counted, and removed with the image.
		var variantBytes int64
		s.pool.QueryRow(context.Background(), "SELECT variant_bytes FROM images WHERE id = $1", v.ID).Scan(&variantBytes)
		if variantBytes < w640.Size+int64(len(gray.body)) {
			t.Errorf("variant bytes %d do not count the display sizes", variantBytes)
		}
		s.do("DELETE", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth)
		for _, k := range s.storedKeys() {
			if strings.Contains(k, ".w") || strings.Contains(k, ".gray-w") {
				t.Errorf("left after the delete: %s", k)
			}
		}
	})
}

// BenchmarkDisplaySize: the first request for w1280 of the 13.4 MP photo (render, store and send,
// straight from the coefficients) and for w640, against libvips' thumbnail of the same file to the
// same width (when vipsthumbnail is on the PATH), in one run, on one core:
//
//	taskset -c 0 go test -run '^$' -bench DisplaySize -cpu 1 -benchtime 5x .
//
// Then the stored w1280 against a stored thumbnail (thumb_500), alternated over 7 rounds (medians of
// the rounds' ratios): one client's latency; 8 clients' throughput from a load generator in this
// process (on the server's core); and, when wrk is on the PATH, from wrk on a core of its own when
// the machine has one (as real clients are: elsewhere), with the same two files served by a bare
// net/http file server as the floor the bytes alone set.
func BenchmarkDisplaySize(b *testing.B) {
	s := newTestServer(b, map[string]string{"DATABASE_URL": freshDatabase(b), "LOG_LEVEL": "error"})
	startWorker(b, s)
	_, auth := s.signupAndLogin()
	photo := readTestdata(b, "large.jpg")
	var first, firstSmall []time.Duration
	var v imageView
	for b.Loop() {
		v = s.mustUpload(auth, "p", "", "large.jpg", photo)
		s.waitStatus(auth, v.ID, time.Minute, statusReady)
		path := fmt.Sprintf("/api/v1/images/%d/file?variant=", v.ID)
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if r := s.do("GET", path+"w1280", nil, "Authorization", auth); r.status != 200 {
			b.Fatalf("w1280: %d %s", r.status, r.body)
		}
		first = append(first, time.Since(start))
		start = time.Now()
		if r := s.do("GET", path+"w640", nil, "Authorization", auth); r.status != 200 {
			b.Fatalf("w640: %d %s", r.status, r.body)
		}
		firstSmall = append(firstSmall, time.Since(start))
	}
	firstMs := float64(medianDuration(first).Microseconds()) / 1000
	b.ReportMetric(firstMs, "first-w1280-ms")
	if vips := libvipsMillis(b, filepath.Join("testdata", "large.jpg"), 1280, 20); vips > 0 {
		b.ReportMetric(vips, "libvips-w1280-ms")
		b.ReportMetric(firstMs/vips, "first/libvips")
	}
	b.ReportMetric(float64(medianDuration(firstSmall).Microseconds())/1000, "first-w640-ms")
	var got imageView
	s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth).json(b, &got)
	sized, thumb := got.Variants["w1280"], got.Variants["thumb_500"]
	b.ReportMetric(float64(sized.Size)/1000, "w1280-kB")
	b.ReportMetric(float64(thumb.Size)/1000, "thumb500-kB")
	var sizedKey, thumbKey string
	if err := s.pool.QueryRow(context.Background(), "SELECT variants->'w1280'->>'key', variants->'thumb_500'->>'key' FROM images WHERE id = $1", v.ID).Scan(&sizedKey, &thumbKey); err != nil {
		b.Fatal(err)
	}
	cachedSizeRatios(b, s, auth, fmt.Sprintf("/api/v1/images/%d/file?variant=", v.ID), sizedKey, thumbKey)
}

// cachedSizeRatios reports how much more serving the stored w1280 (key sized) costs than serving
// the stored thumbnail (key thumb), as BenchmarkDisplaySize says.
func cachedSizeRatios(b *testing.B, s *testServer, auth, path, sized, thumb string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	get := func(url string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", auth)
		if code := loadRequest(client, req, make([]byte, 512<<10)); code != 200 {
			b.Fatalf("%s: %d", url, code)
		}
	}
	wrk, _ := exec.LookPath("wrk")
	bare := bareFileServer(b, s, sized, thumb)
	var latency, load, wrkLoad, bareLoad []float64
	for range 7 {
		latency = append(latency, float64(oneClientLatency(get, s.srv.URL+path+"w1280"))/float64(oneClientLatency(get, s.srv.URL+path+"thumb_500")))
		load = append(load, loadRate(b, client, auth, s.srv.URL+path+"thumb_500")/loadRate(b, client, auth, s.srv.URL+path+"w1280"))
		if wrk != "" {
			wrkLoad = append(wrkLoad, wrkRate(b, wrk, auth, s.srv.URL+path+"thumb_500")/wrkRate(b, wrk, auth, s.srv.URL+path+"w1280"))
			bareLoad = append(bareLoad, wrkRate(b, wrk, "", bare+"/thumb")/wrkRate(b, wrk, "", bare+"/sized"))
		}
	}
	b.ReportMetric(median(latency), "latency-w1280/thumb")
	b.ReportMetric(median(load), "thumb/w1280")
	if wrk != "" {
		b.ReportMetric(median(wrkLoad), "wrk-thumb/w1280")
		b.ReportMetric(median(bareLoad), "bare-thumb/w1280")
	}
}

// oneClientLatency is the median time get takes for url, one request at a time.
func oneClientLatency(get func(string), url string) time.Duration {
	d := make([]time.Duration, 101)
	for i := range d {
		start := time.Now()
		get(url)
		d[i] = time.Since(start)
	}
	return medianDuration(d)
}

// loadRequest does req as a load generator does (the body read in large pieces into buf, and
// dropped) and returns its status, 0 when it failed.
func loadRequest(client *http.Client, req *http.Request, buf []byte) int {
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	io.CopyBuffer(struct{ io.Writer }{io.Discard}, resp.Body, buf)
	resp.Body.Close()
	return resp.StatusCode
}

// loadRate is the requests a second 8 kept-alive clients get answered for url, 1000 in all.
func loadRate(b *testing.B, client *http.Client, auth, url string) float64 {
	const n = 1000
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			buf := make([]byte, 512<<10)
			for range next {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("Authorization", auth)
				if code := loadRequest(client, req, buf); code != 200 {
					b.Errorf("%s: %d", url, code)
					return
				}
			}
		})
	}
	wg.Wait()
	return n / time.Since(start).Seconds()
}

// wrkRate is the requests a second wrk (8 connections, one second) gets answered for url, run on a
// core this process may not use when there is one and taskset is on the PATH.
func wrkRate(b *testing.B, wrk, auth, url string) float64 {
	args := []string{wrk, "-t1", "-c8", "-d1s", url}
	if auth != "" {
		args = append(args, "-H", "Authorization: "+auth)
	}
	if cpu := freeCPU(); cpu != "" {
		if taskset, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{taskset, "-c", cpu}, args...)
		}
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v %s", err, out)
	}
	var rate float64
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Requests/sec:" {
			rate, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return rate
}

// freeCPU is a CPU this process may not run on (taskset kept it to others), or "".
func freeCPU() string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	var allowed string
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			allowed = strings.TrimSpace(rest)
		}
	}
	mine := map[int]bool{}
	for part := range strings.SplitSeq(allowed, ",") {
		lo, hi, _ := strings.Cut(part, "-")
		from, err := strconv.Atoi(lo)
		to, err2 := strconv.Atoi(hi)
		if err2 != nil {
			to = from
		}
		if err != nil {
			return ""
		}
		for c := from; c <= to; c++ {
			mine[c] = true
		}
	}
	for c := range runtime.NumCPU() + 64 {
		if _, err := os.Stat(fmt.Sprintf("/sys/devices/system/cpu/cpu%d", c)); err == nil && !mine[c] {
			return strconv.Itoa(c)
		}
	}
	return ""
}

// bareFileServer serves the stored files of keys sized and thumb at /sized and /thumb with nothing
// but http.ServeFile (sendfile, as the API serves them): the floor the bytes alone set.
func bareFileServer(b *testing.B, s *testServer, sized, thumb string) string {
	fsb, ok := s.blobs.(*fsBlobs)
	if !ok {
		b.Fatal("the bare baseline reads the files from UPLOAD_DIR")
	}
	mux := http.NewServeMux()
	for name, key := range map[string]string{"/sized": sized, "/thumb": thumb} {
		p, err := fsb.path(key)
		if err != nil {
			b.Fatal(err)
		}
		mux.HandleFunc(name, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, p) })
	}
	srv := httptest.NewServer(mux)
	b.Cleanup(srv.Close)
	return srv.URL
}

// firstRequestsOnce asks for w640 of image id six times at once, and checks that one render made one
// file, the right size, that every request got; it returns the answer.
func firstRequestsOnce(t *testing.T, s *testServer, file func(int64, string, ...string) response, id int64) response {
	t.Helper()
	var wg sync.WaitGroup
	answers := make([]response, 6)
	for i := range answers {
		wg.Go(func() { answers[i] = file(id, "w640") })
	}
	wg.Wait()
	for i, r := range answers {
		if r.status != 200 || r.header.Get("Content-Type") != "image/jpeg" || r.header.Get("ETag") != answers[0].header.Get("ETag") {
			t.Fatalf("request %d: %d %s, ETag %s", i, r.status, r.header.Get("Content-Type"), r.header.Get("ETag"))
		}
	}
	img, _ := decodeBody(t, answers[0].body)
	if b := img.Bounds(); b.Dx() != 640 || b.Dy() != 1024 {
		t.Errorf("w640 of a 1600×2560 photo is %v, want 640×1024 (upright)", b)
	}
	n := 0
	for _, k := range s.storedKeys() {
		if strings.Contains(k, ".w640.") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d files for w640, want 1", n)
	}
	return answers[0]
}

// BenchmarkRenderWidth: a display size's render alone (read, decode, reduce, scale, encode into a temp
// file) of the 13.4 MP photo, the DCT path against the standard one, and, where vipsthumbnail is on the
// PATH, libvips' thumbnail of the same file to the same width: one vipsthumbnail process given many
// copies of the file, so that its start-up is spread over them (libvips' time in-process). Run it on one
// core:
//
//	taskset -c 0 go test -run '^$' -bench RenderWidth -cpu 1 -count 6 .
func BenchmarkRenderWidth(b *testing.B) {
	sc, err := newScratch(b.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join("testdata", "large.jpg")
	for _, width := range []int{1280, 640} {
		for _, dct := range []bool{true, false} {
			name := fmt.Sprintf("w%d/%s", width, map[bool]string{true: "dct", false: "standard"}[dct])
			b.Run(name, func(b *testing.B) {
				opts := processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct}
				start := time.Now()
				for b.Loop() {
					out, err := renderWidth(context.Background(), sc, path, "image/jpeg", "w", width, false, opts)
					if err != nil {
						b.Fatal(err)
					}
					os.Remove(out.tmpPath)
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/render")
			})
		}
		if _, err := exec.LookPath("vipsthumbnail"); err != nil {
			continue
		}
		b.Run(fmt.Sprintf("w%d/libvips", width), func(b *testing.B) {
			var ms []float64
			for b.Loop() {
				ms = append(ms, libvipsMillis(b, path, width, 20))
			}
			slices.Sort(ms)
			b.ReportMetric(ms[len(ms)/2], "ms/render")
		})
	}
}

// libvipsMillis is libvips' time to thumbnail the JPEG at path to width pixels wide, in
// milliseconds, as it would be in-process: one vipsthumbnail process given batch+1 links to the
// file less one given a single link, over batch (its start-up, about 160 ms here, taken out), at
// quality 85 as ours. 0 without vipsthumbnail.
func libvipsMillis(b *testing.B, path string, width, batch int) float64 {
	vips, err := exec.LookPath("vipsthumbnail")
	if err != nil {
		return 0
	}
	dir := b.TempDir()
	abs, err := filepath.Abs(path)
	if err != nil {
		b.Fatal(err)
	}
	run := func(n int) time.Duration {
		args := []string{"-s", fmt.Sprint(width), "-o", filepath.Join(dir, "%s-out.jpg[Q=85]")}
		for i := range n {
			link := filepath.Join(dir, fmt.Sprintf("in%d.jpg", i))
			if _, err := os.Lstat(link); err != nil {
				if err := os.Symlink(abs, link); err != nil {
					b.Fatal(err)
				}
			}
			args = append(args, link)
		}
		start := time.Now()
		if out, err := exec.Command(vips, args...).CombinedOutput(); err != nil {
			b.Fatalf("vipsthumbnail: %v %s", err, out)
		}
		return time.Since(start)
	}
	one := run(1)
	return float64((run(batch+1) - one).Microseconds()) / 1000 / float64(batch)
}

// TestPureRenderWidth: a display size from the DCT path is the picture the standard path makes of the
// whole decode, at the same size, upright, in the same colours, for each chroma subsampling, a
// progressive file, a turned one, gray, and the grayscale of a colour one; and every size of the
// ladder it can make comes from the DCT path.
func TestPureRenderWidth(t *testing.T) {
	computeOnly(t)
	sc, err := newScratch(t.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	render := func(file string, width int, gray, dct bool) stdimage.Image {
		t.Helper()
		opts := processOptions{jpegQuality: 90, maxPixels: 50_000_000, dct: dct}
		path := filepath.Join("testdata", file)
		if dct {
			out, err := renderWidthDCT(context.Background(), sc, path, "w", width, gray, opts)
			if err != nil {
				t.Fatalf("%s w%d: the DCT path: %v", file, width, err)
			}
			return decodeTemp(t, out)
		}
		out, err := renderWidth(context.Background(), sc, path, "image/jpeg", "w", width, gray, opts)
		if err != nil {
			t.Fatal(err)
		}
		return decodeTemp(t, out)
	}
	for _, tc := range []struct {
		file  string
		width int
		gray  bool
	}{
		{"mid.jpg", 1280, false}, {"mid.jpg", 960, true}, {"mid-orient6.jpg", 640, false},
		{"large-progressive.jpg", 1920, false}, {"jpeg/s2x1.jpg", 160, false}, {"jpeg/s4x1.jpg", 160, false},
		{"jpeg/s1x1.jpg", 160, false}, {"jpeg/s1x2.jpg", 160, false}, {"jpeg/gray.jpg", 160, false},
	} {
		got, want := render(tc.file, tc.width, tc.gray, true), render(tc.file, tc.width, tc.gray, false)
		if got.Bounds() != want.Bounds() {
			t.Fatalf("%s w%d: %v, want %v", tc.file, tc.width, got.Bounds(), want.Bounds())
		}
		_, isGray := got.(*stdimage.Gray)
		if isGray != (tc.gray || tc.file == "jpeg/gray.jpg") {
			t.Errorf("%s w%d: %T", tc.file, tc.width, got)
		}
		p := lumaPSNR(want, got)
		mg, mw := meanColour(got), meanColour(want)
		t.Logf("%s w%d: %v, luma PSNR %.1f dB against the standard path's; mean colour %.1f, want %.1f", tc.file, tc.width, got.Bounds(), p, mg, mw)
		if p < 30 {
			t.Errorf("%s w%d: PSNR %.1f dB", tc.file, tc.width, p)
		}
		if math.Abs(mg[0]-mw[0])+math.Abs(mg[1]-mw[1])+math.Abs(mg[2]-mw[2]) > 3 {
			t.Errorf("%s w%d: mean colour %.1f, want %.1f", tc.file, tc.width, mg, mw)
		}
	}
}

// decodeTemp decodes a variant's temp file and removes it.
func decodeTemp(t testing.TB, v encodedVariant) stdimage.Image {
	t.Helper()
	b, err := os.ReadFile(v.tmpPath)
	os.Remove(v.tmpPath)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := decodeBody(t, b)
	return img
}

// TestPureRenderMemoryEstimate: the heap a display size's render grows by at its peak stays within
// renderBytes's estimate, for the largest size and a middle one, sequential (streamed) and
// progressive (held), turned, and on the standard path; and the estimate is not absurdly loose.
func TestPureRenderMemoryEstimate(t *testing.T) {
	computeOnly(t)
	sc, err := newScratch(t.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file  string
		width int
		dct   bool
	}{
		{"large.jpg", 2560, true},
		{"large.jpg", 1280, true},
		{"large-progressive.jpg", 2560, true},
		{"mid-orient6.jpg", 1280, true},
		{"large.jpg", 1280, false},
		{"large.jpg", 2560, false},
	} {
		path := filepath.Join("testdata", tc.file)
		h, err := headerOf(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		want := h.renderBytes(tc.dct, tc.width)
		stop := sampleHeap()
		out, err := renderWidth(context.Background(), sc, path, "image/jpeg", "w", tc.width, false, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: tc.dct})
		grew := stop()
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(out.tmpPath)
		est := float64(want) / (1 << 20)
		t.Logf("%s w%d dct=%v: peak heap +%.1f MiB, estimate %.1f MiB", tc.file, tc.width, tc.dct, grew, est)
		if grew > est {
			t.Errorf("%s w%d dct=%v: the render grew the heap by %.1f MiB, over its estimate of %.1f MiB", tc.file, tc.width, tc.dct, grew, est)
		}
		if est > 4*grew+float64(jobBaseBytes>>20) {
			t.Errorf("%s w%d dct=%v: estimate %.1f MiB for a render of %.1f MiB: too loose to be useful", tc.file, tc.width, tc.dct, est, grew)
		}
	}
}

// median is the middle of xs (the mean of the two middle ones for an even count); xs is sorted.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n == 0 {
		return 0
	}
	return (xs[(n-1)/2] + xs[n/2]) / 2
}

// medianDuration is the middle of ds, which it sorts.
func medianDuration(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// TestDisplaySizeFailures: a size that cannot be made answers 4xx or 503, never 500, and leaves the
// image ready with its files: over WORKER_MEMORY (a replica with less than the one that took the
// upload) 422, out of JOB_TIMEOUT (waiting for a busy replica's memory) 503 with Retry-After, an
// original that no longer decodes 422. An
// upload whose widest size would not fit WORKER_MEMORY is refused (413), though its job would fit.
func TestDisplaySizeFailures(t *testing.T) {
	env := map[string]string{"DATABASE_URL": freshDatabase(t), "JPEG_DCT": "off", "UPLOAD_DIR": t.TempDir()}
	s := newTestServer(t, env)
	startWorker(t, s)
	_, auth := s.signupAndLogin()
	photo := readTestdata(t, "large.jpg")
	v := s.mustUpload(auth, "p", "", "large.jpg", photo)
	s.waitStatus(auth, v.ID, time.Minute, statusReady)
	file := func(srv *testServer, variant string) response {
		return srv.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=%s", v.ID, variant), nil, "Authorization", auth)
	}
	h, err := headerOf(context.Background(), filepath.Join("testdata", "large.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	job, widest := h.jobBytes(false), h.renderBytes(false, 2560)
	if widest <= job || h.renderBytes(false, 1280) >= (job+widest)/2 {
		t.Fatalf("the premise: job %d, w1280 %d, w2560 %d bytes", job, h.renderBytes(false, 1280), widest)
	}
	small := newTestServer(t, with(env, "WORKER_MEMORY", fmt.Sprint((job+widest)/2)))
	if p := file(small, "w2560").problem(t, http.StatusUnprocessableEntity); !strings.Contains(p.Detail, "WORKER_MEMORY") {
		t.Errorf("over WORKER_MEMORY: %q", p.Detail)
	}
	if r := file(small, "w1280"); r.status != 200 {
		t.Errorf("w1280 within WORKER_MEMORY: %d %s", r.status, r.body)
	}
	small.upload(auth, "again", "", "large.jpg", photo).problem(t, http.StatusRequestEntityTooLarge)

	// A busy replica: all of its memory budget taken, so the render waits out JOB_TIMEOUT.
	slow := newTestServer(t, with(env, "JOB_TIMEOUT", "100ms"))
	release, err := slow.budget.acquire(context.Background(), slow.cfg.WorkerMemory)
	if err != nil {
		t.Fatal(err)
	}
	r := file(slow, "w1920")
	release()
	r.problem(t, http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}

	var key string
	s.pool.QueryRow(context.Background(), "SELECT file_key FROM images WHERE id = $1", v.ID).Scan(&key)
	path, err := s.blobs.(*fsBlobs).path(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, photo[:len(photo)/3], 0o600); err != nil { // the data cut short
		t.Fatal(err)
	}
	file(s, "w640").problem(t, http.StatusUnprocessableEntity)
	var after imageView
	s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth).json(t, &after)
	for part := range strings.SplitSeq(after.Srcset, ", ") {
		if strings.Contains(part, "variant=w320") {
			s.do("GET", strings.Fields(part)[0], nil).problem(t, http.StatusUnprocessableEntity) // by its signed link
		}
	}
	s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth).json(t, &after)
	if after.Status != statusReady || len(after.Variants) < 4 {
		t.Errorf("after the failures: %s, variants %v", after.Status, slices.Collect(maps.Keys(after.Variants)))
	}
	for _, name := range []string{"thumb_500", "w1280"} {
		if r := file(s, name); r.status != 200 {
			t.Errorf("%s after the failures: %d", name, r.status)
		}
	}
}

// TestPureRenderSlots: an owner's renders past RENDERS_PER_USER wait for one of theirs to end,
// while another owner's start at once; a wait ends with its context; nothing is kept once all end.
func TestPureRenderSlots(t *testing.T) {
	var r renders
	ctx := context.Background()
	var held []func()
	for range 2 {
		leave, err := r.slot(ctx, 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, leave)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := r.slot(short, 1, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third render of owner 1: %v, want it to wait", err)
	}
	other, err := r.slot(ctx, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func())
	go func() {
		leave, _ := r.slot(ctx, 1, 2)
		got <- leave
	}()
	held[0]()
	(<-got)()
	held[1]()
	other()
	if len(r.owners) != 0 {
		t.Errorf("%d owners kept after every render ended", len(r.owners))
	}
}

// BenchmarkRenderFairness: one user asks for w1280 of 20 new photos at once (a page of new sizes),
// then another user for w1280 of one: the second user's time, against the same request on an idle
// server, with RENDERS_PER_USER at its default (2) and unlimited, on one core:
//
//	taskset -c 0 go test -run '^$' -bench RenderFairness -cpu 1 -benchtime 3x .
func BenchmarkRenderFairness(b *testing.B) {
	env := map[string]string{"DATABASE_URL": freshDatabase(b), "UPLOAD_DIR": b.TempDir(), "LOG_LEVEL": "error"}
	s := newTestServer(b, env)
	startWorker(b, s)
	_, heavy := s.signupAndLogin()
	_, other := s.signupAndLogin()
	photo := readTestdata(b, "large.jpg")
	upload := func(auth string, n int) []int64 {
		var ids []int64
		for range n {
			v := s.mustUpload(auth, "p", "", "large.jpg", photo)
			ids = append(ids, s.waitStatus(auth, v.ID, time.Minute, statusReady).ID)
		}
		return ids
	}
	sizes := []string{"w1280", "w960", "w640", "gray-w1280", "gray-w960", "gray-w640", "w320", "gray-w320"}
	pages, mine := upload(heavy, 20), upload(other, 2)
	run := 0
	for _, slots := range []string{"2", "1024"} {
		replica := newTestServer(b, with(env, "RENDERS_PER_USER", slots))
		get := func(auth string, id int64, size string) time.Duration {
			start := time.Now()
			if r := replica.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=%s", id, size), nil, "Authorization", auth); r.status != 200 {
				b.Fatalf("%s: %d %s", size, r.status, r.body)
			}
			return time.Since(start)
		}
		b.Run("slots="+slots, func(b *testing.B) {
			var solo, behind []time.Duration
			for b.Loop() {
				if run >= len(sizes) {
					b.Fatal("out of sizes: at most 8 runs in all")
				}
				size := sizes[run]
				run++
				solo = append(solo, get(other, mine[0], size))
				var wg sync.WaitGroup
				for _, id := range pages {
					wg.Go(func() { get(heavy, id, size) })
				}
				time.Sleep(20 * time.Millisecond) // the page's requests are in
				behind = append(behind, get(other, mine[1], size))
				wg.Wait()
			}
			b.ReportMetric(float64(medianDuration(solo).Microseconds())/1000, "idle-ms")
			b.ReportMetric(float64(medianDuration(behind).Microseconds())/1000, "behind-page-ms")
		})
	}
}
