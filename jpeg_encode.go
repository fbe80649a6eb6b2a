// The DCT path's encoder: a single-component (grayscale) JPEG written from quantized coefficients,
// with Huffman tables made from their symbol frequencies (Annex K.2, lengths limited as K.3 does).
package main

import (
	"bytes"
	"cmp"
	"errors"
	"io"
	"math/bits"
	"slices"
)

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
	codesize := codeSizes(freq)
	bits, ok := limitCodeLengths(codesize)
	if !ok {
		return [16]uint8{}, nil // no symbol in use: the reserved code stood alone
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
	return bits, vals
}

// codeSizes returns each symbol's Huffman code length for the frequencies freq (Annex K.2, figure
// K.1), with a 257th symbol of frequency 1 that reserves a code, so that no code is all ones.
func codeSizes(freq [256]int64) [257]int {
	var f [257]int64
	copy(f[:], freq[:])
	f[256] = 1
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
			return codesize
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
}

// limitCodeLengths counts the codes of each length in codesize, brings every length to 16 at most
// (K.3) and drops the reserved code, returning BITS; false when no symbol but the reserved one is in
// use.
//
// With 257 symbols a code can be up to 256 bits long (Fibonacci-like counts make such chains), so
// the lengths are counted up to there, and K.3's adjustment, applied from the longest length down,
// brings every one to 16 at most. Each step keeps the Kraft sum at 1 (two codes of length i become
// one of i-1; one of j becomes two of j+1), and a shorter code to split always exists: were every
// code of length i-1 or i > 16, there would be at least 2^16 of them.
func limitCodeLengths(codesize [257]int) ([16]uint8, bool) {
	var count [257]int
	maxLen := 0
	for _, s := range codesize {
		if s > 0 {
			count[s]++
			maxLen = max(maxLen, s)
		}
	}
	if maxLen == 0 {
		return [16]uint8{}, false
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
	return out, true
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
			if err := countBlock(c.coef[b*64:b*64+64], int(c.last[b]), &pred, &dcFreq, &acFreq, countAC); err != nil {
				return dcFreq, acFreq, err
			}
		}
	}
	return dcFreq, acFreq, nil
}

// countBlock counts the symbols of one block (zigzag order, its last nonzero coefficient at end) as
// dctWriter.block codes them, the DC difference from *pred; the AC ones only with countAC. It
// refuses, with errDCTUnsupported, coefficients an 8-bit JPEG cannot code.
func countBlock(blk []int16, end int, pred *int32, dcFreq, acFreq *[256]int64, countAC bool) error {
	dc := category(int32(blk[0]) - *pred)
	if dc > 11 {
		// Only a corrupt file's predictions wander this far (an 8-bit JPEG's DC differences
		// have at most 11 bits, F.1.2.1); libjpeg refuses to write it too. Pixels decide.
		return errDCTUnsupported
	}
	dcFreq[dc]++
	*pred = int32(blk[0])
	if !countAC {
		return nil
	}
	run := 0
	for k := 1; k <= end; k++ {
		if blk[k] == 0 {
			run++
			continue
		}
		ac := category(int32(blk[k]))
		if ac > 10 {
			return errDCTUnsupported // likewise: AC coefficients have at most 10 bits
		}
		acFreq[0xF0] += int64(run >> 4)
		acFreq[uint8(run&15)<<4|ac]++
		run = 0
	}
	if end < 63 {
		acFreq[0x00]++
	}
	return nil
}

// grayHeaders is a one-component JPEG's start: SOI, DQT (8-bit, or 16-bit entries and then an
// extended sequential SOF1), SOF, DHT of both tables, and the SOS of its one scan.
func grayHeaders(width, height int, q [64]uint16, dcBits [16]uint8, dcVals []uint8, acBits [16]uint8, acVals []uint8) []byte {
	return jpegHeaders(width, height, [][64]uint16{q}, []frameComp{{id: 1, hv: 0x11}},
		[]huffTable{{class: 0x00, bits: dcBits, vals: dcVals}, {class: 0x10, bits: acBits, vals: acVals}})
}

