// Image processing: the table of variants the worker makes, decoding, resizing (integer box shrink,
// then Catmull-Rom), true grayscale, and encoding. (Orientation: exif.go; the JPEG DCT path: jpeg*.go.)
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	stddraw "image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"slices"

	"golang.org/x/image/draw"
)

// variantSpec is one derived image the worker makes from every upload.
type variantSpec struct {
	name      string
	box       int  // fit inside box×box keeping the aspect ratio, never enlarging; 0: full size
	grayscale bool // R = G = B
}

// variantSpecs is the table of variants: adding one is adding a line.
var variantSpecs = []variantSpec{
	{name: "thumb_100", box: 100},
	{name: "thumb_500", box: 500},
	{name: "grayscale", grayscale: true},
}

// variantOriginal names the uploaded file itself in ?variant=.
const variantOriginal = "original"

// knownVariant reports whether name is a variant in the table.
func knownVariant(name string) bool {
	for _, v := range variantSpecs {
		if v.name == name {
			return true
		}
	}
	return false
}

// processOptions are the settings a job runs with.
type processOptions struct {
	jpegQuality int
	maxPixels   int64
	dct         bool // JPEG_DCT: JPEGs in the DCT domain where that path can take them
}

// encodedVariant is a finished variant, encoded into a temp file.
type encodedVariant struct {
	name    string
	tmpPath string
	ext     string
	sha256  string        // hex SHA-256 of the file
	file    storedVariant // Key is set when the file is placed
	key     string        // the key to place it at when chosen beforehand (else a fresh one)
	synced  bool          // its bytes are on the disk (else placing syncs them first)
}

// Processing paths, as logs and metrics name them.
const (
	pathDCT      = "dct"      // JPEG in the DCT domain (jpeg.go)
	pathStandard = "standard" // the standard decoders
)

// makeVariants decodes the original at path (of contentType) and writes every variant in
// variantSpecs to a temp file in sc, returning them and the path that made them. A JPEG goes the
// DCT way when opts.dct is set and that path can take it; anything else, and anything the DCT path
// refuses, goes the standard way. On error no temp file is left.
func makeVariants(ctx context.Context, sc *scratch, path, contentType string, opts processOptions) ([]encodedVariant, string, error) {
	if contentType == "image/jpeg" && opts.dct {
		out, err := makeVariantsDCT(ctx, sc, path, opts)
		if err == nil || ctx.Err() != nil {
			return out, pathDCT, err
		}
		// Unsupported, or broken as the DCT decoder reads it: the standard decoder decides.
	}
	out, err := makeVariantsStandard(ctx, sc, path, contentType, opts)
	return out, pathStandard, err
}

