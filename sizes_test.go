package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
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

// BenchmarkDisplaySize: the first request for w1280 of the 13.4 MP photo (render, store and send: from
// the DCT path's 1/2-scale image, 2112 wide) and for w640 (from its 1/4-scale image), then the stored
// size's
// throughput against a stored thumbnail's (thumb_500), 8 clients, in one run.
//
//	go test -run '^$' -bench DisplaySize -benchtime 3x .
func BenchmarkDisplaySize(b *testing.B) {
	s := newTestServer(b, map[string]string{"DATABASE_URL": freshDatabase(b), "LOG_LEVEL": "error"})
	startWorker(b, s)
	_, auth := s.signupAndLogin()
	photo := readTestdata(b, "large.jpg")
	throughput := func(path string) float64 {
		const n = 400
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
					if r := s.do("GET", path, nil, "Authorization", auth); r.status != 200 {
						b.Errorf("%s: %d", path, r.status)
						return
					}
				}
			})
		}
		wg.Wait()
		return n / time.Since(start).Seconds()
	}
	var first, firstSmall []time.Duration
	var sized, thumb float64
	for b.Loop() {
		v := s.mustUpload(auth, "p", "", "large.jpg", photo)
		s.waitStatus(auth, v.ID, time.Minute, statusReady)
		path := fmt.Sprintf("/api/v1/images/%d/file?variant=", v.ID)
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
		sized, thumb = throughput(path+"w1280"), throughput(path+"thumb_500")
	}
	slices.Sort(first)
	slices.Sort(firstSmall)
	b.ReportMetric(float64(first[len(first)/2].Microseconds())/1000, "first-w1280-ms")
	b.ReportMetric(float64(firstSmall[len(firstSmall)/2].Microseconds())/1000, "first-w640-ms")
	b.ReportMetric(sized, "w1280-req/s")
	b.ReportMetric(thumb, "thumb500-req/s")
	b.ReportMetric(thumb/sized, "thumb/w1280")
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
