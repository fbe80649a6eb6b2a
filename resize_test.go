package main

import (
	"context"
	stdimage "image"
	"image/color"
	stddraw "image/draw"
	"runtime"
	"testing"

	"golang.org/x/image/draw"
)

// TestPureResizeRows: resizeRows makes what boxShrink and x/image/draw's Catmull-Rom make (the
// standard path's scale before it), for each kind of source and for reductions from none to 30×, in
// far less memory than Catmull-Rom's buffer; and it stops when its context is done.
func TestPureResizeRows(t *testing.T) {
	photo := decodeTestdata(t, "mid.jpg").(*stdimage.YCbCr) // 2560×1600
	r := photo.Rect
	rgba := stdimage.NewRGBA(r)
	stddraw.Draw(rgba, r, photo, r.Min, stddraw.Src)
	nrgba := stdimage.NewNRGBA(r)
	stddraw.Draw(nrgba, r, photo, r.Min, stddraw.Src)
	for i := 3; i < len(nrgba.Pix); i += 4 {
		nrgba.Pix[i] = uint8(i / 4 % 256) // translucent: premultiplied on the way
	}
	gray := grayscale(photo, false)
	sub := rgba.SubImage(stdimage.Rect(100, 50, 2000, 1500))
	least := 100.0
	for _, tc := range []struct {
		name string
		src  stdimage.Image
	}{{"ycbcr", photo}, {"rgba", rgba}, {"nrgba", nrgba}, {"gray", gray}, {"rgba-sub", sub},
		{"ycbcr-sub", photo.SubImage(stdimage.Rect(101, 51, 2001, 1501))}} {
		for _, w := range []int{2000, 1280, 641, 160, 80} {
			b := tc.src.Bounds()
			if w >= b.Dx() {
				continue
			}
			h := max(1, (b.Dy()*w+b.Dx()/2)/b.Dx())
			got, err := resizeRows(context.Background(), tc.src, w, h)
			if err != nil {
				t.Fatal(err)
			}
			want := catmullRomReference(tc.src, w, h)
			if got.Bounds() != want.Bounds() {
				t.Fatalf("%s w%d: %v, want %v", tc.name, w, got.Bounds(), want.Bounds())
			}
			p := lumaPSNR(want, got)
			least = min(least, p)
			if p < 40 || maxAlphaDiff(want, got) > 2 {
				t.Errorf("%s w%d: %.1f dB luma PSNR against Catmull-Rom, alpha off by %d", tc.name, w, p, maxAlphaDiff(want, got))
			}
			if _, isGray := tc.src.(*stdimage.Gray); isGray != (got.ColorModel() == color.GrayModel) {
				t.Errorf("%s w%d: a %T", tc.name, w, got)
			}
		}
	}
	t.Logf("luma PSNR against Catmull-Rom: at least %.1f dB", least)
	// Memory: the rows only (the output aside), against the bound resizeRowsBytes gives.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	out, _ := resizeRows(context.Background(), rgba, 2000, 1250)
	runtime.ReadMemStats(&after)
	grown := int64(after.TotalAlloc-before.TotalAlloc) - int64(len(out.(*stdimage.RGBA).Pix))
	if bound := resizeRowsBytes(2560, 1600, 2000, 1250); grown > bound || bound > 4<<20 {
		t.Errorf("resizeRows allocated %d bytes beside its output; bound %d", grown, bound)
	}
	t.Logf("2560×1600 RGBA → 2000×1250: %d bytes beside the output (bound %d; Catmull-Rom's buffer: %d)", grown, resizeRowsBytes(2560, 1600, 2000, 1250), 2000*1600*32)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := resizeRows(ctx, rgba, 640, 400); err == nil {
		t.Error("a cancelled resize finished")
	}
}

// catmullRomReference is what the standard path made before resizeRows: boxShrink to within twice
// the size, then x/image/draw's Catmull-Rom into RGBA (Gray for a Gray source).
func catmullRomReference(src stdimage.Image, w, h int) stdimage.Image {
	b := src.Bounds()
	if k := preShrink(b.Dx(), b.Dy(), w, h); k >= 2 {
		src = boxShrink(src, k)
	}
	var dst draw.Image = stdimage.NewRGBA(stdimage.Rect(0, 0, w, h))
	if _, ok := src.(*stdimage.Gray); ok {
		dst = stdimage.NewGray(stdimage.Rect(0, 0, w, h))
	}
	draw.CatmullRom.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Src, nil)
	return dst
}

// maxAlphaDiff is the largest difference between a's and b's alpha.
func maxAlphaDiff(a, b stdimage.Image) int {
	most := 0
	r := a.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			_, _, _, aa := a.At(x, y).RGBA()
			_, _, _, ba := b.At(x, y).RGBA()
			most = max(most, int(aa>>8)-int(ba>>8), int(ba>>8)-int(aa>>8))
		}
	}
	return most
}