// makeVariantsDCT makes a JPEG's variants from its DCT coefficients: the grayscale is its luma
// coefficients re-encoded (lossless), the thumbnails come from the DC coefficients (a 1/8-scale image,
// no IDCT), or for images under 8×500 pixels across from each block's 2×2 means (1/4 scale, from 25
// coefficients a block); both are turned upright for the EXIF orientation. It returns
// errDCTUnsupported for what it does not do (yet): images whose 1/4 scale is smaller than the largest
// thumbnail, and orientations that would flip a side that is not a whole number of 8-pixel blocks.
func makeVariantsDCT(ctx context.Context, sc *scratch, path string, opts processOptions) (out []encodedVariant, err error) {
	finished := false // not err: a panic leaves err nil, and the files must go then too
	defer discardUnfinished(&out, &err, &finished)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	orient := exifOrientation(bytes.NewReader(data))
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	// The thumbnails start from a reduced image: the DC coefficients (1/8 scale) when that covers
	// the largest thumbnail, else the 2×2 means of each block (1/4 scale). Smaller images go the
	// standard way.
	scale := dctScale(cfg.Width, cfg.Height)
	if scale == 0 {
		return nil, errDCTUnsupported
	}
	// At 1/8 scale chroma keeps only its DC coefficients, and memory stays near 2 bytes a pixel.
	img, err := decodeDCT(ctx, data, opts.maxPixels, func(i int) bool { return scale == 8 && i > 0 })
	if err != nil {
		return nil, err
	}
	var reduced image.Image
	if scale == 8 {
		reduced, err = img.dcImage()
	} else {
		reduced, err = img.quarterImage()
	}
	if err != nil {
		return nil, err
	}
	// The grayscale is turned upright in the DCT domain; when that cannot be lossless (a flipped
	// side that is not a whole number of blocks), this path steps aside.
	gray, gw, gh, gq := &img.comps[0], img.width, img.height, img.quant[img.comps[0].tq]
	if orient != 1 {
		if gray, gw, gh, gq, err = img.orientComponent(0, orient); err != nil {
			return nil, err
		}
	}
	thumbSrc := reduced
	for _, spec := range variantSpecsBySize() {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		var v encodedVariant
		if spec.grayscale {
			v, err = writeTemp(sc, spec.name, gw, gh, "image/jpeg", func(w io.Writer) error {
				return encodeGray(w, gray, gw, gh, gq)
			})
		} else {
			th := fit(thumbSrc, spec.box, thumbSrc == reduced)
			thumbSrc = th
			// Thumbnails are small: they are turned as pixels.
			v, err = writeVariant(sc, spec.name, orientImage(th, orient), "image/jpeg", opts.jpegQuality)
		}
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	finished = true
	return out, nil
}

// dctScale is the reduction (8 or 4) whose image of a w×h JPEG covers every thumbnail, or 0 when
// neither does (the DCT path then steps aside).
func dctScale(w, h int) int {
	for _, k := range []int{8, 4} {
		covers := true
		for _, spec := range variantSpecs {
			if nw, nh := fitSize(w, h, spec.box); spec.box > 0 && ((w+k-1)/k < nw || (h+k-1)/k < nh) {
				covers = false
			}
		}
		if covers {
			return k
		}
	}
	return 0
}

// discardUnfinished, deferred by a function making variants, removes the temp files of *out unless
// it finished without an error.
func discardUnfinished(out *[]encodedVariant, err *error, finished *bool) {
	if !*finished || *err != nil {
		for _, v := range *out {
			os.Remove(v.tmpPath)
		}
		*out = nil
	}
}

// makeVariantsStandard makes the variants with the standard decoders.
func makeVariantsStandard(ctx context.Context, sc *scratch, path, contentType string, opts processOptions) (out []encodedVariant, err error) {
	finished := false // not err: a panic leaves err nil, and the files must go then too
	defer discardUnfinished(&out, &err, &finished)
	src, orient, err := decodeFile(ctx, path, opts.maxPixels)
	if err != nil {
		return nil, err
	}
	outType := outputType(contentType)
	var thumbSrc image.Image = src
	specs := variantSpecsBySize()
	for i, spec := range specs {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		var img image.Image
		if spec.grayscale {
			// The last variant may write over the decoded pixels: no memory beyond the image's own.
			img = grayscale(src, i == len(specs)-1)
		} else {
			// Each thumbnail is made from the next larger one: 100 from 500, not from the original.
			// Only the original is box-shrunk first: a camera image is soft at the pixel level, so
			// averaging blocks costs it nothing visible, but a thumbnail is sharp, and would blur.
			img = fit(thumbSrc, spec.box, thumbSrc == src)
			thumbSrc = img
		}
		if p, ok := src.(*image.Paletted); ok && outType == "image/gif" {
			// A GIF's thumbnails keep its palette, and its transparency with it.
			img = paletted(img, p.Palette)
		}
		v, err := writeVariant(sc, spec.name, orientImage(img, orient), outType, opts.jpegQuality)
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	finished = true
	return out, nil
}

// variantSpecsBySize returns the table with the thumbnails first, largest first (so each can be
// made from the one before), and the full-size variants last: the last of them may then reuse the
// decoded pixels, which no other variant needs any more.
func variantSpecsBySize() []variantSpec {
	specs := slices.Clone(variantSpecs)
	order := func(v variantSpec) int {
		if v.box == 0 {
			return 1 // full size: last
		}
		return -v.box
	}
	slices.SortStableFunc(specs, func(a, b variantSpec) int { return order(a) - order(b) })
	return specs
}

// decodeFile decodes the image at path with the decoder its bytes call for, after checking its
// declared size against maxPixels, and returns it with its EXIF orientation (JPEG only; 1 otherwise).
// GIFs decode to their first frame.
func decodeFile(ctx context.Context, path string, maxPixels int64) (image.Image, orientation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 1, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 1, err
	}
	im, ok := sniffFile(f, st.Size())
	if !ok {
		return nil, 1, badImage("not an image format this service decodes")
	}
	cfg, err := im.format.decodeConfig(im.reader(ctx))
	if cerr := ctx.Err(); cerr != nil {
		return nil, 1, cerr
	}
	if err != nil {
		return nil, 1, badImage("cannot read the %s header: %v", im.format.name, err)
	}
	if err := checkPixels(cfg.Width, cfg.Height, maxPixels); err != nil {
		return nil, 1, err
	}
	if im.format.name == "jpeg" {
		// image/jpeg has no limit of its own: count the scans before it walks them.
		if _, err := scanJPEG(im.reader(ctx)); err != nil {
			return nil, 1, err
		}
	}
	// The decoders take no context; their reads do, so a deadline stops them at their next read.
	img, err := im.format.decode(im.reader(ctx))
	if err := ctx.Err(); err != nil {
		return nil, 1, err
	}
	if err != nil {
		return nil, 1, badImage("the %s data is corrupt or truncated: %v", im.format.name, err)
	}
	return img, im.orientation(), nil
}

// outputType is the content type variants of an input get: JPEG stays JPEG, PNG and GIF stay
// themselves, and what Go cannot encode (WebP, BMP, TIFF) becomes PNG.
func outputType(inputType string) string {
	switch inputType {
	case "image/jpeg", "image/png", "image/gif":
		return inputType
	}
	return "image/png"
}

// writeVariant encodes img as contentType into a temp file. Encoders write no metadata.
func writeVariant(sc *scratch, name string, img image.Image, contentType string, quality int) (encodedVariant, error) {
	b := img.Bounds()
	return writeTemp(sc, name, b.Dx(), b.Dy(), contentType, func(w io.Writer) error {
		return encodeImage(w, img, contentType, quality)
	})
}

// writeTemp writes a width×height variant of contentType into a temp file with write.
func writeTemp(sc *scratch, name string, width, height int, contentType string, write func(io.Writer) error) (encodedVariant, error) {
	return writeScratch(sc, name, width, height, contentType, true, write)
}

// writeScratch is writeTemp with the sync chosen: without, the file reaches the disk when it is placed
// (syncTemp), off the path of a display size's first answer, which is sent while it is stored.
func writeScratch(sc *scratch, name string, width, height int, contentType string, sync bool, write func(io.Writer) error) (encodedVariant, error) {
	f, err := sc.createTemp("variant-*")
	if err != nil {
		return encodedVariant{}, err
	}
	// Hashed as written: a bucket checks every byte it stores against the SHA-256 it is sent.
	sum := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, sum), 64<<10)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	var size int64
	if err == nil {
		size, err = f.Seek(0, io.SeekCurrent)
	}
	if err == nil && sync {
		err = f.Sync() // durable before the row that will point at it commits
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return encodedVariant{}, fmt.Errorf("encode %s: %w", name, err)
	}
	return encodedVariant{name: name, tmpPath: f.Name(), ext: extensionFor(contentType), sha256: hex.EncodeToString(sum.Sum(nil)),
		file: storedVariant{Width: width, Height: height, Size: size, ContentType: contentType}, synced: sync}, nil
}

