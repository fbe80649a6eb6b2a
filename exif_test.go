package main

import (
	"bytes"
	"encoding/binary"
	stdimage "image"
	"image/color"
	"testing"
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
