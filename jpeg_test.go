package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	stdimage "image"
	"image/color"
	"image/jpeg"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/image/draw"
)

// dctJPEGs are the JPEGs the DCT path must handle: the real photos (baseline and progressive) and
// files made with cjpeg covering progressive scans (with restart markers, and grayscale), each chroma
// subsampling at an odd size, restart markers (every block, and every MCU row with optimized
// tables), a grayscale JPEG, and 16-bit quantization tables (testdata/SOURCES.md).
var dctJPEGs = []string{"large.jpg", "mid.jpg", "mid-orient6.jpg", "large-progressive.jpg", "jpeg/progressive.jpg", "jpeg/progressive-restart.jpg", "jpeg/progressive-gray.jpg", "jpeg/s1x1.jpg", "jpeg/s2x1.jpg", "jpeg/s2x2.jpg",
	"jpeg/s1x2.jpg", "jpeg/s4x1.jpg", "jpeg/restart.jpg", "jpeg/restart-rows.jpg", "jpeg/gray.jpg", "jpeg/q16bit.jpg"}

// lumaOf returns the luma plane image/jpeg decodes from data, cropped to the image.
func lumaOf(t testing.TB, data []byte) *stdimage.Gray {
	t.Helper()
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("image/jpeg: %v", err)
	}
	switch m := img.(type) {
	case *stdimage.Gray:
		return m
	case *stdimage.YCbCr:
		return &stdimage.Gray{Pix: m.Y, Stride: m.YStride, Rect: m.Rect}
	}
	t.Fatalf("image/jpeg gave %T", img)
	return nil
}

// sameGray reports whether a and b have the same size and pixels.
func sameGray(a, b *stdimage.Gray) bool {
	if a.Rect.Size() != b.Rect.Size() {
		return false
	}
	for y := range a.Rect.Dy() {
		ra := a.Pix[y*a.Stride : y*a.Stride+a.Rect.Dx()]
		rb := b.Pix[y*b.Stride : y*b.Stride+b.Rect.Dx()]
		if !bytes.Equal(ra, rb) {
			return false
		}
	}
	return true
}