// frameComp is a component as the frame and scan headers name it: its id, sampling factors (h<<4|v),
// quantization table, and the Huffman tables (dc<<4|ac) its scan codes it with.
type frameComp struct {
	id, hv, tq, tables byte
}

// huffTable is a DHT entry: class and index (Tc<<4|Th), BITS and HUFFVAL.
type huffTable struct {
	class byte
	bits  [16]uint8
	vals  []uint8
}

// jpegHeaders is a JPEG's start up to its one scan's data: SOI, DQT of each table (8-bit, or 16-bit
// entries and then an extended sequential SOF1), SOF, DHT of each table, and the SOS coding every
// component (interleaved when there are several).
func jpegHeaders(width, height int, quant [][64]uint16, comps []frameComp, tables []huffTable) []byte {
	var out bytes.Buffer
	seg := func(marker byte, body []byte) {
		out.Write([]byte{0xFF, marker, byte((len(body) + 2) >> 8), byte(len(body) + 2)})
		out.Write(body)
	}
	out.Write([]byte{0xFF, 0xD8})
	sof := byte(0xC0)
	for i, q := range quant {
		dqt := []byte{byte(i)}
		if slices.ContainsFunc(q[:], func(v uint16) bool { return v > 255 }) {
			sof, dqt = 0xC1, []byte{0x10 | byte(i)}
		}
		for _, v := range q {
			if dqt[0]&0x10 != 0 {
				dqt = append(dqt, byte(v>>8))
			}
			dqt = append(dqt, byte(v))
		}
		seg(0xDB, dqt)
	}
	frame := []byte{8, byte(height >> 8), byte(height), byte(width >> 8), byte(width), byte(len(comps))}
	scan := []byte{byte(len(comps))}
	for _, c := range comps {
		frame = append(frame, c.id, c.hv, c.tq)
		scan = append(scan, c.id, c.tables)
	}
	seg(sof, frame)
	var dht []byte
	for _, t := range tables {
		dht = append(dht, t.class)
		dht = append(dht, t.bits[:]...)
		dht = append(dht, t.vals...)
	}
	seg(0xC4, dht)
	seg(0xDA, append(scan, 0, 63, 0))
	return out.Bytes()
}

// codeBlocks is the entropy-coded data of c's blocks under the tables dcCode and acCode.
func codeBlocks(c *dctComponent, dcCode, acCode *huffCode) []byte {
	// About 6 bytes a block for a photo at quality 85: start with room for 8.
	bw := &dctWriter{buf: make([]byte, 0, c.bw*c.bh*8)}
	var pred int32
	for by := range c.bh {
		for bx := range c.bw {
			b := by*c.stride + bx
			bw.block(c.coef[b*64:b*64+64], int(c.last[b]), &pred, dcCode, acCode)
		}
	}
	bw.flush()
	return bw.buf
}

// block codes one block (zigzag order, its last nonzero coefficient at end): the DC difference from
// *pred, then run/size symbols and values, ZRL for each 16 zeros before a coefficient, EOB when the
// block ends in zeros (F.1.2).
func (bw *dctWriter) block(blk []int16, end int, pred *int32, dcCode, acCode *huffCode) {
	// putValue writes the s low bits of v's code: v itself, or v-1 for negatives (F.1.2.1).
	putValue := func(v int32, s uint8) {
		if v < 0 {
			v--
		}
		bw.put(uint32(v)&(1<<s-1), uint(s))
	}
	diff := int32(blk[0]) - *pred
	*pred = int32(blk[0])
	s := category(diff)
	bw.put(dcCode.code[s], uint(dcCode.size[s]))
	if s > 0 {
		putValue(diff, s)
	}
	run := 0
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
