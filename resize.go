// Resizing pixels in a few rows of memory, for display sizes of images the DCT path does not take.
// x/image/draw's Catmull-Rom keeps 32 bytes for every source row at every output column (315 MB for
// a 2560-wide size): here the same filter runs over the source once, row by row, each row averaged
// in k×k blocks first (an integer pre-shrink, as boxShrink does) and filtered across into a ring of
// the rows the next output rows need.
package main

import (
	"context"
	"image/color"
	stddraw "image/draw"
	"math"

	"image"
)

// filterAxis maps in samples onto out with a Catmull-Rom kernel stretched over the reduction (the
// filter x/image/draw's CatmullRom is): output i is the sum over t < taps of weight[i·taps+t] times
// sample index[i·taps+t] (edges repeated).
type filterAxis struct {
	taps   int
	index  []int32
	weight []float32
}

// catmullRom is the Catmull-Rom cubic (B=0, C=½) at t, zero from |t| = 2.
func catmullRom(t float64) float64 {
	t = math.Abs(t)
	switch {
	case t < 1:
		return (1.5*t-2.5)*t*t + 1
	case t < 2:
		return ((-0.5*t+2.5)*t-4)*t + 2
	}
	return 0
}

// filterTaps is how many input samples each of out outputs reads, from in.
func filterTaps(in, out int) int {
	scale := max(float64(in)/float64(out), 1) // stretched when reducing, so that it averages what it drops
	return int(math.Ceil(2*scale))*2 + 1
}

func newFilterAxis(in, out int) filterAxis {
	s := float64(in) / float64(out)
	scale := max(s, 1)
	taps := filterTaps(in, out)
	a := filterAxis{taps: taps, index: make([]int32, out*taps), weight: make([]float32, out*taps)}
	w := make([]float64, taps)
	for i := range out {
		c := (float64(i)+0.5)*s - 0.5 // the output's centre among the input samples
		lo := int(math.Floor(c - 2*scale))
		var sum float64
		for t := range taps {
			w[t] = catmullRom((float64(lo+t) - c) / scale)
			sum += w[t]
		}
		for t := range taps {
			a.index[i*taps+t] = int32(min(max(lo+t, 0), in-1))
			a.weight[i*taps+t] = float32(w[t] / sum)
		}
	}
	return a
}

// last is the highest input index output i reads.
func (a *filterAxis) last(i int) int { return int(a.index[i*a.taps+a.taps-1]) }

// resizeRows scales src to w×h: a Gray image stays gray, anything else becomes RGBA (premultiplied,
// as draw scales). Memory beside the output: a source row, k rows' sums and the ring of filtered rows
// (at most 4·(srcH/h)+3 rows of w·channels float32s); resizeRowsBytes says how much.
func resizeRows(ctx context.Context, src image.Image, w, h int) (image.Image, error) {
	b := src.Bounds()
	rows := newShrunkRows(src, preShrink(b.Dx(), b.Dy(), w, h))
	cols, lines := newFilterAxis(rows.w, w), newFilterAxis(rows.h, h)
	ch := rows.channels
	ringRows := lines.taps + 1
	ring := make([]float32, ringRows*w*ch)
	var dst []byte
	var out image.Image
	if ch == 1 {
		g := image.NewGray(image.Rect(0, 0, w, h))
		dst, out = g.Pix, g
	} else {
		m := image.NewRGBA(image.Rect(0, 0, w, h))
		dst, out = m.Pix, m
	}
	next := 0 // the next shrunk row to filter across into the ring
	acc := make([]float32, w*ch)
	for y := range h {
		if y%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		for ; next <= lines.last(y); next++ {
			filterAcross(rows.row(next), &cols, ch, ring[(next%ringRows)*w*ch:][:w*ch])
		}
		clear(acc)
		for t := range lines.taps {
			wt := lines.weight[y*lines.taps+t]
			r := int(lines.index[y*lines.taps+t])
			for x, v := range ring[(r%ringRows)*w*ch:][:w*ch] {
				acc[x] += wt * v
			}
		}
		line := dst[y*w*ch:][:w*ch]
		for x, v := range acc {
			line[x] = clampSample(float64(v) + 0.5)
		}
	}
	return out, nil
}

