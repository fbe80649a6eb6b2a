package main

import (
	"bytes"
	"context"
	stdimage "image"
	"image/color"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/image/draw"
)

// naiveJob is the baseline the fast paths are measured against: decode, then for each thumbnail a
// Catmull-Rom scale of the whole original into *image.RGBA, and a per-pixel grayscale through
// color.GrayModel; the same encoders.
func naiveJob(path, contentType string, quality int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	src, _, err := stdimage.Decode(f)
	f.Close()
	if err != nil {
		return err
	}
	out := outputType(contentType)
	b := src.Bounds()
	for _, box := range []int{500, 100} {
		w, h := box, b.Dy()*box/b.Dx()
		if b.Dy() > b.Dx() {
			w, h = b.Dx()*box/b.Dy(), box
		}
		dst := stdimage.NewRGBA(stdimage.Rect(0, 0, w, h))
		draw.CatmullRom.Scale(dst, dst.Rect, src, b, draw.Src, nil)
		if err := encodeImage(io.Discard, dst, out, quality); err != nil {
			return err
		}
	}
	gray := stdimage.NewGray(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			gray.Set(x, y, color.GrayModel.Convert(src.At(x, y)))
		}
	}
	return encodeImage(io.Discard, gray, out, quality)
}

// BenchmarkProcess measures the whole job — decode, orient, both thumbnails, grayscale, every
// encode — with our pipeline and with the naive baseline, on real photos. Run it with -cpu 1,2; for
// process-peak-RSS-MiB to speak for one case, select just that case (-bench 'Process/large.jpg/pipeline').
func BenchmarkProcess(b *testing.B) {
	sc, err := newScratch(b.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ file, contentType string }{
		{"large.jpg", "image/jpeg"},
		{"large-progressive.jpg", "image/jpeg"},
		{"mid.jpg", "image/jpeg"},
		{"photo.png", "image/png"},
	} {
		path := filepath.Join("testdata", tc.file)
		for _, p := range []struct {
			name string
			dct  bool
		}{{"standard", false}, {"dct", true}} {
			if p.dct && tc.contentType != "image/jpeg" {
				continue
			}
			b.Run(tc.file+"/"+p.name, func(b *testing.B) {
				b.ReportAllocs()
				stop := sampleHeap()
				for b.Loop() {
					out, via, err := makeVariants(context.Background(), sc, path, tc.contentType, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: p.dct})
					if err != nil {
						b.Fatal(err)
					}
					if p.dct && via != pathDCT {
						b.Fatalf("went the %s way", via)
					}
					for _, v := range out {
						os.Remove(v.tmpPath)
					}
				}
				b.ReportMetric(stop(), "peak-heap-MiB")
				b.ReportMetric(peakRSSMiB(), "process-peak-RSS-MiB")
			})
		}
		b.Run(tc.file+"/naive", func(b *testing.B) {
			b.ReportAllocs()
			stop := sampleHeap()
			for b.Loop() {
				if err := naiveJob(path, tc.contentType, 85); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(stop(), "peak-heap-MiB")
			b.ReportMetric(peakRSSMiB(), "process-peak-RSS-MiB")
		})
	}
}

// lumaPSNR is the peak signal-to-noise ratio of b's luma against a's (same size), in dB. Luma, because
// Go's JPEG encoder always subsamples chroma 4:2:0, which no resizing choice changes.
func lumaPSNR(a, b stdimage.Image) float64 {
	r := a.Bounds()
	var sum float64
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			ya := color.GrayModel.Convert(a.At(x, y)).(color.Gray).Y
			yb := color.GrayModel.Convert(b.At(x-r.Min.X+b.Bounds().Min.X, y-r.Min.Y+b.Bounds().Min.Y)).(color.Gray).Y
			d := float64(ya) - float64(yb)
			sum += d * d
		}
	}
	if sum == 0 {
		return 99
	}
	return 10 * math.Log10(255*255/(sum/float64(r.Dx()*r.Dy())))
}

// meanColour is the average R, G and B of img.
func meanColour(img stdimage.Image) [3]float64 {
	r := img.Bounds()
	var m [3]float64
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			m[0], m[1], m[2] = m[0]+float64(c.R), m[1]+float64(c.G), m[2]+float64(c.B)
		}
	}
	n := float64(r.Dx() * r.Dy())
	return [3]float64{m[0] / n, m[1] / n, m[2] / n}
}

