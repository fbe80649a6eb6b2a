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

// halfWeights[p][k] is how much coefficient k of an 8-point IDCT adds to the mean of samples 2p and
// 2p+1: C(k)/2 · ½ (cos((4p+1)kπ/16) + cos((4p+3)kπ/16)). With it the 2×2 means of a block, 4×4 of
// them, are a separable transform of its coefficients: a 1/2-scale image without a full IDCT.
var halfWeights = func() (w [4][8]float64) {
	for p := range 4 {
		for k := range 8 {
			c := 0.5
			if k == 0 {
				c = 0.5 / math.Sqrt2
			}
			x0, x1 := float64(2*p), float64(2*p+1)
			w[p][k] = c * (math.Cos((2*x0+1)*float64(k)*math.Pi/16) + math.Cos((2*x1+1)*float64(k)*math.Pi/16)) / 2
		}
	}
	return w
}()

// halfPlane is component c's 1/2-scale plane of w×h: the 2×2 means of its samples, from each
// block's coefficients (zz: natural index → zigzag index).
func (img *dctImage) halfPlane(c *dctComponent, w, h int, zz *[64]int) ([]byte, error) {
	if c.dcOnly {
		return nil, errors.New("jpeg: the 1/2 scale needs every coefficient")
	}
	q := img.quant[c.tq]
	out := make([]byte, w*h)
	var rows [8][4]float64 // per vertical frequency u: the horizontal transform at 4 columns
	for by := range c.bh {
		for bx := range c.bw {
			blk := c.coef[(by*c.stride+bx)*64:][:64]
			last := -1 // the highest vertical frequency with a coefficient: most blocks stop early
			for u := range 8 {
				var f [8]float64
				zero := true
				for v := range 8 {
					i := zz[u*8+v]
					f[v] = float64(blk[i]) * float64(q[i])
					zero = zero && blk[i] == 0
				}
				if zero {
					rows[u] = [4]float64{}
					continue
				}
				last = u
				for col := range 4 {
					s := 0.0
					for v, fv := range f {
						s += fv * halfWeights[col][v]
					}
					rows[u][col] = s
				}
			}
			for row := range 4 {
				y := 4*by + row
				if y >= h {
					break
				}
				for col := range 4 {
					x := 4*bx + col
					if x >= w {
						break
					}
					sum := 128.0
					for u := 0; u <= last; u++ {
						sum += halfWeights[row][u] * rows[u][col]
					}
					out[y*w+x] = uint8(min(max(math.Round(sum), 0), 255))
				}
			}
		}
	}
	return out, nil
}

// halfImage returns the 1/2-scale image of 2×2 means, computed from each block's coefficients
// (every component must have kept them all). Its type follows dcImage's.
func (img *dctImage) halfImage() (image.Image, error) {
	var zz [64]int // natural index → zigzag index
	for i, z := range zigzag {
		zz[z] = i
	}
	plane := func(c *dctComponent, w, h int) ([]byte, error) { return img.halfPlane(c, w, h, &zz) }
	y := &img.comps[0]
	r := image.Rect(0, 0, (img.width+1)/2, (img.height+1)/2)
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
