// JPEG in the DCT domain: a decoder that stops at the quantized coefficients, and an encoder that
// writes a single-component JPEG from them. Together they make a JPEG's grayscale losslessly (its
// luma coefficients, re-Huffman-coded) and its thumbnails from the DC coefficients (each block's mean:
// a 1/8-scale image with no IDCT).
//
// What of ITU T.81 is implemented here:
//
//   - B.2, B.3: the marker syntax — SOI, APPn/COM (skipped, APP14 read for the colour transform),
//     DQT (8- and 16-bit tables), DHT, DRI, SOF0, SOF1 and SOF2 (baseline, extended sequential and
//     progressive Huffman, 8-bit samples, 1 or 3 components, any sampling factors 1–4), SOS, RSTn, EOI.
//
//   - F.2.2: sequential Huffman decoding of interleaved and non-interleaved scans, with restart
//     intervals (F.2.2.5 receive/extend; F.2.2.3 with a 9-bit lookup table before the code-length
//     search of F.2.2.3's DECODE).
//
//   - F.1.2 and Annex C: Huffman encoding of one component, with tables from symbol frequencies
//     (Annex K.2, code lengths limited to 16 bits as K.3 adjusts them).
//
//   - G.1.2: progressive Huffman decoding (SOF2): DC first and refinement scans, AC first scans with
//     EOB runs, AC refinement scans. AC scans of components kept at DC only are skipped undecoded.
//
// Not implemented, and sent to the standard decoder instead (errDCTUnsupported): hierarchical,
// lossless and arithmetic-coded processes, 12-bit samples, DNL, RGB- or CMYK-coded colour, and a
// sequential frame that codes a component in more than one scan.
//
// Bounds: the frame's pixels are checked against MAX_PIXELS before anything is allocated for it, a
// file of more than maxJPEGScans scans is refused (scanJPEG counts them without decoding, for both
// paths), and decoding stops at the context's end, checked every segment and every row of blocks.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"io"
	"math"
	"math/bits"
	"slices"
)

// maxJPEGScans is the most scans a JPEG may have. Each scan, however few its bytes, walks every
// block of the image (a progressive AC scan can be a single EOB run), so the count, not the size,
// bounds the work: 447,679 scans of 56 bytes fit in 24 MiB and would cost image/jpeg over three
// hours on a 49 MP frame. Encoders write far fewer: libjpeg's progressive script has 10 scans for
// colour and 6 for gray; a hand-written script with successive approximation of every coefficient
// band of three components stays in the low hundreds (libjpeg-turbo suggests a limit of a few
// hundred for untrusted input). 1000 keeps every real file, and bounds a 50 MP frame's worst case
// to about 10 s in the DCT path and 30 s in image/jpeg, within JOB_TIMEOUT.
const maxJPEGScans = 1000

// errTooManyScans refuses a JPEG of more than maxJPEGScans scans.
var errTooManyScans = badImage("the jpeg has more than %d scans (progressive passes), the most this service decodes", maxJPEGScans)

// errDCTUnsupported means the file is a JPEG this decoder does not handle; the standard path will.
var errDCTUnsupported = errors.New("jpeg: not supported by the DCT path")

// zigzag[i] is the natural-order (row-major) index of the i-th coefficient in zigzag order.
var zigzag = [64]uint8{
	0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
	12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
	35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
	58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
}

// dctComponent is one colour component of a decoded JPEG.
type dctComponent struct {
	id     uint8
	h, v   int // sampling factors
	tq     int // quantization table index
	bw, bh int // blocks across and down that hold image data: ceil(ceil(width·h/hmax)/8), likewise down
	stride int // blocks per row in coef (a whole number of MCUs' worth)
	// coef holds 64 coefficients per block, in zigzag order, rows of stride blocks. With dcOnly, only
	// the DC coefficient of each block is kept (coef has one value per block).
	coef   []int16
	last   []uint8 // per block: the zigzag index of its last nonzero coefficient (0: DC only)
	dcOnly bool
	// acFreq counts the AC symbols (run/size, ZRL, EOB) the scan coded for this component, when
	// acCounted: the same symbols a re-encoding of these coefficients codes, in any block order.
	acFreq    [256]int64
	acCounted bool
}

// dctImage is a JPEG decoded down to its quantized DCT coefficients.
type dctImage struct {
	width, height int
	hmax, vmax    int
	comps         []dctComponent
	quant         [4][64]uint16 // zigzag order
	quantSet      [4]bool
	restart       int // MCUs per restart interval; 0: none
	adobe         int // APP14 colour transform; -1: no APP14
	progressive   bool
}

// dctHuffman is a Huffman table for decoding: a 9-bit lookup for short codes, then the F.2.2.3 search.
type dctHuffman struct {
	lut     [1 << 9]uint16 // value<<8 | code length; 0: longer than 9 bits
	maxcode [18]int32      // largest code of each length, -1 if none
	valptr  [17]int32
	mincode [17]int32
	vals    [256]uint8
	defined bool
}

// build makes the decoding tables from BITS (counts of codes of each length 1–16) and HUFFVAL.
func (h *dctHuffman) build(counts [16]uint8, vals []uint8) error {
	*h = dctHuffman{defined: true}
	copy(h.vals[:], vals)
	code, k := int32(0), int32(0)
	for l := 1; l <= 16; l++ {
		n := int32(counts[l-1])
		if code+n > 1<<l {
			return errors.New("jpeg: bad Huffman table: more codes than their length allows")
		}
		h.valptr[l] = k
		h.mincode[l] = code
		if n == 0 {
			h.maxcode[l] = -1
		} else {
			for i := int32(0); i < n; i++ {
				if l <= 9 {
					first := (code + i) << (9 - l)
					for j := int32(0); j < 1<<(9-l); j++ {
						h.lut[first+j] = uint16(vals[k+i])<<8 | uint16(l)
					}
				}
			}
			code += n
			k += n
			h.maxcode[l] = code - 1
		}
		code <<= 1
	}
	h.maxcode[17] = 0x7fffffff
	return nil
}

