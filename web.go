// The web page at /: a small app of plain HTML, CSS and JavaScript modules (web/), embedded, that
// signs a person in and shows their pictures through the public API.
package main

import (
	"bytes"
	"embed"
	"net/http"
)

// pageFiles are the page and its modules.
//
//go:embed web
var pageFiles embed.FS

// pageEdit tells the page what this server allows: with SIGNUP=closed, index.html says so (and the
// page shows no sign-up button).
func pageEdit(cfg config) func(name string, body []byte) []byte {
	if cfg.SignupOpen {
		return nil
	}
	return func(name string, body []byte) []byte {
		if name != "web/index.html" {
			return body
		}
		return bytes.Replace(body, []byte(`<meta name="imageapi-signup" content="open">`), []byte(`<meta name="imageapi-signup" content="closed">`), 1)
	}
}

// pageCSP allows the page its own scripts, styles and API, and images from this server (signed
// URLs) and, when downloads redirect to the bucket, from the bucket's origin: no inline script or
// style, no other origin, no framing.
func (a *app) pageCSP() string {
	img := "'self'"
	if p, ok := a.blobs.(presigner); ok && a.cfg.DownloadRedirect {
		img += " " + p.origin()
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src " + img + "; connect-src 'self'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// servePage serves the page: index.html at /, its files at /app/{file}. They change with the binary:
// revalidated each time (their ETags make that a 304).
func (a *app) servePage(w http.ResponseWriter, r *http.Request) {
	a.page.serveFile(w, r, "web/", a.pageCSP(), func(string) bool { return true })
}
