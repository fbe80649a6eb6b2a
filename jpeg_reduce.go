// The DCT path's reductions: for thumbnails, a 1/8-scale image from the DC coefficients (each block's
// mean) and a 1/4-scale one from each block's lowest frequencies (a reduced IDCT); for display sizes,
// any size straight from the coefficients (planeResizer).
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

// dctAxis maps one axis of a component's blocks onto out output samples placed evenly over the
// component's samples (centres aligned): output i lies in block blockOf, at a position whose first n
// frequencies of the block's 8-point IDCT weigh weight[i·n:][:n]. The block's outputs are
// from[b] ≤ i < from[b+1].
type dctAxis struct {
	n      int
	from   []int
	weight []float64
	most   int // the most outputs one block has
}

// newDCTAxis lays out samples (in blocks of 8) onto out outputs. It keeps the frequencies below out/
// samples of the block's eight, as libjpeg's scaled IDCTs do: the output samples that rate without
// aliasing (a reduction to n/8 reads the n lowest, all eight from 8/8 up).
func newDCTAxis(samples, blocks, out int) dctAxis {
	r := float64(out) / float64(samples)
	n := min(max(int(math.Ceil(8*r-1e-9)), 1), 8)
	a := dctAxis{n: n, from: make([]int, blocks+1), weight: make([]float64, out*n)}
	b := 0
	for i := range out {
		s := (float64(i)+0.5)/r - 0.5 // the output's centre in samples
		blk := min(max(int(math.Floor((s+0.5)/8)), 0), blocks-1)
		for b <= blk {
			a.from[b] = i
			b++
		}
		t := s - float64(8*blk)
		for k := range n {
			c := 0.5
			if k == 0 {
				c = 0.5 / math.Sqrt2
			}
			a.weight[i*n+k] = c * math.Cos((2*t+1)*float64(k)*math.Pi/16)
		}
	}
	for ; b <= blocks; b++ {
		a.from[b] = out
	}
	for b := range blocks {
		a.most = max(a.most, a.from[b+1]-a.from[b])
	}
	return a
}

// planeResizer makes component c's samples resized to w×h (out), straight from its coefficients,
// a row of blocks at a time: each output sample is its block's IDCT, of the frequencies the size
// keeps, read at the output's place (no full-size decode, no resampling step).
type planeResizer struct {
	c          *dctComponent
	cols, rows dctAxis
	q          *[64]uint16
	qf         [64]float64 // q, by natural index u·8+v
	band       [64]int     // natural index u·8+v → zigzag index
	across     []float64   // per kept vertical frequency: the block row transformed across, at every output column
	acc        []float64
	out        *image.Gray
}

// newPlaneResizer prepares component c's w×h plane. A component kept at DC only must keep one
// frequency each way (at most 1/8 scale).
func (img *dctImage) newPlaneResizer(c *dctComponent, w, h int) (*planeResizer, error) {
	p := &planeResizer{
		c:    c,
		cols: newDCTAxis((img.width*c.h+img.hmax-1)/img.hmax, c.bw, w),
		rows: newDCTAxis((img.height*c.v+img.vmax-1)/img.vmax, c.bh, h),
		q:    &img.quant[c.tq],
		acc:  make([]float64, w),
		out:  image.NewGray(image.Rect(0, 0, w, h)),
	}
	if c.dcOnly && (p.cols.n > 1 || p.rows.n > 1) {
		return nil, errors.New("jpeg: a size above 1/8 scale needs every coefficient")
	}
	for i, z := range zigzag {
		p.band[z] = i
		p.qf[z] = float64(p.q[i])
	}
	p.across = make([]float64, p.rows.n*w)
	return p, nil
}

// mcuRow makes the output rows of MCU row m's block rows.
func (p *planeResizer) mcuRow(m int) {
	for by := m * p.c.v; by < min((m+1)*p.c.v, p.c.bh); by++ {
		p.blockRow(by)
	}
}

