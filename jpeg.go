// JPEG in the DCT domain: a decoder that stops at the quantized coefficients (jpeg_decode.go), and an
// encoder that writes a single-component JPEG from them (jpeg_encode.go); reductions for thumbnails
// and display sizes (jpeg_reduce.go) and lossless turns (jpeg_orient.go) between, and an encoder of
// pixels (jpeg_fdct.go). This file holds their shared types and the header scan both paths use
// (scanJPEG). Together they make a JPEG's grayscale losslessly (its luma coefficients,
// re-Huffman-coded), its thumbnails from the DC coefficients (each block's mean: a 1/8-scale image with
// no IDCT), and its display sizes straight from the coefficients, a row at a time.
//
// What of ITU T.81 is implemented here:
//
//   - B.2, B.3: the marker syntax — SOI, APPn/COM (skipped, APP14 read for the colour transform),
//     DQT (8- and 16-bit tables), DHT, DRI, SOF0, SOF1 and SOF2 (baseline, extended sequential and
//     progressive Huffman, 8-bit samples, 1 or 3 components, any sampling factors 1–4), SOS, RSTn, EOI.
//
//   - F.2.2: sequential Huffman decoding of interleaved and non-interleaved scans, with restart
//     intervals (F.2.2.5 receive/extend; F.2.2.3 with an 11-bit lookup of a symbol and its bits
//     together, and a 9-bit one before the code-length search of F.2.2.3's DECODE).
//
//   - A.3.3 and F.1.2 to F.1.4 (encoding pixels, jpeg_fdct.go): the forward DCT, quantization, and
//     one interleaved 4:2:0 scan or one gray scan.
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
	"encoding/binary"
	"errors"
	"image"
	"io"
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

// Decode work is bounded by the coefficients the scans visit, not only by their number: a
// progressive AC scan walks every block of its components over its band (a refinement scan the whole
// band, however few bits it carries), so 999 refinement scans of 1–63 over a 50 MP frame are 49
// billion visits from 153 KB (62 s on the DCT path, over two minutes in image/jpeg). An ordinary file
// visits each coefficient about once: 1 per sample sequentially, about 3 per luma sample and 2 per
// chroma sample with libjpeg's progressive script. maxVisitsPerSample allows five times that; with
// a floor (minVisitLimit) so that small images may have any script, and at most a second or two of
// decoding at the pixel cap.
const (
	maxVisitsPerSample = 16
	minVisitLimit      = 64 << 20
)

// errTooMuchWork refuses a JPEG whose scans would visit more coefficients than its size warrants.
var errTooMuchWork = badImage("the jpeg's scans would visit its coefficients more than %d times each, the most this service decodes", maxVisitsPerSample)

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
	// held is how many rows of blocks coef holds: all of them, or, when the image is read row by
	// row (decodeDCTRows, a sequential frame), one row of MCUs, reused for the next.
	held int
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
	// rows, when set, is given each row of MCUs as it is complete (decodeDCTRows); streaming: the
	// rows are held one at a time.
	rows      func(img *dctImage, mcuRow int) error
	streaming bool
}

// mcuRows is how many rows of MCUs the frame has (of blocks, for a single component).
func (img *dctImage) mcuRows() int {
	if len(img.comps) == 1 {
		return img.comps[0].bh
	}
	return (img.height + 8*img.vmax - 1) / (8 * img.vmax)
}

// blockRow returns block row by of c (held): its blocks' coefficients, 64 a block (1 when dcOnly),
// and, unless dcOnly, their last indexes.
func (c *dctComponent) blockRow(by int) ([]int16, []uint8) {
	per := 64
	if c.dcOnly {
		per = 1
	}
	at := (by % c.held) * c.stride
	if c.dcOnly {
		return c.coef[at*per:][:c.stride*per], nil
	}
	return c.coef[at*per:][:c.stride*per], c.last[at:][:c.stride]
}

// fastBits is the window of dctHuffman's one-lookup decoding.
const fastBits = 11

// dctHuffman is a Huffman table for decoding: a 9-bit lookup for short codes, then the F.2.2.3 search.
type dctHuffman struct {
	lut [1 << 9]uint16 // value<<8 | code length; 0: longer than 9 bits
	// fast decodes a symbol and its magnitude bits together when both fit in the next fastBits
	// bits: coefficient<<16 | run/size<<8 | bits used; 0: not so.
	fast    [1 << fastBits]int32
	maxcode [18]int32 // largest code of each length, -1 if none
	valptr  [17]int32
	mincode [17]int32
	vals    [256]uint8
	defined bool
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
	visits      int64   // coefficient visits the scans make (see maxVisitsPerSample)
	frame       jpegFrame
	// rgb: the three components are R, G and B, not YCbCr (image/jpeg then converts to RGBA at the
	// end, a 4-byte-a-pixel image beside the planes), as image/jpeg decides it.
	rgb bool
	// Markers rgb is decided from: an Adobe APP14's transform (-1: none), a JFIF APP0.
	adobeTransform int
	jfif           bool
}

// decideRGB sets rgb as image/jpeg does: never with JFIF; with an Adobe transform of 0; else when
// the components are named R, G and B.
func (lay *jpegLayout) decideRGB(compIDs []byte) {
	switch {
	case lay.components != 3 || lay.jfif:
		lay.rgb = false
	case lay.adobeTransform == 0:
		lay.rgb = true
	default:
		lay.rgb = len(compIDs) == 3 && compIDs[0] == 'R' && compIDs[1] == 'G' && compIDs[2] == 'B'
	}
}

