// Scratch space: UPLOAD_DIR/tmp, where an upload is streamed to disk and hashed before it is checked
// and placed, and where variants are written before they are stored.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// scratch is UPLOAD_DIR/tmp: uploads being received, variants being written and, with a bucket,
// originals fetched for a job. It is local to each process, whichever blob store holds the images.
type scratch struct {
	dir string
}

// newScratch creates UPLOAD_DIR/tmp and removes temp files left by a crash: anything older than
// olderThan (younger ones may belong to another replica's upload in flight).
func newScratch(root string, olderThan time.Duration, log *slog.Logger) (*scratch, error) {
	dir := filepath.Join(root, tmpDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("upload dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("upload dir: %w", err)
	}
	removed := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < olderThan {
			continue
		}
		if os.Remove(filepath.Join(dir, e.Name())) == nil {
			removed++
		}
	}
	if removed > 0 {
		log.Info("removed stale temp files", slog.Int("count", removed))
	}
	return &scratch{dir: dir}, nil
}

// createTemp returns a new temp file.
func (s *scratch) createTemp(pattern string) (*os.File, error) {
	return os.CreateTemp(s.dir, pattern)
}

// upload is a received file, checked and waiting in tmp/ to be placed.
type upload struct {
	tmpPath     string
	size        int64
	sha256      string
	contentType string
	width       int // as displayed: after EXIF orientation
	height      int
	// variantBytes is the most its variants are expected to take in storage (the quota's reservation).
	variantBytes int64
}

// receive streams r into a temp file while hashing it, then checks that it is an image we take,
// within maxBytes and maxPixels. Memory use does not grow with the file. On any error the temp file
// is gone; errors are apiErrors: 413 too large (bytes or pixels), 415 not an image we decode, 422 empty.
func (s *scratch) receive(r io.Reader, lim uploadLimits) (_ *upload, err error) {
	f, err := s.createTemp("upload-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	sum := sha256.New()
	// multipart hands out a few KiB per Read: buffer the writes, or each one is a write(2).
	w := bufio.NewWriterSize(f, uploadBufferSize)
	// One byte past the limit tells "exactly at the limit" from "over it" without reading on.
	maxBytes := lim.maxBytes
	n, err := io.Copy(w, io.TeeReader(io.LimitReader(r, maxBytes+1), sum))
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return nil, err
	}
	if n > maxBytes {
		return nil, tooLarge("file", maxBytes)
	}
	if n == 0 {
		return nil, newError(http.StatusUnprocessableEntity, "file is empty")
	}
	up := &upload{tmpPath: f.Name(), size: n, sha256: hex.EncodeToString(sum.Sum(nil))}
	if err := inspectImage(f, up, lim); err != nil {
		return nil, err
	}
	// Durable before it is placed and its row commits (checked first: a refused file needs no sync).
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return up, nil
}