// dctBits reads entropy-coded data: bytes with 0xFF00 stuffing, stopping at a marker.
type dctBits struct {
	data   []byte
	pos    int
	acc    uint64 // bits, left-aligned
	n      uint   // valid bits in acc
	marker bool   // a marker was reached: only zero padding follows
	padded uint   // zero bits added past the data
}

// overrun reports whether decoding has consumed bits past the end of the data: the scan is truncated.
func (b *dctBits) overrun() bool { return b.padded > b.n }

// fill tops acc up to at least 57 valid bits (zeros past a marker or the end).
func (b *dctBits) fill() {
	for b.n <= 56 {
		var c byte
		if !b.marker && b.pos < len(b.data) {
			c = b.data[b.pos]
			if c == 0xFF {
				if b.pos+1 < len(b.data) && b.data[b.pos+1] == 0x00 {
					b.pos += 2
				} else {
					b.marker, c = true, 0
					b.padded += 8
				}
			} else {
				b.pos++
			}
		} else {
			b.padded += 8
		}
		b.acc |= uint64(c) << (56 - b.n)
		b.n += 8
	}
}

func (b *dctBits) bits(n uint) int32 {
	if b.n < n {
		b.fill()
	}
	v := int32(b.acc >> (64 - n))
	b.acc <<= n
	b.n -= n
	return v
}

// receiveExtend reads an s-bit magnitude and extends its sign (F.2.2.1).
func (b *dctBits) receiveExtend(s uint8) int32 {
	if s == 0 {
		return 0
	}
	v := b.bits(uint(s))
	if v < 1<<(s-1) {
		v += -1<<s + 1
	}
	return v
}

// decode reads one Huffman-coded value.
func (b *dctBits) decode(h *dctHuffman) (uint8, error) {
	if b.n < 16 {
		b.fill()
	}
	if e := h.lut[b.acc>>(64-9)]; e != 0 {
		l := uint(e & 0xff)
		b.acc <<= l
		b.n -= l
		return uint8(e >> 8), nil
	}
	code := int32(b.acc >> (64 - 10))
	for l := 10; l <= 16; l++ {
		if code <= h.maxcode[l] {
			b.acc <<= uint(l)
			b.n -= uint(l)
			return h.vals[h.valptr[l]+code-h.mincode[l]], nil
		}
		code = int32(b.acc >> (64 - uint(l+1)))
	}
	return 0, errors.New("jpeg: bad Huffman code")
}

// nextSegment finds the marker at or after pos (fill bytes allowed) and returns it, its segment's
// body (none for EOI, RSTn and TEM, which have none) and where the data after it starts.
func nextSegment(data []byte, pos int) (marker byte, seg []byte, next int, err error) {
	for pos < len(data) && data[pos] != 0xFF {
		pos++
	}
	for pos < len(data) && data[pos] == 0xFF {
		pos++
	}
	if pos >= len(data) {
		return 0, nil, pos, badImage("the jpeg data is truncated: no end of image")
	}
	marker = data[pos]
	pos++
	if marker == 0xD9 || marker >= 0xD0 && marker <= 0xD7 || marker == 0x01 {
		return marker, nil, pos, nil
	}
	if pos+2 > len(data) {
		return 0, nil, pos, badImage("the jpeg data is truncated")
	}
	l := int(binary.BigEndian.Uint16(data[pos:]))
	if l < 2 || pos+l > len(data) {
		return 0, nil, pos, badImage("the jpeg data is truncated: a segment runs past the end")
	}
	return marker, data[pos+2 : pos+l], pos + l, nil
}

// decodeDCT reads a sequential or progressive Huffman JPEG down to its coefficients. It checks the
// frame's size against maxPixels before allocating anything for it, refuses a file of more than
// maxJPEGScans scans, and stops with ctx's error once ctx ends (checked for every segment and every
// row of blocks). Components listed in dcOnly (by index) keep
// only their DC coefficients. Errors: errDCTUnsupported for what the standard path must do, an error
// wrapping errBadImage for a JPEG that is broken.
func decodeDCT(ctx context.Context, data []byte, maxPixels int64, dcOnly func(index int) bool) (*dctImage, error) {
	if len(data) < 4 || data[0] != 0xFF || data[1] != 0xD8 {
		return nil, badImage("not a JPEG")
	}
	img := &dctImage{adobe: -1}
	var dc, ac [4]dctHuffman
	pos := 2
	scanned := map[int]bool{}
	scans := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, seg, next, err := nextSegment(data, pos)
		if err != nil {
			return nil, err
		}
		pos = next
		if m == 0xD9 { // EOI
			break
		}
		switch {
		case m == 0xDB: // DQT
			if err := img.readDQT(seg); err != nil {
				return nil, err
			}
		case m == 0xC4: // DHT
			if err := readDHT(seg, &dc, &ac); err != nil {
				return nil, err
			}
		case m == 0xDD: // DRI
			if len(seg) < 2 {
				return nil, badImage("the jpeg data is corrupt: bad restart interval")
			}
			img.restart = int(binary.BigEndian.Uint16(seg))
		case m == 0xEE: // APP14 (Adobe): the colour transform
			if len(seg) >= 12 && bytes.HasPrefix(seg, []byte("Adobe")) {
				img.adobe = int(seg[11])
			}
		case m == 0xC0 || m == 0xC1 || m == 0xC2: // SOF0, SOF1, SOF2
			img.progressive = m == 0xC2
			if err := img.readFrame(seg, maxPixels, dcOnly); err != nil {
				return nil, err
			}
		case m >= 0xC3 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC:
			return nil, errDCTUnsupported // lossless, hierarchical, arithmetic
		case m == 0xDC: // DNL
			return nil, errDCTUnsupported
		case m == 0xDA: // SOS
			if img.comps == nil {
				return nil, badImage("the jpeg data is corrupt: a scan before the frame header")
			}
			if scans++; scans > maxJPEGScans {
				return nil, errTooManyScans
			}
			n, err := img.readScan(ctx, seg, data[pos:], &dc, &ac, scanned)
			if err != nil {
				return nil, err
			}
			pos += n
		}
	}
	if img.comps == nil {
		return nil, badImage("the jpeg data is corrupt: no frame")
	}
	for i := range img.comps {
		if !scanned[i] {
			return nil, badImage("the jpeg data is truncated: a component was never coded")
		}
	}
	if img.progressive {
		img.findLast()
	}
	if len(img.comps) == 3 && (img.adobe == 0 || img.comps[0].id == 'R' && img.comps[1].id == 'G' && img.comps[2].id == 'B') {
		return nil, errDCTUnsupported // RGB-coded: there is no luma component to take
	}
	return img, nil
}

