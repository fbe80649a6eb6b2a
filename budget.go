// Memory budget: how many bytes a job will need at its peak, estimated from the image's header before
// anything is decoded, and the weighted semaphore of WORKER_MEMORY bytes that running jobs share.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/color"
	"os"
	"strconv"
	"strings"
	"sync"
)

// jobBaseBytes is what any job needs besides its pixels: encoders, row buffers, thumbnails (at most
// a few 1000×1000 images after the box pre-shrink) and the file's read buffer.
const jobBaseBytes = 16 << 20

// memoryBudget is a weighted semaphore over bytes: a job holds its estimated peak while it runs,
// so the jobs running at once never need more than the budget together. Waiters are served in
// order, so a large job is not starved by a stream of small ones.
type memoryBudget struct {
	mu      sync.Mutex
	size    int64
	used    int64
	waiters []*budgetWaiter
	// onChange, when set, is called after used changes (the memory governor follows it).
	onChange func()
}

// budgetWaiter is one acquire waiting its turn; ready is closed when its bytes are granted.
type budgetWaiter struct {
	n     int64
	ready chan struct{}
}

func newMemoryBudget(size int64) *memoryBudget { return &memoryBudget{size: size} }

// errOverBudget means a job needs more than the whole budget: it could never run.
var errOverBudget = errors.New("budget: more than the whole budget")

// acquire waits until n bytes are free and takes them; it returns a function that gives them back
// (call it once). It fails with errOverBudget when n exceeds the whole budget, or with ctx's error.
func (b *memoryBudget) acquire(ctx context.Context, n int64) (func(), error) {
	if n > b.size {
		return nil, errOverBudget
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.size {
		b.used += n
		b.mu.Unlock()
		b.changed()
		return func() { b.release(n) }, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		b.changed()
		return func() { b.release(n) }, nil
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			b.used -= n
			b.grant()
		default:
			for i, x := range b.waiters {
				if x == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
			b.grant() // the head may have changed
		}
		return nil, ctx.Err()
	}
}

// release gives back n bytes and wakes the waiters that now fit.
func (b *memoryBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.grant()
	b.mu.Unlock()
	b.changed()
}

// changed tells onChange, if any, that the bytes held have changed.
func (b *memoryBudget) changed() {
	if b.onChange != nil {
		b.onChange()
	}
}

// grant hands bytes to waiters in order while the first one fits. b.mu is held.
func (b *memoryBudget) grant() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.size {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.used += w.n
		close(w.ready)
	}
}

