// The DCT path's reductions: a 1/8-scale image from the DC coefficients (each block's mean), and a
// 1/4-scale one from each block's lowest frequencies (a reduced IDCT), for thumbnails.
package main

import (
	"errors"
	"image"
	"math"
)

// dcImage returns the 1/8-scale image the DC coefficients make: each block's mean. For three
// components it is a YCbCr image with the source's chroma subsampling; for one, a Gray image.
func (img *dctImage) dcImage() (image.Image, error) {
	plane := func(c *dctComponent) []byte {
		q := int32(img.quant[c.tq][0])
		out := make([]byte, c.bw*c.bh)
		per := 64
		if c.dcOnly {
			per = 1
		}
		for by := range c.bh {
			for bx := range c.bw {
				// The DC coefficient is 8 × (the block's mean − 128), quantized.
				v := (int32(c.coef[(by*c.stride+bx)*per])*q+4)>>3 + 128
				out[by*c.bw+bx] = uint8(min(max(v, 0), 255))
			}
		}
		return out
	}
	y := &img.comps[0]
	r := image.Rect(0, 0, y.bw, y.bh)
	if len(img.comps) == 1 {
		return &image.Gray{Pix: plane(y), Stride: y.bw, Rect: r}, nil
	}
	ratio, ok := subsampleRatio(img.comps)
	if !ok {
		return nil, errDCTUnsupported
	}
	cb, cr := &img.comps[1], &img.comps[2]
	yc := &image.YCbCr{Y: plane(y), Cb: plane(cb), Cr: plane(cr), YStride: y.bw, CStride: cb.bw, SubsampleRatio: ratio, Rect: r}
	// The chroma planes must cover what the ratio says they cover for this rectangle.
	if want := image.NewYCbCr(r, ratio); len(yc.Cb) < len(want.Cb) || cb.bw < want.CStride {
		return nil, errDCTUnsupported
	}
	return yc, nil
}

// quarterWeights[k] is how much coefficient k of an 8-point IDCT adds to the mean of the first four
// samples: C(k)/2 · ¼ Σ_{x<4} cos((2x+1)kπ/16). It is zero for even k > 0; for odd k the last four
// samples' mean gets the same weight negated. So the 2×2 means of a block need only the coefficients
// at frequencies 0, 1, 3, 5 and 7 in each direction: a 1/4-scale image without a full IDCT.
var quarterWeights = func() (w [8]float64) {
	for k := range 8 {
		c := 0.5
		if k == 0 {
			c = 0.5 / math.Sqrt2
		}
		var sum float64
		for x := range 4 {
			sum += math.Cos(float64(2*x+1) * float64(k) * math.Pi / 16)
		}
		if w[k] = c * sum / 4; math.Abs(w[k]) < 1e-12 {
			w[k] = 0
		}
	}
	return w
}()

// quarterFreqs are the frequencies whose weight is not zero.
var quarterFreqs = [5]int{0, 1, 3, 5, 7}

// quarterImage returns the 1/4-scale image of 4×4 means, computed from each block's coefficients
// (every component must have kept them all). Its type follows dcImage's.
func (img *dctImage) quarterImage() (image.Image, error) {
	var zz [64]int // natural index → zigzag index
	for i, z := range zigzag {
		zz[z] = i
	}
	plane := func(c *dctComponent, w, h int) ([]byte, error) {
		if c.dcOnly {
			return nil, errors.New("jpeg: the 1/4 scale needs every coefficient")
		}
		q := img.quant[c.tq]
		out := make([]byte, w*h)
		var f [5][5]float64
		for by := range c.bh {
			for bx := range c.bw {
				blk := c.coef[(by*c.stride+bx)*64:][:64]
				for a, u := range quarterFreqs {
					for b, v := range quarterFreqs {
						i := zz[u*8+v]
						f[a][b] = float64(blk[i]) * float64(q[i]) * quarterWeights[u] * quarterWeights[v]
					}
				}
				for i := range 2 { // top, bottom
					for j := range 2 { // left, right
						sum := 128.0
						for a, u := range quarterFreqs {
							for b, v := range quarterFreqs {
								t := f[a][b]
								if i == 1 && u&1 == 1 {
									t = -t
								}
								if j == 1 && v&1 == 1 {
									t = -t
								}
								sum += t
							}
						}
						if x, y := 2*bx+j, 2*by+i; x < w && y < h {
							out[y*w+x] = uint8(min(max(math.Round(sum), 0), 255))
						}
					}
				}
			}
		}
		return out, nil
	}
	y := &img.comps[0]
	r := image.Rect(0, 0, (img.width+3)/4, (img.height+3)/4)
	yp, err := plane(y, r.Dx(), r.Dy())
	if err != nil {
		return nil, err
	}
	if len(img.comps) == 1 {
		return &image.Gray{Pix: yp, Stride: r.Dx(), Rect: r}, nil
	}
	ratio, ok := subsampleRatio(img.comps)
	if !ok {
		return nil, errDCTUnsupported
	}
	yc := image.NewYCbCr(r, ratio)
	yc.Y = yp
	for i, dst := range []*[]byte{&yc.Cb, &yc.Cr} {
		p, err := plane(&img.comps[1+i], yc.CStride, len(yc.Cb)/yc.CStride)
		if err != nil {
			return nil, err
		}
		*dst = p
	}
	return yc, nil
}