// readDQT reads a DQT segment's tables (8- or 16-bit, B.2.4.1) into img.quant, in zigzag order.
func (img *dctImage) readDQT(seg []byte) error {
	for len(seg) > 0 {
		pq, tq := seg[0]>>4, int(seg[0]&15)
		n := 64 * (1 + int(pq))
		if tq > 3 || pq > 1 || len(seg) < 1+n {
			return badImage("the jpeg data is corrupt: bad quantization table")
		}
		for i := range 64 {
			if pq == 0 {
				img.quant[tq][i] = uint16(seg[1+i])
			} else {
				img.quant[tq][i] = binary.BigEndian.Uint16(seg[1+2*i:])
			}
		}
		img.quantSet[tq] = true
		seg = seg[1+n:]
	}
	return nil
}

// readDHT reads a DHT segment's tables (B.2.4.2) into the DC or AC table slots they name.
func readDHT(seg []byte, dc, ac *[4]dctHuffman) error {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return badImage("the jpeg data is corrupt: bad Huffman table")
		}
		tc, th := seg[0]>>4, int(seg[0]&15)
		var counts [16]uint8
		copy(counts[:], seg[1:17])
		total := 0
		for _, c := range counts {
			total += int(c)
		}
		if tc > 1 || th > 3 || total > 256 || len(seg) < 17+total {
			return badImage("the jpeg data is corrupt: bad Huffman table")
		}
		t := &dc[th]
		if tc == 1 {
			t = &ac[th]
		}
		if err := t.build(counts, seg[17:17+total]); err != nil {
			return badImage("the jpeg data is corrupt: %v", err)
		}
		seg = seg[17+total:]
	}
	return nil
}

// findLast records each block's last nonzero coefficient, once progressive scans have filled the
// blocks in (sequential scans record it as they decode).
func (img *dctImage) findLast() {
	for i := range img.comps {
		c := &img.comps[i]
		if c.dcOnly {
			continue
		}
		for b := range c.last {
			blk := c.coef[b*64 : b*64+64]
			last := 63
			for last > 0 && blk[last] == 0 {
				last--
			}
			c.last[b] = uint8(last)
		}
	}
}

// readFrame reads SOF0/SOF1 and allocates the coefficient arrays, after the size checks.
func (img *dctImage) readFrame(seg []byte, maxPixels int64, dcOnly func(int) bool) error {
	if img.comps != nil {
		return badImage("the jpeg data is corrupt: two frame headers")
	}
	if len(seg) < 6 {
		return badImage("the jpeg data is corrupt: short frame header")
	}
	if seg[0] != 8 {
		return errDCTUnsupported // 12-bit samples
	}
	img.height, img.width = int(binary.BigEndian.Uint16(seg[1:])), int(binary.BigEndian.Uint16(seg[3:]))
	n := int(seg[5])
	if img.height == 0 {
		return errDCTUnsupported // the height comes later, in a DNL marker
	}
	if img.width == 0 || int64(img.width)*int64(img.height) > maxPixels {
		return badImage("%s", tooManyPixels(img.width, img.height, maxPixels))
	}
	if n != 1 && n != 3 {
		return errDCTUnsupported // CMYK and other component counts
	}
	if len(seg) < 6+3*n {
		return badImage("the jpeg data is corrupt: short frame header")
	}
	img.comps = make([]dctComponent, n)
	img.hmax, img.vmax = 1, 1
	for i := range n {
		c := &img.comps[i]
		c.id, c.h, c.v, c.tq = seg[6+3*i], int(seg[7+3*i]>>4), int(seg[7+3*i]&15), int(seg[8+3*i])
		if c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 || c.tq > 3 {
			return badImage("the jpeg data is corrupt: bad sampling factors")
		}
		img.hmax, img.vmax = max(img.hmax, c.h), max(img.vmax, c.v)
	}
	mcusX, mcusY := (img.width+8*img.hmax-1)/(8*img.hmax), (img.height+8*img.vmax-1)/(8*img.vmax)
	for i := range img.comps {
		c := &img.comps[i]
		if n == 1 {
			// A single component is always coded non-interleaved, block by block.
			c.h, c.v, img.hmax, img.vmax = 1, 1, 1, 1
		}
		c.bw = ((img.width*c.h+img.hmax-1)/img.hmax + 7) / 8
		c.bh = ((img.height*c.v+img.vmax-1)/img.vmax + 7) / 8
		c.stride = mcusX * c.h
		if n == 1 {
			c.stride = c.bw
			mcusY = c.bh
		}
		rows := mcusY * c.v
		if n == 1 {
			rows = c.bh
		}
		c.dcOnly = dcOnly != nil && dcOnly(i)
		per := 64
		if c.dcOnly {
			per = 1
		}
		c.coef = make([]int16, c.stride*rows*per)
		if !c.dcOnly {
			c.last = make([]uint8, c.stride*rows)
		}
	}
	return nil
}

