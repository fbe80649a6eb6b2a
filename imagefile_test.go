package main

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// TestPureInspectImage: what an upload is, from its bytes alone: each format sniffed by its magic
// (not its name), dimensions as displayed, and every refusal with its status — not an image we take
// (415), more pixels than MAX_PIXELS (413, before any decoding), more memory than WORKER_MEMORY (413).
func TestPureInspectImage(t *testing.T) {
	lim := uploadLimits{maxBytes: 25 << 20, maxPixels: 50_000_000, maxJobBytes: 512 << 20, dct: true}
	for _, tc := range []struct {
		name   string
		data   []byte
		lim    uploadLimits
		status int    // 0: accepted
		ct     string // when accepted
		w, h   int
	}{
		{"png", tinyPNG(t, 40, 30), lim, 0, "image/png", 40, 30},
		{"jpeg", readTestdata(t, "mid.jpg"), lim, 0, "image/jpeg", 0, 0},
		{"jpeg turned by EXIF", readTestdata(t, "mid-orient6.jpg"), lim, 0, "image/jpeg", 0, 0},
		{"webp", readTestdata(t, "small.webp"), lim, 0, "image/webp", 0, 0},
		{"svg", readTestdata(t, "bad/script.svg"), lim, http.StatusUnsupportedMediaType, "", 0, 0},
		{"html named .jpg", readTestdata(t, "bad/text.jpg"), lim, http.StatusUnsupportedMediaType, "", 0, 0},
		{"pdf", readTestdata(t, "bad/doc.pdf"), lim, http.StatusUnsupportedMediaType, "", 0, 0},
		{"a header of too many pixels", readTestdata(t, "bad/huge-header.png"), lim, http.StatusRequestEntityTooLarge, "", 0, 0},
		{"over the pixel limit", tinyPNG(t, 40, 30), uploadLimits{maxBytes: 1 << 20, maxPixels: 1000, maxJobBytes: 512 << 20}, http.StatusRequestEntityTooLarge, "", 0, 0},
		{"over the memory limit", tinyPNG(t, 400, 300), uploadLimits{maxBytes: 1 << 20, maxPixels: 1 << 30, maxJobBytes: 1 << 10}, http.StatusRequestEntityTooLarge, "", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(p, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			up := &upload{size: int64(len(tc.data))}
			err = inspectImage(f, up, tc.lim)
			if tc.status != 0 {
				var ae *apiError
				if !errors.As(err, &ae) || ae.status != tc.status {
					t.Fatalf("got %v, want a %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if up.contentType != tc.ct || (tc.w > 0 && (up.width != tc.w || up.height != tc.h)) || up.variantBytes <= 0 {
				t.Errorf("got %s %d×%d reserving %d, want %s %d×%d", up.contentType, up.width, up.height, up.variantBytes, tc.ct, tc.w, tc.h)
			}
		})
	}
	// EXIF orientation 6 turns the stored sideways photo upright: displayed width and height swap.
	plain, turned := inspected(t, "mid.jpg"), inspected(t, "mid-orient6.jpg")
	if plain.width != turned.height || plain.height != turned.width {
		t.Errorf("orientation 6: %d×%d, the plain file %d×%d", turned.width, turned.height, plain.width, plain.height)
	}
}

// inspected is inspectImage's reading of a testdata file.
func inspected(t *testing.T, name string) *upload {
	t.Helper()
	data := readTestdata(t, name)
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, data, 0o600)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	up := &upload{size: int64(len(data))}
	if err := inspectImage(f, up, uploadLimits{maxBytes: 25 << 20, maxPixels: 50_000_000, maxJobBytes: 512 << 20}); err != nil {
		t.Fatal(err)
	}
	return up
}
