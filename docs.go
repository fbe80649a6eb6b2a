// API documentation: the OpenAPI document and the Swagger UI that renders it, both embedded.
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// docFiles are openapi.json and the Swagger UI files (swagger-ui/README.md says where they come from).
//
//go:embed openapi.json swagger-ui
var docFiles embed.FS

// docsCSP lets the Swagger UI page run its own script and styles and talk to this server, and
// nothing else: no inline script, no other origin, no framing. Swagger UI sets style attributes,
// hence 'unsafe-inline' for styles only; it shows images inline as data: URLs.
const docsCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docAsset is an embedded file ready to serve: its type, ETag, and a gzip copy when that is smaller.
type docAsset struct {
	contentType string
	etag        string
	body, gz    []byte
}

// docAssets loads each embedded file of files once, on first use, through edit when it is set.
type docAssets struct {
	files  embed.FS
	edit   func(name string, body []byte) []byte
	mu     sync.Mutex
	assets map[string]*docAsset
}

// docTypes are the extensions served from swagger-ui/, with their types; anything else is 404.
var docTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".png":  "image/png",
	".svg":  "image/svg+xml",
	".json": "application/json",
	".txt":  "text/plain; charset=utf-8",
}

// get returns the embedded file at name, or nil.
func (d *docAssets) get(name string) *docAsset {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.assets[name]; ok {
		return a
	}
	ct, ok := docTypes[path.Ext(name)]
	if !ok {
		return nil
	}
	body, err := d.files.ReadFile(name)
	if err != nil {
		return nil
	}
	if d.edit != nil {
		body = d.edit(name, body)
	}
	sum := sha256.Sum256(body)
	a := &docAsset{contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, body: body}
	if ct != "image/png" {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(body)
		zw.Close()
		if buf.Len() < len(body) {
			a.gz = buf.Bytes()
		}
	}
	if d.assets == nil {
		d.assets = map[string]*docAsset{}
	}
	d.assets[name] = a
	return a
}

// serve writes asset a with caching headers: revalidated every time when mutable is set (the page
// and its configuration), kept for a day otherwise (the pinned Swagger UI release).
func (a *docAsset) serve(w http.ResponseWriter, r *http.Request, mutable bool) {
	h := w.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("ETag", a.etag)
	h.Set("Vary", "Accept-Encoding")
	if mutable {
		h.Set("Cache-Control", "no-cache")
	} else {
		h.Set("Cache-Control", "public, max-age=86400")
	}
	body := a.body
	if a.gz != nil && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		h.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// serveDocs serves the Swagger UI: the page at /docs, its files at /docs/{file}.
func (a *app) serveDocs(w http.ResponseWriter, r *http.Request) {
	a.docs.serveFile(w, r, "swagger-ui/", docsCSP, func(name string) bool { return name == "index.html" || name == "init.js" })
}

// serveFile answers r with the file {file} (index.html when empty) under dir, with the page's csp;
// mutable says which files must be revalidated each time (the rest may be cached for a day). A name
// with a slash, or none that is embedded, is 404. It is the one way the page and the docs are served.
func (d *docAssets) serveFile(w http.ResponseWriter, r *http.Request, dir, csp string, mutable func(name string) bool) {
	name := r.PathValue("file")
	if name == "" {
		name = "index.html"
	}
	asset := d.get(dir + name)
	if asset == nil || strings.Contains(name, "/") {
		writeProblem(w, r, http.StatusNotFound, "no such file")
		return
	}
	w.Header().Set("Content-Security-Policy", csp)
	asset.serve(w, r, mutable(name))
}

// serveOpenAPI serves the OpenAPI document.
func (a *app) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	a.docs.get("openapi.json").serve(w, r, true)
}
