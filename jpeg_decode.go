// The DCT path's decoder (ITU T.81 F.2.2 and G.1.2): segments, tables, the frame and scans, and
// Huffman decoding of sequential and progressive scans down to the quantized coefficients.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
)

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
				h.fillFast(code+i, l, vals[k+i])
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

// fillFast enters code (of l bits, for symbol rs) in the fast table: every fastBits-bit window that
// starts with it and holds its magnitude bits too, decoded. Each window is one code's, so a table's
// entries are written at most once: the work is bounded by the table's size, not the codes'.
func (h *dctHuffman) fillFast(code int32, l int, rs uint8) {
	size := int(rs & 15)
	if l+size > fastBits {
		return
	}
	first := int(code) << (fastBits - l)
	for p := first; p < first+1<<(fastBits-l); p++ {
		var v int32
		if size > 0 {
			v = int32(p>>(fastBits-l-size)) & (1<<size - 1) // the magnitude bits after the code
			if v < 1<<(size-1) {
				v += -1<<size + 1
			}
		}
		h.fast[p] = v<<16 | int32(rs)<<8 | int32(l+size)
	}
}

// overrun reports whether decoding has consumed bits past the end of the data: the scan is truncated.
func (b *dctBits) overrun() bool { return b.padded > b.n }

// fill tops acc up to at least 57 valid bits (zeros past a marker or the end).
func (b *dctBits) fill() {
	if !b.marker && b.pos+8 <= len(b.data) {
		// Eight bytes at once when none of them is 0xFF (no stuffing, no marker): the common case.
		v := binary.BigEndian.Uint64(b.data[b.pos:])
		if x := ^v; (x-0x0101010101010101)&^x&0x8080808080808080 == 0 {
			k := (64 - b.n) / 8 // whole bytes that fit
			b.acc |= v &^ (1<<(64-8*k) - 1) >> b.n
			b.pos += int(k)
			b.n += 8 * k
			return
		}
	}
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
	return decodeDCTRows(ctx, data, maxPixels, dcOnly, nil)
}

// decodeDCTRows is decodeDCT that gives rows each row of MCUs once its coefficients are all read
// (component c's block rows m·c.v to m·c.v+c.v−1 of MCU row m: blockRow). A sequential frame is
// streamed: only one row of MCUs is held, handed to rows as soon as its blocks are decoded, then
// reused, so memory stays at a row's worth; such a frame must code all its components in one
// scan (else errDCTUnsupported). A progressive frame is held whole and given to rows at the end.
func decodeDCTRows(ctx context.Context, data []byte, maxPixels int64, dcOnly func(index int) bool, rows func(img *dctImage, mcuRow int) error) (*dctImage, error) {
	if len(data) < 4 || data[0] != 0xFF || data[1] != 0xD8 {
		return nil, badImage("not a JPEG")
	}
	img := &dctImage{adobe: -1, rows: rows}
	var dc, ac [4]dctHuffman
	pos := 2
	scanned := map[int]bool{}
	scans := 0
	var work jpegLayout // the frame and the coefficient visits so far, as scanJPEG counts them
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
			img.streaming = rows != nil && !img.progressive
			if err := img.readFrame(seg, maxPixels, dcOnly); err != nil {
				return nil, err
			}
			work.frame, work.progressive = readJPEGFrame(seg), img.progressive
			work.components, work.samples = frameSamples(seg)
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
			if work.visits += work.frame.scanVisits(seg, work.progressive); work.visits > work.visitLimit() {
				return nil, errTooMuchWork
			}
			n, err := img.readScan(ctx, seg, data[pos:], &dc, &ac, scanned)
			if err != nil {
				return nil, err
			}
			pos += n
		}
	}
	if err := img.complete(scanned); err != nil {
		return nil, err
	}
	if err := img.passHeld(); err != nil {
		return nil, err
	}
	return img, nil
}

// passHeld gives every MCU row of an image held whole (not streamed) to its rows function, if any.
func (img *dctImage) passHeld() error {
	if img.rows == nil || img.streaming {
		return nil
	}
	for m := range img.mcuRows() {
		if err := img.rows(img, m); err != nil {
			return err
		}
	}
	return nil
}

