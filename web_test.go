package main

import (
	"bytes"
	"compress/gzip"
	"io/fs"
	"net/http"
	"strings"
	"testing"
)

// TestPage: / serves the page under a strict CSP (no inline script or style, nothing from elsewhere),
// saying whether sign-up is open; its files are served with their types; it stays small.
func TestPage(t *testing.T) {
	s := newTestServer(t, nil)
	r := s.do("GET", "/", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !bytes.Contains(r.body, []byte(`content="open"`)) {
		t.Fatalf("/: %d %s", r.status, r.header.Get("Content-Type"))
	}
	csp := r.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self';", "style-src 'self';", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows something unsafe", csp)
	}
	for _, bad := range []string{"<script>", " style=", "onclick=", "http://", "https://"} {
		if bytes.Contains(r.body, []byte(bad)) {
			t.Errorf("the page holds %q: inline code or another origin", bad)
		}
	}
	for file, ct := range map[string]string{"app.js": "text/javascript", "app.css": "text/css", "blurhash.js": "text/javascript"} {
		if r := s.do("GET", "/app/"+file, nil); r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), ct) {
			t.Errorf("/app/%s: %d %s", file, r.status, r.header.Get("Content-Type"))
		}
	}
	s.do("GET", "/app/../main.go", nil)
	s.do("GET", "/app/nope.js", nil).problem(t, http.StatusNotFound)
	s.do("GET", "/nope", nil).problem(t, http.StatusNotFound)

	closed := newTestServer(t, map[string]string{"SIGNUP": "closed"})
	if r := closed.do("GET", "/", nil); !bytes.Contains(r.body, []byte(`content="closed"`)) {
		t.Error("with SIGNUP=closed the page is not told so")
	}

	// Everything the page loads, gzip-compressed as served: under 60 KiB.
	var total int
	fs.WalkDir(pageFiles, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, _ := pageFiles.ReadFile(p)
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(body)
		zw.Close()
		total += buf.Len()
		return nil
	})
	t.Logf("the page: %d bytes gzip-compressed (HTML, CSS and JavaScript)", total)
	if total > 60<<10 {
		t.Errorf("the page is %d bytes gzip-compressed, over 60 KiB", total)
	}
}
