package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	stdimage "image"
	"image/color"
	"image/gif"
	"image/png"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// readTestdata returns a file from testdata/.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// multipartBody builds a multipart/form-data body with data in field "file".
func multipartBody(t testing.TB, field, filename string, data []byte) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile(field, filename)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(data)
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// upload sends data as an image named name with tags (comma-separated, may be empty).
func (s *testServer) upload(auth, name, tags, filename string, data []byte) response {
	s.t.Helper()
	body, ct := multipartBody(s.t, "file", filename, data)
	q := url.Values{"name": {name}}
	if tags != "" {
		q.Set("tags", tags)
	}
	return s.do("POST", "/api/v1/images/?"+q.Encode(), body, "Authorization", auth, "Content-Type", ct)
}

// mustUpload uploads and returns the created image, failing the test on anything but 201.
func (s *testServer) mustUpload(auth, name, tags, filename string, data []byte) imageView {
	s.t.Helper()
	r := s.upload(auth, name, tags, filename, data)
	if r.status != http.StatusCreated {
		s.t.Fatalf("upload %s: %d %s", filename, r.status, r.body)
	}
	var v imageView
	r.json(s.t, &v)
	return v
}

// tinyPNG is a small real PNG of w×h, for tests that need many uploads.
func tinyPNG(t testing.TB, w, h int) []byte {
	img := stdimage.NewNRGBA(stdimage.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// manyTags returns n distinct tags, comma-separated.
func manyTags(n int) string {
	tags := make([]string, n)
	for i := range tags {
		tags[i] = fmt.Sprint("t", i)
	}
	return strings.Join(tags, ",")
}

// filesUnder lists the regular files below dir.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

func TestUploadAndDownload(t *testing.T) { forEachBackend(t, testUploadAndDownload) }

func testUploadAndDownload(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	data := readTestdata(t, "mid.jpg")
	r := s.upload(auth, "  Ladybird  ", "nature, bugs ,nature,, red", "ladybird.jpg", data)
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	var v imageView
	r.json(t, &v)
	sum := sha256.Sum256(data)
	if v.ID <= 0 || v.Name != "Ladybird" || strings.Join(v.Tags, "|") != "nature|bugs|red" || v.Status != statusPending ||
		v.Error != nil || v.ContentType != "image/jpeg" || v.Width != 2560 || v.Height != 1600 || v.Resolution != "2560x1600" ||
		v.Size != int64(len(data)) || v.SHA256 != hex.EncodeToString(sum[:]) || len(v.Variants) != 0 {
		t.Fatalf("image = %+v", v)
	}
	if loc := r.header.Get("Location"); loc != fmt.Sprintf("/api/v1/images/%d", v.ID) {
		t.Errorf("Location = %q", loc)
	}
	var raw map[string]any
	r.json(t, &raw)
	for _, k := range []string{"id", "name", "tags", "status", "error", "content_type", "width", "height", "resolution", "size", "sha256", "created_at", "updated_at", "variants"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("Image JSON lacks %q", k)
		}
	}

	var got imageView
	g := s.do("GET", fmt.Sprintf("/api/v1/images/%d", v.ID), nil, "Authorization", auth)
	g.json(t, &got)
	if g.status != 200 || got.ID != v.ID || got.SHA256 != v.SHA256 || got.CreatedAt != v.CreatedAt {
		t.Fatalf("get: %d %+v", g.status, got)
	}

	checkDownloads(t, s, auth, v, data)

	// Both spellings of the collection work, for upload and list, without a redirect.
	body, ct := multipartBody(t, "file", "x.png", tinyPNG(t, 3, 2))
	if r := s.do("POST", "/api/v1/images?name=noslash", body, "Authorization", auth, "Content-Type", ct); r.status != 201 {
		t.Fatalf("POST /api/v1/images: %d %s", r.status, r.body)
	}
	for _, path := range []string{"/api/v1/images", "/api/v1/images/"} {
		r := s.do("GET", path, nil, "Authorization", auth)
		if r.status != 200 || r.header.Get("X-Total-Count") != "2" {
			t.Errorf("GET %s: %d total=%q", path, r.status, r.header.Get("X-Total-Count"))
		}
	}
}

// checkDownloads downloads v (uploaded by auth, whose bytes are data, not processed yet) as a client
// would: the original byte for byte with its headers, 304 for its ETag, ranges, 416 past the end,
// its signed link, 409 for a variant not made yet and 422 for an unknown one.
func checkDownloads(t *testing.T, s *testServer, auth string, v imageView, data []byte) {
	file := fmt.Sprintf("/api/v1/images/%d/file", v.ID)
	d := s.do("GET", file, nil, "Authorization", auth)
	if d.status != 200 || !bytes.Equal(d.body, data) {
		t.Fatalf("download: %d, %d bytes, equal=%v", d.status, len(d.body), bytes.Equal(d.body, data))
	}
	etag := d.header.Get("ETag")
	for k, want := range map[string]string{
		"Content-Type": "image/jpeg", "Cache-Control": "private", "X-Content-Type-Options": "nosniff",
		"ETag": `"` + v.SHA256 + `"`, "Content-Disposition": `inline; filename=Ladybird.jpg`,
	} {
		if got := d.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if r := s.do("GET", file+"?variant=original", nil, "Authorization", auth, "If-None-Match", etag); r.status != http.StatusNotModified {
		t.Errorf("If-None-Match: %d", r.status)
	}
	for _, rg := range []struct {
		header string
		want   []byte
	}{
		{"bytes=100-199", data[100:200]},
		{"bytes=-50", data[len(data)-50:]},
		{"bytes=1000-", data[1000:]},
		{"bytes=0-9,20-29", nil}, // multipart/byteranges: checked by its status alone
	} {
		r := s.do("GET", file, nil, "Authorization", auth, "Range", rg.header)
		if r.status != http.StatusPartialContent || rg.want != nil && !bytes.Equal(r.body, rg.want) {
			t.Errorf("Range %s: %d, %d bytes", rg.header, r.status, len(r.body))
		}
	}
	s.do("GET", file, nil, "Authorization", auth, "Range", fmt.Sprintf("bytes=%d-", len(data))).problem(t, http.StatusRequestedRangeNotSatisfiable)
	// The signed link serves the same bytes without a token.
	sd := s.do("GET", v.SignedURL, nil)
	if sd.status != 200 || !bytes.Equal(sd.body, data) || !strings.HasPrefix(sd.header.Get("Cache-Control"), "private, max-age=") {
		t.Errorf("signed_url %s: %d, %d bytes, Cache-Control %q", v.SignedURL, sd.status, len(sd.body), sd.header.Get("Cache-Control"))
	}
	p := s.do("GET", file+"?variant=thumb_100", nil, "Authorization", auth).problem(t, http.StatusConflict)
	if !strings.Contains(p.Detail, "pending") {
		t.Errorf("409 detail %q does not say the image is pending", p.Detail)
	}
	s.do("GET", file+"?variant=thumb_9000", nil, "Authorization", auth).problem(t, http.StatusUnprocessableEntity)
}

// TestUploadFormats: every input format is sniffed from its bytes (the filename and the part's
// Content-Type are ignored) and sized from its header.
func TestUploadFormats(t *testing.T) { forEachBackend(t, testUploadFormats) }

func testUploadFormats(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	src := stdimage.NewPaletted(stdimage.Rect(0, 0, 30, 20), []color.Color{color.Black, color.White})
	var gifBuf, bmpBuf, tiffBuf bytes.Buffer
	gif.Encode(&gifBuf, src, nil)
	bmp.Encode(&bmpBuf, src)
	tiff.Encode(&tiffBuf, src, nil)
	for _, tc := range []struct {
		file     string
		data     []byte
		ct       string
		w, h     int
		filename string
	}{
		{"mid.jpg", readTestdata(t, "mid.jpg"), "image/jpeg", 2560, 1600, "photo.png"},
		{"mid-orient6.jpg (displayed portrait)", readTestdata(t, "mid-orient6.jpg"), "image/jpeg", 1600, 2560, "portrait.jpg"},
		{"large-progressive.jpg", readTestdata(t, "large-progressive.jpg"), "image/jpeg", 4224, 3168, "p.jpg"},
		{"photo.png", readTestdata(t, "photo.png"), "image/png", 2048, 1024, "mars.jpg"},
		{"small.webp", readTestdata(t, "small.webp"), "image/webp", 320, 200, "a.webp"},
		{"gif", gifBuf.Bytes(), "image/gif", 30, 20, "a.gif"},
		{"bmp", bmpBuf.Bytes(), "image/bmp", 30, 20, "a.bmp"},
		{"tiff", tiffBuf.Bytes(), "image/tiff", 30, 20, "a.tif"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			v := s.mustUpload(auth, tc.file, "", tc.filename, tc.data)
			if v.ContentType != tc.ct || v.Width != tc.w || v.Height != tc.h {
				t.Fatalf("got %s %dx%d, want %s %dx%d", v.ContentType, v.Width, v.Height, tc.ct, tc.w, tc.h)
			}
		})
	}
}

// TestUploadRefusals: every bad upload gets its 4xx with a problem body, and leaves nothing behind:
// no row, and no file in UPLOAD_DIR.
func TestUploadRefusals(t *testing.T) { forEachBackend(t, testUploadRefusals) }

func testUploadRefusals(t *testing.T, env map[string]string) {
	dir := env["UPLOAD_DIR"]
	s := newTestServer(t, with(env, "MAX_UPLOAD_BYTES", "200000"))
	_, auth := s.signupAndLogin()
	good := tinyPNG(t, 4, 4)
	type tc struct {
		name   string
		status int
		send   func() response
	}
	up := func(file string, data []byte) func() response {
		return func() response { return s.upload(auth, "x", "", file, data) }
	}
	cases := []tc{
		{"zero bytes", 422, up("empty.jpg", readTestdata(t, "bad/empty.jpg"))},
		{"text named .jpg", 415, up("text.jpg", readTestdata(t, "bad/text.jpg"))},
		{"SVG with a script", 415, up("script.svg", readTestdata(t, "bad/script.svg"))},
		{"PDF", 415, up("doc.pdf", readTestdata(t, "bad/doc.pdf"))},
		{"HTML", 415, up("page.html", readTestdata(t, "bad/page.html"))},
		{"PNG declaring 60000x60000", 413, up("huge.png", readTestdata(t, "bad/huge-header.png"))},
		{"JPEG declaring 65000x65000", 413, up("huge.jpg", readTestdata(t, "bad/huge-sof.jpg"))},
		{"JPEG header cut before its SOF", 415, up("cut.jpg", readTestdata(t, "mid.jpg")[:150])},
		{"over MAX_UPLOAD_BYTES, with Content-Length", 413, up("mid.jpg", readTestdata(t, "mid.jpg"))},
		{"over MAX_UPLOAD_BYTES, chunked", 413, func() response {
			body, ct := multipartBody(t, "file", "mid.jpg", readTestdata(t, "mid.jpg"))
			// A reader of unknown length makes the client send the body chunked, with no Content-Length.
			return s.do("POST", "/api/v1/images/?name=x", io.MultiReader(bytes.NewReader(body)), "Authorization", auth, "Content-Type", ct)
		}},
		{"no name", 422, func() response {
			body, ct := multipartBody(t, "file", "a.png", good)
			return s.do("POST", "/api/v1/images/", body, "Authorization", auth, "Content-Type", ct)
		}},
		{"blank name", 422, func() response { return s.upload(auth, "   ", "", "a.png", good) }},
		{"name too long", 422, func() response { return s.upload(auth, strings.Repeat("é", maxNameLen+1), "", "a.png", good) }},
		{"name with a control character", 422, func() response { return s.upload(auth, "a\x00b", "", "a.png", good) }},
		{"too many tags", 422, func() response { return s.upload(auth, "x", manyTags(maxTags+1), "a.png", good) }},
		{"tag too long", 422, func() response { return s.upload(auth, "x", strings.Repeat("t", maxTagLen+1), "a.png", good) }},
		{"not multipart", 415, func() response {
			return s.do("POST", "/api/v1/images/?name=x", good, "Authorization", auth, "Content-Type", "image/png")
		}},
		{"no file field", 422, func() response {
			body, ct := multipartBody(t, "picture", "a.png", good)
			return s.do("POST", "/api/v1/images/?name=x", body, "Authorization", auth, "Content-Type", ct)
		}},
		{"multipart cut short", 400, func() response {
			body, ct := multipartBody(t, "file", "a.png", good)
			return s.do("POST", "/api/v1/images/?name=x", body[:len(body)-30], "Authorization", auth, "Content-Type", ct)
		}},
		{"no token", 401, func() response {
			body, ct := multipartBody(t, "file", "a.png", good)
			return s.do("POST", "/api/v1/images/?name=x", body, "Content-Type", ct)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.send().problem(t, c.status)
			if files := filesUnder(t, dir); len(files) != 0 {
				t.Fatalf("files left behind: %v", files)
			}
			if keys := s.storedKeys(); len(keys) != 0 {
				t.Fatalf("stored files left behind: %v", keys)
			}
			if r := s.do("GET", "/api/v1/images/", nil, "Authorization", auth); r.header.Get("X-Total-Count") != "0" {
				t.Fatalf("a row was left behind: total %s", r.header.Get("X-Total-Count"))
			}
		})
	}
	// A truncated JPEG's header parses: it is accepted, and will fail in processing.
	if r := s.upload(auth, "truncated", "", "t.jpg", readTestdata(t, "bad/truncated.jpg")); r.status != 201 {
		t.Fatalf("truncated JPEG: %d %s", r.status, r.body)
	}
	// Exactly at the limit is allowed.
	big := append(bytes.Clone(good), make([]byte, 200000-len(good))...)
	if r := s.upload(auth, "at the limit", "", "a.png", big); r.status != 201 {
		t.Fatalf("upload of exactly MAX_UPLOAD_BYTES: %d %s", r.status, r.body)
	}
}

func TestListPagesAndTags(t *testing.T) { forEachBackend(t, testListPagesAndTags) }

func testListPagesAndTags(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	var ids []int64
	for i := range 5 {
		tags := "all"
		if i%2 == 0 {
			tags = "all,even"
		}
		ids = append(ids, s.mustUpload(auth, fmt.Sprint("img", i), tags, "a.png", tinyPNG(t, i+1, 1)).ID)
	}
	list := func(q string) ([]imageView, string) {
		t.Helper()
		r := s.do("GET", "/api/v1/images/?"+q, nil, "Authorization", auth)
		if r.status != 200 {
			t.Fatalf("list %s: %d %s", q, r.status, r.body)
		}
		var vs []imageView
		r.json(t, &vs)
		return vs, r.header.Get("X-Total-Count")
	}
	idsOf := func(vs []imageView) string {
		var s []string
		for _, v := range vs {
			s = append(s, fmt.Sprint(v.ID))
		}
		return strings.Join(s, ",")
	}
	want := func(ix ...int) string {
		var s []string
		for _, i := range ix {
			s = append(s, fmt.Sprint(ids[i]))
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct{ q, ids, total string }{
		{"", want(4, 3, 2, 1, 0), "5"},
		{"limit=2", want(4, 3), "5"},
		{"skip=2&limit=2", want(2, 1), "5"},
		{"skip=4", want(0), "5"},
		{"skip=10", "", "5"},
		{"tag=even", want(4, 2, 0), "3"},
		{"tag=even&limit=1&skip=1", want(2), "3"},
		{"tag=none", "", "0"},
	} {
		vs, total := list(tc.q)
		if idsOf(vs) != tc.ids || total != tc.total {
			t.Errorf("list %q = [%s] total %s, want [%s] total %s", tc.q, idsOf(vs), total, tc.ids, tc.total)
		}
	}
	if r := s.do("GET", "/api/v1/images/", nil, "Authorization", auth); string(bytes.TrimSpace(r.body))[0] != '[' {
		t.Errorf("list body is not an array: %s", r.body)
	}
	for _, q := range []string{"skip=-1", "skip=x", "limit=0", "limit=101", "limit=1.5", fmt.Sprint("skip=", maxSkip+1), "tag=", "tag=" + strings.Repeat("t", maxTagLen+1)} {
		s.do("GET", "/api/v1/images/?"+q, nil, "Authorization", auth).problem(t, http.StatusUnprocessableEntity)
	}
	// An empty list is [] with a count of 0.
	_, other := s.signupAndLogin()
	if r := s.do("GET", "/api/v1/images/", nil, "Authorization", other); string(bytes.TrimSpace(r.body)) != "[]" || r.header.Get("X-Total-Count") != "0" {
		t.Errorf("empty list: %s total %s", r.body, r.header.Get("X-Total-Count"))
	}
}

func TestUpdateImage(t *testing.T) { forEachBackend(t, testUpdateImage) }

func testUpdateImage(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "before", "a,b", "a.png", tinyPNG(t, 2, 2))
	path := fmt.Sprintf("/api/v1/images/%d", v.ID)
	put := func(body any) imageView {
		t.Helper()
		r := s.do("PUT", path, body, "Authorization", auth)
		if r.status != 200 {
			t.Fatalf("PUT %v: %d %s", body, r.status, r.body)
		}
		var got imageView
		r.json(t, &got)
		return got
	}
	// The seed's example: tags as a comma-separated string.
	if got := put(map[string]any{"name": "New Name", "tags": "tag1, tag2"}); got.Name != "New Name" || strings.Join(got.Tags, ",") != "tag1,tag2" {
		t.Errorf("string tags: %+v", got)
	}
	if got := put(map[string]any{"tags": []string{" x ", "y", "x"}}); got.Name != "New Name" || strings.Join(got.Tags, ",") != "x,y" {
		t.Errorf("array tags: %+v", got)
	}
	if got := put(map[string]any{"name": "Only name"}); got.Name != "Only name" || strings.Join(got.Tags, ",") != "x,y" {
		t.Errorf("name only: %+v", got)
	}
	if got := put(map[string]any{}); got.Name != "Only name" || len(got.Tags) != 2 || got.UpdatedAt < v.UpdatedAt {
		t.Errorf("empty update: %+v", got)
	}
	if got := put(map[string]any{"tags": ""}); len(got.Tags) != 0 {
		t.Errorf("clearing tags: %+v", got)
	}
	for name, body := range map[string]any{
		"blank name":         map[string]any{"name": " "},
		"name too long":      map[string]any{"name": strings.Repeat("n", maxNameLen+1)},
		"name not a string":  map[string]any{"name": 5},
		"tags a number":      map[string]any{"tags": 5},
		"tags array of ints": map[string]any{"tags": []int{1}},
		"comma in array tag": map[string]any{"tags": []string{"a,b"}},
		"too many tags":      map[string]any{"tags": manyTags(maxTags + 1)},
		"malformed":          "{",
	} {
		t.Run(name, func(t *testing.T) {
			hdr := []string{"Authorization", auth}
			if _, ok := body.(string); ok {
				hdr = append(hdr, "Content-Type", "application/json")
			}
			s.do("PUT", path, body, hdr...).problem(t, http.StatusUnprocessableEntity)
		})
	}
	s.do("PUT", "/api/v1/images/999999999", map[string]any{"name": "x"}, "Authorization", auth).problem(t, http.StatusNotFound)
}

func TestDeleteImage(t *testing.T) { forEachBackend(t, testDeleteImage) }

func testDeleteImage(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "doomed", "", "a.png", tinyPNG(t, 2, 2))
	keep := s.mustUpload(auth, "kept", "", "b.png", tinyPNG(t, 3, 3))
	if n := len(s.storedKeys()); n != 2 {
		t.Fatalf("%d originals stored, want 2", n)
	}
	path := fmt.Sprintf("/api/v1/images/%d", v.ID)
	signed := s.do("GET", v.SignedURL, nil)
	if signed.status != 200 {
		t.Fatalf("signed_url before delete: %d", signed.status)
	}
	if r := s.do("DELETE", path, nil, "Authorization", auth); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	s.do("GET", path, nil, "Authorization", auth).problem(t, http.StatusNotFound)
	s.do("GET", path+"/file", nil, "Authorization", auth).problem(t, http.StatusNotFound)
	s.do("DELETE", path, nil, "Authorization", auth).problem(t, http.StatusNotFound)
	// Its signed link ends with it, at once.
	s.do("GET", v.SignedURL, nil).problem(t, http.StatusNotFound)
	if n := len(s.storedKeys()); n != 1 {
		t.Fatalf("%d originals stored after delete, want 1", n)
	}
	if r := s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", keep.ID), nil, "Authorization", auth); r.status != 200 {
		t.Fatalf("the other image: %d", r.status)
	}
}