// complete checks, after the last segment, that img has a frame and every component was coded
// (scanned holds the components scans coded), and finishes a progressive image's bookkeeping. An
// RGB-coded image is errDCTUnsupported: there is no luma component to take.
func (img *dctImage) complete(scanned map[int]bool) error {
	if img.comps == nil {
		return badImage("the jpeg data is corrupt: no frame")
	}
	for i := range img.comps {
		if !scanned[i] {
			return badImage("the jpeg data is truncated: a component was never coded")
		}
	}
	if img.progressive {
		img.findLast()
	}
	if len(img.comps) == 3 && (img.adobe == 0 || img.comps[0].id == 'R' && img.comps[1].id == 'G' && img.comps[2].id == 'B') {
		return errDCTUnsupported
	}
	return nil
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
	if err := checkPixels(img.width, img.height, maxPixels); err != nil {
		return err
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
		c.held = mcusY * c.v
		if n == 1 {
			c.held = c.bh
		}
		if img.streaming {
			c.held = c.v
		}
		rows := c.held
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
	for {
		i := bytes.IndexByte(data[end:], 0xFF) // 0xFF bytes are rare in the data: skip to the next
		if i < 0 {
			return len(data)
		}
		end += i
		if end+1 < len(data) && data[end+1] != 0 && (data[end+1] < 0xD0 || data[end+1] > 0xD7) {
			return end
		}
		end++
	}
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
	if img.streaming && len(h.comps) != len(img.comps) {
		return 0, errDCTUnsupported // a sequential frame in several scans cannot be streamed
	}
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
	blocks := img.sequentialBlocks(&h, interleaved)
	rst, eobrun := 0, 0
	mx, my := 0, 0 // the MCU's column and row, counted (no division per MCU)
	for mcu := 0; mcu < total; mcu, mx = mcu+1, mx+1 {
		if mx == perRow {
			mx, my = 0, my+1
		}
		if mx == 0 {
			// Once a row: a deadline or a shutdown stops even the largest scan within milliseconds.
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			if my > 0 && img.streaming {
				if err := img.passRow(my - 1); err != nil {
					return 0, err
				}
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
		if blocks != nil {
			if err := img.decodeSequentialMCU(br, blocks, mx, my); err != nil {
				return 0, err
			}
		} else if err := img.decodeMCU(br, &h, mx, my, interleaved, &eobrun, &scratch); err != nil {
			return 0, err
		}
	}
	if img.streaming && total > 0 {
		if err := img.passRow((total - 1) / perRow); err != nil {
			return 0, err
		}
	}
	for i := range h.comps {
		// Progressive scans code other symbols than a sequential re-encoding, and a streamed scan
		// counts none: those are counted when needed.
		h.comps[i].c.acCounted = !h.comps[i].c.dcOnly && !img.progressive && !img.streaming
	}
	return end, nil
}

// mcuBlock is one block of an interleaved sequential scan's MCU: its component, and where it is
// among the component's held blocks in the MCU at column 0 (of the MCU row held, when streamed).
type mcuBlock struct {
	s     *scanComp
	at    int         // dy·stride + dx
	h, v  int         // the component's blocks in an MCU, across and down
	count *[256]int64 // where its AC symbols are counted, or nil
	_     [0]func()   // not comparable
}

// sequentialBlocks lists the blocks of an MCU of scan h when it is an interleaved sequential scan
// that keeps every coefficient (the common case, decoded by decodeSequentialMCU); nil otherwise.
func (img *dctImage) sequentialBlocks(h *scanHeader, interleaved bool) []mcuBlock {
	if img.progressive || !interleaved {
		return nil
	}
	var blocks []mcuBlock
	for i := range h.comps {
		s := &h.comps[i]
		if s.c.dcOnly {
			return nil
		}
		count := &s.c.acFreq
		if img.streaming {
			count = nil
		}
		for dy := range s.c.v {
			for dx := range s.c.h {
				blocks = append(blocks, mcuBlock{s: s, at: dy*s.c.stride + dx, h: s.c.h, v: s.c.v, count: count})
			}
		}
	}
	return blocks
}

// decodeSequentialMCU decodes the MCU at column mx, row my of an interleaved sequential scan whose
// blocks are listed (sequentialBlocks): decodeMCU without its per-block choices.
func (img *dctImage) decodeSequentialMCU(br *dctBits, blocks []mcuBlock, mx, my int) error {
	for i := range blocks {
		bl := &blocks[i]
		b := bl.at + mx*bl.h
		if !img.streaming {
			b += my * bl.v * bl.s.c.stride
		}
		last, err := decodeBlock(br, bl.s.dc, bl.s.ac, &bl.s.pred, (*[64]int16)(bl.s.c.coef[b*64:]), bl.count)
		if err != nil {
			return err
		}
		bl.s.c.last[b] = last
	}
	return nil
}

// decodeMCU decodes the MCU at column mx, row my of scan h (for a scan of one component, a block).
func (img *dctImage) decodeMCU(br *dctBits, h *scanHeader, mx, my int, interleaved bool, eobrun *int, scratch *[64]int16) error {
	for i := range h.comps {
		s := &h.comps[i]
		bx0, by0, nx, ny := mx, my, 1, 1
		if interleaved {
			bx0, by0, nx, ny = mx*s.c.h, my*s.c.v, s.c.h, s.c.v
		}
		held := 0 // the first block row held: a streamed image holds this MCU row's alone
		if img.streaming {
			held = by0
		}
		// The symbols of a sequential scan are counted for a re-encoding of the coefficients; a
		// streamed image has none.
		freq := &s.c.acFreq
		if img.streaming {
			freq = nil
		}
		for by := by0; by < by0+ny; by++ {
			row := (by - held) * s.c.stride
			for bx := bx0; bx < bx0+nx; bx++ {
				if b := row + bx; !img.progressive && !s.c.dcOnly {
					// A sequential block kept whole, the common case, decoded here directly.
					last, err := decodeBlock(br, s.dc, s.ac, &s.pred, (*[64]int16)(s.c.coef[b*64:]), freq)
					if err != nil {
						return err
					}
					s.c.last[b] = last
				} else if err := img.decodeScanBlock(br, s, b, h, eobrun, scratch); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// passRow gives a streamed image's MCU row m to its rows function. The next row is decoded over it:
// a streamed (sequential, single-scan) frame's row has every block coded in it, and decodeBlock
// writes each whole.
func (img *dctImage) passRow(m int) error {
	return img.rows(img, m)
}

// decodeScanBlock decodes block b of scan component s, for what readScan does not decode itself (a
// sequential block kept whole): what the scan h codes of it (a progressive scan's band and bits, or
// a sequential block of which only DC is kept), into the component's coefficients.
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
	if _, err := decodeBlock(br, s.dc, s.ac, &s.pred, scratch, nil); err != nil {
		return err
	}
	s.c.coef[b] = scratch[0]
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

// decodeDC reads a block's DC difference and adds it to the prediction pred (F.2.2.1).
func decodeDC(br *dctBits, dc *dctHuffman, pred *int32) error {
	if br.n < 16 {
		br.fill()
	}
	if e := dc.fast[br.acc>>(64-fastBits)]; e != 0 && uint8(e>>8) <= 11 {
		used := uint(e & 0xff)
		br.acc <<= used
		br.n -= used
		*pred += e >> 16
		return nil
	}
	t, err := br.decode(dc)
	if err != nil {
		return badImage("the jpeg data is corrupt or truncated: %v", err)
	}
	if t > 11 {
		return badImage("the jpeg data is corrupt: bad DC difference")
	}
	*pred += br.receiveExtend(t)
	return nil
}

// decodeBlock reads one block's coefficients (zigzag order) into blk, zeroing it first (a streamed
// row's blocks are reused, a held one's written once), and returns the index of its last nonzero
// coefficient; pred is the DC prediction. With acFreq, it counts the AC symbols it reads there.
func decodeBlock(br *dctBits, dc, ac *dctHuffman, pred *int32, blk *[64]int16, acFreq *[256]int64) (uint8, error) {
	*blk = [64]int16{}
	if err := decodeDC(br, dc, pred); err != nil {
		return 0, err
	}
	blk[0] = int16(*pred)
	last := 0
	// The fast path works on the bits in locals (through br, each symbol would load and store them),
	// written back before anything else reads br.
	acc, n := br.acc, br.n
	for k := 1; k < 64; {
		if n < 16 {
			br.acc, br.n = acc, n
			br.fill()
			acc, n = br.acc, br.n
		}
		if e := ac.fast[acc>>(64-fastBits)]; e != 0 {
			// A symbol and its bits in one lookup: a coefficient, or (size 0) EOB or ZRL.
			rs := uint8(e >> 8)
			if acFreq != nil {
				acFreq[rs]++
			}
			used := uint(e & 0xff)
			acc <<= used
			n -= used
			if rs&15 == 0 {
				if rs != 0xF0 {
					break // end of block
				}
				k += 16
				continue
			}
			if k += int(rs >> 4); k > 63 {
				return 0, badImage("the jpeg data is corrupt: bad AC coefficient")
			}
			blk[k] = int16(e >> 16)
			last = k
			k++
			continue
		}
		br.acc, br.n = acc, n
		rs, err := br.decode(ac)
		if err != nil {
			return 0, badImage("the jpeg data is corrupt or truncated: %v", err)
		}
		if acFreq != nil {
			acFreq[rs]++
		}
		r, s := int(rs>>4), rs&15
		if s == 0 {
			acc, n = br.acc, br.n
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
		acc, n = br.acc, br.n
		last = k
		k++
	}
	br.acc, br.n = acc, n
	if br.overrun() {
		return 0, badImage("the jpeg data is truncated")
	}
	return uint8(last), nil
}