// filterAcross writes row (channels interleaved) filtered to cols' outputs into out.
func filterAcross(row []byte, cols *filterAxis, ch int, out []float32) {
	taps := cols.taps
	for x := range len(out) / ch {
		idx, wts := cols.index[x*taps:][:taps], cols.weight[x*taps:][:taps]
		if ch == 1 {
			var s float32
			for t, i := range idx {
				s += wts[t] * float32(row[i])
			}
			out[x] = s
			continue
		}
		var r, g, b, a float32
		for t, i := range idx {
			p := row[int(i)*4:][:4]
			wt := wts[t]
			r += wt * float32(p[0])
			g += wt * float32(p[1])
			b += wt * float32(p[2])
			a += wt * float32(p[3])
		}
		o := out[x*4:][:4]
		o[0], o[1], o[2], o[3] = r, g, b, a
	}
}

// shrunkRows gives the rows of src averaged in k×k blocks (partial blocks at the right and bottom
// included), one at a time and in order, as Gray (one channel) or premultiplied RGBA (four).
type shrunkRows struct {
	src      image.Image
	k, w, h  int
	channels int
	line     *image.RGBA // one source row converted, for types other than Gray, RGBA and YCbCr
	sums     []uint32
	out      []byte
	chroma   []int32 // a YCbCr source's chroma sample of each column, from its row's first
}

func newShrunkRows(src image.Image, k int) *shrunkRows {
	b := src.Bounds()
	r := &shrunkRows{src: src, k: k, w: (b.Dx() + k - 1) / k, h: (b.Dy() + k - 1) / k, channels: 4}
	switch yc := src.(type) {
	case *image.Gray:
		r.channels = 1
	case *image.RGBA:
	case *image.YCbCr:
		if k == 1 {
			r.line = image.NewRGBA(image.Rect(0, 0, b.Dx(), 1))
			break
		}
		// Averaged as planes (each pixel's luma and its chroma sample), converted once a shrunk
		// pixel: a fraction of converting every source pixel.
		hs, _ := chromaScale(yc.SubsampleRatio)
		r.chroma = make([]int32, b.Dx())
		for x := range r.chroma {
			r.chroma[x] = int32((b.Min.X+x)/hs - yc.Rect.Min.X/hs)
		}
	default:
		r.line = image.NewRGBA(image.Rect(0, 0, b.Dx(), 1))
	}
	r.sums = make([]uint32, r.w*r.channels)
	r.out = make([]byte, r.w*r.channels)
	return r
}

// sourceRow is src's row y (from its top), channels interleaved.
func (r *shrunkRows) sourceRow(y int) []byte {
	b := r.src.Bounds()
	switch s := r.src.(type) {
	case *image.Gray:
		return s.Pix[(y+b.Min.Y-s.Rect.Min.Y)*s.Stride+(b.Min.X-s.Rect.Min.X):][:b.Dx()]
	case *image.RGBA:
		return s.Pix[(y+b.Min.Y-s.Rect.Min.Y)*s.Stride+(b.Min.X-s.Rect.Min.X)*4:][:4*b.Dx()]
	}
	stddraw.Draw(r.line, r.line.Rect, r.src, image.Pt(b.Min.X, b.Min.Y+y), stddraw.Src)
	return r.line.Pix
}