// TestOwnership: another user's image answers exactly like a missing one on every route, and never
// shows in a list; ids that are not positive canonical integers are missing images too.
func TestOwnership(t *testing.T) { forEachBackend(t, testOwnership) }

func testOwnership(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, alice := s.signupAndLogin()
	_, bob := s.signupAndLogin()
	v := s.mustUpload(alice, "alice's", "private", "a.png", tinyPNG(t, 2, 2))
	routes := func(id string) []struct{ method, path string } {
		return []struct{ method, path string }{
			{"GET", "/api/v1/images/" + id},
			{"PUT", "/api/v1/images/" + id},
			{"DELETE", "/api/v1/images/" + id},
			{"GET", "/api/v1/images/" + id + "/file"},
			{"GET", "/api/v1/images/" + id + "/file?variant=thumb_100"},
		}
	}
	missing := s.do("GET", "/api/v1/images/999999999", nil, "Authorization", bob)
	missing.problem(t, http.StatusNotFound)
	for _, id := range []string{fmt.Sprint(v.ID), "999999999", "abc", "0", "-1", "01", "%2B1", "1.0", "99999999999999999999"} {
		for _, rt := range routes(id) {
			var body any
			if rt.method == "PUT" {
				body = map[string]string{"name": "stolen"}
			}
			r := s.do(rt.method, rt.path, body, "Authorization", bob)
			r.problem(t, http.StatusNotFound)
			if !bytes.Equal(r.body, missing.body) {
				t.Errorf("%s %s: body %s differs from a missing image's %s", rt.method, rt.path, r.body, missing.body)
			}
		}
	}
	if r := s.do("GET", "/api/v1/images/?tag=private", nil, "Authorization", bob); r.header.Get("X-Total-Count") != "0" {
		t.Errorf("bob's list shows alice's image: %s", r.body)
	}
	// Alice's image is untouched by all of that.
	var got imageView
	s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", alice).json(t, &got)
	if got.Name != "alice's" {
		t.Errorf("alice's image changed: %+v", got)
	}
	for _, rt := range routes(fmt.Sprint(v.ID)) {
		s.do(rt.method, rt.path, nil).problem(t, http.StatusUnauthorized)
	}
}