// scanComp is one component of a scan: its tables and its DC prediction.
type scanComp struct {
	c      *dctComponent
	dc, ac *dctHuffman
	pred   int32
}

// scanHeader is an SOS segment read (B.2.3): the components it codes and, for progressive scans,
// its spectral band ss–se and successive approximation bits ah, al.
type scanHeader struct {
	comps          []scanComp
	ss, se, ah, al int
}

// readScanHeader reads an SOS segment, checks it against the frame and the tables defined so far,
// and marks its components as scanned.
func (img *dctImage) readScanHeader(seg []byte, dc, ac *[4]dctHuffman, scanned map[int]bool) (scanHeader, error) {
	var h scanHeader
	if len(seg) < 1 {
		return h, badImage("the jpeg data is corrupt: short scan header")
	}
	ns := int(seg[0])
	if ns < 1 || ns > len(img.comps) || len(seg) < 1+2*ns+3 {
		return h, badImage("the jpeg data is corrupt: bad scan header")
	}
	h.comps = make([]scanComp, ns)
	for i := range ns {
		id, tables := seg[1+2*i], seg[2+2*i]
		found := -1
		for j := range img.comps {
			if img.comps[j].id == id {
				found = j
			}
		}
		if found < 0 {
			return h, badImage("the jpeg data is corrupt: a scan of an unknown component")
		}
		if scanned[found] && !img.progressive {
			return h, errDCTUnsupported // a second sequential scan of one component
		}
		h.comps[i] = scanComp{c: &img.comps[found], dc: &dc[tables>>4&3], ac: &ac[tables&3]}
		scanned[found] = true
	}
	h.ss, h.se, h.ah, h.al = int(seg[1+2*ns]), int(seg[2+2*ns]), int(seg[3+2*ns]>>4), int(seg[3+2*ns]&15)
	if !img.progressive && (h.ss != 0 || h.se != 63 || h.ah != 0 || h.al != 0) {
		return h, errDCTUnsupported
	}
	if img.progressive && (h.se > 63 || h.ss > h.se || h.ss == 0 && h.se != 0 || h.ss > 0 && ns != 1 || h.ah > 13 || h.al > 13) {
		return h, badImage("the jpeg data is corrupt: bad progressive scan")
	}
	for _, c := range h.comps {
		needDC := h.ss == 0 && h.ah == 0
		needAC := !img.progressive || h.ss > 0
		if needDC && !c.dc.defined || needAC && !c.ac.defined || !img.quantSet[c.c.tq] {
			return h, badImage("the jpeg data is corrupt: a scan uses a table never defined")
		}
	}
	return h, nil
}

// scanExtent is the length of the entropy-coded data at the start of data: up to the first marker
// that is not a restart (RSTn).
func scanExtent(data []byte) int {
	end := 0
	for end < len(data) {
		if data[end] == 0xFF && end+1 < len(data) && data[end+1] != 0 && (data[end+1] < 0xD0 || data[end+1] > 0xD7) {
			break
		}
		end++
	}
	return end
}

// restart moves br past restart marker RSTn (n = rst mod 8), discarding the current byte's
// leftover bits, or reports that the marker is missing.
func (br *dctBits) restart(rst int) error {
	if !br.marker {
		br.fill()
	}
	p := br.pos
	for p+1 < len(br.data) && !(br.data[p] == 0xFF && br.data[p+1] >= 0xD0 && br.data[p+1] <= 0xD7) {
		p++
	}
	if p+1 >= len(br.data) || br.data[p+1] != byte(0xD0+rst%8) {
		return badImage("the jpeg data is corrupt: missing restart marker")
	}
	*br = dctBits{data: br.data, pos: p + 2}
	return nil
}