// jpegFrame is what a frame header says of the image's blocks.
type jpegFrame struct {
	width, height int
	hmax, vmax    int
	comps         map[byte][2]int // component id → its sampling factors
}

// readJPEGFrame reads a frame header (SOFn) segment.
func readJPEGFrame(seg []byte) jpegFrame {
	f := jpegFrame{hmax: 1, vmax: 1, comps: map[byte][2]int{}}
	if len(seg) < 6 {
		return f
	}
	f.height, f.width = int(binary.BigEndian.Uint16(seg[1:3])), int(binary.BigEndian.Uint16(seg[3:5]))
	for i := 0; i < int(seg[5]) && 8+3*i < len(seg); i++ {
		h, v := max(int(seg[7+3*i]>>4), 1), max(int(seg[7+3*i]&15), 1)
		f.comps[seg[6+3*i]] = [2]int{h, v}
		f.hmax, f.vmax = max(f.hmax, h), max(f.vmax, v)
	}
	return f
}

// blocks is how many 8×8 blocks of component id the frame holds, counting the MCUs' padding.
func (f jpegFrame) blocks(id byte) int64 {
	hv, ok := f.comps[id]
	if !ok {
		hv = [2]int{f.hmax, f.vmax}
	}
	mcusX := int64((f.width + 8*f.hmax - 1) / (8 * f.hmax))
	mcusY := int64((f.height + 8*f.vmax - 1) / (8 * f.vmax))
	return mcusX * int64(hv[0]) * mcusY * int64(hv[1])
}

// scanVisits is how many coefficients the scan whose header is seg visits: per block of each of its
// components, its band (1 for a DC scan) when progressive, all 64 when sequential.
func (f jpegFrame) scanVisits(seg []byte, progressive bool) int64 {
	if len(seg) < 1 || len(seg) < 4+2*int(seg[0]) {
		return 0
	}
	ns := int(seg[0])
	band := int64(64)
	if progressive {
		ss, se := int64(seg[1+2*ns]), int64(seg[2+2*ns])
		band = max(1, min(se, 63)-ss+1)
		if ss == 0 {
			band = 1
		}
	}
	var visits int64
	for i := range ns {
		visits += f.blocks(seg[1+2*i]) * band
	}
	return visits
}

// visitLimit is the most coefficient visits a JPEG of this frame may make (maxVisitsPerSample).
func (lay jpegLayout) visitLimit() int64 {
	samples := int64(float64(lay.frame.width) * float64(lay.frame.height) * max(lay.samples, 1))
	return max(minVisitLimit, maxVisitsPerSample*samples)
}

// scanJPEG reads the markers of the JPEG in r: its frame's layout, how many scans it has and how many
// coefficients they visit. It skips entropy-coded data without decoding it, and returns
// errTooManyScans as soon as the count passes maxJPEGScans, errTooMuchWork as soon as the visits
// pass the frame's limit. A file that ends before EOI is not an error here: what its scans hold is the
// decoders' to judge. One pass over the bytes, no allocation beyond its buffer.
func scanJPEG(r io.Reader) (jpegLayout, error) {
	lay := jpegLayout{adobeTransform: -1}
	var compIDs []byte
	defer func() { lay.decideRGB(compIDs) }()
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
		inScan, err = lay.readSegment(br, m, n, &compIDs)
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return lay, nil // a file cut short: the decoders judge what it holds
		}
		if err != nil {
			return lay, err
		}
	}
}

// readSegment reads the n bytes of marker m's segment from br into lay: the frame (SOFn, the first
// only), JFIF and Adobe markers, and a scan header (counted, with its coefficient visits: it
// returns errTooManyScans or errTooMuchWork past their limits, and whether entropy-coded data
// follows). Other segments are skipped; compIDs collects the frame's component ids.
func (lay *jpegLayout) readSegment(br *bufio.Reader, m byte, n int, compIDs *[]byte) (inScan bool, err error) {
	switch {
	case m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC && lay.components == 0: // SOFn
		seg := make([]byte, n)
		if _, err := io.ReadFull(br, seg); err != nil {
			return false, err
		}
		lay.progressive = m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE
		lay.components, lay.samples = frameSamples(seg)
		lay.frame = readJPEGFrame(seg)
		for i := 0; len(seg) >= 6 && i < int(seg[5]) && 6+3*i < len(seg); i++ {
			*compIDs = append(*compIDs, seg[6+3*i])
		}
		return false, nil
	case (m == 0xE0 || m == 0xEE) && n >= 12:
		// Only the first bytes tell JFIF or Adobe's transform; the rest is skipped below.
		var head [12]byte
		if _, err := io.ReadFull(br, head[:]); err != nil {
			return false, err
		}
		if m == 0xE0 && bytes.HasPrefix(head[:], []byte("JFIF\x00")) {
			lay.jfif = true
		}
		if m == 0xEE && bytes.HasPrefix(head[:], []byte("Adobe")) {
			lay.adobeTransform = int(head[11])
		}
		n -= len(head)
	case m == 0xDA:
		if lay.scans++; lay.scans > maxJPEGScans {
			return false, errTooManyScans
		}
		seg := make([]byte, n)
		if _, err := io.ReadFull(br, seg); err != nil {
			return false, err
		}
		if lay.visits += lay.frame.scanVisits(seg, lay.progressive); lay.visits > lay.visitLimit() {
			return false, errTooMuchWork
		}
		return true, nil
	}
	_, err = br.Discard(n)
	return false, err
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
