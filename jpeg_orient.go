// The DCT path's orientation: a component turned or flipped in the coefficient domain (transposing
// blocks and negating odd frequencies), losslessly where the blocks allow.
package main

// orientComponent returns component ci turned upright for EXIF orientation o, in the DCT domain
// (lossless, as jpegtran's transforms): blocks change places, and within each block coefficients
// are transposed and/or negated at odd frequencies. It also returns the turned size, and the
// quantization table for the result (transposed with the coefficients). A flip along a
// dimension that is not a whole number of blocks would move the partial edge blocks to the other
// side: then it returns errDCTUnsupported.
func (img *dctImage) orientComponent(ci int, o orientation) (*dctComponent, int, int, [64]uint16, error) {
	c := &img.comps[ci]
	w := (img.width*c.h + img.hmax - 1) / img.hmax
	h := (img.height*c.v + img.vmax - 1) / img.vmax
	flipH := o == 2 || o == 3 || o == 7 || o == 8 // the source's columns reverse
	flipV := o == 3 || o == 4 || o == 6 || o == 7 // its rows reverse
	q := img.quant[c.tq]
	if c.dcOnly || flipH && w%8 != 0 || flipV && h%8 != 0 {
		return nil, 0, 0, q, errDCTUnsupported
	}
	transpose := o.swapsAxes()
	if transpose {
		var nq [64]uint16
		for i, z := range zigzag {
			u, v := z/8, z%8
			// The coefficient at (u, v) moves to (v, u), and its step with it.
			for j, z2 := range zigzag {
				if z2 == v*8+u {
					nq[j] = q[i]
				}
			}
		}
		q = nq
	}
	// Flips only change signs, so the coded symbols stay the same; a transpose reorders the zigzag.
	out := &dctComponent{id: c.id, h: 1, v: 1, tq: c.tq, bw: c.bw, bh: c.bh, acFreq: c.acFreq, acCounted: c.acCounted && !o.swapsAxes()}
	if transpose {
		out.bw, out.bh, w, h = c.bh, c.bw, h, w
	}
	out.stride = out.bw
	out.coef = make([]int16, out.bw*out.bh*64)
	out.last = make([]uint8, out.bw*out.bh)
	var nat, dst [64]int16
	for dy := range out.bh {
		for dx := range out.bw {
			sx, sy := dx, dy
			if transpose {
				sx, sy = dy, dx
			}
			if flipH {
				sx = c.bw - 1 - sx
			}
			if flipV {
				sy = c.bh - 1 - sy
			}
			src := c.coef[(sy*c.stride+sx)*64:][:64]
			for i, z := range zigzag {
				nat[z] = src[i]
			}
			// nat[u*8+v]: u is the vertical frequency, v the horizontal one.
			for u := range 8 {
				for v := range 8 {
					val := nat[u*8+v]
					if flipV && u&1 == 1 {
						val = -val
					}
					if flipH && v&1 == 1 {
						val = -val
					}
					if transpose {
						dst[v*8+u] = val
					} else {
						dst[u*8+v] = val
					}
				}
			}
			b := dy*out.stride + dx
			blk := out.coef[b*64 : b*64+64]
			last := 0
			for i, z := range zigzag {
				blk[i] = dst[z]
				if blk[i] != 0 {
					last = i
				}
			}
			out.last[b] = uint8(last)
		}
	}
	return out, w, h, q, nil
}
