package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/image/tiff"
)

// TestPureMemoryBudget: acquisitions wait their turn in order, never exceed the budget together, give
// up with their context, and one larger than the budget is refused outright.
func TestPureMemoryBudget(t *testing.T) {
	b := newMemoryBudget(100)
	if _, err := b.acquire(context.Background(), 101); !errors.Is(err, errOverBudget) {
		t.Fatalf("over the whole budget: %v", err)
	}
	release60, err := b.acquire(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	// A waiter that gives up leaves no trace.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if _, err := b.acquire(ctx, 50); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter: %v", err)
	}
	cancel()
	// In order: 50 waits for the 60 to go; 10 (which would fit) waits behind it.
	var wg sync.WaitGroup
	var peak, held atomic.Int64
	waiting := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.waiters)
	}
	for i, n := range []int64{50, 10} {
		wg.Go(func() {
			rel, err := b.acquire(context.Background(), n)
			if err != nil {
				t.Error(err)
				return
			}
			if h := held.Add(n); h > peak.Load() {
				peak.Store(h)
			}
			time.Sleep(5 * time.Millisecond)
			held.Add(-n)
			rel()
		})
		for waiting() != i+1 { // queue them in this order
			runtime.Gosched()
		}
	}
	if b.inUse() != 60 {
		t.Fatalf("in use %d while both wait: the small one jumped the queue", b.inUse())
	}
	release60()
	wg.Wait()
	if b.inUse() != 0 || peak.Load() > 100 {
		t.Fatalf("in use %d, peak %d", b.inUse(), peak.Load())
	}
}