// dctGray runs the DCT path's grayscale on data.
func dctGray(t testing.TB, data []byte) []byte {
	t.Helper()
	img, err := decodeDCT(context.Background(), data, 50_000_000, func(i int) bool { return i > 0 })
	if err != nil {
		t.Fatalf("decodeDCT: %v", err)
	}
	var out bytes.Buffer
	if err := img.encodeGrayJPEG(&out, 0); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestPureDCTGrayscaleIsLossless: the grayscale written from the luma coefficients decodes to exactly the
// luma plane image/jpeg decodes from the original, and to exactly what jpegtran -grayscale makes.
func TestPureDCTGrayscaleIsLossless(t *testing.T) {
	computeOnly(t)
	for _, name := range dctJPEGs {
		t.Run(name, func(t *testing.T) {
			data := readTestdata(t, name)
			gray := dctGray(t, data)
			got := lumaOf(t, gray)
			if _, err := jpeg.Decode(bytes.NewReader(data)); err != nil {
				// image/jpeg refuses some files libjpeg reads (progressive scans with restart
				// markers): jpegtran is the oracle for those.
				t.Logf("image/jpeg cannot decode %s (%v): compared with jpegtran only", name, err)
			} else if want := lumaOf(t, data); !sameGray(got, want) {
				t.Fatalf("grayscale differs from image/jpeg's luma plane (%v vs %v)", got.Rect, want.Rect)
			}
			if filepath.Dir(name) == "jpeg" {
				oracle := readTestdata(t, name[:len(name)-len(".jpg")]+".jpegtran-gray.jpg")
				if !sameGray(got, lumaOf(t, oracle)) {
					t.Fatal("grayscale differs from jpegtran -grayscale")
				}
			}
			if bytes.Contains(gray, []byte("Exif")) || bytes.Contains(gray, []byte("JFIF")) {
				t.Fatal("the grayscale carries metadata")
			}
			t.Logf("%s: %d bytes → grayscale %d bytes", name, len(data), len(gray))
		})
	}
}

// TestPureDCTUnsupported: what the DCT path does not do is said with errDCTUnsupported (the standard
// path then serves), and a broken file is a bad image, never a panic.
func TestPureDCTUnsupported(t *testing.T) {
	for _, name := range []string{"bad/truncated.jpg", "bad/huge-sof.jpg", "bad/text.jpg"} {
		if _, err := decodeDCT(context.Background(), readTestdata(t, name), 50_000_000, nil); !errors.Is(err, errBadImage) {
			t.Errorf("%s: %v, want a bad-image error", name, err)
		}
	}
	// The frame's size is checked before anything is allocated for it.
	if _, err := decodeDCT(context.Background(), readTestdata(t, "large.jpg"), 1_000_000, nil); !errors.Is(err, errBadImage) {
		t.Errorf("over MAX_PIXELS: %v", err)
	}
}

// TestPureDCTThumbnails: the DC coefficients are each block's mean: the 1/8-scale image they make scales
// to thumbnails within 38 dB (luma) of a full-decode Catmull-Rom reference.
func TestPureDCTThumbnails(t *testing.T) {
	computeOnly(t)
	data := readTestdata(t, "large.jpg")
	img, err := decodeDCT(context.Background(), data, 50_000_000, func(i int) bool { return i > 0 })
	if err != nil {
		t.Fatal(err)
	}
	dc, err := img.dcImage()
	if err != nil {
		t.Fatal(err)
	}
	if b := dc.Bounds(); b.Dx() != 528 || b.Dy() != 396 {
		t.Fatalf("DC image %v, want 528x396", b)
	}
	full := decodeTestdata(t, "large.jpg")
	t500 := fit(dc, 500, true)
	for _, th := range []stdimage.Image{t500, fit(t500, 100, false)} {
		ref := stdimage.NewRGBA(th.Bounds())
		draw.CatmullRom.Scale(ref, ref.Rect, full, full.Bounds(), draw.Src, nil)
		p := lumaPSNR(ref, th)
		t.Logf("%v: luma PSNR %.1f dB", th.Bounds(), p)
		if p < 38 {
			t.Errorf("thumbnail %v: luma PSNR %.1f dB, want ≥ 38", th.Bounds(), p)
		}
	}
}

// FuzzDecodeDCT: on any input the DCT decoder, at the default pixel limit, does not panic, and
// whenever it decodes, its grayscale is a JPEG image/jpeg reads at the image's size, that decodes
// back (through decodeDCT) to exactly the luma coefficients it was made from; turned in the DCT
// domain it does the same at the turned size. The pixels themselves are compared with other
// decoders on the committed files (TestPureDCTGrayscaleIsLossless): on corrupt data decoders conceal
// errors each their own way (image/jpeg and libjpeg disagree on both of the fuzzer's finds, kept as
// TestPureDCTCorruptData, where the DCT path matches libjpeg bit for bit).
func FuzzDecodeDCT(f *testing.F) {
	for _, name := range dctJPEGs {
		if !strings.HasPrefix(name, "jpeg/") {
			continue // the photos are large: mutations of them run slowly
		}
		f.Add(readTestdata(f, name))
	}
	f.Add(readTestdata(f, "jpeg/m16.jpg"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := decodeDCT(context.Background(), data, 50_000_000, nil) // the default MAX_PIXELS
		if err != nil {
			return
		}
		c := &img.comps[0]
		w := (img.width*c.h + img.hmax - 1) / img.hmax
		h := (img.height*c.v + img.vmax - 1) / img.vmax
		roundTrip := func(what string, comp *dctComponent, w, h int, q [64]uint16) {
			var out bytes.Buffer
			if err := encodeGray(&out, comp, w, h, q); errors.Is(err, errDCTUnsupported) {
				return // coefficients out of an 8-bit JPEG's range: the standard path takes the file
			} else if err != nil {
				t.Fatal(err)
			}
			g, err := jpeg.Decode(bytes.NewReader(out.Bytes()))
			if err != nil {
				t.Fatalf("%s does not decode: %v", what, err)
			}
			if g.Bounds().Dx() != w || g.Bounds().Dy() != h {
				t.Fatalf("%s is %v, want %dx%d", what, g.Bounds(), w, h)
			}
			back, err := decodeDCT(context.Background(), out.Bytes(), 50_000_000, nil)
			if err != nil {
				t.Fatalf("%s does not decode through decodeDCT: %v", what, err)
			}
			bc := &back.comps[0]
			for by := range comp.bh {
				for bx := range comp.bw {
					got := bc.coef[(by*bc.stride+bx)*64:][:64]
					want := comp.coef[(by*comp.stride+bx)*64:][:64]
					if !slices.Equal(got, want) {
						t.Fatalf("%s: block (%d,%d) came back different", what, bx, by)
					}
				}
			}
		}
		roundTrip("grayscale", c, w, h, img.quant[c.tq])
		if tc, tw, th, tq, err := img.orientComponent(0, 6); err == nil {
			roundTrip("turned grayscale", tc, tw, th, tq)
		}
		streamedLikeHeld(t, img, data)
	})
}

// streamedLikeHeld checks that a display size of data made while decoding (a sequential file
// streamed row by row) has the luma the same resizing of the held coefficients img has, and that
// encodeJPEG writes it as a JPEG image/jpeg reads at its size.
func streamedLikeHeld(t *testing.T, img *dctImage, data []byte) {
	t.Helper()
	if img.width*img.height > 1<<22 {
		return // a frame of many megapixels from a few bytes: decoding it twice more would slow the fuzzer to a crawl
	}
	tw, th := max(1, img.width/3), max(1, img.height/3)
	out, err := resizeDCT(context.Background(), data, 50_000_000, img.width, img.height, tw, th, false)
	if errors.Is(err, errDCTUnsupported) {
		return // a sequential file in several scans is not streamed: the standard path takes it
	}
	if err != nil {
		t.Fatalf("streamed: %v (held: decoded)", err)
	}
	held, err := resizers(img, tw, th, false)
	if err != nil {
		t.Fatal(err)
	}
	for m := range img.mcuRows() {
		for _, p := range held {
			p.mcuRow(m)
		}
	}
	luma := out.(interface{ Bounds() stdimage.Rectangle })
	var y []byte
	switch o := out.(type) {
	case *stdimage.Gray:
		y = o.Pix
	case *stdimage.YCbCr:
		y = o.Y
	}
	if luma.Bounds() != held[0].out.Rect || !bytes.Equal(y, held[0].out.Pix) {
		t.Fatalf("streamed luma (%v) differs from the held coefficients' (%v)", luma.Bounds(), held[0].out.Rect)
	}
	var enc bytes.Buffer
	if err := encodeJPEG(&enc, out, 85); err != nil {
		t.Fatal(err)
	}
	back, err := jpeg.Decode(&enc)
	if err != nil || back.Bounds() != out.Bounds() {
		t.Fatalf("encodeJPEG wrote what image/jpeg reads as %v, %v", back, err)
	}
}

// TestPureDCTOrientation: turning the luma coefficients for each EXIF orientation gives exactly the
// image jpegtran's lossless transform gives (decoded by image/jpeg, both), the turned size, and a
// picture within rounding of the pixels turned (the IDCT is not exactly symmetric under transposes).
func TestPureDCTOrientation(t *testing.T) {
	data := readTestdata(t, "jpeg/m16.jpg")
	img, err := decodeDCT(context.Background(), data, 50_000_000, func(i int) bool { return i > 0 })
	if err != nil {
		t.Fatal(err)
	}
	upright := lumaOf(t, data)
	for o := orientation(2); o <= 8; o++ {
		c, w, h, q, err := img.orientComponent(0, o)
		if err != nil {
			t.Fatalf("orientation %d: %v", o, err)
		}
		var out bytes.Buffer
		if err := encodeGray(&out, c, w, h, q); err != nil {
			t.Fatal(err)
		}
		got := lumaOf(t, out.Bytes())
		oracle := lumaOf(t, readTestdata(t, fmt.Sprintf("jpeg/m16.orient%d.jpegtran-gray.jpg", o)))
		if !sameGray(got, oracle) {
			t.Errorf("orientation %d: differs from jpegtran's transform", o)
		}
		turned := orientImage(upright, o).(*stdimage.Gray)
		if got.Rect.Size() != turned.Rect.Size() {
			t.Fatalf("orientation %d: %v, want %v", o, got.Rect, turned.Rect)
		}
		if p := lumaPSNR(turned, got); p < 45 {
			t.Errorf("orientation %d: PSNR %.1f dB against the pixels turned", o, p)
		}
	}
	// 301×217 is not a whole number of blocks: flipping it cannot be lossless.
	odd, err := decodeDCT(context.Background(), readTestdata(t, "jpeg/s2x2.jpg"), 50_000_000, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []orientation{2, 3, 4, 6, 7, 8} {
		if _, _, _, _, err := odd.orientComponent(0, o); !errors.Is(err, errDCTUnsupported) {
			t.Errorf("orientation %d of a 301x217 image: %v", o, err)
		}
	}
	if _, _, _, _, err := odd.orientComponent(0, 5); err != nil {
		t.Errorf("a transpose needs no flip: %v", err)
	}
}

// TestPureDCTPathTurnsPhotos: a large photo stored sideways (EXIF orientation 6, 4224x3168 as stored)
// takes the DCT path and comes out portrait: every variant, the grayscale lossless.
func TestPureDCTPathTurnsPhotos(t *testing.T) {
	computeOnly(t)
	src := readTestdata(t, "large.jpg")
	// large.jpg with an EXIF segment declaring orientation 6, right after SOI.
	prefix := exifJPEG(tiffWithOrientation(binary.BigEndian, 6), false) // SOI, APP1, then an SOS to drop
	turned := append(prefix[:len(prefix)-4], src[2:]...)
	path := filepath.Join(t.TempDir(), "turned.jpg")
	os.WriteFile(path, turned, 0o600)
	sc, _ := newScratch(t.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	out, via, err := makeVariants(context.Background(), sc, path, "image/jpeg", processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: true})
	if err != nil || via != pathDCT {
		t.Fatalf("via %s: %v", via, err)
	}
	for _, v := range out {
		img := decodeTemp(t, v)
		if r := img.Bounds(); r.Dx() >= r.Dy() || r.Dx() != v.file.Width || r.Dy() != v.file.Height {
			t.Errorf("%s is %v (recorded %dx%d): want portrait", v.name, r, v.file.Width, v.file.Height)
		}
		if v.name == "grayscale" {
			want := orientImage(lumaOf(t, src), 6)
			if p := lumaPSNR(want, img); p < 45 {
				t.Errorf("grayscale: PSNR %.1f dB against the luma plane turned", p)
			}
		}
	}
}

// TestPureDCTQuarterScale: the 2×2 means computed from the coefficients equal 4×4 box averages of the
// full decode, within its rounding.
func TestPureDCTQuarterScale(t *testing.T) {
	computeOnly(t)
	for _, name := range []string{"mid.jpg", "jpeg/s1x1.jpg", "jpeg/s2x1.jpg", "jpeg/s4x1.jpg", "jpeg/gray.jpg"} {
		data := readTestdata(t, name)
		img, err := decodeDCT(context.Background(), data, 50_000_000, nil)
		if err != nil {
			t.Fatal(err)
		}
		q, err := img.quarterImage()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ref := boxShrink(decodeTestdata(t, name), 4)
		if q.Bounds() != ref.Bounds() {
			t.Fatalf("%s: %v, want %v", name, q.Bounds(), ref.Bounds())
		}
		p := lumaPSNR(ref, q)
		t.Logf("%s: 1/4 scale %v, luma PSNR %.1f dB against 4×4 means of the full decode", name, q.Bounds(), p)
		if p < 45 {
			t.Errorf("%s: PSNR %.1f dB", name, p)
		}
		if mr, mq := meanColour(ref), meanColour(q); math.Abs(mr[0]-mq[0])+math.Abs(mr[1]-mq[1])+math.Abs(mr[2]-mq[2]) > 3 {
			t.Errorf("%s: mean colour %v, want %v", name, mq, mr)
		}
	}
}

// TestPureDCTScaledPlanes: each n/8-scale luma plane from the coefficients has ceil(n/8) of the
// samples and the picture of the full decode: at 8/8 the decode itself, below it the full decode
// scaled down (an n-point IDCT of the lowest frequencies is not any one resampling filter, so the bar
// is a resemblance, not equality).
func TestPureDCTScaledPlanes(t *testing.T) {
	computeOnly(t)
	for _, name := range []string{"mid.jpg", "jpeg/s1x1.jpg", "jpeg/s2x1.jpg", "jpeg/s4x1.jpg", "jpeg/gray.jpg"} {
		img, err := decodeDCT(context.Background(), readTestdata(t, name), 50_000_000, nil)
		if err != nil {
			t.Fatal(err)
		}
		full := grayscale(decodeTestdata(t, name), false).(*stdimage.Gray)
		for n := 1; n <= 8; n++ {
			w, h := (img.width*n+7)/8, (img.height*n+7)/8
			r, err := img.newPlaneResizer(&img.comps[0], w, h)
			if err != nil {
				t.Fatalf("%s at %d/8: %v", name, n, err)
			}
			for by := range img.comps[0].bh {
				r.blockRow(by)
			}
			p := r.out
			ref := full
			if n < 8 {
				scaled := stdimage.NewGray(p.Rect)
				draw.CatmullRom.Scale(scaled, p.Rect, full, full.Rect, draw.Src, nil)
				ref = scaled
			}
			psnr, want := lumaPSNR(ref, p), 35.0
			if n == 8 {
				want = 60
			}
			t.Logf("%s at %d/8: %v, luma PSNR %.1f dB against the full decode's", name, n, p.Rect, psnr)
			if psnr < want {
				t.Errorf("%s at %d/8: PSNR %.1f dB, want %.0f", name, n, psnr, want)
			}
		}
	}
}

// checkHuffmanTable fails t unless BITS and HUFFVAL from optimalTable(freq) form a code JPEG allows:
// lengths 1–16, every symbol with a count present once, no code all ones, a prefix code (Kraft sum
// below 1), and no symbol given a longer code than a rarer one.
func checkHuffmanTable(t *testing.T, freq [256]int64) {
	t.Helper()
	counts, vals := optimalTable(freq)
	total, kraft := 0, 0.0
	for l, n := range counts {
		total += int(n)
		kraft += float64(n) / float64(uint64(1)<<(l+1))
	}
	used := 0
	for _, f := range freq {
		if f > 0 {
			used++
		}
	}
	if total != len(vals) || total != max(used, 0) {
		t.Fatalf("%d codes for %d values and %d symbols in use", total, len(vals), used)
	}
	if kraft >= 1 {
		t.Fatalf("Kraft sum %v: not a prefix code with the all-ones code free", kraft)
	}
	code := codes(counts, vals)
	seen := map[uint8]bool{}
	for _, v := range vals {
		if seen[v] || freq[v] == 0 {
			t.Fatalf("symbol %d listed twice or without a count", v)
		}
		seen[v] = true
		if size := code.size[v]; size < 1 || size > 16 || code.code[v] == 1<<size-1 {
			t.Fatalf("symbol %d: code %b of length %d", v, code.code[v], size)
		}
	}
	for _, a := range vals {
		for _, b := range vals {
			if freq[a] > freq[b] && code.size[a] > code.size[b] {
				t.Fatalf("symbol %d (count %d) has a longer code than %d (count %d)", a, freq[a], b, freq[b])
			}
		}
	}
}

// TestPureOptimalTableDeep: symbol counts that grow like the Fibonacci sequence make the Huffman tree
// as deep as there are symbols (far past 32 bits, which once indexed past an array and crashed the
// worker); the lengths still come out limited to 16.
func TestPureOptimalTableDeep(t *testing.T) {
	for _, n := range []int{17, 33, 40, 90, 256} {
		var freq [256]int64
		a, b := int64(1), int64(1)
		for i := range n {
			freq[i] = a
			a, b = b, min(a+b, 1<<50) // saturate (past 70 terms) so that no sum overflows
		}
		checkHuffmanTable(t, freq)
	}
	checkHuffmanTable(t, [256]int64{})       // no symbol at all
	checkHuffmanTable(t, [256]int64{7: 100}) // one symbol
}

// FuzzOptimalTable: for any symbol counts the code is one JPEG allows (checkHuffmanTable). Each pair
// of input bytes sets one symbol's count to a power of two plus a small part, so deep trees are easy
// to reach.
func FuzzOptimalTable(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 8})
	f.Add([]byte{0xFF, 40, 0xFE, 39, 0xFD, 38})
	f.Fuzz(func(t *testing.T, data []byte) {
		var freq [256]int64
		for i := 0; i+1 < len(data); i += 2 {
			freq[data[i]] = int64(1)<<(data[i+1]%48) + int64(data[i+1]>>6)
		}
		checkHuffmanTable(t, freq)
	})
}