func testSweepOrphans(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	ctx := context.Background()
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "kept", "", "a.png", tinyPNG(t, 2, 2))
	var kept string
	s.pool.QueryRow(ctx, "SELECT file_key FROM images WHERE id = $1", v.ID).Scan(&kept)
	plant := func(key string) {
		f, err := s.scratch.createTemp("plant-*")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("x")
		f.Close()
		if err := s.blobs.place(ctx, f.Name(), key, "image/png", sha256Hex([]byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	orphan := newKey()
	plant(orphan)
	plant(orphan + ".thumb_100.0a1b2c3d.png")
	// Orphans written before the cutoff go; the kept image's original is as old, and stays: age
	// alone removes nothing.
	n, err := s.blobs.sweepOrphans(ctx, time.Now().Add(time.Minute), s.store.fileKeysExist)
	if err != nil || n != 2 {
		t.Fatalf("sweep removed %d, %v; want 2", n, err)
	}
	young := newKey()
	plant(young)
	// Written after the cutoff: perhaps an upload whose row is about to commit.
	if n, err := s.blobs.sweepOrphans(ctx, time.Now().Add(-time.Minute), s.store.fileKeysExist); err != nil || n != 0 {
		t.Fatalf("sweep of young files removed %d, %v", n, err)
	}
	if got, want := s.storedKeys(), []string{kept, young}; !slices.Equal(got, sorted(want)) {
		t.Errorf("stored after the sweeps: %v, want %v", got, sorted(want))
	}
	// The app's own sweep (orphanGrace) leaves everything here alone: all of it is young.
	s.removeOrphans(ctx)
	if got := s.storedKeys(); len(got) != 2 {
		t.Errorf("the app's sweep removed young files: %v", got)
	}
}

// sorted returns a sorted copy of keys.
func sorted(keys []string) []string {
	out := slices.Clone(keys)
	slices.Sort(out)
	return out
}

// TestConcurrentUploads: uploads from many clients at once all land, each with its own file.
func TestConcurrentUploads(t *testing.T) { forEachBackend(t, testConcurrentUploads) }

func testConcurrentUploads(t *testing.T, env map[string]string) {
	s := newTestServer(t, env)
	_, auth := s.signupAndLogin()
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := range 16 {
		wg.Go(func() {
			body, ct := multipartBody(t, "file", "a.png", tinyPNG(t, i+1, 2))
			req, _ := http.NewRequest("POST", s.srv.URL+"/api/v1/images/?name=c", bytes.NewReader(body))
			req.Header.Set("Authorization", auth)
			req.Header.Set("Content-Type", ct)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				if resp.StatusCode == 201 {
					ok.Add(1)
				}
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if ok.Load() != 16 {
		t.Fatalf("%d of 16 uploads succeeded", ok.Load())
	}
	if n := len(s.storedKeys()); n != 16 {
		t.Fatalf("%d files stored, want 16", n)
	}
}

// benchPOST sends b.N POSTs of body to url, about at once in all, each answered 201.
func benchPOST(b *testing.B, atOnce int, url string, body []byte, header ...string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	b.SetParallelism(max(1, atOnce/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// benchGET sends GETs of url from 8×GOMAXPROCS goroutines for b.N requests and reports requests per
// second and the 50th and 99th percentile latency.
func benchGET(b *testing.B, url string, header ...string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(8)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		for pb.Next() {
			req, _ := http.NewRequest("GET", url, nil)
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			local = append(local, time.Since(t0))
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}

// BenchmarkGetImage measures GET /api/v1/images/{id} with a warm cache and without one, against
// bare net/http handlers doing just the one Redis GET, and just the one primary-key query, that the
// real handler's two paths come down to.
func BenchmarkGetImage(b *testing.B) {
	prefix := redisPrefix(b)
	cached := newTestServer(b, map[string]string{"REDIS_URL": needRedis(b), "REDIS_PREFIX": prefix, "LOG_LEVEL": "error"})
	uncached := newTestServer(b, map[string]string{"LOG_LEVEL": "error"})
	_, auth := cached.signupAndLogin()
	v := cached.mustUpload(auth, "bench", "a,b", "a.png", tinyPNG(b, 8, 8))
	path := fmt.Sprint("/api/v1/images/", v.ID)
	if r := cached.do("GET", path, nil, "Authorization", auth); r.status != 200 {
		b.Fatalf("warm-up: %d", r.status)
	}
	rdb := cached.cache.rdb
	record, _ := json.Marshal(cached.imageJSON(imageRecord{ID: v.ID, Name: v.Name, Tags: v.Tags}))
	rdb.Set(context.Background(), prefix+"bare", record, 0)
	bareRedis := httptestServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		val, err := rdb.Get(r.Context(), prefix+"bare").Bytes()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(val)
	}))
	pool := uncached.pool
	barePG := httptestServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		im, err := scanImage(pool.QueryRow(r.Context(), `SELECT `+imageColumns+` FROM images WHERE id = $1`, v.ID))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		json.NewEncoder(w).Encode(uncached.imageJSON(im))
	}))
	b.Run("cached", func(b *testing.B) { benchGET(b, cached.srv.URL+path, "Authorization", auth) })
	b.Run("bare-redis", func(b *testing.B) { benchGET(b, bareRedis) })
	b.Run("uncached", func(b *testing.B) { benchGET(b, uncached.srv.URL+path, "Authorization", auth) })
	b.Run("bare-postgres", func(b *testing.B) { benchGET(b, barePG) })
}

// BenchmarkUpload uploads the 13.4 MP photo 32 at a time, to imageapi and to a bare handler that only
// copies the body to a file (and keeps it), and to one that also hashes it (the floor for a service
// that must report every upload's SHA-256), and reports throughput and the heap's peak growth during the run.
func BenchmarkUpload(b *testing.B) {
	photo := readTestdata(b, "large.jpg")
	body, ct := multipartBody(b, "file", "large.jpg", photo)
	s := newTestServer(b, map[string]string{"LOG_LEVEL": "error"})
	_, auth := s.signupAndLogin()
	bareDir := b.TempDir()
	bareHandler := func(hashed bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, err := os.CreateTemp(bareDir, "bare-*")
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			var src io.Reader = r.Body
			h := sha256.New()
			if hashed {
				src = io.TeeReader(r.Body, h)
			}
			// Kept, like imageapi keeps its uploads: both runs leave the same bytes in the page cache.
			_, err = io.Copy(f, src)
			f.Close()
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			h.Sum(nil)
			w.WriteHeader(http.StatusCreated)
		})
	}
	bare := httptestServer(b, bareHandler(false))
	bareSHA := httptestServer(b, bareHandler(true))
	run := func(b *testing.B, url string) {
		stop := sampleHeap()
		b.SetBytes(int64(len(photo)))
		benchPOST(b, 32, url, body, "Content-Type", ct, "Authorization", auth)
		b.StopTimer()
		b.ReportMetric(stop(), "peak-heap-MiB")
	}
	b.Run("imageapi", func(b *testing.B) { run(b, s.srv.URL+"/api/v1/images/?name=bench") })
	b.Run("bare", func(b *testing.B) { run(b, bare) })
	b.Run("bare-sha256", func(b *testing.B) { run(b, bareSHA) })
}

// TestListCursors: a walk by cursor visits every image once, newest first, whatever is added or
// deleted meanwhile (the image a cursor points at included); Link and X-Next-Cursor lead on while
// more follow; a tag's walk stays in the tag; a cursor that is tampered with, another user's, for
// another tag, or sent with skip is 422.
func TestListCursors(t *testing.T) {
	s := newTestServer(t, nil)
	_, auth := s.signupAndLogin()
	_, stranger := s.signupAndLogin()
	var ids []int64
	for i := range 25 {
		tags := ""
		if i%2 == 0 {
			tags = "even"
		}
		ids = append(ids, s.mustUpload(auth, fmt.Sprint("i", i), tags, "a.png", tinyPNG(t, 4, 4)).ID)
	}
	walk := func(auth, query string, during func(page int, last imageView)) []int64 {
		t.Helper()
		var seen []int64
		path := "/api/v1/images/?" + query
		for page := 0; path != ""; page++ {
			r := s.do("GET", path, nil, "Authorization", auth)
			if r.status != 200 {
				t.Fatalf("%s: %d %s", path, r.status, r.body)
			}
			var got []imageView
			r.json(t, &got)
			for _, v := range got {
				seen = append(seen, v.ID)
			}
			if !strings.Contains(r.header.Get("Link"), `rel="first"`) {
				t.Errorf("no rel=first: %q", r.header.Get("Link"))
			}
			path = ""
			if next := r.header.Get("X-Next-Cursor"); next != "" {
				m := regexp.MustCompile(`<([^>]+)>; rel="next"`).FindStringSubmatch(r.header.Get("Link"))
				if m == nil || !strings.Contains(m[1], "cursor="+next) {
					t.Fatalf("Link %q does not lead to X-Next-Cursor %s", r.header.Get("Link"), next)
				}
				path = m[1]
			}
			if during != nil && len(got) > 0 {
				during(page, got[len(got)-1])
			}
		}
		return seen
	}
	// Added during the walk: newer, so not in it; deleted: the image the first page ended at.
	seen := walk(auth, "limit=10", func(page int, last imageView) {
		if page == 0 {
			s.mustUpload(auth, "late", "", "a.png", tinyPNG(t, 4, 4))
			s.do("DELETE", fmt.Sprint("/api/v1/images/", last.ID), nil, "Authorization", auth)
		}
	})
	want := slices.Clone(ids)
	slices.Reverse(want)
	if !slices.Equal(seen, want) {
		t.Fatalf("walk: %v, want %v", seen, want)
	}
	even := walk(auth, "limit=4&tag=even", nil)
	if len(even) != 13 || slices.ContainsFunc(even, func(id int64) bool { return slices.Index(ids, id)%2 == 1 }) {
		t.Errorf("the tag's walk: %v", even)
	}
	checkBadCursors(t, s, auth, stranger)
}

// checkBadCursors: a cursor tampered with, malformed, empty, for another tag, with skip, or of
// another user's walk is 422.
func checkBadCursors(t *testing.T, s *testServer, auth, stranger string) {
	r := s.do("GET", "/api/v1/images/?limit=5", nil, "Authorization", auth)
	next := r.header.Get("X-Next-Cursor")
	if next == "" || r.header.Get("X-Total-Count") != "25" {
		t.Fatalf("first page: cursor %q, total %q", next, r.header.Get("X-Total-Count"))
	}
	flipped := []byte(next)
	flipped[5] ^= 1
	for name, q := range map[string]string{
		"tampered":     "cursor=" + string(flipped),
		"not base64":   "cursor=%21%21",
		"empty":        "cursor=",
		"another tag":  "tag=even&cursor=" + next,
		"with skip":    "skip=5&cursor=" + next,
		"another user": "cursor=" + next + "&as=stranger",
	} {
		who := auth
		if strings.HasSuffix(q, "as=stranger") {
			who = stranger
		}
		p := s.do("GET", "/api/v1/images/?"+q, nil, "Authorization", who).problem(t, http.StatusUnprocessableEntity)
		if !strings.Contains(p.Detail, "cursor") {
			t.Errorf("%s: %q", name, p.Detail)
		}
	}
}

// BenchmarkScale: one account with a large library (IMAGEAPI_SCALE images, 1,000,000 by default;
// 10,000,000 takes about ten minutes to load) against one with 100, in one run, PostgreSQL alone (no
// cache): the median latency of the first page, a cursor page at half the library's depth, a tag's
// page (10 % of the images), an upload and a delete, and each one's ratio to the small account's.
//
//	go test -run '^$' -bench Scale -benchtime 1x .
//	IMAGEAPI_SCALE=10000000 go test -run '^$' -bench Scale -benchtime 1x -timeout 1h .
func BenchmarkScale(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("IMAGEAPI_SCALE")); err == nil && v > 0 {
		n = v
	}
	s := newTestServer(b, map[string]string{"DATABASE_URL": freshDatabase(b), "LOG_LEVEL": "error"})
	ctx := context.Background()
	type account struct {
		name, auth string
		id         int64
		size       int
	}
	accounts := []*account{{size: 100}, {size: n}}
	for _, acc := range accounts {
		acc.name, acc.auth = s.signupAndLogin()
		s.pool.QueryRow(ctx, "SELECT id FROM users WHERE username = $1", acc.name).Scan(&acc.id)
		loadImages(b, s, acc.id, acc.size)
	}
	median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	for b.Loop() {
		results := map[string][2]time.Duration{}
		for i, acc := range accounts {
			var at listCursor
			s.pool.QueryRow(ctx, `SELECT created_at, id FROM images WHERE owner_id = $1 ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1`,
				acc.id, acc.size/2).Scan(&at.createdAt, &at.id)
			deep := s.cursors.encode(acc.id, "", at)
			var victims []int64
			rows, _ := s.pool.Query(ctx, `SELECT id FROM images WHERE owner_id = $1 ORDER BY id LIMIT 21 OFFSET $2`, acc.id, acc.size/3)
			victims, _ = pgx.CollectRows(rows, pgx.RowTo[int64])
			body, ct := multipartBody(b, "file", "a.png", tinyPNG(b, 8, 8))
			ops := map[string]func(k int) response{
				"first-page": func(int) response { return s.do("GET", "/api/v1/images/?limit=20", nil, "Authorization", acc.auth) },
				"cursor-page": func(int) response {
					return s.do("GET", "/api/v1/images/?limit=20&cursor="+deep, nil, "Authorization", acc.auth)
				},
				"tag-page": func(int) response {
					return s.do("GET", "/api/v1/images/?limit=20&tag=cats", nil, "Authorization", acc.auth)
				},
				"upload": func(int) response {
					return s.do("POST", "/api/v1/images/?name=bench", body, "Authorization", acc.auth, "Content-Type", ct)
				},
				"delete": func(k int) response {
					return s.do("DELETE", fmt.Sprint("/api/v1/images/", victims[k]), nil, "Authorization", acc.auth)
				},
			}
			for name, op := range ops {
				var took []time.Duration
				for k := range 21 {
					start := time.Now()
					if r := op(k); r.status >= 300 {
						b.Fatalf("%s (%d images): %d %s", name, acc.size, r.status, r.body)
					}
					took = append(took, time.Since(start))
				}
				m := results[name]
				m[i] = median(took)
				results[name] = m
			}
		}
		for name, m := range results {
			b.ReportMetric(float64(m[0].Microseconds())/1000, name+"-small-ms")
			b.ReportMetric(float64(m[1].Microseconds())/1000, name+"-large-ms")
			b.ReportMetric(float64(m[1])/float64(m[0]), name+"-ratio")
		}
	}
}