// TestPureJobMemoryEstimate: for real photos and made files on both paths, the heap a job grows by at
// its peak stays within the estimate its header gives, and the estimate is not absurdly loose.
func TestPureJobMemoryEstimate(t *testing.T) {
	computeOnly(t)
	dir := t.TempDir()
	sc, err := newScratch(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	png16 := writeTempFile(t, "png16.png", png16Bomb(t, 1500, 1200))
	rgbJPEG := writeTempFile(t, "rgb.jpg", progressiveJPEG(1500, 1200, []byte("RGB"), false, 6))
	cmykJPEG := writeTempFile(t, "cmyk.jpg", progressiveJPEG(1500, 1200, []byte("CMYK"), true, 8))
	trnsPNG := writeTempFile(t, "trns.png", interlacedTRNSPNG(t, 1500, 1200))
	var honestTIFF bytes.Buffer
	tiff.Encode(&honestTIFF, tinyPhoto(1500, 1200), &tiff.Options{Compression: tiff.Deflate})
	tiffPath := writeTempFile(t, "photo.tiff", honestTIFF.Bytes())
	inflating := writeTempFile(t, "inflating.tiff", inflatingTIFF(t, 1500, 1200))
	for _, tc := range []struct {
		name, path string
		dct        bool
	}{
		{"large.jpg", filepath.Join("testdata", "large.jpg"), true},
		{"large-progressive.jpg", filepath.Join("testdata", "large-progressive.jpg"), false},
		{"mid-orient6.jpg", filepath.Join("testdata", "mid-orient6.jpg"), true},
		{"mid-orient6.jpg", filepath.Join("testdata", "mid-orient6.jpg"), false},
		{"photo.png", filepath.Join("testdata", "photo.png"), false},
		{"png16.png", png16, false},
		{"progressive RGB-coded .jpg", rgbJPEG, false},
		{"progressive RGB-coded .jpg", rgbJPEG, true}, // the DCT path decodes it, then refuses it
		{"progressive CMYK .jpg", cmykJPEG, false},
		{"progressive CMYK .jpg", cmykJPEG, true},
		{"interlaced 16-bit gray with tRNS .png", trnsPNG, false},
		{"one deflate strip .tiff", tiffPath, false},
		{"a strip inflating 8 bytes a pixel .tiff", inflating, false},
	} {
		name, path, dct := tc.name, tc.path, tc.dct
		ct := "image/jpeg"
		switch {
		case strings.HasSuffix(name, ".png"):
			ct = "image/png"
		case strings.HasSuffix(name, ".tiff"):
			ct = "image/tiff"
		}
		want, err := jobMemory(context.Background(), path, dct)
		if err != nil {
			t.Fatal(err)
		}
		stop := sampleHeap()
		outs, _, err := makeVariants(context.Background(), sc, path, ct, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		grew := stop()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, v := range outs {
			os.Remove(v.tmpPath)
		}
		est := float64(want) / (1 << 20)
		t.Logf("%s dct=%v: peak heap +%.1f MiB, estimate %.1f MiB", name, dct, grew, est)
		if grew > est {
			t.Errorf("%s dct=%v: the job grew the heap by %.1f MiB, over its estimate of %.1f MiB", name, dct, grew, est)
		}
		if est > 4*grew+float64(jobBaseBytes>>20) {
			t.Errorf("%s dct=%v: estimate %.1f MiB for a job of %.1f MiB: too loose to be useful", name, dct, est, grew)
		}
	}
}

// progressiveJPEG is a w×h progressive JPEG whose components are named ids (all sampled 1×1), with
// an Adobe APP14 of transform 0 when adobe is set: every coefficient zero, one interleaved DC scan,
// then acScans AC scans of 1–63, each one EOB run per component in turn. ids R, G, B make the
// decoder convert to RGBA at the end; four components, to CMYK.
func progressiveJPEG(w, h int, ids []byte, adobe bool, acScans int) []byte {
	var b bytes.Buffer
	seg := func(marker byte, body []byte) {
		b.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		b.Write(body)
	}
	b.Write([]byte{0xFF, 0xD8})
	if adobe {
		seg(0xEE, []byte{'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0})
	}
	q := make([]byte, 65)
	for i := 1; i < 65; i++ {
		q[i] = 8
	}
	seg(0xDB, q)
	sof := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(len(ids))}
	for _, id := range ids {
		sof = append(sof, id, 0x11, 0)
	}
	seg(0xC2, sof)
	// DC table 0: one code ("0") for category 0. AC table 0: one code ("0") for EOB14 (0xE0).
	dht := append([]byte{0x00, 1}, make([]byte, 15)...)
	dht = append(dht, 0x00, 0x10, 1)
	dht = append(dht, make([]byte, 15)...)
	dht = append(dht, 0xE0)
	seg(0xC4, dht)
	blocks := ((w + 7) / 8) * ((h + 7) / 8)
	sos := []byte{byte(len(ids))}
	for _, id := range ids {
		sos = append(sos, id, 0x00)
	}
	seg(0xDA, append(sos, 0, 0, 0))
	var bits bitWriter
	for range blocks * len(ids) { // every block's DC difference is 0: one bit each
		bits.put(0, 1)
	}
	b.Write(bits.flush())
	var ac bitWriter
	for left := blocks; left > 0; {
		n := min(left, 1<<15-1)
		ac.put(0, 1)
		ac.put(uint32(n-1<<14), 14)
		left -= n
	}
	acData := ac.flush()
	for i := range acScans {
		seg(0xDA, []byte{1, ids[i%len(ids)], 0x00, 1, 63, 0})
		b.Write(acData)
	}
	b.Write([]byte{0xFF, 0xD9})
	return b.Bytes()
}

// interlacedTRNSPNG is a w×h 16-bit gray, Adam7-interlaced PNG with a tRNS chunk, all zero: its
// DecodeConfig says Gray16 (2 bytes a pixel), the decoder returns NRGBA64 (8), and holds each pass
// besides.
func interlacedTRNSPNG(t testing.TB, w, h int) []byte {
	n := 0
	for _, p := range [7][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}} {
		if pw, ph := (w-p[0]+p[2]-1)/p[2], (h-p[1]+p[3]-1)/p[3]; pw > 0 && ph > 0 {
			n += ph * (1 + 2*pw) // a filter byte (0), then the samples (0)
		}
	}
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, uint32(w))
	ihdr = binary.BigEndian.AppendUint32(ihdr, uint32(h))
	pngChunk(&b, "IHDR", append(ihdr, 16, 0, 0, 0, 1)) // 16-bit gray, interlaced
	pngChunk(&b, "tRNS", []byte{0, 7})
	pngChunk(&b, "IDAT", zlibZeros(t, n))
	pngChunk(&b, "IEND", nil)
	return b.Bytes()
}

// inflatingTIFF is a w×h 8-bit RGB TIFF of one deflate strip whose stream inflates to w×h×8 bytes,
// far past the w×h×3 the image needs: x/image/tiff reads it all, into a buffer that doubles.
func inflatingTIFF(t testing.TB, w, h int) []byte {
	data := zlibZeros(t, w*h*8)
	type entry struct {
		tag, typ uint16
		val      uint32
	}
	const ifdAt, entries = 8, 10
	bpsAt := uint32(ifdAt + 2 + 12*entries + 4) // BitsPerSample's three SHORTs, after the IFD
	dataAt := bpsAt + 6
	ifd := []entry{
		{256, 4, uint32(w)}, {257, 4, uint32(h)}, {258, 3, bpsAt}, {259, 3, 8}, {262, 3, 2},
		{273, 4, dataAt}, {277, 3, 3}, {278, 4, uint32(h)}, {279, 4, uint32(len(data))}, {284, 3, 1},
	}
	bo := binary.LittleEndian
	out := []byte{'I', 'I', 42, 0, ifdAt, 0, 0, 0}
	out = bo.AppendUint16(out, entries)
	for _, e := range ifd {
		count := uint32(1)
		if e.tag == 258 {
			count = 3
		}
		out = bo.AppendUint16(out, e.tag)
		out = bo.AppendUint16(out, e.typ)
		out = bo.AppendUint32(out, count)
		if e.typ == 3 && count == 1 {
			out = bo.AppendUint16(out, uint16(e.val))
			out = append(out, 0, 0)
		} else {
			out = bo.AppendUint32(out, e.val)
		}
	}
	out = bo.AppendUint32(out, 0) // no next IFD
	out = append(out, 8, 0, 8, 0, 8, 0)
	return append(out, data...)
}

// tinyPhoto is a w×h RGBA image with some texture, for encoders to work on.
func tinyPhoto(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i*7 + i/4096)
	}
	return img
}