// fibonacciComponent is a grayscale component whose AC symbols (run/size pairs) are coded with
// counts 2, 3, 5, 8… (the Fibonacci sequence) over nsym symbols, every block full to its 63rd
// coefficient but the last, whose one EOB makes the 1 that, with the encoder's reserved code, starts
// the sequence. Huffman's tree for such counts is a chain as deep as there are symbols: the crafted
// upload that once made the grayscale's optimal code longer than 32 bits.
func fibonacciComponent(nsym int) *dctComponent {
	type sym struct{ run, size int }
	var syms []sym // the most frequent first: runs of 0 use one position each
	for run := 0; run < 4 && len(syms) < nsym; run++ {
		for size := 1; size <= 10 && len(syms) < nsym; size++ {
			syms = append(syms, sym{run, size})
		}
	}
	left := make([]int64, len(syms))
	positions := int64(0)
	a, b := int64(2), int64(3)
	for i := range left {
		left[len(left)-1-i] = a
		positions += a * int64(syms[len(left)-1-i].run+1)
		a, b = b, a+b
	}
	w := 500
	h := int((positions + 63*int64(w) - 1) / (63 * int64(w)))
	c := &dctComponent{h: 1, v: 1, bw: w, bh: h, stride: w, coef: make([]int16, w*h*64), last: make([]uint8, w*h)}
	s := len(syms) - 1 // the rarest first; the most frequent fills every block (its count only grows)
	for blk := range w * h {
		coef := c.coef[blk*64:][:64]
		end := 63
		if blk == w*h-1 {
			end = 62 // the one block that ends early
		}
		for k := 1; k <= end; k++ {
			for s >= 0 && left[s] == 0 {
				s--
			}
			pick := s
			if s < 0 || k+syms[s].run > end {
				pick = 0
			}
			k += syms[pick].run
			coef[k] = int16(1) << (syms[pick].size - 1)
			c.last[blk] = uint8(k)
			left[pick]--
		}
	}
	return c
}