// loadImages adds n rows of images to owner (10 % tagged cats), loaded in one statement with the
// triggers off and counted as the migration counts, then analyzed.
func loadImages(t testing.TB, s *testServer, owner int64, n int) {
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	_, err = conn.Exec(ctx, `SET session_replication_role = replica`)
	if err == nil {
		_, err = conn.Exec(ctx, `
		INSERT INTO images (owner_id, name, tags, status, content_type, width, height, size, sha256, file_key, created_at)
		SELECT $1::bigint, 'i' || i, CASE WHEN i % 10 = 0 THEN ARRAY['cats'] ELSE ARRAY['dogs'] END, 'ready', 'image/png', 4, 4, 100, 'x',
		       'o/' || substr(md5($1::text || '-' || i), 1, 2) || '/' || md5($1::text || '-' || i), now() - i * interval '1 second'
		FROM generate_series(1, $2::int) AS i`, owner, n)
	}
	if err == nil {
		_, err = conn.Exec(ctx, `SET session_replication_role = origin`)
	}
	if err == nil {
		_, err = conn.Exec(ctx, `
		INSERT INTO image_counts AS c (owner_id, tag, n, bytes)
		SELECT owner_id, '', count(*), sum(size + variant_bytes) FROM images WHERE owner_id = $1 GROUP BY owner_id
		ON CONFLICT (owner_id, tag) DO UPDATE SET n = c.n + EXCLUDED.n, bytes = c.bytes + EXCLUDED.bytes`, owner)
	}
	if err == nil {
		_, err = conn.Exec(ctx, `
		INSERT INTO image_counts AS c (owner_id, tag, n, bytes)
		SELECT owner_id, t, count(*), 0 FROM images, unnest(tags) AS t WHERE owner_id = $1 GROUP BY owner_id, t
		ON CONFLICT (owner_id, tag) DO UPDATE SET n = c.n + EXCLUDED.n`, owner)
	}
	if err == nil {
		_, err = conn.Exec(ctx, `ANALYZE images`)
	}
	if err != nil {
		t.Fatal(err)
	}
}