// inUse returns the bytes held now.
func (b *memoryBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// memoryGovernor keeps the Go runtime's soft memory limit (debug.SetMemoryLimit) at what the process
// has reserved right now: a base for the runtime and the requests in flight, the estimates of the
// jobs running, and the password-hashing buffers held. The collector then runs as often as that
// takes, so an idle or lightly loaded process stays small instead of growing to twice its live heap
// (GOGC's default), and a large job gets the room it reserved. Never above max.
type memoryGovernor struct {
	base, max int64
	parts     []func() int64
	mu        sync.Mutex
	set       func(int64) int64 // debug.SetMemoryLimit
}

// update sets the limit from the current reservations.
func (g *memoryGovernor) update() {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.base
	for _, p := range g.parts {
		n += p()
	}
	g.set(min(n, g.max))
}

// bytesPerPixel is the size of one pixel of the image type a decoder returns for model.
func bytesPerPixel(m color.Model) float64 {
	switch m {
	case color.GrayModel, color.AlphaModel:
		return 1
	case color.Gray16Model, color.Alpha16Model:
		return 2
	case color.RGBAModel, color.NRGBAModel, color.CMYKModel:
		return 4
	case color.RGBA64Model, color.NRGBA64Model:
		return 8
	case color.YCbCrModel:
		return 3 // 4:4:4 at most; JPEGs are sized from their frame instead
	case color.NYCbCrAModel:
		return 4
	}
	if _, ok := m.(color.Palette); ok {
		return 1
	}
	return 8 // anything else: the widest
}

// standardBytes estimates the peak bytes of a job on the standard path (process.go): the decoded
// image, what the decoder keeps beside it, the grayscale when it cannot reuse the decoded pixels,
// and the turned copy an EXIF orientation needs.
func (h imageHeader) standardBytes() int64 {
	px := float64(h.width) * float64(h.height)
	decoded := bytesPerPixel(h.model)
	extra := 0.0 // beside the decoded image while decoding, or made from it afterwards
	gray := 0.0  // the grayscale, when it is not made in place
	switch h.format {
	case "jpeg":
		decoded = h.jpeg.samples
		switch {
		case h.jpeg.components == 4:
			// CMYK: the four planes, then the CMYK image made from them; the grayscale in place.
			decoded, gray = h.jpeg.samples+4, 0
		case h.jpeg.rgb:
			// R, G and B planes, then the RGBA image image/jpeg converts them to.
			decoded += 4
		}
		if h.jpeg.progressive {
			extra = 4 * h.jpeg.samples // image/jpeg keeps every coefficient, an int32 per sample
		}
		if h.orient != 1 {
			gray += 1 // the grayscale (the luma plane) turned is a copy
		}
	case "png":
		if h.pngTRNS {
			// A tRNS chunk: gray and truecolour decode to NRGBA, or NRGBA64 at 16 bits.
			switch h.model {
			case color.GrayModel, color.RGBAModel:
				decoded = 4
			case color.Gray16Model, color.RGBA64Model:
				decoded = 8
			}
		}
		if h.pngInterlaced {
			extra = decoded // the passes, then the image
		}
	case "webp":
		switch h.model {
		case color.NRGBAModel:
			extra = 4 // lossless: a 32-bit pixel array under the NRGBA image
		case color.NYCbCrAModel:
			decoded, gray = 2.5, 4 // lossy with alpha: planes of 4:2:0 and a full alpha; a translucent gray is NRGBA
		default:
			decoded = 1.5 // lossy: 4:2:0
		}
	case "tiff":
		return int64(px*(decoded+gray)) + h.tiff.bufferBytes(h.fileSize) + thumbnailBytes(h.width, h.height) + jobBaseBytes
	}
	return int64(px*(decoded+extra+gray)) + thumbnailBytes(h.width, h.height) + jobBaseBytes
}

// bufferBytes is the most x/image/tiff holds of one block's bytes: for a compressed block, a buffer
// grown by doubling up to blockW×blockH×8 bytes (the old and the new at the last growth: three
// times that); for an uncompressed one, the block's bytes as stored, at most the file.
func (t tiffLayout) bufferBytes(fileSize int64) int64 {
	limit := int64(t.blockW) * int64(t.blockH) * 8
	if t.compressed {
		return 3 * limit
	}
	return min(limit, fileSize)
}

// thumbnailBytes is the working memory of the largest thumbnail made from a w×h image, as fit makes
// it: the box pre-shrink's RGBA copy (when it shrinks), the Catmull-Rom scaler's float64 buffer of
// one pass (the target width × the source height × 4 channels × 8 bytes) and the result.
func thumbnailBytes(w, h int) int64 {
	box := 0
	for _, v := range variantSpecs {
		box = max(box, v.box)
	}
	if w <= box && h <= box {
		return 0
	}
	nw, nh := fitSize(w, h, box)
	sh := int64(h)
	var shrunk int64
	if k := min(w/nw, h/nh) / 2; k >= 2 {
		sh = int64((h + k - 1) / k)
		shrunk = int64((w+k-1)/k) * sh * 4
	}
	return shrunk + int64(nw)*sh*32 + int64(nw*nh)*4
}

// dctBytes estimates the peak bytes of a JPEG job on the DCT path (jpeg.go): the file in memory, the
// luma coefficients (an int16 per sample), chroma's (all of them at 1/4 scale, one per block at
// 1/8), the turned copy an orientation needs, and the grayscale as it is coded.
func (h imageHeader) dctBytes() int64 {
	px := float64(h.width) * float64(h.height)
	luma := 2.0
	chroma := 2 * (h.jpeg.samples - 1)
	rw, rh := (h.width+3)/4, (h.height+3)/4 // the reduced image the thumbnails start from
	if dctScale(h.width, h.height) == 8 {
		chroma /= 64 // chroma keeps its DC coefficients only
		rw, rh = (h.width+7)/8, (h.height+7)/8
	}
	turned := 0.0
	if h.orient != 1 {
		turned = 2
	}
	reduced := int64(rw) * int64(rh) * 3
	return int64(px*(luma+chroma+turned+0.5)) + h.fileSize + reduced + thumbnailBytes(rw, rh) + jobBaseBytes
}

// jobBytes estimates the peak bytes of processing the image: the larger of the two paths when the
// DCT path may run (it can fall back to the standard one, after its own memory is garbage).
func (h imageHeader) jobBytes(dct bool) int64 {
	n := h.standardBytes()
	if dct && h.format == "jpeg" {
		n = max(n, h.dctBytes())
	}
	return n
}

// renderBytes estimates the peak bytes of rendering the image width pixels wide (a display size,
// sizes.go). On the DCT path, which takes a YCbCr or gray JPEG in one sequential scan or progressive:
// the file, the coefficients when progressive (held whole; a sequential file is streamed a row of
// MCUs at a time), and the size made. On the standard path: a job's peak (the decode), the turned
// copy an orientation makes (at most 4 bytes a pixel), resizeRows's rows and the size made. The size
// made: its pixels (at most 4 bytes each), its coefficients as they are encoded (3) and the file in
// memory (at most 1.5).
func (h imageHeader) renderBytes(dct bool, width int) int64 {
	shownW, shownH := h.width, h.height
	if h.orient.swapsAxes() {
		shownW, shownH = shownH, shownW
	}
	outH := max(1, (shownH*width+shownW/2)/max(shownW, 1))
	out := int64(width) * int64(outH)
	px := int64(h.width) * int64(h.height)
	made := out * 9
	j := h.jpeg
	if dct && h.format == "jpeg" && (j.components == 1 || j.components == 3 && !j.rgb) && (j.progressive || j.scans == 1) {
		held := int64(0)
		if j.progressive {
			held = int64(float64(px) * 2 * j.samples)
		}
		return h.fileSize + held + made + jobBaseBytes
	}
	turned := int64(0)
	if h.orient != 1 {
		turned = px * 4
	}
	return h.standardBytes() + turned + resizeRowsBytes(shownW, shownH, width, outH) + made
}

// largestRenderBytes is renderBytes of the widest display size the image has (the widest ladder
// width under its own): what an upload must fit, beside its job, so that every size can be made.
func (h imageHeader) largestRenderBytes(dct bool) int64 {
	shown := h.width
	if h.orient.swapsAxes() {
		shown = h.height
	}
	var most int64
	for _, w := range displayWidths {
		if w < shown {
			most = max(most, h.renderBytes(dct, w))
		}
	}
	return most
}

// systemMemory is the memory this process may use: the cgroup's limit when it has one (a container),
// else the machine's; 0 when neither can be read.
func systemMemory() int64 {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(p); err == nil {
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && v < 1<<50 {
				return v
			}
		}
	}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("MemTotal:")); ok {
			var kb int64
			if _, err := fmt.Sscan(string(rest), &kb); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// defaultWorkerMemory is WORKER_MEMORY's default: a quarter of the memory the process may use
// (PostgreSQL, Redis and the rest share the machine), at most 512 MiB (a 50 MP image of 8 bytes a
// pixel fits; an operator with larger images raises it), at least 128 MiB.
func defaultWorkerMemory(system int64) int64 {
	if system <= 0 {
		return 512 << 20
	}
	return min(max(system/4, 128<<20), 512<<20)
}

// formatMiB writes n bytes in MiB for messages.
func formatMiB(n int64) string {
	return fmt.Sprintf("%d MiB", (n+(1<<20)-1)>>20)
}

// variantBytes estimates from the header the most the image's variants will take in storage, for the
// quota's reservation at upload (settled to the real sizes when they are made): a full-size grayscale
// and the thumbnails, each at about what its encoding of incompressible pixels takes. A JPEG's
// grayscale is its own luma coefficients (DCT path), so it is bounded by the file; PNG output is
// 1 byte a pixel, 4 where the colour model has alpha (a gray PNG's tRNS chunk is not seen here: the
// settling counts it); GIF's LZW codes can take 12 bits for 8.
func (h imageHeader) variantBytes() int64 {
	px := int64(h.width) * int64(h.height)
	const slack = 4 << 10 // headers, chunk and block framing
	var total int64
	for _, spec := range variantSpecs {
		if spec.box > 0 {
			// A thumbnail: at most box² pixels (and never more than the image's), RGBA at worst.
			n := min(px, int64(spec.box)*int64(spec.box))
			total += n*4 + n/64 + slack
			continue
		}
		switch {
		case h.format == "jpeg":
			total += h.fileSize + h.fileSize/4 + slack
		case h.format == "gif":
			total += px*3/2 + slack
		case hasAlpha(h.model) || h.pngTRNS:
			total += px*4 + px/64 + int64(h.height) + slack
		default:
			total += px + px/64 + int64(h.height) + slack
		}
	}
	return total
}

// hasAlpha reports whether images of model may be translucent.
func hasAlpha(m color.Model) bool {
	switch m {
	case color.GrayModel, color.Gray16Model, color.YCbCrModel, color.CMYKModel, color.RGBAModel, color.RGBA64Model:
		// RGBA(64) is what PNG's truecolour without alpha and BMP/TIFF's RGB decode to: opaque.
		return false
	}
	if pal, ok := m.(color.Palette); ok {
		for _, c := range pal {
			if _, _, _, a := c.RGBA(); a != 0xffff {
				return true
			}
		}
		return false
	}
	return true
}