// TestPureGrayscaleOfFibonacciCounts: the crafted grayscale JPEG's coefficients re-encode (no panic),
// and the result decodes back to the very same coefficients.
func TestPureGrayscaleOfFibonacciCounts(t *testing.T) {
	computeOnly(t)
	c := fibonacciComponent(32) // 4000×3824 pixels; a 33-bit code before the length limit
	w, h := c.bw, c.bh
	var q [64]uint16
	for i := range q {
		q[i] = 1
	}
	var out bytes.Buffer
	if err := encodeGray(&out, c, w*8, h*8, q); err != nil {
		t.Fatal(err)
	}
	back, err := decodeDCT(context.Background(), out.Bytes(), 1<<30, nil)
	if err != nil {
		t.Fatalf("the grayscale does not decode: %v", err)
	}
	if !slices.Equal(back.comps[0].coef, c.coef) {
		t.Fatal("coefficients differ after the round trip")
	}
}

// TestPureDCTCorruptData: files the fuzzer corrupted (a progressive one's refinement scans, a baseline
// one's entropy-coded data) that image/jpeg and libjpeg read differently (by ±1 in places): the DCT
// path's grayscale equals libjpeg's (jpegtran -grayscale) bit for bit, which is the reference here,
// as it is for the files image/jpeg cannot read.
func TestPureDCTCorruptData(t *testing.T) {
	for _, name := range []string{"corrupt-refine", "corrupt-baseline"} {
		got := lumaOf(t, dctGray(t, readTestdata(t, "jpeg/"+name+".jpg")))
		if !sameGray(got, lumaOf(t, readTestdata(t, "jpeg/"+name+".jpegtran-gray.jpg"))) {
			t.Errorf("%s: grayscale differs from jpegtran -grayscale", name)
		}
	}
}

