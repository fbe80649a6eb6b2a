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

func TestEXIFOrientation(t *testing.T) {
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
	blobs, err := newBlobStore(b.TempDir(), time.Hour, slog.New(slog.NewJSONHandler(io.Discard, nil)))
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
		b.Run(tc.file+"/pipeline", func(b *testing.B) {
			b.ReportAllocs()
			stop := sampleHeap()
			for b.Loop() {
				out, err := makeVariants(context.Background(), blobs, path, tc.contentType, processOptions{jpegQuality: 85, maxPixels: 50_000_000})
				if err != nil {
					b.Fatal(err)
				}
				for _, v := range out {
					os.Remove(v.tmpPath)
				}
			}
			b.ReportMetric(stop(), "peak-heap-MiB")
			b.ReportMetric(peakRSSMiB(), "process-peak-RSS-MiB")
		})
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
