package main

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	stdimage "image"
	"image/color"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// The hostile corpus: files an attacker would upload, made here by the tests (nothing large is
// committed). Each is small on the wire and expensive to the careless.

// progressiveGrayJPEG is a valid w×h one-component progressive JPEG of one DC scan and acScans AC
// scans of the whole band (1–63), each coded as EOB runs: a few bytes, yet every scan walks every
// block. With acScans large it is the scan bomb; with 999 a legitimate (if odd) 1000-scan file.
func progressiveGrayJPEG(w, h, acScans int) []byte {
	var b bytes.Buffer
	seg := func(marker byte, body []byte) {
		b.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		b.Write(body)
	}
	b.Write([]byte{0xFF, 0xD8})
	q := make([]byte, 65)
	for i := 1; i < 65; i++ {
		q[i] = 8
	}
	seg(0xDB, q)
	seg(0xC2, []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 1, 1, 0x11, 0})
	// DC table 0: one code ("0") for category 0. AC table 0: one code ("0") for EOB14 (0xE0).
	dht := append([]byte{0x00, 1}, make([]byte, 15)...)
	dht = append(dht, 0x00)
	dht = append(dht, 0x10, 1)
	dht = append(dht, make([]byte, 15)...)
	dht = append(dht, 0xE0)
	seg(0xC4, dht)
	blocks := ((w + 7) / 8) * ((h + 7) / 8)
	var bits bitWriter
	// DC first scan: every block's difference is 0 (one bit each).
	seg(0xDA, []byte{1, 1, 0x00, 0, 0, 0})
	for range blocks {
		bits.put(0, 1)
	}
	b.Write(bits.flush())
	// AC first scans: runs of up to 32767 blocks, EOB14 and 14 bits each.
	var ac bitWriter
	for left := blocks; left > 0; {
		n := min(left, 1<<15-1)
		ac.put(0, 1)
		ac.put(uint32(n-1<<14), 14)
		left -= n
	}
	acData := ac.flush()
	for range acScans {
		seg(0xDA, []byte{1, 1, 0x00, 1, 63, 0})
		b.Write(acData)
	}
	b.Write([]byte{0xFF, 0xD9})
	return b.Bytes()
}

// bitWriter packs bits MSB first with JPEG's 0xFF stuffing; flush pads with ones.
type bitWriter struct {
	out  []byte
	acc  uint64
	nacc uint
}

func (w *bitWriter) put(v uint32, n uint) {
	w.acc = w.acc<<n | uint64(v)&(1<<n-1)
	w.nacc += n
	for w.nacc >= 8 {
		w.nacc -= 8
		c := byte(w.acc >> w.nacc)
		w.out = append(w.out, c)
		if c == 0xFF {
			w.out = append(w.out, 0)
		}
	}
}

func (w *bitWriter) flush() []byte {
	if w.nacc > 0 {
		w.put(1<<(8-w.nacc)-1, 8-w.nacc)
	}
	out := w.out
	*w = bitWriter{}
	return out
}

// pngChunk appends a PNG chunk with its CRC.
func pngChunk(b *bytes.Buffer, typ string, data []byte) {
	binary.Write(b, binary.BigEndian, uint32(len(data)))
	b.WriteString(typ)
	b.Write(data)
	binary.Write(b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}

// png16Bomb is a w×h 16-bit RGBA PNG of transparent black: a few hundred KiB that decode to 8
// bytes a pixel. Written row by row, so making it costs no memory.
func png16Bomb(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 16, 6 // 16-bit, RGBA
	pngChunk(&b, "IHDR", ihdr)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	row := make([]byte, 1+8*w) // filter 0, then zeros
	for range h {
		if _, err := zw.Write(row); err != nil {
			t.Fatal(err)
		}
	}
	zw.Close()
	pngChunk(&b, "IDAT", z.Bytes())
	pngChunk(&b, "IEND", nil)
	return b.Bytes()
}

// hugeChunkPNG is a 1000×1000 PNG header followed by a chunk declaring 2 GiB and holding nothing.
func hugeChunkPNG() []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, 1000)
	binary.BigEndian.PutUint32(ihdr[4:], 1000)
	ihdr[8], ihdr[9] = 8, 6
	pngChunk(&b, "IHDR", ihdr)
	binary.Write(&b, binary.BigEndian, uint32(0x7FFFFFF0))
	b.WriteString("tEXt")
	b.WriteString("Comment\x00not nearly 2 GiB")
	return b.Bytes()
}

// promiseJPEG is mid.jpg's headers with its frame declaring w×h, cut a little into the scan: the
// header promises far more than the data holds.
func promiseJPEG(t testing.TB, w, h int) []byte {
	data := bytes.Clone(readTestdata(t, "mid.jpg"))
	i := bytes.Index(data, []byte{0xFF, 0xC0})
	if i < 0 {
		t.Fatal("mid.jpg has no SOF0")
	}
	binary.BigEndian.PutUint16(data[i+5:], uint16(h))
	binary.BigEndian.PutUint16(data[i+7:], uint16(w))
	sos := bytes.Index(data, []byte{0xFF, 0xDA})
	return data[:sos+2000]
}