// encodeGrayJPEG (for tests) writes component ci of img (its coefficients unchanged) as a baseline,
// one-component JPEG of the component's size, with Huffman tables made for it. No metadata is written.
func (img *dctImage) encodeGrayJPEG(w io.Writer, ci int) error {
	c := &img.comps[ci]
	// The component's own size: for luma, the image's.
	width := (img.width*c.h + img.hmax - 1) / img.hmax
	height := (img.height*c.v + img.vmax - 1) / img.vmax
	return encodeGray(w, c, width, height, img.quant[c.tq])
}

// TestPureEncodeJPEG: what encodeJPEG writes decodes (image/jpeg) to the picture it was given, gray
// and colour, at sizes that are and are not whole MCUs, about as closely as image/jpeg's encoding at
// the same quality does, in fewer bytes, and more closely than image/jpeg's of the same bytes.
func TestPureEncodeJPEG(t *testing.T) {
	computeOnly(t)
	photo := decodeTestdata(t, "mid.jpg").(*stdimage.YCbCr)
	for _, size := range []stdimage.Point{{1280, 800}, {641, 399}, {17, 9}, {1, 1}} {
		r := stdimage.Rect(0, 0, size.X, size.Y)
		colour := stdimage.NewYCbCr(r, stdimage.YCbCrSubsampleRatio420)
		draw.CatmullRom.Scale(&ycbcrDrawer{colour}, r, photo, photo.Rect, draw.Src, nil)
		for _, img := range []stdimage.Image{colour, grayscale(colour, false)} {
			var ours, theirs bytes.Buffer
			if err := encodeJPEG(&ours, img, 85); err != nil {
				t.Fatal(err)
			}
			if err := jpeg.Encode(&theirs, img, &jpeg.Options{Quality: 85}); err != nil {
				t.Fatal(err)
			}
			back, err := jpeg.Decode(bytes.NewReader(ours.Bytes()))
			if err != nil {
				t.Fatalf("%v %T: %v", size, img, err)
			}
			if back.Bounds() != r {
				t.Fatalf("%v %T: decodes to %v", size, img, back.Bounds())
			}
			ref, err := jpeg.Decode(bytes.NewReader(theirs.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			p, pRef := lumaPSNR(img, back), lumaPSNR(img, ref)
			mi, mb := meanColour(img), meanColour(back)
			t.Logf("%v %T: %d bytes (image/jpeg %d), luma PSNR %.1f dB (image/jpeg %.1f), mean colour %.1f, was %.1f", size, img, ours.Len(), theirs.Len(), p, pRef, mb, mi)
			// The dead zone (acRounding) trades a little PSNR for bytes: a tenth of a dB at display
			// sizes; a few blocks (17×9) lose more of theirs.
			lose := 0.5
			if size.X < 100 {
				lose = 1
			}
			if p < pRef-lose || math.Abs(mi[0]-mb[0])+math.Abs(mi[1]-mb[1])+math.Abs(mi[2]-mb[2]) > 3 {
				t.Errorf("%v %T: PSNR %.1f dB (image/jpeg's %.1f), mean colour %.1f, want %.1f", size, img, p, pRef, mb, mi)
			}
			if size.X > 100 && ours.Len() > theirs.Len() {
				t.Errorf("%v %T: %d bytes, image/jpeg's %d", size, img, ours.Len(), theirs.Len())
			}
			if size.X > 100 {
				equalBytesPSNR(t, img, ours.Len(), p)
			}
		}
	}
}

// equalBytesPSNR checks that image/jpeg, at the highest quality whose file of img is no larger than
// ours (size bytes, PSNR p), decodes no closer to img: our file is at least as good for its bytes.
func equalBytesPSNR(t *testing.T, img stdimage.Image, size int, p float64) {
	t.Helper()
	for q := 85; q >= 30; q-- {
		var theirs bytes.Buffer
		jpeg.Encode(&theirs, img, &jpeg.Options{Quality: q})
		if theirs.Len() > size {
			continue
		}
		back, _ := jpeg.Decode(&theirs)
		if pq := lumaPSNR(img, back); pq > p {
			t.Errorf("%T: image/jpeg at quality %d is %.2f dB in %d bytes; ours %.2f dB in %d", img, q, pq, theirs.Len(), p, size)
		}
		return
	}
}

// ycbcrDrawer lets draw scale into a YCbCr image (converting each pixel).
type ycbcrDrawer struct{ *stdimage.YCbCr }

func (d *ycbcrDrawer) Set(x, y int, c color.Color) {
	r, g, b, _ := c.RGBA()
	yy, cb, cr := color.RGBToYCbCr(uint8(r>>8), uint8(g>>8), uint8(b>>8))
	d.Y[d.YOffset(x, y)], d.Cb[d.COffset(x, y)], d.Cr[d.COffset(x, y)] = yy, cb, cr
}
