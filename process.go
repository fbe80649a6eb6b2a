// Image processing: the table of variants the worker makes, and the EXIF orientation reader.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
)

// variantSpec is one derived image the worker makes from every upload.
type variantSpec struct {
	name      string
	box       int  // fit inside box×box keeping the aspect ratio, never enlarging; 0: full size
	grayscale bool // R = G = B
}

// variantSpecs is the table of variants: adding one is adding a line.
var variantSpecs = []variantSpec{
	{name: "thumb_100", box: 100},
	{name: "thumb_500", box: 500},
	{name: "grayscale", grayscale: true},
}

// variantOriginal names the uploaded file itself in ?variant=.
const variantOriginal = "original"

// knownVariant reports whether name is a variant in the table.
func knownVariant(name string) bool {
	for _, v := range variantSpecs {
		if v.name == name {
			return true
		}
	}
	return false
}

// orientation is an EXIF orientation, 1 (upright) to 8.
type orientation int

// swapsAxes reports whether displaying the image upright exchanges its width and height
// (orientations 5–8 include a quarter turn).
func (o orientation) swapsAxes() bool { return o >= 5 && o <= 8 }

// exifOrientation reads the orientation a JPEG's EXIF (APP1) segment declares, or 1 when it declares
// none or anything in the way is malformed. It reads only the segments before the first scan.
func exifOrientation(r io.Reader) orientation {
	br := bufio.NewReaderSize(r, 4096)
	var soi [2]byte
	if _, err := io.ReadFull(br, soi[:]); err != nil || soi != [2]byte{0xFF, 0xD8} {
		return 1
	}
	for range 64 { // a real file has a handful of segments before SOS
		b, err := br.ReadByte()
		if err != nil || b != 0xFF {
			return 1
		}
		m, err := br.ReadByte()
		for err == nil && m == 0xFF { // fill bytes
			m, err = br.ReadByte()
		}
		if err != nil {
			return 1
		}
		switch {
		case m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7): // no length field
			continue
		case m == 0xDA || m == 0xD9: // start of scan, end of image: no EXIF ahead
			return 1
		}
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return 1
		}
		n := int(binary.BigEndian.Uint16(l[:])) - 2
		if n < 0 {
			return 1
		}
		if m != 0xE1 {
			if _, err := br.Discard(n); err != nil {
				return 1
			}
			continue
		}
		seg := make([]byte, n) // at most 64 KiB: the length field is 16 bits
		if _, err := io.ReadFull(br, seg); err != nil {
			return 1
		}
		if rest, ok := bytes.CutPrefix(seg, []byte("Exif\x00\x00")); ok {
			return tiffOrientation(rest)
		}
	}
	return 1
}

// tiffOrientation finds tag 0x0112 (Orientation) in the first IFD of a TIFF structure.
func tiffOrientation(t []byte) orientation {
	if len(t) < 8 {
		return 1
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 1
	}
	if bo.Uint16(t[2:]) != 42 {
		return 1
	}
	off := uint64(bo.Uint32(t[4:]))
	if off+2 > uint64(len(t)) {
		return 1
	}
	count := uint64(bo.Uint16(t[off:]))
	for i := range count {
		e := off + 2 + 12*i
		if e+12 > uint64(len(t)) {
			return 1
		}
		if bo.Uint16(t[e:]) != 0x0112 {
			continue
		}
		// Type SHORT (3), at least one value, stored in the entry itself.
		if bo.Uint16(t[e+2:]) != 3 || bo.Uint32(t[e+4:]) < 1 {
			return 1
		}
		if v := bo.Uint16(t[e+8:]); v >= 1 && v <= 8 {
			return orientation(v)
		}
		return 1
	}
	return 1
}