// encodeImage writes img as contentType.
func encodeImage(w io.Writer, img image.Image, contentType string, quality int) error {
	switch contentType {
	case "image/jpeg":
		return jpeg.Encode(w, img, &jpeg.Options{Quality: quality})
	case "image/gif":
		if p, ok := img.(*image.Paletted); ok {
			return gif.Encode(w, p, nil)
		}
		return gif.Encode(w, img, &gif.Options{NumColors: 256})
	default:
		switch img.(type) {
		case *image.Gray, *image.RGBA, *image.NRGBA, *image.Paletted:
		default:
			// PNG writes other types (YCbCr from WebP, say) as 16-bit RGBA: twice the bytes for nothing.
			img = toRGBA(img)
		}
		// BestSpeed: default zlib effort costs several times the time for a few percent of size.
		return (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(w, img)
	}
}

// paletted returns img drawn with the colours of pal: each pixel the nearest opaque colour, or, where
// it is more than half transparent, pal's transparent entry when pal has one. img itself when it is
// already paletted.
func paletted(img image.Image, pal color.Palette) image.Image {
	if _, ok := img.(*image.Paletted); ok {
		return img
	}
	transparent := -1
	for i, c := range pal {
		if _, _, _, a := c.RGBA(); a == 0 {
			transparent = i
			break
		}
	}
	b := img.Bounds()
	dst := image.NewPaletted(image.Rect(0, 0, b.Dx(), b.Dy()), pal)
	rgba := toRGBA(img) // thumbnails are small
	for y := range b.Dy() {
		for x := range b.Dx() {
			p := rgba.Pix[y*rgba.Stride+4*x:][:4]
			i := 0
			switch {
			case p[3] < 128 && transparent >= 0:
				i = transparent
			case p[3] == 0:
				i = pal.Index(color.NRGBA{0, 0, 0, 255})
			default:
				// Straight colour, fully opaque: edge pixels are not drawn darker.
				un := func(v byte) byte { return byte(int(v) * 255 / int(p[3])) }
				i = pal.Index(color.NRGBA{un(p[0]), un(p[1]), un(p[2]), 255})
			}
			dst.Pix[y*dst.Stride+x] = uint8(i)
		}
	}
	return dst
}

// fit returns src scaled to fit inside box×box keeping its aspect ratio, or src itself when it
// already fits (never enlarged). With preShrink, a large shrink first averages k×k blocks (k an
// integer, leaving at least twice the target size); then one Catmull-Rom pass makes the exact size.
func fit(src image.Image, box int, preShrink bool) image.Image {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	if w <= box && h <= box {
		return src
	}
	nw, nh := fitSize(w, h, box)
	if k := min(w/nw, h/nh) / 2; preShrink && k >= 2 {
		src = boxShrink(src, k)
	}
	dst := image.NewRGBA(image.Rect(0, 0, nw, nh))
	draw.CatmullRom.Scale(dst, dst.Rect, src, src.Bounds(), draw.Src, nil)
	return dst
}

// fitSize is the size a w×h image has once fitted inside box×box (never enlarged).
func fitSize(w, h, box int) (int, int) {
	if w <= box && h <= box {
		return w, h
	}
	if w >= h {
		return box, max(1, (h*box+w/2)/w)
	}
	return max(1, (w*box+h/2)/h), box
}

// boxShrink averages k×k blocks of src (partial blocks at the right and bottom edges included). It
// returns a type x/image/draw scales fast: YCbCr 4:4:4 from YCbCr, Gray from Gray, RGBA otherwise
// (premultiplied, so transparent pixels lend no colour).
func boxShrink(src image.Image, k int) image.Image {
	b := src.Bounds()
	w, h := (b.Dx()+k-1)/k, (b.Dy()+k-1)/k
	switch s := src.(type) {
	case *image.YCbCr:
		dst := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio444)
		hs, vs := chromaScale(s.SubsampleRatio)
		cw, ch := (b.Dx()+hs-1)/hs, (b.Dy()+vs-1)/vs
		avgPlane(dst.Y, dst.YStride, s.Y, s.YStride, w, h, func(x int) (int, int) { return x * k, min(x*k+k, b.Dx()) },
			func(y int) (int, int) { return y * k, min(y*k+k, b.Dy()) })
		cx := func(x int) (int, int) { lo := x * k / hs; return lo, max(lo+1, min((x*k+k+hs-1)/hs, cw)) }
		cy := func(y int) (int, int) { lo := y * k / vs; return lo, max(lo+1, min((y*k+k+vs-1)/vs, ch)) }
		avgPlane(dst.Cb, dst.CStride, s.Cb, s.CStride, w, h, cx, cy)
		avgPlane(dst.Cr, dst.CStride, s.Cr, s.CStride, w, h, cx, cy)
		return dst
	case *image.Gray:
		dst := image.NewGray(image.Rect(0, 0, w, h))
		avgPlane(dst.Pix, dst.Stride, s.Pix, s.Stride, w, h, func(x int) (int, int) { return x * k, min(x*k+k, b.Dx()) },
			func(y int) (int, int) { return y * k, min(y*k+k, b.Dy()) })
		return dst
	}
	// Any other type: k source rows at a time converted to RGBA (premultiplied, so transparent
	// pixels lend no colour), never the whole image.
	rows := image.NewRGBA(image.Rect(0, 0, b.Dx(), k))
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		y0, y1 := y*k, min(y*k+k, b.Dy())
		stddraw.Draw(rows, image.Rect(0, 0, b.Dx(), y1-y0), src, image.Pt(b.Min.X, b.Min.Y+y0), stddraw.Src)
		for x := range w {
			x0, x1 := x*k, min(x*k+k, b.Dx())
			var sum [4]uint32
			for sy := range y1 - y0 {
				row := rows.Pix[sy*rows.Stride+x0*4 : sy*rows.Stride+x1*4]
				for i := 0; i < len(row); i += 4 {
					sum[0] += uint32(row[i])
					sum[1] += uint32(row[i+1])
					sum[2] += uint32(row[i+2])
					sum[3] += uint32(row[i+3])
				}
			}
			n := uint32((y1 - y0) * (x1 - x0))
			o := y*dst.Stride + x*4
			for c := range 4 {
				dst.Pix[o+c] = uint8((sum[c] + n/2) / n)
			}
		}
	}
	return dst
}

