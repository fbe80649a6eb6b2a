// What an image file is: its format sniffed from its bytes, its header read (dimensions, colour
// model, JPEG layout) and checked against the limits once, at upload (inspectImage), and the errors
// that say what is wrong with an image.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"
	"strings"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

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
	if errors.Is(err, errTooManyBlocks) {
		return newError(http.StatusUnprocessableEntity, "the TIFF has more than %d strips or tiles; at most %d are accepted", maxTIFFBlocks, maxTIFFBlocks)
	}
	if errors.Is(err, errTooMuchWork) {
		return newError(http.StatusUnprocessableEntity, "the JPEG's progressive scans would visit each coefficient more than %d times (ordinary files: about 3); this service does not decode it", maxVisitsPerSample)
	}
	if err != nil {
		return newError(http.StatusUnsupportedMediaType, "not a valid %s image: %v", name, err)
	}
	if h.width <= 0 || h.height <= 0 {
		return newError(http.StatusUnsupportedMediaType, "not a valid %s image: it declares %d×%d pixels", name, h.width, h.height)
	}
	if err := checkPixels(h.width, h.height, lim.maxPixels); err != nil {
		return newError(http.StatusRequestEntityTooLarge, "%s", err.(*imageError).reason)
	}
	// Its job, and the render of its widest display size, must each fit: an image taken is shown at
	// every size.
	if need := max(h.jobBytes(lim.dct), h.largestRenderBytes(lim.dct)); need > lim.maxJobBytes {
		return newError(http.StatusRequestEntityTooLarge, "processing this %d×%d %s needs about %s of memory, over this server's limit of %s: send it with fewer pixels or fewer bits per pixel",
			h.width, h.height, name, formatMiB(need), formatMiB(lim.maxJobBytes))
	}
	up.contentType, up.width, up.height, up.variantBytes = im.format.contentType, h.width, h.height, h.variantBytes()
	if h.orient.swapsAxes() {
		up.width, up.height = h.height, h.width
	}
	return nil
}

// imageHeader is what a file's header tells about the memory its decoding takes.
type imageHeader struct {
	format        string // imageFormat.name
	width, height int
	model         color.Model
	fileSize      int64
	orient        orientation
	jpeg          jpegLayout // JPEG only
	pngInterlaced bool       // PNG only: the decoder holds every pass as well as the image
	pngTRNS       bool       // PNG only: a tRNS chunk, which makes the decoder return (N)RGBA(64)
	tiff          tiffLayout // TIFF only
}

// readImageHeader reads im's header: dimensions and colour model, and for JPEG its frame layout and
// scans (errTooManyScans past maxJPEGScans); errors are imageErrors.
func readImageHeader(ctx context.Context, im imageFile) (imageHeader, error) {
	cfg, err := im.format.decodeConfig(im.reader(ctx))
	if err != nil {
		return imageHeader{}, badImage("cannot read the %s header: %v", im.format.name, err)
	}
	h := imageHeader{format: im.format.name, width: cfg.Width, height: cfg.Height, model: cfg.ColorModel,
		fileSize: im.size, orient: im.orientation()}
	switch h.format {
	case "jpeg":
		if h.jpeg, err = scanJPEG(im.reader(ctx)); err != nil {
			return imageHeader{}, err
		}
	case "png":
		h.pngInterlaced, h.pngTRNS = readPNGLayout(im.f, im.size)
	case "tiff":
		if h.tiff, err = readTIFFLayout(im.f, im.size, h.width, h.height); err != nil {
			return imageHeader{}, err
		}
	}
	return h, nil
}

// readPNGLayout reads what DecodeConfig does not say of a PNG but its decoding depends on: whether
// it is interlaced (IHDR's last byte), and whether a tRNS chunk comes before the image data (then
// a gray or truecolour image decodes to NRGBA or NRGBA64: more bytes a pixel than its colour type
// says). It reads only chunk headers, at most maxPNGChunks of them.
func readPNGLayout(f io.ReaderAt, size int64) (interlaced, trns bool) {
	var ihdr [29]byte
	if _, err := f.ReadAt(ihdr[:], 0); err != nil {
		return false, false
	}
	interlaced = ihdr[28] == 1
	off := int64(8)
	for range maxPNGChunks {
		var head [8]byte
		if off+8 > size {
			break
		}
		if _, err := f.ReadAt(head[:], off); err != nil {
			break
		}
		switch string(head[4:]) {
		case "tRNS":
			return interlaced, true
		case "IDAT", "IEND":
			return interlaced, false
		}
		off += 12 + int64(binary.BigEndian.Uint32(head[:4]))
	}
	// Past the chunks read: assume the worst.
	return interlaced, true
}

