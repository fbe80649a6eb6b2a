// Files: the storage keys, the scratch space under UPLOAD_DIR (uploads being received, variants being
// written), sniffing and sizing images, and the filesystem blob store (originals and variants as files
// under UPLOAD_DIR).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// Layout under UPLOAD_DIR:
//
//	tmp/                      uploads being received, and variants being written
//	o/ab/abcdef…              originals, named by a random key (two-level fan-out)
//	o/ab/abcdef….thumb_100.…  variants beside their original
const (
	tmpDir      = "tmp"
	originalDir = "o"
	// orphanGrace is how old an unreferenced file must be before the sweeper removes it: far longer
	// than the moment between an original's rename and its row's insert.
	orphanGrace = time.Hour
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

// fsBlobs keeps originals and variants as files under root (UPLOAD_DIR), beside the scratch space,
// so that placing a temp file is a rename.
type fsBlobs struct {
	root string
}

// newFSBlobs creates the layout under root.
func newFSBlobs(root string) (*fsBlobs, error) {
	if err := os.MkdirAll(filepath.Join(root, originalDir), 0o750); err != nil {
		return nil, fmt.Errorf("upload dir: %w", err)
	}
	return &fsBlobs{root: root}, nil
}

// errBadKey is the blob stores' answer for a key this service could not have made.
var errBadKey = errors.New("blob store: not a storage key")

// checkKey refuses anything but a key this service makes (under o/, of lowercase letters, digits,
// '.', '_', '-' and '/', local, no ".."): a key comes from the database or the cache, so it is data,
// never joined to a directory or a bucket's URL unchecked.
func checkKey(key string) error {
	ok := strings.HasPrefix(key, originalDir+"/") && filepath.IsLocal(key) && !strings.Contains(key, "..")
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%w: %q", errBadKey, key)
	}
	return nil
}

// path returns the file a key names; errBadKey for anything checkKey refuses.
func (b *fsBlobs) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return filepath.Join(b.root, filepath.FromSlash(key)), nil
}

// Keys. A key names a stored file, relative to the store: an original's is "o/ab/<32 hex digits>"
// (newKey), a variant's is its original's followed by ".<variant>.<8 hex digits><ext>" (variantKey),
// fresh each time it is written. Only this file turns keys into paths (path) or takes them apart
// (originalOf, keyETag).

// variantKey is a new key for variant name (with file extension ext) of the original at key.
// Variants sit beside their original, named "<original key>.<variant>.<random>.<ext>", so the
// orphan sweep finds the original's key before the first dot.
func variantKey(original, name, ext string) string {
	return fmt.Sprintf("%s.%s.%08x%s", original, name, mrand.Uint32(), ext)
}

// originalOf returns the key of the original a stored file's key belongs to: the key itself for an
// original, the part before the first dot for a variant.
func originalOf(key string) string {
	original, _, _ := strings.Cut(key, ".")
	return original
}

// keyETag is the strong ETag of a variant's file: its key names its content, since a variant's key
// is new each time it is written.
func keyETag(key string) string {
	return `"` + strings.ReplaceAll(key[strings.LastIndexByte(key, '/')+1:], ".", "-") + `"`
}

// newKey returns a fresh random key for an original.
func newKey() string {
	var r [16]byte
	rand.Read(r[:])
	h := hex.EncodeToString(r[:])
	return originalDir + "/" + h[:2] + "/" + h
}

// place moves the temp file at tmp (its bytes already synced) into the place of key, durably: when
// it returns nil, a power cut cannot lose the file, so the row that points at it may commit.
func (b *fsBlobs) place(_ context.Context, tmp, key, _, _ string) error {
	dst, err := b.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if statErr != nil {
		// A new fan-out directory: its own entry must reach the disk too.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	// The file's bytes were synced before it came here; the rename is durable once its directory is.
	return syncDir(dir)
}

// syncDir flushes a directory's entries to the disk (fsync on the directory).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// open opens the file of key for serving; errNotFound when there is none.
func (b *fsBlobs) open(_ context.Context, key, _ string) (blob, error) {
	p, err := b.path(key)
	if err != nil {
		return blob{}, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return blob{}, fmt.Errorf("open %s: %w", key, errNotFound)
	}
	if err != nil {
		return blob{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return blob{}, err
	}
	return blob{ReadSeekCloser: f, modTime: st.ModTime()}, nil
}

// localCopy returns the path of key's file itself: it is local already.
func (b *fsBlobs) localCopy(_ context.Context, key string) (string, func(), error) {
	p, err := b.path(key)
	return p, func() {}, err
}

// remove deletes the files of keys; missing files are not an error.
func (b *fsBlobs) remove(_ context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		if k == "" {
			continue
		}
		p, err := b.path(k)
		if err == nil {
			err = os.Remove(p)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ping checks that the directory of originals is there.
func (b *fsBlobs) ping(context.Context) error {
	_, err := os.Stat(filepath.Join(b.root, originalDir))
	return err
}

// sweepOrphans walks the files under o/ and removes those of originals no row refers to (orphanSweep).
func (b *fsBlobs) sweepOrphans(ctx context.Context, before time.Time, exists func(context.Context, []string) (map[string]bool, error)) (int, error) {
	sw := newOrphanSweep(before, exists, b.remove)
	root := filepath.Join(b.root, originalDir)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(b.root, p)
		return sw.add(ctx, filepath.ToSlash(rel), info.ModTime())
	})
	if err != nil {
		return sw.removed, err
	}
	return sw.removed, sw.flush(ctx)
}

// imageFormat is an input format we accept: how to recognise it and read its dimensions.
type imageFormat struct {
	name         string
	contentType  string
	ext          string
	magic        func([]byte) bool
	decodeConfig func(io.Reader) (image.Config, error)
	decode       func(io.Reader) (image.Image, error)
}

// formats are the inputs we accept, recognised by their first bytes, never by the client's header.
var formats = []imageFormat{
	{"jpeg", "image/jpeg", ".jpg", func(b []byte) bool { return bytes.HasPrefix(b, []byte{0xFF, 0xD8, 0xFF}) }, jpeg.DecodeConfig, jpeg.Decode},
	{"png", "image/png", ".png", func(b []byte) bool { return bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) }, png.DecodeConfig, png.Decode},
	{"gif", "image/gif", ".gif", func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a"))
	}, gif.DecodeConfig, gif.Decode},
	{"webp", "image/webp", ".webp", func(b []byte) bool {
		return len(b) >= 12 && bytes.HasPrefix(b, []byte("RIFF")) && bytes.Equal(b[8:12], []byte("WEBP"))
	}, webp.DecodeConfig, webp.Decode},
	{"bmp", "image/bmp", ".bmp", func(b []byte) bool { return bytes.HasPrefix(b, []byte("BM")) }, bmp.DecodeConfig, bmp.Decode},
	{"tiff", "image/tiff", ".tiff", func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("II*\x00")) || bytes.HasPrefix(b, []byte("MM\x00*"))
	}, tiff.DecodeConfig, tiff.Decode},
}