// avgPlane writes into dst (w×h) the mean of the source samples each output sample covers, as
// xr and yr give them ([lo, hi) in source samples).
func avgPlane(dst []byte, dstStride int, src []byte, srcStride, w, h int, xr, yr func(int) (int, int)) {
	for y := range h {
		y0, y1 := yr(y)
		for x := range w {
			x0, x1 := xr(x)
			var sum uint32
			for sy := y0; sy < y1; sy++ {
				for _, v := range src[sy*srcStride+x0 : sy*srcStride+x1] {
					sum += uint32(v)
				}
			}
			n := uint32((y1 - y0) * (x1 - x0))
			dst[y*dstStride+x] = uint8((sum + n/2) / n)
		}
	}
}

// chromaScale returns how many luma samples one chroma sample spans, across and down.
func chromaScale(r image.YCbCrSubsampleRatio) (int, int) {
	switch r {
	case image.YCbCrSubsampleRatio422:
		return 2, 1
	case image.YCbCrSubsampleRatio420:
		return 2, 2
	case image.YCbCrSubsampleRatio440:
		return 1, 2
	case image.YCbCrSubsampleRatio411:
		return 4, 1
	case image.YCbCrSubsampleRatio410:
		return 4, 2
	}
	return 1, 1
}

// toRGBA returns src as an *image.RGBA at origin (0, 0), converting when it is another type.
func toRGBA(src image.Image) *image.RGBA {
	if r, ok := src.(*image.RGBA); ok && r.Rect.Min == (image.Point{}) {
		return r
	}
	b := src.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	stddraw.Draw(dst, dst.Rect, src, b.Min, stddraw.Src)
	return dst
}

