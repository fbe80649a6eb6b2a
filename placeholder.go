// Placeholders: a BlurHash of each image (a few dozen characters, computed from its thumb_100) that
// a page paints at once, before any thumbnail has loaded.
package main

import (
	"image"
	"image/color"
	"math"
	"strings"
)

// The BlurHash format (github.com/woltapp/blurhash, "Algorithm"): the image's colours as a few
// cosine components (DCT-II basis over linear RGB), the DC one in sRGB, the AC ones quantized
// against their largest magnitude, all in base 83.
const (
	blurhashChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
	// blurhashMaxSide is the most pixels read along a side: the hash has 4 components across, so
	// a 100-pixel thumbnail has far more detail than it keeps; reading every pixel of it is cheap.
	blurhashMaxSide = 128
)

// blurhash encodes img as a BlurHash of cx×cy components (each 1–9): 4×3 for a landscape image
// says it in 28 characters.
func blurhash(img image.Image, cx, cy int) string {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w == 0 || h == 0 {
		return ""
	}
	// Linear RGB of the pixels read: at most blurhashMaxSide along each side (nearest sample).
	sw, sh := min(w, blurhashMaxSide), min(h, blurhashMaxSide)
	lin := make([][3]float64, sw*sh)
	for y := range sh {
		for x := range sw {
			c := color.NRGBAModel.Convert(img.At(b.Min.X+x*w/sw, b.Min.Y+y*h/sh)).(color.NRGBA)
			lin[y*sw+x] = [3]float64{srgbToLinear(c.R), srgbToLinear(c.G), srgbToLinear(c.B)}
		}
	}
	factors := make([][3]float64, 0, cx*cy)
	cosX := make([]float64, sw)
	cosY := make([]float64, sh)
	for j := range cy {
		for y := range sh {
			cosY[y] = math.Cos(math.Pi * float64(j) * float64(y) / float64(sh))
		}
		for i := range cx {
			for x := range sw {
				cosX[x] = math.Cos(math.Pi * float64(i) * float64(x) / float64(sw))
			}
			var f [3]float64
			for y := range sh {
				for x := range sw {
					basis := cosX[x] * cosY[y]
					p := lin[y*sw+x]
					f[0] += basis * p[0]
					f[1] += basis * p[1]
					f[2] += basis * p[2]
				}
			}
			norm := 2.0
			if i == 0 && j == 0 {
				norm = 1
			}
			scale := norm / float64(sw*sh)
			factors = append(factors, [3]float64{f[0] * scale, f[1] * scale, f[2] * scale})
		}
	}
	var out strings.Builder
	base83(&out, (cx-1)+(cy-1)*9, 1)
	maxAC := 0.0
	for _, f := range factors[1:] {
		maxAC = max(maxAC, math.Abs(f[0]), math.Abs(f[1]), math.Abs(f[2]))
	}
	quantMax := 0
	if len(factors) > 1 {
		quantMax = int(max(0, min(82, math.Floor(maxAC*166-0.5))))
		maxAC = float64(quantMax+1) / 166
	}
	base83(&out, quantMax, 1)
	dc := factors[0]
	base83(&out, linearToSRGB(dc[0])<<16|linearToSRGB(dc[1])<<8|linearToSRGB(dc[2]), 4)
	for _, f := range factors[1:] {
		q := func(v float64) int {
			return int(max(0, min(18, math.Floor(signedPow(v/maxAC, 0.5)*9+9.5))))
		}
		base83(&out, q(f[0])*19*19+q(f[1])*19+q(f[2]), 2)
	}
	return out.String()
}

// placeholderOf is the BlurHash of img with components in proportion to its shape: 4 along the long
// side, at least 3 along the short one.
func placeholderOf(img image.Image) string {
	b := img.Bounds()
	cx, cy := 4, 3
	if b.Dy() > b.Dx() {
		cx, cy = 3, 4
	}
	return blurhash(img, cx, cy)
}

// base83 writes v as n base-83 digits, most significant first.
func base83(out *strings.Builder, v, n int) {
	for i := n - 1; i >= 0; i-- {
		d := v
		for range i {
			d /= 83
		}
		out.WriteByte(blurhashChars[d%83])
	}
}

// srgbToLinear maps an sRGB byte to linear light in 0–1.
func srgbToLinear(c uint8) float64 {
	v := float64(c) / 255
	if v <= 0.04045 {
		return v / 12.92
	}
	return math.Pow((v+0.055)/1.055, 2.4)
}

// linearToSRGB maps linear light (clamped to 0–1) to an sRGB byte.
func linearToSRGB(v float64) int {
	v = max(0, min(1, v))
	if v <= 0.0031308 {
		return int(v*12.92*255 + 0.5)
	}
	return int((1.055*math.Pow(v, 1/2.4)-0.055)*255 + 0.5)
}

// signedPow is |v|^e with v's sign.
func signedPow(v, e float64) float64 {
	return math.Copysign(math.Pow(math.Abs(v), e), v)
}
