package main

import (
	"bytes"
	"context"
	"encoding/binary"
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

// exifJPEG returns a minimal JPEG prefix (SOI, an optional APP0, APP1 with the given TIFF body, then
// SOS) for the orientation reader.
func exifJPEG(tiffBody []byte, withAPP0 bool) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xFF, 0xD8})
	if withAPP0 {
		b.Write([]byte{0xFF, 0xE0, 0x00, 0x10})
		b.Write([]byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"))
	}
	app1 := append([]byte("Exif\x00\x00"), tiffBody...)
	b.Write([]byte{0xFF, 0xE1})
	binary.Write(&b, binary.BigEndian, uint16(len(app1)+2))
	b.Write(app1)
	b.Write([]byte{0xFF, 0xDA, 0x00, 0x02})
	return b.Bytes()
}

// tiffWithOrientation is a TIFF header and one IFD holding a second tag and Orientation = v.
func tiffWithOrientation(bo binary.ByteOrder, v uint16) []byte {
	var b bytes.Buffer
	if bo == binary.LittleEndian {
		b.WriteString("II")
	} else {
		b.WriteString("MM")
	}
	binary.Write(&b, bo, uint16(42))
	binary.Write(&b, bo, uint32(8))
	binary.Write(&b, bo, uint16(2))
	// ImageDescription (ASCII) first, so the reader must walk past an entry.
	binary.Write(&b, bo, []uint16{0x010E, 2})
	binary.Write(&b, bo, []uint32{4, 0})
	binary.Write(&b, bo, []uint16{0x0112, 3})
	binary.Write(&b, bo, uint32(1))
	binary.Write(&b, bo, []uint16{v, 0})
	binary.Write(&b, bo, uint32(0))
	return b.Bytes()
}

func TestPureEXIFOrientation(t *testing.T) {
	for v := uint16(1); v <= 8; v++ {
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			for _, app0 := range []bool{false, true} {
				if got := exifOrientation(bytes.NewReader(exifJPEG(tiffWithOrientation(bo, v), app0))); got != orientation(v) {
					t.Errorf("orientation %d (%v, APP0 %v) read as %d", v, bo, app0, got)
				}
			}
		}
	}
	if got := exifOrientation(bytes.NewReader(readTestdata(t, "mid-orient6.jpg"))); got != 6 {
		t.Errorf("mid-orient6.jpg: %d, want 6", got)
	}
	for name, data := range map[string][]byte{
		"mid.jpg (EXIF without orientation)": readTestdata(t, "mid.jpg"),
		"empty":                              nil,
		"not a JPEG":                         []byte("GIF89a"),
		"orientation 9":                      exifJPEG(tiffWithOrientation(binary.BigEndian, 9), false),
		"orientation 0":                      exifJPEG(tiffWithOrientation(binary.BigEndian, 0), false),
		"bad byte order":                     exifJPEG(append([]byte("XX"), tiffWithOrientation(binary.BigEndian, 6)[2:]...), false),
		"IFD offset past the end":            exifJPEG([]byte("MM\x00\x2a\xff\xff\xff\xff"), false),
		"entry count past the end":           exifJPEG([]byte("MM\x00\x2a\x00\x00\x00\x08\xff\xff"), false),
		"truncated APP1":                     exifJPEG(tiffWithOrientation(binary.BigEndian, 6), false)[:20],
		"SOS before EXIF":                    append([]byte{0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02}, exifJPEG(tiffWithOrientation(binary.BigEndian, 6), false)[2:]...),
	} {
		if got := exifOrientation(bytes.NewReader(data)); got != 1 {
			t.Errorf("%s: %d, want 1", name, got)
		}
	}
	for o, want := range map[orientation]bool{1: false, 2: false, 3: false, 4: false, 5: true, 6: true, 7: true, 8: true} {
		if o.swapsAxes() != want {
			t.Errorf("orientation %d swapsAxes = %v", o, !want)
		}
	}
}

// FuzzEXIFOrientation: any input gives an orientation from 1 to 8, without panicking.
func FuzzEXIFOrientation(f *testing.F) {
	f.Add(exifJPEG(tiffWithOrientation(binary.LittleEndian, 6), true))
	f.Add(exifJPEG(tiffWithOrientation(binary.BigEndian, 8), false))
	f.Add(readTestdata(f, "mid-orient6.jpg")[:4096])
	f.Add([]byte{0xFF, 0xD8, 0xFF, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, data []byte) {
		if o := exifOrientation(bytes.NewReader(data)); o < 1 || o > 8 {
			t.Fatalf("orientation %d", o)
		}
	})
}

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

// TestPureOrientImage: each EXIF orientation maps the stored image's corners where the EXIF
// specification puts them when displayed.
func TestPureOrientImage(t *testing.T) {
	// 3×2, every pixel different: value = 10*y + x.
	src := stdimage.NewGray(stdimage.Rect(0, 0, 3, 2))
	for y := range 2 {
		for x := range 3 {
			src.SetGray(x, y, color.Gray{uint8(10*y + x)})
		}
	}
	// Displayed rows, top to bottom, for each orientation.
	want := map[orientation][][]uint8{
		1: {{0, 1, 2}, {10, 11, 12}},
		2: {{2, 1, 0}, {12, 11, 10}},
		3: {{12, 11, 10}, {2, 1, 0}},
		4: {{10, 11, 12}, {0, 1, 2}},
		5: {{0, 10}, {1, 11}, {2, 12}},
		6: {{10, 0}, {11, 1}, {12, 2}},
		7: {{12, 2}, {11, 1}, {10, 0}},
		8: {{2, 12}, {1, 11}, {0, 10}},
	}
	for o, rows := range want {
		got := orientImage(src, o)
		g, ok := got.(*stdimage.Gray)
		if !ok {
			t.Fatalf("orientation %d: %T", o, got)
		}
		if g.Rect.Dx() != len(rows[0]) || g.Rect.Dy() != len(rows) {
			t.Fatalf("orientation %d: %v", o, g.Rect)
		}
		for y, row := range rows {
			for x, v := range row {
				if g.GrayAt(x, y).Y != v {
					t.Errorf("orientation %d: (%d,%d) = %d, want %d", o, x, y, g.GrayAt(x, y).Y, v)
				}
			}
		}
	}
	// RGBA and paletted images turn the same way.
	rgba := toRGBA(src)
	if got := orientImage(rgba, 6).(*stdimage.RGBA); got.Rect.Dx() != 2 || got.RGBAAt(0, 0).R != 10 {
		t.Errorf("RGBA orientation 6: %v %v", got.Rect, got.RGBAAt(0, 0))
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
			b, _ := os.ReadFile(v.tmpPath)
			os.Remove(v.tmpPath)
			img, _, err := stdimage.Decode(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			m[v.name] = img
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