// hugeFrameGIF is a w×h GIF (one frame as large as the screen) whose image data stops after a
// few codes: the decoder must not trust the header's size.
func hugeFrameGIF(w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("GIF89a")
	binary.Write(&b, binary.LittleEndian, uint16(w))
	binary.Write(&b, binary.LittleEndian, uint16(h))
	b.Write([]byte{0x80, 0, 0}) // global colour table of 2 entries
	b.Write([]byte{0, 0, 0, 255, 255, 255})
	b.WriteByte(0x2C) // image descriptor
	binary.Write(&b, binary.LittleEndian, uint16(0))
	binary.Write(&b, binary.LittleEndian, uint16(0))
	binary.Write(&b, binary.LittleEndian, uint16(w))
	binary.Write(&b, binary.LittleEndian, uint16(h))
	b.WriteByte(0)
	b.WriteByte(2)                 // LZW minimum code size
	b.Write([]byte{2, 0x44, 0x01}) // a couple of codes
	b.WriteByte(0)                 // end of data
	b.WriteByte(0x3B)
	return b.Bytes()
}

// fibonacciJPEG is the crafted grayscale baseline JPEG whose AC symbol counts grow like the
// Fibonacci sequence (fibonacciComponent), as an uploaded file.
func fibonacciJPEG(t testing.TB) []byte {
	c := fibonacciComponent(32)
	var q [64]uint16
	for i := range q {
		q[i] = 1
	}
	var out bytes.Buffer
	if err := encodeGray(&out, c, c.bw*8, c.bh*8, q); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// writeTemp writes data to a file in a temp dir and returns its path.
func writeTempFile(t testing.TB, name string, data []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestScanJPEG: the scan count and frame layout of real and made files, and the limit.
func TestScanJPEG(t *testing.T) {
	for _, tc := range []struct {
		name        string
		data        []byte
		scans       int
		progressive bool
		samples     float64
	}{
		{"large.jpg", readTestdata(t, "large.jpg"), 1, false, 2},
		{"mid.jpg", readTestdata(t, "mid.jpg"), 1, false, 1.5},
		{"large-progressive.jpg", readTestdata(t, "large-progressive.jpg"), 10, true, 2},
		{"progressive-gray.jpg", readTestdata(t, "jpeg/progressive-gray.jpg"), 6, true, 1},
		{"s1x1.jpg", readTestdata(t, "jpeg/s1x1.jpg"), 1, false, 3},
		{"1000 scans", progressiveGrayJPEG(64, 64, 999), 1000, true, 1},
	} {
		lay, err := scanJPEG(bytes.NewReader(tc.data))
		if err != nil || lay.scans != tc.scans || lay.progressive != tc.progressive || lay.samples != tc.samples {
			t.Errorf("%s: %+v, %v; want %d scans, progressive %v, %v samples", tc.name, lay, err, tc.scans, tc.progressive, tc.samples)
		}
	}
	if _, err := scanJPEG(bytes.NewReader(progressiveGrayJPEG(64, 64, 1000))); !errors.Is(err, errTooManyScans) {
		t.Errorf("1001 scans: %v, want errTooManyScans", err)
	}
}

// TestDecodersRefuseTooManyScans: neither path decodes a file of too many scans, and the refusal is
// the user's to read; a file at the limit decodes on both.
func TestDecodersRefuseTooManyScans(t *testing.T) {
	ctx := context.Background()
	blobs, err := newBlobStore(t.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	bomb := progressiveGrayJPEG(2048, 1024, 1500)
	if _, err := decodeDCT(ctx, bomb, 50_000_000, nil); !errors.Is(err, errTooManyScans) {
		t.Errorf("DCT path: %v, want errTooManyScans", err)
	}
	path := writeTempFile(t, "bomb.jpg", bomb)
	for _, dct := range []bool{true, false} {
		_, _, err := makeVariants(ctx, blobs, path, "image/jpeg", processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		var ie *imageError
		if !errors.As(err, &ie) || !errors.Is(err, errTooManyScans) {
			t.Errorf("dct=%v: %v, want the scan limit as the image's error", dct, err)
		}
	}
	ok := writeTempFile(t, "ok.jpg", progressiveGrayJPEG(2048, 1024, 999))
	for _, dct := range []bool{true, false} {
		outs, _, err := makeVariants(ctx, blobs, ok, "image/jpeg", processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		if err != nil {
			t.Errorf("dct=%v: a file of 1000 scans: %v", dct, err)
		}
		for _, v := range outs {
			os.Remove(v.tmpPath)
		}
	}
}

// TestDecodersStopWhenCancelled: a job whose context has ended stops in either path with the
// context's error, and leaves no temp file.
func TestDecodersStopWhenCancelled(t *testing.T) {
	dir := t.TempDir()
	blobs, err := newBlobStore(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := decodeDCT(ctx, readTestdata(t, "large.jpg"), 50_000_000, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("decodeDCT: %v", err)
	}
	for _, name := range []string{"large.jpg", "large-progressive.jpg", "photo.png"} {
		ct := "image/jpeg"
		if filepath.Ext(name) == ".png" {
			ct = "image/png"
		}
		for _, dct := range []bool{true, false} {
			_, _, err := makeVariants(ctx, blobs, filepath.Join("testdata", name), ct, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s dct=%v: %v, want context.Canceled", name, dct, err)
			}
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(left) != 0 {
		t.Errorf("%d temp files left", len(left))
	}
}

// TestGrayscaleInPlace: converting over the decoded pixels gives exactly what a fresh buffer gives,
// for every wide type a decoder returns, opaque and translucent.
func TestGrayscaleInPlace(t *testing.T) {
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