// blockRow makes the output rows that lie in block row by: each block's kept frequencies
// transformed across at its output columns' places (across), then every output row down at once.
func (p *planeResizer) blockRow(by int) {
	y0, y1 := p.rows.from[by], p.rows.from[by+1]
	if y0 == y1 {
		return
	}
	coef, last := p.c.blockRow(by)
	w := len(p.acc)
	nu, nv := p.rows.n, p.cols.n
	for bx := range p.c.bw {
		x0, x1 := p.cols.from[bx], p.cols.from[bx+1]
		if x0 == x1 {
			continue
		}
		if p.c.dcOnly || last[bx] == 0 {
			// DC alone: its weight is the same at every place, C(0)/2 = 1/(2√2) each way.
			per := 64
			if p.c.dcOnly {
				per = 1
			}
			dc := float64(coef[bx*per]) * float64(p.q[0]) / (2 * math.Sqrt2)
			for u := range nu {
				row := p.across[u*w+x0 : u*w+x1]
				for x := range row {
					row[x] = dc
				}
				dc = 0
			}
			continue
		}
		blk := coef[bx*64:][:64]
		if nv > 3 {
			blockAcross(blk, &p.qf, &p.band, &p.cols, nu, p.across, w, x0, x1)
			continue
		}
		// The common sizes (w640 to w1280 of a phone's photo) keep one to three frequencies each
		// way: unrolled. (Rows of zeros are cheaper computed than tested for: two or three outputs.)
		weights := p.cols.weight[x0*nv : x1*nv]
		for u := range nu {
			row := p.across[u*w+x0 : u*w+x1]
			b, q := p.band[u*8:u*8+3], p.qf[u*8:u*8+3]
			c0, c1, c2 := blk[b[0]&63], blk[b[1]&63], blk[b[2]&63]
			switch nv {
			case 1:
				c1, c2 = 0, 0
			case 2:
				c2 = 0
			}
			f0, f1, f2 := float64(c0)*q[0], float64(c1)*q[1], float64(c2)*q[2]
			switch nv {
			case 3:
				for x := range row {
					wt := weights[x*3 : x*3+3 : x*3+3]
					row[x] = f0*wt[0] + f1*wt[1] + f2*wt[2]
				}
			case 2:
				for x := range row {
					wt := weights[x*2 : x*2+2 : x*2+2]
					row[x] = f0*wt[0] + f1*wt[1]
				}
			default:
				for x := range row {
					row[x] = f0 * weights[x]
				}
			}
		}
	}
	p.down(y0, y1)
}

// down makes output rows y0 to y1 from across: each the sum of across's rows weighted for its place,
// the usual one to three kept frequencies in one pass.
func (p *planeResizer) down(y0, y1 int) {
	w := len(p.acc)
	r0 := p.across[:w]
	for y := y0; y < y1; y++ {
		wy := p.rows.weight[y*p.rows.n:][:p.rows.n]
		line := p.out.Pix[y*w:][:w]
		switch len(wy) {
		case 1:
			for x, v := range r0 {
				line[x] = clampSample(128.5 + wy[0]*v)
			}
		case 2:
			r1 := p.across[w : 2*w]
			for x, v := range r0 {
				line[x] = clampSample(128.5 + wy[0]*v + wy[1]*r1[x])
			}
		case 3:
			r1, r2 := p.across[w:2*w], p.across[2*w:3*w]
			for x, v := range r0 {
				line[x] = clampSample(128.5 + wy[0]*v + wy[1]*r1[x] + wy[2]*r2[x])
			}
		default:
			for x, v := range r0 {
				p.acc[x] = 128.5 + wy[0]*v
			}
			for u := 1; u < len(wy); u++ {
				a := wy[u]
				for x, v := range p.across[u*w:][:w] {
					p.acc[x] += a * v
				}
			}
			for x, v := range p.acc {
				line[x] = clampSample(v)
			}
		}
	}
}

// clampSample is v truncated to a sample, 0 to 255. Clamped as an integer: a float's min and max
// must order NaNs and signed zeros, a few instructions more at each of a size's million samples. A
// real image's sums stay far inside int32; a hostile one's past it (16-bit quantizers at their
// largest) come out as some wrong sample, nothing worse.
func clampSample(v float64) uint8 {
	return uint8(min(max(int32(v), 0), 255))
}

// blockAcross transforms one block's kept frequencies across, at its output columns x0 to x1: for
// each kept vertical frequency u, row u of across (rows of stride) gets the sum over the kept
// horizontal frequencies v of coefficient (u, v) of blk (zigzag order, band: where each is) times
// qf (its quantizer), weighted for each column's place.
func blockAcross(blk []int16, qf *[64]float64, band *[64]int, cols *dctAxis, nu int, across []float64, stride, x0, x1 int) {
	nv := cols.n
	weights := cols.weight[x0*nv : x1*nv]
	for u := range nu {
		row := across[u*stride+x0 : u*stride+x1]
		var f [8]float64
		var any int16
		for v := range nv {
			c := blk[band[u*8+v]&63]
			any |= c
			f[v] = float64(c) * qf[(u*8+v)&63]
		}
		if any == 0 {
			clear(row)
			continue
		}
		for x := range row {
			s := 0.0
			for v, wt := range weights[x*nv:][:nv] {
				s += f[v&7] * wt
			}
			row[x] = s
		}
	}
}
