package main

import (
	"image"
	"image/color"
	"math"
	"strings"
	"testing"
)

// decodeBlurhash is the format's decoder (as a page runs it), for checking the encoder: the colour
// of pixel (x, y) of a w×h rendering.
func decodeBlurhash(t *testing.T, hash string, x, y, w, h int) color.NRGBA {
	t.Helper()
	d83 := func(s string) int {
		v := 0
		for _, c := range s {
			i := strings.IndexRune(blurhashChars, c)
			if i < 0 {
				t.Fatalf("%q: not base 83", s)
			}
			v = v*83 + i
		}
		return v
	}
	size := d83(hash[:1])
	nx, ny := size%9+1, size/9+1
	if len(hash) != 4+2*nx*ny {
		t.Fatalf("%q: %d characters for %d×%d components", hash, len(hash), nx, ny)
	}
	maxAC := float64(d83(hash[1:2])+1) / 166
	colors := make([][3]float64, nx*ny)
	dc := d83(hash[2:6])
	colors[0] = [3]float64{srgbToLinear(uint8(dc >> 16)), srgbToLinear(uint8(dc >> 8)), srgbToLinear(uint8(dc))}
	for i := 1; i < nx*ny; i++ {
		v := d83(hash[4+2*i : 6+2*i])
		q := func(n int) float64 { return signedPow(float64(n-9)/9, 2) * maxAC }
		colors[i] = [3]float64{q(v / 361), q(v / 19 % 19), q(v % 19)}
	}
	var p [3]float64
	for j := range ny {
		for i := range nx {
			basis := math.Cos(math.Pi*float64(x*i)/float64(w)) * math.Cos(math.Pi*float64(y*j)/float64(h))
			for c := range 3 {
				p[c] += colors[i+j*nx][c] * basis
			}
		}
	}
	return color.NRGBA{uint8(linearToSRGB(p[0])), uint8(linearToSRGB(p[1])), uint8(linearToSRGB(p[2])), 255}
}

// TestPureBlurhash: a solid image's hash is its colour with every AC component zero; a two-colour
// image's hash, decoded, shows each colour on its side; the length follows the components.
func TestPureBlurhash(t *testing.T) {
	solid := image.NewNRGBA(image.Rect(0, 0, 100, 75))
	for i := 0; i < len(solid.Pix); i += 4 {
		copy(solid.Pix[i:], []byte{200, 40, 90, 255})
	}
	h := placeholderOf(solid)
	// Size flag 3+2·9 = 21 ("L"): 4×3 components, 28 characters. (The format's basis, cos(πix/w)
	// over pixels 0…w-1, leaves a solid image small AC components: its decoding is near, not equal.)
	if len(h) != 28 || h[0] != 'L' {
		t.Errorf("solid: %q", h)
	}
	for _, p := range [][2]int{{50, 30}, {10, 10}, {90, 70}} {
		got := decodeBlurhash(t, h, p[0], p[1], 100, 75)
		if d := max(absDiff(got.R, 200), absDiff(got.G, 40), absDiff(got.B, 90)); d > 6 {
			t.Errorf("solid decodes at %v to %v, want about {200 40 90}", p, got)
		}
	}
	halves := image.NewNRGBA(image.Rect(0, 0, 80, 100))
	for y := range 100 {
		for x := range 80 {
			c := color.NRGBA{230, 30, 30, 255}
			if x >= 40 {
				c = color.NRGBA{30, 30, 230, 255}
			}
			halves.SetNRGBA(x, y, c)
		}
	}
	h = placeholderOf(halves) // portrait: 3×4 components
	if len(h) != 4+2*12 {
		t.Fatalf("portrait hash %q: want 28 characters", h)
	}
	left, right := decodeBlurhash(t, h, 5, 50, 80, 100), decodeBlurhash(t, h, 75, 50, 80, 100)
	if left.R < 150 || left.B > 100 || right.B < 150 || right.R > 100 {
		t.Errorf("halves decode to left %v, right %v", left, right)
	}
}

func absDiff(a, b uint8) int {
	if a > b {
		return int(a - b)
	}
	return int(b - a)
}