// readScan decodes one scan (its header seg, its entropy-coded data starting data) and returns how
// many bytes of data it used, up to the next marker that is not a restart. It stops with ctx's error
// once ctx ends, checked every row of MCUs.
func (img *dctImage) readScan(ctx context.Context, seg, data []byte, dc, ac *[4]dctHuffman, scanned map[int]bool) (int, error) {
	h, err := img.readScanHeader(seg, dc, ac, scanned)
	if err != nil {
		return 0, err
	}
	end := scanExtent(data)
	if img.progressive && h.ss > 0 && h.comps[0].c.dcOnly {
		return end, nil // an AC band of a component kept at DC only: skipped, not decoded
	}
	// A non-interleaved scan codes every block of its one component in raster order; an
	// interleaved one codes MCUs, each h×v blocks of every component.
	interleaved := len(h.comps) > 1
	perRow := h.comps[0].c.bw
	total := perRow * h.comps[0].c.bh
	if interleaved {
		perRow = (img.width + 8*img.hmax - 1) / (8 * img.hmax)
		total = perRow * ((img.height + 8*img.vmax - 1) / (8 * img.vmax))
	}
	br := &dctBits{data: data[:end]}
	var scratch [64]int16
	rst, eobrun := 0, 0
	for mcu := 0; mcu < total; mcu++ {
		if mcu%perRow == 0 {
			// Once a row: a deadline or a shutdown stops even the largest scan within milliseconds.
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		if img.restart > 0 && mcu > 0 && mcu%img.restart == 0 {
			// Expect RSTn, then start afresh: predictions and EOB runs reset.
			if err := br.restart(rst); err != nil {
				return 0, err
			}
			rst++
			eobrun = 0
			for i := range h.comps {
				h.comps[i].pred = 0
			}
		}
		for i := range h.comps {
			s := &h.comps[i]
			bx0, by0, nx, ny := mcu%perRow, mcu/perRow, 1, 1
			if interleaved {
				bx0, by0, nx, ny = (mcu%perRow)*s.c.h, (mcu/perRow)*s.c.v, s.c.h, s.c.v
			}
			for by := by0; by < by0+ny; by++ {
				for bx := bx0; bx < bx0+nx; bx++ {
					if err := img.decodeScanBlock(br, s, by*s.c.stride+bx, &h, &eobrun, &scratch); err != nil {
						return 0, err
					}
				}
			}
		}
	}
	for i := range h.comps {
		// Progressive scans code other symbols than a sequential re-encoding: those are counted then.
		h.comps[i].c.acCounted = !h.comps[i].c.dcOnly && !img.progressive
	}
	return end, nil
}

// decodeScanBlock decodes block b of scan component s: what the scan h codes of it (a sequential
// block, or a progressive scan's band and bits), into the component's coefficients.
func (img *dctImage) decodeScanBlock(br *dctBits, s *scanComp, b int, h *scanHeader, eobrun *int, scratch *[64]int16) error {
	if img.progressive {
		var blk []int16
		if s.c.dcOnly {
			blk = s.c.coef[b : b+1]
		} else {
			blk = s.c.coef[b*64 : b*64+64]
		}
		var err error
		switch {
		case h.ss == 0 && h.ah == 0:
			err = decodeDCFirst(br, s.dc, &s.pred, blk, h.al)
		case h.ss == 0:
			blk[0] |= int16(br.bits(1) << h.al)
		case h.ah == 0:
			err = decodeACFirst(br, s.ac, blk, h.ss, h.se, h.al, eobrun)
		default:
			err = decodeACRefine(br, s.ac, blk, h.ss, h.se, h.al, eobrun)
		}
		if err == nil && br.overrun() {
			err = badImage("the jpeg data is truncated")
		}
		return err
	}
	if s.c.dcOnly {
		if _, err := decodeBlock(br, s.dc, s.ac, &s.pred, scratch[:], nil); err != nil {
			return err
		}
		s.c.coef[b] = scratch[0]
		clear(scratch[:])
		return nil
	}
	last, err := decodeBlock(br, s.dc, s.ac, &s.pred, s.c.coef[b*64:b*64+64], &s.c.acFreq)
	if err != nil {
		return err
	}
	s.c.last[b] = last
	return nil
}

// decodeDCFirst reads a block's DC coefficient in a first progressive DC scan (G.1.2.1): the
// difference from pred, scaled by the point transform al.
func decodeDCFirst(br *dctBits, dc *dctHuffman, pred *int32, blk []int16, al int) error {
	t, err := br.decode(dc)
	if err != nil {
		return badImage("the jpeg data is corrupt or truncated: %v", err)
	}
	if t > 11 {
		return badImage("the jpeg data is corrupt: bad DC difference")
	}
	*pred += br.receiveExtend(t)
	blk[0] = int16(*pred << al)
	return nil
}

// decodeACFirst reads band ss–se of a block in a first progressive AC scan (G.1.2.2), with runs of
// blocks that end early (EOBRUN) carried across blocks in eobrun.
func decodeACFirst(br *dctBits, ac *dctHuffman, blk []int16, ss, se, al int, eobrun *int) error {
	if *eobrun > 0 {
		*eobrun--
		return nil
	}
	for k := ss; k <= se; {
		rs, err := br.decode(ac)
		if err != nil {
			return badImage("the jpeg data is corrupt or truncated: %v", err)
		}
		r, s := int(rs>>4), rs&15
		if s == 0 {
			if r < 15 {
				*eobrun = 1<<r - 1
				if r > 0 {
					*eobrun += int(br.bits(uint(r)))
				}
				return nil
			}
			k += 16
			continue
		}
		k += r
		if k > se || s > 10 {
			return badImage("the jpeg data is corrupt: bad AC coefficient")
		}
		blk[k] = int16(br.receiveExtend(s) << al)
		k++
	}
	return nil
}

// decodeACRefine reads a progressive AC refinement scan of band ss–se (G.1.2.3): one more bit of
// each coefficient already nonzero, and the coefficients that become nonzero (±1 at this bit).
func decodeACRefine(br *dctBits, ac *dctHuffman, blk []int16, ss, se, al int, eobrun *int) error {
	p1, m1 := int16(1)<<al, int16(-1)<<al
	refine := func(c *int16) {
		if br.bits(1) == 1 && *c&p1 == 0 {
			if *c >= 0 {
				*c += p1
			} else {
				*c += m1
			}
		}
	}
	k := ss
	if *eobrun == 0 {
		for ; k <= se; k++ {
			rs, err := br.decode(ac)
			if err != nil {
				return badImage("the jpeg data is corrupt or truncated: %v", err)
			}
			r, s := int(rs>>4), rs&15
			var value int16
			if s != 0 {
				if s != 1 {
					return badImage("the jpeg data is corrupt: bad refinement")
				}
				value = m1
				if br.bits(1) == 1 {
					value = p1
				}
			} else if r != 15 {
				*eobrun = 1 << r
				if r > 0 {
					*eobrun += int(br.bits(uint(r)))
				}
				break
			}
			// Skip the coefficients already nonzero (refining them) and r zero ones.
			for ; k <= se; k++ {
				if blk[k] != 0 {
					refine(&blk[k])
				} else {
					if r == 0 {
						break
					}
					r--
				}
			}
			if value != 0 {
				if k > se {
					return badImage("the jpeg data is corrupt: bad refinement")
				}
				blk[k] = value
			}
		}
	}
	if *eobrun > 0 {
		for ; k <= se; k++ {
			if blk[k] != 0 {
				refine(&blk[k])
			}
		}
		*eobrun--
	}
	return nil
}

// decodeBlock reads one block's coefficients (zigzag order) into blk, which must be zero, and
// returns the index of its last nonzero coefficient; pred is the DC prediction. With acFreq, it
// counts the AC symbols it reads there.
func decodeBlock(br *dctBits, dc, ac *dctHuffman, pred *int32, blk []int16, acFreq *[256]int64) (uint8, error) {
	t, err := br.decode(dc)
	if err != nil {
		return 0, badImage("the jpeg data is corrupt or truncated: %v", err)
	}
	if t > 11 {
		return 0, badImage("the jpeg data is corrupt: bad DC difference")
	}
	*pred += br.receiveExtend(t)
	blk[0] = int16(*pred)
	last := 0
	for k := 1; k < 64; {
		rs, err := br.decode(ac)
		if err != nil {
			return 0, badImage("the jpeg data is corrupt or truncated: %v", err)
		}
		if acFreq != nil {
			acFreq[rs]++
		}
		r, s := int(rs>>4), rs&15
		if s == 0 {
			if r != 15 {
				break // end of block
			}
			k += 16
			continue
		}
		k += r
		if k > 63 || s > 10 {
			return 0, badImage("the jpeg data is corrupt: bad AC coefficient")
		}
		blk[k] = int16(br.receiveExtend(s))
		last = k
		k++
	}
	if br.overrun() {
		return 0, badImage("the jpeg data is truncated")
	}
	return uint8(last), nil
}

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

// subsampleRatio names the chroma subsampling of three components, when the image package has one
// for it: chroma at (1,1), luma at one of the factors below.
func subsampleRatio(c []dctComponent) (image.YCbCrSubsampleRatio, bool) {
	if c[1].h != 1 || c[1].v != 1 || c[2].h != 1 || c[2].v != 1 {
		return 0, false
	}
	switch [2]int{c[0].h, c[0].v} {
	case [2]int{1, 1}:
		return image.YCbCrSubsampleRatio444, true
	case [2]int{2, 1}:
		return image.YCbCrSubsampleRatio422, true
	case [2]int{2, 2}:
		return image.YCbCrSubsampleRatio420, true
	case [2]int{1, 2}:
		return image.YCbCrSubsampleRatio440, true
	case [2]int{4, 1}:
		return image.YCbCrSubsampleRatio411, true
	case [2]int{4, 2}:
		return image.YCbCrSubsampleRatio410, true
	}
	return 0, false
}

// jpegLayout is what a JPEG's markers say before any scan is decoded.
type jpegLayout struct {
	scans       int
	progressive bool
	components  int
	samples     float64 // samples per pixel over all components (1.5 for 4:2:0 colour)
}

// scanJPEG reads the markers of the JPEG in r: its frame's layout, and how many scans it has. It
// skips entropy-coded data without decoding it, and returns errTooManyScans as soon as the count
// passes maxJPEGScans. A file that ends before EOI is not an error here: what its scans hold is the
// decoders' to judge. One pass over the bytes, no allocation beyond its buffer.
func scanJPEG(r io.Reader) (jpegLayout, error) {
	var lay jpegLayout
	br := bufio.NewReaderSize(r, 64<<10)
	var soi [2]byte
	if _, err := io.ReadFull(br, soi[:]); err != nil || soi != [2]byte{0xFF, 0xD8} {
		return lay, badImage("not a JPEG")
	}
	inScan := false // after an SOS header: entropy-coded bytes until the next marker
	for {
		if inScan {
			// Entropy-coded data: only a 0xFF can start a marker.
			if _, err := br.ReadSlice(0xFF); err == bufio.ErrBufferFull {
				continue
			} else if err != nil {
				return lay, nil
			}
		} else if b, err := br.ReadByte(); err != nil {
			return lay, nil
		} else if b != 0xFF {
			continue // garbage between segments: the decoders decide what it means
		}
		m, err := br.ReadByte()
		for err == nil && m == 0xFF { // fill bytes
			m, err = br.ReadByte()
		}
		if err != nil {
			return lay, nil
		}
		switch {
		case m == 0x00 || m >= 0xD0 && m <= 0xD7: // stuffed byte, or a restart inside the scan
			continue
		case m == 0xD9: // EOI
			return lay, nil
		case m == 0x01 || m == 0xD8: // no length field
			inScan = false
			continue
		}
		inScan = false
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return lay, nil
		}
		n := int(binary.BigEndian.Uint16(l[:])) - 2
		if n < 0 {
			return lay, badImage("the jpeg data is corrupt: a segment length under 2")
		}
		switch {
		case m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC && lay.components == 0: // SOFn
			seg := make([]byte, n)
			if _, err := io.ReadFull(br, seg); err != nil {
				return lay, nil
			}
			lay.progressive = m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE
			lay.components, lay.samples = frameSamples(seg)
			continue
		case m == 0xDA:
			if lay.scans++; lay.scans > maxJPEGScans {
				return lay, errTooManyScans
			}
			inScan = true
		}
		if _, err := br.Discard(n); err != nil {
			return lay, nil
		}
	}
}