// maxPNGChunks is how many chunk headers readPNGLayout reads before the image data at most.
const maxPNGChunks = 10_000

// tiffLayout is how a TIFF's pixels are stored: in blocks (strips, or tiles) of blockW×blockH,
// compressed or not. x/image/tiff reads each block whole into one buffer, which for a compressed
// block may grow to blockW×blockH×8 bytes (it limits no further), doubling as it grows.
type tiffLayout struct {
	blockW, blockH int
	blocks         int64
	compressed     bool
}

// maxTIFFBlocks is the most strips or tiles a TIFF may have: each costs the decoder a reader of its
// own (781,456 tiles of 8×8 took 20 s). Real files have a few thousand at most (a strip a row of a
// 50 MP image: 7000; 256×256 tiles: 800).
const maxTIFFBlocks = 100_000

// errTooManyBlocks refuses a TIFF of more than maxTIFFBlocks strips or tiles.
var errTooManyBlocks = badImage("the tiff has more than %d strips or tiles, the most this service decodes", maxTIFFBlocks)

// readTIFFLayout reads the first IFD's compression and strip or tile geometry of the w×h TIFF in f.
func readTIFFLayout(f io.ReaderAt, size int64, w, h int) (tiffLayout, error) {
	lay := tiffLayout{blockW: w, blockH: h, blocks: 1}
	var hdr [8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return lay, badImage("cannot read the tiff header")
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if hdr[0] == 'M' {
		bo = binary.BigEndian
	}
	ifd := int64(bo.Uint32(hdr[4:]))
	var cnt [2]byte
	if _, err := f.ReadAt(cnt[:], ifd); err != nil {
		return lay, badImage("cannot read the tiff's first IFD")
	}
	n := int64(bo.Uint16(cnt[:]))
	entries := make([]byte, min(n, (size-ifd)/12)*12)
	if _, err := f.ReadAt(entries, ifd+2); err != nil && !errors.Is(err, io.EOF) {
		return lay, badImage("cannot read the tiff's first IFD")
	}
	var tileW, tileH, rows int
	for e := entries; len(e) >= 12; e = e[12:] {
		tag, typ := bo.Uint16(e), bo.Uint16(e[2:])
		v := int(bo.Uint32(e[8:]))
		if typ == 3 { // SHORT: the value is in the first two bytes
			v = int(bo.Uint16(e[8:]))
		}
		switch tag {
		case 259: // Compression
			lay.compressed = v != 1 && v != 0
		case 278: // RowsPerStrip
			rows = v
		case 322: // TileWidth
			tileW = v
		case 323: // TileLength
			tileH = v
		}
	}
	switch {
	case tileW > 0 && tileH > 0:
		lay.blockW, lay.blockH = tileW, tileH
	case rows > 0 && rows < h:
		lay.blockH = rows
	}
	lay.blocks = int64((w+lay.blockW-1)/lay.blockW) * int64((h+lay.blockH-1)/lay.blockH)
	if lay.blocks > maxTIFFBlocks {
		return lay, errTooManyBlocks
	}
	return lay, nil
}

// errBadImage is what every imageError matches with errors.Is: the image itself is unprocessable
// (corrupt or truncated data, too many pixels, scans or bytes), not the server.
var errBadImage = errors.New("bad image")

// imageError says why an image cannot be processed, in words its owner reads as the image's error.
// Processing it again would fail the same way, so a job ends at the first one.
type imageError struct {
	reason string
}

func (e *imageError) Error() string { return "bad image: " + e.reason }

func (e *imageError) Is(target error) bool { return target == errBadImage }

// badImage returns an imageError with a reason a user can read.
func badImage(format string, args ...any) error {
	return &imageError{reason: fmt.Sprintf(format, args...)}
}

// checkPixels is the pixel limit, wherever dimensions are read before pixels are allocated (the
// upload's header, a job's header, the DCT decoder's frame): nil when w×h is within limit, else an
// imageError with the one wording of it (an upload answers it 413).
func checkPixels(w, h int, limit int64) error {
	if w <= 0 || h <= 0 {
		return badImage("image declares %d×%d pixels", w, h)
	}
	if px := int64(w) * int64(h); px > limit {
		return badImage("image is %d×%d = %d pixels, over the limit of %d", w, h, px, limit)
	}
	return nil
}