// scaledWeights[n-1][x][k] is C(k)/2 · cos((2x+1)kπ/2n): how much frequency k of an 8-point block adds
// to sample x of its n-point rendering, the block's continuous IDCT read at the centres of n equal
// parts. Frequencies at or above n are left out, as libjpeg's scaled IDCTs leave them (they would only
// alias); for n = 8 it is the IDCT itself, for n = 1 the mean.
var scaledWeights = func() (w [8][8][8]float64) {
	for n := 1; n <= 8; n++ {
		for x := range n {
			for k := range n {
				c := 0.5
				if k == 0 {
					c = 0.5 / math.Sqrt2
				}
				w[n-1][x][k] = c * math.Cos(float64(2*x+1)*float64(k)*math.Pi/float64(2*n))
			}
		}
	}
	return w
}()

// scaledSize is how many samples n/8 scale makes of size samples.
func scaledSize(size, n int) int { return (size*n + 7) / 8 }

// scaleCovering is the smallest n (1 to 8) whose n/8 scale of a w×h image is at least tw×th.
func scaleCovering(w, h, tw, th int) int {
	n := 1
	for n < 8 && (scaledSize(w, n) < tw || scaledSize(h, n) < th) {
		n++
	}
	return n
}

// scaledPlane returns component c's samples at n/8 scale (n from 1 to 8) as a Gray image: n×n samples
// a block from its n×n lowest frequencies. A component kept at DC only takes n = 1 alone.
func (img *dctImage) scaledPlane(c *dctComponent, n int) (*image.Gray, error) {
	per := 64
	if c.dcOnly {
		if n > 1 {
			return nil, errors.New("jpeg: a reduced image above 1/8 scale needs every coefficient")
		}
		per = 1
	}
	w := scaledSize((img.width*c.h+img.hmax-1)/img.hmax, n)
	h := scaledSize((img.height*c.v+img.vmax-1)/img.vmax, n)
	out := image.NewGray(image.Rect(0, 0, w, h))
	q := &img.quant[c.tq]
	wt := &scaledWeights[n-1]
	var zz [64]int // natural index → zigzag index
	for i, z := range zigzag {
		zz[z] = i
	}
	var block [64]uint8
	for by := range c.bh {
		for bx := range c.bw {
			b := by*c.stride + bx
			blk := c.coef[b*per:][:per]
			if per == 1 || c.last[b] == 0 {
				// A flat block: its mean everywhere (the DC coefficient is 8 × (mean − 128)).
				v := float64(blk[0])*float64(q[0])/8 + 128.5
				fill := uint8(min(max(v, 0), 255))
				for i := range block[:n*n] {
					block[i] = fill
				}
			} else {
				scaledBlock(blk, q, &zz, wt, n, &block)
			}
			for y := range n {
				py := by*n + y
				if py >= h {
					break
				}
				x0 := bx * n
				copy(out.Pix[py*w+x0:py*w+min(x0+n, w)], block[y*n:(y+1)*n])
			}
		}
	}
	return out, nil
}

// scaledBlock renders one block's n×n samples (row by row into out) from its coefficients blk (zigzag
// order) with quantization table q: a separable n-point IDCT of the n×n lowest frequencies, rows of
// zeros skipped.
func scaledBlock(blk []int16, q *[64]uint16, zz *[64]int, wt *[8][8]float64, n int, out *[64]uint8) {
	var rows [8][8]float64 // per vertical frequency u: the horizontal transform at n columns
	last := -1
	for u := range n {
		var f [8]float64
		zero := true
		for v := range n {
			if i := zz[u*8+v]; blk[i] != 0 {
				f[v] = float64(blk[i]) * float64(q[i])
				zero = false
			}
		}
		if zero {
			continue // its row stays zero
		}
		last = u
		for x := range n {
			s := 0.0
			for v := range n {
				s += f[v] * wt[x][v]
			}
			rows[u][x] = s
		}
	}
	for y := range n {
		for x := range n {
			s := 128.5
			for u := 0; u <= last; u++ {
				s += wt[y][u] * rows[u][x]
			}
			out[y*n+x] = uint8(min(max(s, 0), 255))
		}
	}
}