// frameSamples reads a frame header's components and how many samples per pixel they hold together
// (each component's sampling factors over the largest ones).
func frameSamples(seg []byte) (int, float64) {
	if len(seg) < 6 {
		return 0, 3
	}
	n := int(seg[5])
	if n == 0 || len(seg) < 6+3*n {
		return n, 3
	}
	hmax, vmax := 1, 1
	for i := range n {
		h, v := int(seg[7+3*i]>>4), int(seg[7+3*i]&15)
		hmax, vmax = max(hmax, h), max(vmax, v)
	}
	samples := 0.0
	for i := range n {
		h, v := int(seg[7+3*i]>>4), int(seg[7+3*i]&15)
		samples += float64(max(h, 1)*max(v, 1)) / float64(hmax*vmax)
	}
	return n, samples
}

// ---- Writing one component ----

// dctWriter writes entropy-coded bits with 0xFF stuffing (F.1.2.3), 32 bits at a time.
type dctWriter struct {
	buf []byte
	acc uint64 // the last n bits are pending, right-aligned
	n   uint
}

// put appends the size low bits of code (size ≤ 16).
func (w *dctWriter) put(code uint32, size uint) {
	w.acc = w.acc<<size | uint64(code)
	w.n += size
	if w.n < 32 {
		return
	}
	w.n -= 32
	v := uint32(w.acc >> w.n)
	if x := ^v; (x-0x01010101)&^x&0x80808080 == 0 { // no 0xFF byte in v: the common case
		w.buf = append(w.buf, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
		return
	}
	for shift := 24; shift >= 0; shift -= 8 {
		b := byte(v >> shift)
		w.buf = append(w.buf, b)
		if b == 0xFF {
			w.buf = append(w.buf, 0)
		}
	}
}

// flush writes the pending bits, the last byte padded with one bits.
func (w *dctWriter) flush() {
	if pad := (8 - w.n%8) % 8; pad > 0 {
		w.acc = w.acc<<pad | (1<<pad - 1)
		w.n += pad
	}
	for w.n > 0 {
		w.n -= 8
		b := byte(w.acc >> w.n)
		w.buf = append(w.buf, b)
		if b == 0xFF {
			w.buf = append(w.buf, 0)
		}
	}
}

// huffCode is a table for encoding: code and length by symbol.
type huffCode struct {
	code [256]uint32
	size [256]uint8
}

// optimalTable returns BITS and HUFFVAL for the symbol frequencies freq (Annex K.2), lengths capped
// at 16 (K.3), with the all-ones code left unused.
func optimalTable(freq [256]int64) ([16]uint8, []uint8) {
	var f [257]int64
	copy(f[:], freq[:])
	f[256] = 1 // reserves one code, so no code is all ones
	var codesize [257]int
	var others [257]int
	for i := range others {
		others[i] = -1
	}
	for {
		v1, v2 := -1, -1
		for i := range f { // least frequency, largest index among equals
			if f[i] > 0 && (v1 < 0 || f[i] <= f[v1]) {
				v1 = i
			}
		}
		for i := range f {
			if f[i] > 0 && i != v1 && (v2 < 0 || f[i] <= f[v2]) {
				v2 = i
			}
		}
		if v2 < 0 {
			break
		}
		f[v1] += f[v2]
		f[v2] = 0
		for codesize[v1]++; others[v1] >= 0; codesize[v1]++ {
			v1 = others[v1]
		}
		others[v1] = v2
		for codesize[v2]++; others[v2] >= 0; codesize[v2]++ {
			v2 = others[v2]
		}
	}
	// With 257 symbols a code can be up to 256 bits long (Fibonacci-like counts make such chains),
	// so the lengths are counted up to there, and K.3's adjustment, applied from the longest length
	// down, brings every one to 16 at most. Each step keeps the Kraft sum at 1 (two codes of length
	// i become one of i-1; one of j becomes two of j+1), and a shorter code to split always exists:
	// were every code of length i-1 or i > 16, there would be at least 2^16 of them.
	var count [len(f)]int
	maxLen := 0
	for _, s := range codesize {
		if s > 0 {
			count[s]++
			maxLen = max(maxLen, s)
		}
	}
	if maxLen == 0 {
		return [16]uint8{}, nil // no symbol in use: the reserved code stood alone
	}
	for i := maxLen; i > 16; i-- {
		for count[i] > 0 {
			j := i - 2
			for count[j] == 0 {
				j--
			}
			count[i] -= 2
			count[i-1]++
			count[j+1] += 2
			count[j]--
		}
	}
	i := 16
	for count[i] == 0 {
		i--
	}
	count[i]-- // drop the reserved code
	var out [16]uint8
	for l := 1; l <= 16; l++ {
		out[l-1] = uint8(count[l])
	}
	// Symbols in order of their unadjusted lengths, the more frequent first among equals: the
	// adjustment keeps that order, so the longest codes still go to the rarest symbols.
	var vals []uint8
	for sym := range 256 {
		if codesize[sym] > 0 {
			vals = append(vals, uint8(sym))
		}
	}
	slices.SortStableFunc(vals, func(a, b uint8) int {
		if d := codesize[a] - codesize[b]; d != 0 {
			return d
		}
		return cmp.Compare(freq[b], freq[a])
	})
	return out, vals
}

// codes assigns canonical codes (Annex C) to BITS and HUFFVAL.
func codes(counts [16]uint8, vals []uint8) *huffCode {
	h := &huffCode{}
	code, k := uint32(0), 0
	for l := 1; l <= 16; l++ {
		for range counts[l-1] {
			h.code[vals[k]], h.size[vals[k]] = code, uint8(l)
			code++
			k++
		}
		code <<= 1
	}
	return h
}

// category is the number of bits of |v| (the SSSS of F.1.2).
func category(v int32) uint8 {
	if v < 0 {
		v = -v
	}
	return uint8(bits.Len32(uint32(v)))
}

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

// encodeGray writes component c, of size width×height, as a baseline (or, with 16-bit tables,
// extended sequential) one-component JPEG quantized by q, with Huffman tables made for it. Two
// passes over the blocks: count the symbols, then code them with tables made from the counts.
func encodeGray(w io.Writer, c *dctComponent, width, height int, q [64]uint16) error {
	if c.dcOnly {
		return errors.New("jpeg: component kept only its DC coefficients")
	}
	dcFreq, acFreq, err := countSymbols(c)
	if err != nil {
		return err
	}
	dcBits, dcVals := optimalTable(dcFreq)
	acBits, acVals := optimalTable(acFreq)
	if _, err := w.Write(grayHeaders(width, height, q, dcBits, dcVals, acBits, acVals)); err != nil {
		return err
	}
	if _, err := w.Write(codeBlocks(c, codes(dcBits, dcVals), codes(acBits, acVals))); err != nil {
		return err
	}
	_, err = w.Write([]byte{0xFF, 0xD9})
	return err
}

// countSymbols counts the DC and AC symbols of c's blocks (raster order, those holding image data).
// AC symbols are run/size pairs, with ZRL (0xF0) for each 16 zeros before a coefficient and EOB
// (0x00) when a block ends in zeros (F.1.2.2). It refuses, with errDCTUnsupported, coefficients an
// 8-bit JPEG cannot code.
func countSymbols(c *dctComponent) (dcFreq, acFreq [256]int64, err error) {
	acFreq = c.acFreq
	countAC := !c.acCounted
	if !countAC {
		// A block that ends early is coded with EOB; the original may have padded it with ZRLs
		// instead, and never have used EOB at all. Every other symbol of ours is one it coded.
		acFreq[0x00] = max(acFreq[0x00], 1)
	}
	var pred int32
	for by := range c.bh {
		for bx := range c.bw {
			b := by*c.stride + bx
			blk := c.coef[b*64 : b*64+64]
			dc := category(int32(blk[0]) - pred)
			if dc > 11 {
				// Only a corrupt file's predictions wander this far (an 8-bit JPEG's DC differences
				// have at most 11 bits, F.1.2.1); libjpeg refuses to write it too. Pixels decide.
				return dcFreq, acFreq, errDCTUnsupported
			}
			dcFreq[dc]++
			pred = int32(blk[0])
			if !countAC {
				continue
			}
			run, end := 0, int(c.last[b])
			for k := 1; k <= end; k++ {
				if blk[k] == 0 {
					run++
					continue
				}
				ac := category(int32(blk[k]))
				if ac > 10 {
					return dcFreq, acFreq, errDCTUnsupported // likewise: AC coefficients have at most 10 bits
				}
				acFreq[0xF0] += int64(run >> 4)
				acFreq[uint8(run&15)<<4|ac]++
				run = 0
			}
			if end < 63 {
				acFreq[0x00]++
			}
		}
	}
	return dcFreq, acFreq, nil
}

// grayHeaders is a one-component JPEG's start: SOI, DQT (8-bit, or 16-bit entries and then an
// extended sequential SOF1), SOF, DHT of both tables, and the SOS of its one scan.
func grayHeaders(width, height int, q [64]uint16, dcBits [16]uint8, dcVals []uint8, acBits [16]uint8, acVals []uint8) []byte {
	var out bytes.Buffer
	seg := func(marker byte, body []byte) {
		out.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		out.Write(body)
	}
	out.Write([]byte{0xFF, 0xD8})
	sof, dqt := byte(0xC0), []byte{0}
	if slices.ContainsFunc(q[:], func(v uint16) bool { return v > 255 }) {
		sof, dqt = 0xC1, []byte{0x10}
	}
	for _, v := range q {
		if sof == 0xC1 {
			dqt = append(dqt, byte(v>>8))
		}
		dqt = append(dqt, byte(v))
	}
	seg(0xDB, dqt)
	seg(sof, []byte{8, byte(height >> 8), byte(height), byte(width >> 8), byte(width), 1, 1, 0x11, 0})
	dht := append([]byte{0x00}, dcBits[:]...)
	dht = append(dht, dcVals...)
	dht = append(dht, 0x10)
	dht = append(dht, acBits[:]...)
	dht = append(dht, acVals...)
	seg(0xC4, dht)
	seg(0xDA, []byte{1, 1, 0x00, 0, 63, 0})
	return out.Bytes()
}

// codeBlocks is the entropy-coded data of c's blocks under the tables dcCode and acCode.
func codeBlocks(c *dctComponent, dcCode, acCode *huffCode) []byte {
	// About 6 bytes a block for a photo at quality 85: start with room for 8.
	bw := &dctWriter{buf: make([]byte, 0, c.bw*c.bh*8)}
	// putValue writes the s low bits of v's code: v itself, or v-1 for negatives (F.1.2.1).
	putValue := func(v int32, s uint8) {
		if v < 0 {
			v--
		}
		bw.put(uint32(v)&(1<<s-1), uint(s))
	}
	var pred int32
	for by := range c.bh {
		for bx := range c.bw {
			b := by*c.stride + bx
			blk := c.coef[b*64 : b*64+64]
			diff := int32(blk[0]) - pred
			pred = int32(blk[0])
			s := category(diff)
			bw.put(dcCode.code[s], uint(dcCode.size[s]))
			if s > 0 {
				putValue(diff, s)
			}
			run, end := 0, int(c.last[b])
			for k := 1; k <= end; k++ {
				v := int32(blk[k])
				if v == 0 {
					run++
					continue
				}
				for ; run > 15; run -= 16 {
					bw.put(acCode.code[0xF0], uint(acCode.size[0xF0]))
				}
				s := category(v)
				sym := uint8(run)<<4 | s
				bw.put(acCode.code[sym], uint(acCode.size[sym]))
				putValue(v, s)
				run = 0
			}
			if end < 63 {
				bw.put(acCode.code[0x00], uint(acCode.size[0x00]))
			}
		}
	}
	bw.flush()
	return bw.buf
}