// row returns shrunk row y; rows must be asked in order (each is made from the source rows it
// covers), and the slice is reused by the next call.
func (r *shrunkRows) row(y int) []byte {
	b := r.src.Bounds()
	if r.k == 1 {
		return r.sourceRow(y)
	}
	if r.chroma != nil {
		return r.ycbcrRow(y)
	}
	clear(r.sums)
	y0, y1 := y*r.k, min(y*r.k+r.k, b.Dy())
	ch := r.channels
	for sy := y0; sy < y1; sy++ {
		src := r.sourceRow(sy)
		for x := range r.w {
			x0, x1 := x*r.k, min(x*r.k+r.k, b.Dx())
			if ch == 1 {
				for _, v := range src[x0:x1] {
					r.sums[x] += uint32(v)
				}
				continue
			}
			sum := r.sums[x*4:][:4]
			for i := x0 * 4; i < x1*4; i += 4 {
				p := src[i:][:4]
				sum[0] += uint32(p[0])
				sum[1] += uint32(p[1])
				sum[2] += uint32(p[2])
				sum[3] += uint32(p[3])
			}
		}
	}
	for x := range r.w {
		n := uint32((y1 - y0) * (min(x*r.k+r.k, b.Dx()) - x*r.k))
		for c := range ch {
			r.out[x*ch+c] = uint8((r.sums[x*ch+c] + n/2) / n)
		}
	}
	return r.out
}

// ycbcrRow is row for a YCbCr source: its luma and chroma averaged over each k×k block, then
// converted to RGBA.
func (r *shrunkRows) ycbcrRow(y int) []byte {
	yc := r.src.(*image.YCbCr)
	b := yc.Bounds()
	clear(r.sums)
	y0, y1 := y*r.k, min(y*r.k+r.k, b.Dy())
	_, vs := chromaScale(yc.SubsampleRatio)
	for sy := b.Min.Y + y0; sy < b.Min.Y+y1; sy++ {
		luma := yc.Y[(sy-yc.Rect.Min.Y)*yc.YStride+(b.Min.X-yc.Rect.Min.X):][:b.Dx()]
		c0 := (sy/vs - yc.Rect.Min.Y/vs) * yc.CStride
		cb, cr := yc.Cb[c0:], yc.Cr[c0:]
		for x := range r.w {
			x0, x1 := x*r.k, min(x*r.k+r.k, b.Dx())
			var ys, cbs, crs uint32
			for sx := x0; sx < x1; sx++ {
				c := r.chroma[sx]
				ys += uint32(luma[sx])
				cbs += uint32(cb[c])
				crs += uint32(cr[c])
			}
			sum := r.sums[x*4:][:3]
			sum[0] += ys
			sum[1] += cbs
			sum[2] += crs
		}
	}
	for x := range r.w {
		n := uint32((y1 - y0) * (min(x*r.k+r.k, b.Dx()) - x*r.k))
		sum := r.sums[x*4:][:3]
		red, green, blue := color.YCbCrToRGB(uint8((sum[0]+n/2)/n), uint8((sum[1]+n/2)/n), uint8((sum[2]+n/2)/n))
		o := r.out[x*4:][:4]
		o[0], o[1], o[2], o[3] = red, green, blue, 255
	}
	return r.out
}

// preShrink is the block size a w×h source is averaged in before the filter: the most that leaves
// at least outW×outH (so the filter reduces by less than 2).
func preShrink(w, h, outW, outH int) int {
	return max(min(w/max(outW, 1), h/max(outH, 1)), 1)
}

// resizeRowsBytes is the most resizeRows holds beside its source and output, resizing a w×h
// source to outW×outH: the axes (8 bytes a tap), the ring and the sum of filtered rows (16 bytes a
// column), a source row and the shrunk row's sums (4 bytes a sample each), and 64 KiB for the
// allocator's rounding up.
func resizeRowsBytes(w, h, outW, outH int) int64 {
	outW, outH = max(outW, 1), max(outH, 1)
	k := preShrink(w, h, outW, outH)
	sw, sh := (w+k-1)/k, (h+k-1)/k
	across, down := int64(filterTaps(sw, outW)), int64(filterTaps(sh, outH))
	axes := (int64(outW)*across + int64(outH)*down) * 8
	return axes + (down+2)*int64(outW)*16 + int64(w)*4 + int64(sw)*4*5 + 64<<10
}