// luma is the ITU-R BT.601 luma of an 8-bit colour, as color.GrayModel computes it.
func luma(r, g, b uint8) uint8 {
	return uint8((19595*uint32(r) + 38470*uint32(g) + 7471*uint32(b) + 1<<15) >> 16)
}

// grayscale returns src truly gray (R = G = B) at full size, keeping transparency where src has
// any: a JPEG's Y plane as it is (no per-pixel work), a GIF's palette turned gray (pixels untouched),
// an opaque image as *image.Gray, a translucent one as NRGBA with R = G = B. With reuse, the result
// may be written over src's own pixels (src must not be used afterwards), so that even a 16-bit
// image needs no memory beyond its own to become gray.
func grayscale(src image.Image, reuse bool) image.Image {
	switch s := src.(type) {
	case *image.YCbCr:
		// The luma plane is the grayscale image: share it.
		return &image.Gray{Pix: s.Y, Stride: s.YStride, Rect: s.Rect}
	case *image.Gray:
		return s
	case *image.Paletted:
		pal := make(color.Palette, len(s.Palette))
		for i, c := range s.Palette {
			n := color.NRGBAModel.Convert(c).(color.NRGBA)
			y := luma(n.R, n.G, n.B)
			pal[i] = color.NRGBA{y, y, y, n.A}
		}
		return &image.Paletted{Pix: s.Pix, Stride: s.Stride, Rect: s.Rect, Palette: pal}
	case *image.NYCbCrA:
		gray := &image.Gray{Pix: s.Y, Stride: s.YStride, Rect: s.Rect}
		if s.Opaque() {
			return gray
		}
		n := image.NewNRGBA(s.Rect)
		for y := range s.Rect.Dy() {
			out := n.Pix[y*n.Stride:]
			for x := range s.Rect.Dx() {
				l, a := s.Y[y*s.YStride+x], s.A[y*s.AStride+x]
				out[4*x], out[4*x+1], out[4*x+2], out[4*x+3] = l, l, l, a
			}
		}
		return n
	}
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	opaque := false
	if o, ok := src.(interface{ Opaque() bool }); ok {
		opaque = o.Opaque()
	}
	outBPP := 4
	if opaque {
		outBPP = 1
	}
	// The output's rows are never longer than the source's, so writing row y after reading it
	// leaves every row after it intact: the conversion can run in place.
	var pix []byte
	if owned, stride := ownPixels(src); reuse && owned != nil && stride >= w*outBPP && b.Min == (image.Point{}) {
		pix = owned[:w*h*outBPP]
	} else {
		pix = make([]byte, w*h*outBPP)
	}
	row := make([]byte, 4*w)
	for y := range h {
		nrgbaRow(src, b.Min.Y+y, row)
		out := pix[y*w*outBPP : (y+1)*w*outBPP]
		for x := range w {
			p := row[4*x : 4*x+4]
			l := luma(p[0], p[1], p[2])
			if opaque {
				out[x] = l
			} else {
				out[4*x], out[4*x+1], out[4*x+2], out[4*x+3] = l, l, l, p[3]
			}
		}
	}
	r := image.Rect(0, 0, w, h)
	if opaque {
		return &image.Gray{Pix: pix, Stride: w, Rect: r}
	}
	return &image.NRGBA{Pix: pix, Stride: 4 * w, Rect: r}
}

