// Orientation: the EXIF orientation a JPEG (or a TIFF) declares, and turning decoded pixels upright.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"image"
	"io"
)

// orientation is the file's EXIF orientation: read from a JPEG, 1 for anything else.
func (im imageFile) orientation() orientation {
	if im.format.name != "jpeg" {
		return 1
	}
	return exifOrientation(io.NewSectionReader(im.f, 0, im.size))
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

// orientImage returns img turned upright for EXIF orientation o (img itself for 1). It handles the
// types the pipeline makes (Gray, RGBA, NRGBA, Paletted, 4:2:0 YCbCr plane by plane); anything else is
// converted to RGBA first.
func orientImage(img image.Image, o orientation) image.Image {
	if o < 2 || o > 8 {
		return img
	}
	if yc, ok := img.(*image.YCbCr); ok && yc.SubsampleRatio == image.YCbCrSubsampleRatio420 && yc.Rect.Min == (image.Point{}) {
		plane := func(pix []byte, stride, w, h int) *image.Gray {
			return orientImage(&image.Gray{Pix: pix, Stride: stride, Rect: image.Rect(0, 0, w, h)}, o).(*image.Gray)
		}
		w, h := yc.Rect.Dx(), yc.Rect.Dy()
		y := plane(yc.Y, yc.YStride, w, h)
		cb, cr := plane(yc.Cb, yc.CStride, (w+1)/2, (h+1)/2), plane(yc.Cr, yc.CStride, (w+1)/2, (h+1)/2)
		return &image.YCbCr{Y: y.Pix, Cb: cb.Pix, Cr: cr.Pix, YStride: y.Stride, CStride: cb.Stride,
			SubsampleRatio: image.YCbCrSubsampleRatio420, Rect: y.Rect}
	}
	var pix []byte
	var stride, bpp int
	r := img.Bounds()
	switch s := img.(type) {
	case *image.Gray:
		pix, stride, bpp = s.Pix, s.Stride, 1
	case *image.Paletted:
		pix, stride, bpp = s.Pix, s.Stride, 1
	case *image.RGBA:
		pix, stride, bpp = s.Pix, s.Stride, 4
	case *image.NRGBA:
		pix, stride, bpp = s.Pix, s.Stride, 4
	default:
		return orientImage(toRGBA(img), o)
	}
	w, h := r.Dx(), r.Dy()
	dw, dh := w, h
	if o.swapsAxes() {
		dw, dh = h, w
	}
	out := make([]byte, dw*dh*bpp)
	for dy := range dh {
		for dx := range dw {
			var sx, sy int
			switch o {
			case 2:
				sx, sy = w-1-dx, dy
			case 3:
				sx, sy = w-1-dx, h-1-dy
			case 4:
				sx, sy = dx, h-1-dy
			case 5:
				sx, sy = dy, dx
			case 6:
				sx, sy = dy, h-1-dx
			case 7:
				sx, sy = w-1-dy, h-1-dx
			case 8:
				sx, sy = w-1-dy, dx
			}
			copy(out[(dy*dw+dx)*bpp:(dy*dw+dx+1)*bpp], pix[sy*stride+sx*bpp:])
		}
	}
	rect := image.Rect(0, 0, dw, dh)
	switch s := img.(type) {
	case *image.Gray:
		return &image.Gray{Pix: out, Stride: dw, Rect: rect}
	case *image.Paletted:
		return &image.Paletted{Pix: out, Stride: dw, Rect: rect, Palette: s.Palette}
	case *image.RGBA:
		return &image.RGBA{Pix: out, Stride: dw * 4, Rect: rect}
	default:
		return &image.NRGBA{Pix: out, Stride: dw * 4, Rect: rect}
	}
}