// extensionFor returns the file extension for one of our content types.
func extensionFor(contentType string) string {
	for _, f := range formats {
		if f.contentType == contentType {
			return f.ext
		}
	}
	return ""
}

// sniffFormat returns the format whose signature head starts with.
func sniffFormat(head []byte) (imageFormat, bool) {
	for _, f := range formats {
		if f.magic(head) {
			return f, true
		}
	}
	return imageFormat{}, false
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

// imageFile is an image file on disk, its format recognised from its first bytes.
type imageFile struct {
	f      *os.File
	size   int64
	format imageFormat
}

// sniffFile recognises the format of the first size bytes of f; false when it is none we take.
func sniffFile(f *os.File, size int64) (imageFile, bool) {
	head := make([]byte, 16)
	n, _ := f.ReadAt(head, 0)
	format, ok := sniffFormat(head[:n])
	return imageFile{f: f, size: size, format: format}, ok
}

// reader returns a new reader over the whole file, as the format's decoder wants it: buffered, or for
// TIFF an io.ReaderAt (the TIFF decoder reads everything into memory unless it gets one). Once ctx
// ends, its reads fail with ctx's error: the decoders take no context, but they all read.
func (im imageFile) reader(ctx context.Context) io.Reader {
	section := &ctxReaderAt{ctx: ctx, r: io.NewSectionReader(im.f, 0, im.size)}
	if im.format.name == "tiff" {
		return section
	}
	return bufio.NewReaderSize(section, 64<<10)
}

// ctxReaderAt is a section of a file whose reads fail once ctx ends.
type ctxReaderAt struct {
	ctx context.Context
	r   *io.SectionReader
}

func (c *ctxReaderAt) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (c *ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}

func (c *ctxReaderAt) Seek(off int64, whence int) (int64, error) { return c.r.Seek(off, whence) }

// orientation is the file's EXIF orientation: read from a JPEG, 1 for anything else.
func (im imageFile) orientation() orientation {
	if im.format.name != "jpeg" {
		return 1
	}
	return exifOrientation(io.NewSectionReader(im.f, 0, im.size))
}

// uploadLimits bound what an upload may be.
type uploadLimits struct {
	maxBytes    int64 // MAX_UPLOAD_BYTES
	maxPixels   int64 // MAX_PIXELS
	maxJobBytes int64 // WORKER_MEMORY: no job may need more
	dct         bool  // JPEG_DCT: whether the job may take the DCT path (its memory differs)
}

// inspectImage sniffs f's format and reads its header alone (no pixel is decoded), refusing what we
// cannot decode (415), what is over the pixel limit or would need more memory to process than a
// worker has (413), and a JPEG of more scans than any decoder here walks (422).
func inspectImage(f *os.File, up *upload, lim uploadLimits) error {
	im, ok := sniffFile(f, up.size)
	if !ok {
		return newError(http.StatusUnsupportedMediaType, "not an image this service accepts: send JPEG, PNG, GIF, WebP, BMP or TIFF")
	}
	name := strings.ToUpper(im.format.name)
	h, err := readImageHeader(context.Background(), im)
	if errors.Is(err, errTooManyScans) {
		return newError(http.StatusUnprocessableEntity, "the JPEG has more than %d scans (progressive passes); at most %d are accepted", maxJPEGScans, maxJPEGScans)
	}
	if err != nil {
		return newError(http.StatusUnsupportedMediaType, "not a valid %s image: %v", name, err)
	}
	if h.width <= 0 || h.height <= 0 {
		return newError(http.StatusUnsupportedMediaType, "not a valid %s image: it declares %d×%d pixels", name, h.width, h.height)
	}
	if px := int64(h.width) * int64(h.height); px > lim.maxPixels {
		return newError(http.StatusRequestEntityTooLarge, "%s", tooManyPixels(h.width, h.height, lim.maxPixels))
	}
	if need := h.jobBytes(lim.dct); need > lim.maxJobBytes {
		return newError(http.StatusRequestEntityTooLarge, "processing this %d×%d %s needs about %s of memory, over this server's limit of %s: send it with fewer pixels or fewer bits per pixel",
			h.width, h.height, name, formatMiB(need), formatMiB(lim.maxJobBytes))
	}
	up.contentType, up.width, up.height, up.variantBytes = im.format.contentType, h.width, h.height, h.variantBytes()
	if h.orient.swapsAxes() {
		up.width, up.height = h.height, h.width
	}
	return nil
}