// ownPixels returns the pixel slice and stride of the image types a decoder hands over whole (the
// ones grayscale may convert in place), or nil.
func ownPixels(img image.Image) ([]byte, int) {
	switch s := img.(type) {
	case *image.NRGBA:
		return s.Pix, s.Stride
	case *image.RGBA:
		return s.Pix, s.Stride
	case *image.NRGBA64:
		return s.Pix, s.Stride
	case *image.RGBA64:
		return s.Pix, s.Stride
	case *image.Gray16:
		return s.Pix, s.Stride
	case *image.CMYK:
		return s.Pix, s.Stride
	}
	return nil, 0
}

// nrgbaRow writes row y of src as 8-bit non-premultiplied RGBA into row (4 bytes per pixel), the way
// color.NRGBAModel converts each pixel, without widening the image: 16-bit samples keep their high
// byte.
func nrgbaRow(src image.Image, y int, row []byte) {
	b := src.Bounds()
	w := b.Dx()
	// unpremul turns a 16-bit premultiplied sample back into 8-bit straight colour.
	unpremul := func(c, a uint32) byte {
		if a == 0 {
			return 0
		}
		return byte((c * 0xffff / a) >> 8)
	}
	switch s := src.(type) {
	case *image.NRGBA:
		copy(row, s.Pix[s.PixOffset(b.Min.X, y):][:4*w])
	case *image.RGBA:
		p := s.Pix[s.PixOffset(b.Min.X, y):][:4*w]
		for x := 0; x < 4*w; x += 4 {
			a := uint32(p[x+3]) * 0x101
			if a == 0xffff {
				copy(row[x:x+4], p[x:x+4])
				continue
			}
			row[x], row[x+1], row[x+2], row[x+3] = unpremul(uint32(p[x])*0x101, a), unpremul(uint32(p[x+1])*0x101, a), unpremul(uint32(p[x+2])*0x101, a), byte(a>>8)
		}
	case *image.NRGBA64:
		p := s.Pix[s.PixOffset(b.Min.X, y):][:8*w]
		for x := range w {
			row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = p[8*x], p[8*x+2], p[8*x+4], p[8*x+6]
		}
	case *image.RGBA64:
		p := s.Pix[s.PixOffset(b.Min.X, y):][:8*w]
		at := func(i int) uint32 { return uint32(p[i])<<8 | uint32(p[i+1]) }
		for x := range w {
			a := at(8*x + 6)
			row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = unpremul(at(8*x), a), unpremul(at(8*x+2), a), unpremul(at(8*x+4), a), byte(a>>8)
		}
	case *image.Gray16:
		p := s.Pix[s.PixOffset(b.Min.X, y):][:2*w]
		for x := range w {
			row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = p[2*x], p[2*x], p[2*x], 0xff
		}
	case *image.CMYK:
		p := s.Pix[s.PixOffset(b.Min.X, y):][:4*w]
		for x := 0; x < 4*w; x += 4 {
			row[x], row[x+1], row[x+2] = color.CMYKToRGB(p[x], p[x+1], p[x+2], p[x+3])
			row[x+3] = 0xff
		}
	default:
		dst := &image.NRGBA{Pix: row, Stride: 4 * w, Rect: image.Rect(b.Min.X, y, b.Max.X, y+1)}
		stddraw.Draw(dst, dst.Rect, src, dst.Rect.Min, stddraw.Src)
	}
}
