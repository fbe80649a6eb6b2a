// Resampling of 8-bit planes (a Gray image, or one plane of a YCbCr one) to any size with a
// Catmull-Rom filter widened by the reduction, as image/draw's kernel scaler does it, but in integer
// arithmetic on precomputed taps, one axis at a time (the way libvips and Pillow resample): the
// display sizes' scale step.
package main

import (
	"image"
	"math"
)

// tapBits is the weights' precision: each set of taps sums to 1<<tapBits.
const tapBits = 14

// axisTaps maps an axis of src samples onto dst: output i is the sum over k < n of
// weight[i·n+k] · src[start[i]+k], shifted down by tapBits.
type axisTaps struct {
	n      int
	start  []int
	weight []int32
}

// catmullRom is the Catmull-Rom cubic (B=0, C=½) at x, support [-2, 2].
func catmullRom(x float64) float64 {
	x = math.Abs(x)
	switch {
	case x < 1:
		return (1.5*x-2.5)*x*x + 1
	case x < 2:
		return ((-0.5*x+2.5)*x-4)*x + 2
	}
	return 0
}

// newAxisTaps returns the taps from src samples to dst (both at least 1): sample centres aligned,
// the kernel stretched by src/dst when reducing, samples past the edges taken as the edge's.
func newAxisTaps(src, dst int) axisTaps {
	scale := float64(src) / float64(dst)
	stretch := max(scale, 1)
	n := min(int(math.Ceil(2*stretch))*2+1, src)
	t := axisTaps{n: n, start: make([]int, dst), weight: make([]int32, dst*n)}
	f := make([]float64, n)
	for i := range dst {
		centre := (float64(i)+0.5)*scale - 0.5
		lo := int(math.Floor(centre - 2*stretch))
		start := min(max(lo, 0), src-n)
		clear(f)
		var sum float64
		for j := lo; j <= int(math.Ceil(centre+2*stretch)); j++ {
			w := catmullRom((float64(j) - centre) / stretch)
			if w == 0 {
				continue
			}
			// An edge sample stands for the samples past it; the window [start, start+n) holds it.
			f[min(max(j, 0), src-1)-start] += w
			sum += w
		}
		ws := t.weight[i*n:][:n]
		total, biggest := int32(0), 0
		for k := range ws {
			ws[k] = int32(math.Round(f[k] / sum * (1 << tapBits)))
			total += ws[k]
			if ws[k] > ws[biggest] {
				biggest = k
			}
		}
		ws[biggest] += 1<<tapBits - total // sums to one exactly: a flat plane stays flat
		t.start[i] = start
	}
	return t
}

// clampByte rounds a sum of weighted samples (tapBits of fraction) to a byte.
func clampByte(s int32) uint8 {
	s = (s + 1<<(tapBits-1)) >> tapBits
	return uint8(min(max(s, 0), 255))
}

// resamplePlane returns the w×h plane (stride w) resampled from the sw×sh plane src (stride
// stride): across first, into sh rows of w, then down.
func resamplePlane(src []byte, stride, sw, sh, w, h int) []byte {
	across := src
	acrossStride := stride
	if w != sw {
		t := newAxisTaps(sw, w)
		across = make([]byte, w*sh)
		acrossStride = w
		for y := range sh {
			row := src[y*stride:][:sw]
			out := across[y*w:][:w]
			for x := range out {
				px := row[t.start[x]:][:t.n]
				var s int32
				for k, wt := range t.weight[x*t.n:][:t.n] {
					s += wt * int32(px[k])
				}
				out[x] = clampByte(s)
			}
		}
	}
	if h == sh {
		if acrossStride == w {
			return across[:w*h]
		}
		out := make([]byte, w*h)
		for y := range h {
			copy(out[y*w:][:w], across[y*acrossStride:])
		}
		return out
	}
	t := newAxisTaps(sh, h)
	out := make([]byte, w*h)
	acc := make([]int32, w)
	for y := range h {
		clear(acc)
		for k, wt := range t.weight[y*t.n:][:t.n] {
			row := across[(t.start[y]+k)*acrossStride:][:w]
			for x, p := range row {
				acc[x] += wt * int32(p)
			}
		}
		o := out[y*w:][:w]
		for x, s := range acc {
			o[x] = clampByte(s)
		}
	}
	return out
}

// resampleYCbCr returns planes y, cb and cr (each with its own size, all covering the same picture)
// as one w×h 4:2:0 image, or, with no chroma, as a w×h Gray image.
func resampleYCbCr(y, cb, cr *image.Gray, w, h int) image.Image {
	r := image.Rect(0, 0, w, h)
	luma := resamplePlane(y.Pix, y.Stride, y.Rect.Dx(), y.Rect.Dy(), w, h)
	if cb == nil {
		return &image.Gray{Pix: luma, Stride: w, Rect: r}
	}
	out := image.NewYCbCr(r, image.YCbCrSubsampleRatio420)
	out.Y = luma
	cw, ch := out.CStride, len(out.Cb)/out.CStride
	out.Cb = resamplePlane(cb.Pix, cb.Stride, cb.Rect.Dx(), cb.Rect.Dy(), cw, ch)
	out.Cr = resamplePlane(cr.Pix, cr.Stride, cr.Rect.Dx(), cr.Rect.Dy(), cw, ch)
	return out
}