// decodeTestdata decodes a file from testdata/.
func decodeTestdata(t testing.TB, name string) stdimage.Image {
	t.Helper()
	img, _, err := stdimage.Decode(bytes.NewReader(readTestdata(t, name)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestPureVariantsLookRight: thumbnails keep the picture and its colours (PSNR against a Catmull-Rom
// scale of the whole decoded original), a turned photo comes out upright (its thumbnail matches the
// upright photo's, rotated), and the grayscale of a JPEG is exactly its luma plane.
func TestPureVariantsLookRight(t *testing.T) {
	computeOnly(t)
	for _, dct := range []bool{false, true} {
		t.Run(map[bool]string{false: "standard", true: "dct"}[dct], func(t *testing.T) { testVariantsLookRight(t, dct) })
	}
}

func testVariantsLookRight(t *testing.T, dct bool) {
	sc, _ := newScratch(t.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	variants := func(file, ct string) map[string]stdimage.Image {
		out, via, err := makeVariants(context.Background(), sc, filepath.Join("testdata", file), ct, processOptions{jpegQuality: 95, maxPixels: 50_000_000, dct: dct})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: the %s path", file, via)
		m := map[string]stdimage.Image{}
		for _, v := range out {
			m[v.name] = decodeTemp(t, v)
		}
		return m
	}
	for _, tc := range []struct{ file, ct string }{{"mid.jpg", "image/jpeg"}, {"large.jpg", "image/jpeg"}, {"photo.png", "image/png"}} {
		src := decodeTestdata(t, tc.file)
		got := variants(tc.file, tc.ct)
		for _, name := range []string{"thumb_500", "thumb_100"} {
			th := got[name]
			ref := stdimage.NewRGBA(th.Bounds())
			draw.CatmullRom.Scale(ref, ref.Rect, src, src.Bounds(), draw.Src, nil)
			p := lumaPSNR(ref, th)
			t.Logf("%s %s: luma PSNR %.1f dB against a full-decode Catmull-Rom reference", tc.file, name, p)
			if p < 35 {
				t.Errorf("%s %s: luma PSNR %.1f dB, want ≥ 35", tc.file, name, p)
			}
			mr, mt := meanColour(ref), meanColour(th)
			for c := range 3 {
				if math.Abs(mr[c]-mt[c]) > 3 {
					t.Errorf("%s %s: mean colour %v, reference %v", tc.file, name, mt, mr)
					break
				}
			}
		}
		if y, ok := src.(*stdimage.YCbCr); ok {
			// The standard path re-encodes the luma plane at quality 95: near it, not equal (its
			// output before encoding is the plane itself, checked below). The DCT path is lossless.
			luma := &stdimage.Gray{Pix: y.Y, Stride: y.YStride, Rect: y.Rect}
			if p := lumaPSNR(luma, got["grayscale"]); p < 40 || dct && p != 99 {
				t.Errorf("%s grayscale: PSNR %.1f dB against the luma plane", tc.file, p)
			}
		}
	}
	if g, ok := grayscale(decodeTestdata(t, "mid.jpg"), false).(*stdimage.Gray); !ok {
		t.Error("a JPEG's grayscale is not its luma plane")
	} else if y := decodeTestdata(t, "mid.jpg").(*stdimage.YCbCr); !bytes.Equal(g.Pix, y.Y) {
		t.Error("a JPEG's grayscale differs from its luma plane")
	}
	// Orientation 6: the stored pixels are mid.jpg's; displayed, they are mid.jpg turned clockwise.
	upright := variants("mid.jpg", "image/jpeg")["thumb_500"]
	turned := variants("mid-orient6.jpg", "image/jpeg")["thumb_500"]
	if b := turned.Bounds(); b.Dx() != upright.Bounds().Dy() || b.Dy() != upright.Bounds().Dx() {
		t.Fatalf("turned thumbnail %v, upright %v", b, upright.Bounds())
	}
	if p := lumaPSNR(orientImage(toRGBA(upright), 6), turned); p < 35 {
		t.Errorf("orientation 6 thumbnail is not the upright one turned clockwise: PSNR %.1f dB", p)
	}
	// Transparency survives in the PNG's grayscale, pixel for pixel.
	png := decodeTestdata(t, "photo.png").(*stdimage.NRGBA)
	gray := variants("photo.png", "image/png")["grayscale"].(*stdimage.NRGBA)
	for i := 3; i < len(png.Pix); i += 4 * 997 {
		if png.Pix[i] != gray.Pix[i] {
			t.Fatalf("alpha at byte %d: %d, want %d", i, gray.Pix[i], png.Pix[i])
		}
	}
}

// TestPureGrayscaleInPlace: converting over the decoded pixels gives exactly what a fresh buffer gives,
// for every wide type a decoder returns, opaque and translucent.
func TestPureGrayscaleInPlace(t *testing.T) {
	r := stdimage.Rect(0, 0, 37, 23)
	fill := func(set func(x, y int, c color.Color), alpha bool) {
		for y := range r.Dy() {
			for x := range r.Dx() {
				a := uint16(0xffff)
				if alpha {
					a = uint16((x * 7919) % 0x10000)
				}
				c := color.NRGBA64{uint16(x * 1771), uint16(y * 2903), uint16((x + y) * 997), a}
				set(x, y, c)
			}
		}
	}
	makers := map[string]func(alpha bool) stdimage.Image{
		"NRGBA":   func(a bool) stdimage.Image { m := stdimage.NewNRGBA(r); fill(m.Set, a); return m },
		"RGBA":    func(a bool) stdimage.Image { m := stdimage.NewRGBA(r); fill(m.Set, a); return m },
		"NRGBA64": func(a bool) stdimage.Image { m := stdimage.NewNRGBA64(r); fill(m.Set, a); return m },
		"RGBA64":  func(a bool) stdimage.Image { m := stdimage.NewRGBA64(r); fill(m.Set, a); return m },
		"Gray16":  func(a bool) stdimage.Image { m := stdimage.NewGray16(r); fill(m.Set, a); return m },
		"CMYK":    func(a bool) stdimage.Image { m := stdimage.NewCMYK(r); fill(m.Set, a); return m },
	}
	for name, mk := range makers {
		for _, alpha := range []bool{false, true} {
			want := grayscale(mk(alpha), false)
			got := grayscale(mk(alpha), true)
			if got.Bounds() != want.Bounds() {
				t.Fatalf("%s alpha=%v: bounds %v, want %v", name, alpha, got.Bounds(), want.Bounds())
			}
			for y := range r.Dy() {
				for x := range r.Dx() {
					g, w := color.NRGBAModel.Convert(got.At(x, y)).(color.NRGBA), color.NRGBAModel.Convert(want.At(x, y)).(color.NRGBA)
					if g != w || g.R != g.G || g.G != g.B {
						t.Fatalf("%s alpha=%v (%d,%d): %v, want %v (gray)", name, alpha, x, y, g, w)
					}
				}
			}
		}
	}
}
