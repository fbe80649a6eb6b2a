// Display sizes: the original and the grayscale at the widths screens want, from a fixed ladder,
// rendered on the first request for each, under the jobs' memory budget and deadline, then stored and
// served like any variant. One render per size: concurrent first requests in a process wait on one,
// and across replicas the first to record its file wins (the others remove theirs).
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// displayWidths is the ladder of display widths. A fixed ladder, not any width: nobody can make the
// service render and store a million sizes of one image.
var displayWidths = []int{160, 320, 640, 960, 1280, 1920, 2560}

// Display size names: "w1280" is the image 1280 pixels wide, "gray-w1280" its grayscale copy.
const (
	displayPrefix     = "w"
	grayDisplayPrefix = "gray-w"
)

// displaySize reads a display size's name: its width and whether it is of the grayscale.
func displaySize(name string) (width int, gray, ok bool) {
	rest, gray := strings.CutPrefix(name, grayDisplayPrefix)
	if !gray {
		if rest, ok = strings.CutPrefix(name, displayPrefix); !ok {
			return 0, false, false
		}
	}
	w, err := strconv.Atoi(rest)
	if err != nil || !slices.Contains(displayWidths, w) || strconv.Itoa(w) != rest {
		return 0, false, false
	}
	return w, gray, true
}

// isDisplaySize reports whether name is a display size not yet made (made ones are variants like
// any other, served from the row).
func isDisplaySize(name string) bool {
	_, _, ok := displaySize(name)
	return ok
}

// displayNames lists every display size's name, for a refusal to name them.
func displayNames() string {
	var names []string
	for _, w := range displayWidths {
		names = append(names, displayPrefix+strconv.Itoa(w))
	}
	return strings.Join(names, ", ") + " (and each with gray- before it)"
}

// errNotReady answers a display size of an image that is not processed yet.
func errNotReady(im imageRecord) error {
	return newError(http.StatusConflict, "the image is %s: its sizes can be made once it is ready", im.Status)
}

// fullSizeOf is what a display size at least as wide as the image answers: the full-size file it
// is a size of (never enlarged).
func fullSizeOf(gray bool) string {
	if gray {
		return "grayscale"
	}
	return variantOriginal
}

// renders is the single flight of display-size renders in this process: concurrent requests for
// one size of one image wait on one render; and the slots that keep each owner to RENDERS_PER_USER
// renders at once, so that one user's page of new sizes waits in its own line, not ahead of others'.
type renders struct {
	mu      sync.Mutex
	running map[string]*render
	owners  map[int64]*ownerSlots // owners with renders running or waiting
}

// ownerSlots is one owner's render slots, and how many renders hold or wait for one.
type ownerSlots struct {
	slots chan struct{}
	users int
}

// slot waits for one of owner's n render slots (or ctx) and returns its release.
func (r *renders) slot(ctx context.Context, owner int64, n int) (func(), error) {
	r.mu.Lock()
	if r.owners == nil {
		r.owners = map[int64]*ownerSlots{}
	}
	o := r.owners[owner]
	if o == nil {
		o = &ownerSlots{slots: make(chan struct{}, n)}
		r.owners[owner] = o
	}
	o.users++
	r.mu.Unlock()
	leave := func() {
		r.mu.Lock()
		if o.users--; o.users == 0 {
			delete(r.owners, owner)
		}
		r.mu.Unlock()
	}
	select {
	case o.slots <- struct{}{}:
		return func() { <-o.slots; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}

// render is one render in flight; done is closed when err is set.
type render struct {
	done chan struct{}
	err  error
}

// do runs fn for key unless a run of it is in flight, in which case it waits for that one; both
// return its error.
func (r *renders) do(ctx context.Context, key string, fn func() error) error {
	r.mu.Lock()
	if r.running == nil {
		r.running = map[string]*render{}
	}
	if c, ok := r.running[key]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &render{done: make(chan struct{})}
	r.running[key] = c
	r.mu.Unlock()
	c.err = fn()
	r.mu.Lock()
	delete(r.running, key)
	r.mu.Unlock()
	close(c.done)
	return c.err
}

// errDisplayQuota answers a display size that would take its owner past quota bytes.
func errDisplayQuota(quota int64) error {
	return newError(http.StatusRequestEntityTooLarge, "storing this size would take your images past your storage quota of %d bytes", quota)
}

// renderDisplaySize makes display size name of im (width pixels wide, of the grayscale when gray)
// from its original, in one of its owner's render slots and under the memory budget and JOB_TIMEOUT
// like a job (the wait for either counted in it), then stores it under a fresh key recorded as an
// intent and records it in the row (counted against the quota). With serve, the file is handed to
// it while it is being stored (the first request's answer need not wait for the disk and the
// database); the error is then the storing's. A render that fails marks nothing failed: the image
// and its variants stay as they were.
func (a *app) renderDisplaySize(ctx context.Context, im imageRecord, name string, width int, gray bool, serve func(*os.File, storedVariant)) error {
	log := a.log.With(slog.Int64("image_id", im.ID), slog.String("variant", name))
	if err := a.roomFor(ctx, im.OwnerID, 1); err != nil {
		// An owner with no room left is refused before the render, not after it: else each request
		// of theirs would cost a render only to be thrown away.
		return err
	}
	out, err := a.renderSize(ctx, im, name, width, gray)
	if err != nil {
		return err
	}
	if err := a.roomFor(ctx, im.OwnerID, out.file.Size); err != nil {
		os.Remove(out.tmpPath)
		return err
	}
	out.key = variantKey(im.FileKey, name, out.ext)
	var f *os.File
	if serve != nil {
		f, _ = os.Open(out.tmpPath) // opened before it is placed (renamed or removed); if not, not served
	}
	stored := make(chan error, 1)
	go func() { stored <- a.storeDisplaySize(ctx, log, im, out) }()
	if f != nil {
		v := out.file
		v.Key = out.key
		serve(f, v)
		f.Close()
	}
	return <-stored
}

// roomFor checks that owner can store size more bytes under USER_QUOTA_BYTES.
func (a *app) roomFor(ctx context.Context, owner, size int64) error {
	if a.cfg.UserQuota <= 0 {
		return nil
	}
	_, used, err := a.store.accountUsage(ctx, owner)
	if err != nil {
		return err
	}
	if used+size > a.cfg.UserQuota {
		return errDisplayQuota(a.cfg.UserQuota)
	}
	return nil
}

// renderSize renders display size name of im into a temp file, in one of its owner's render slots
// and under the memory budget and JOB_TIMEOUT.
func (a *app) renderSize(ctx context.Context, im imageRecord, name string, width int, gray bool) (encodedVariant, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.JobTimeout)
	defer cancel()
	leave, err := a.renders.slot(ctx, im.OwnerID, a.cfg.RendersPerUser)
	if err != nil {
		return encodedVariant{}, err
	}
	defer leave()
	path, done, err := a.blobs.localCopy(ctx, im.FileKey)
	if err != nil {
		return encodedVariant{}, err
	}
	defer done()
	h, err := headerOf(ctx, path)
	if err != nil {
		return encodedVariant{}, err
	}
	return a.renderUnderBudget(ctx, h, path, im.ContentType, name, width, gray)
}

// storeDisplaySize places out and records it among im's variants; when it is not recorded (past
// the quota, another replica's render won, the image changed), its file is removed.
func (a *app) storeDisplaySize(ctx context.Context, log *slog.Logger, im imageRecord, out encodedVariant) error {
	placed, err := a.placeVariants(ctx, im, []encodedVariant{out})
	if err != nil {
		a.removeVariants(log, placed)
		return err
	}
	v := placed[out.name]
	recorded, err := a.store.addVariant(ctx, im.ID, out.name, v, a.cfg.UserQuota)
	if errors.Is(err, errQuota) {
		a.removeVariants(log, placed)
		return errDisplayQuota(a.cfg.UserQuota)
	}
	if err != nil || !recorded {
		// Not recorded: another replica's render won, or the image changed. Ours is nobody's.
		a.removeVariants(log, placed)
		return err
	}
	a.cache.invalidateOnce(ctx, im.OwnerID)
	log.Info("display size made", slog.Int("width", v.Width), slog.Int64("bytes", v.Size))
	return nil
}

// renderUnderBudget renders display size name of the image at path (renderWidth) with the memory
// its path needs reserved in the jobs' budget: the DCT path's estimate, and if that path does not
// take the file, the standard path's.
func (a *app) renderUnderBudget(ctx context.Context, h imageHeader, path, contentType, name string, width int, gray bool) (encodedVariant, error) {
	opts := processOptions{jpegQuality: a.cfg.JPEGQuality, maxPixels: a.cfg.MaxPixels, dct: a.cfg.JPEGDCT}
	under := func(need int64, render func() (encodedVariant, error)) (encodedVariant, error) {
		release, err := a.budget.acquire(ctx, need)
		if err != nil {
			return encodedVariant{}, err
		}
		defer release()
		return render()
	}
	if contentType == "image/jpeg" && opts.dct {
		out, err := under(h.renderBytes(true, width), func() (encodedVariant, error) {
			return renderWidthDCT(ctx, a.scratch, path, name, width, gray, opts)
		})
		if err == nil || ctx.Err() != nil || errors.Is(err, errOverBudget) {
			return out, err
		}
	}
	opts.dct = false
	return under(h.renderBytes(false, width), func() (encodedVariant, error) {
		return renderWidth(ctx, a.scratch, path, contentType, name, width, gray, opts)
	})
}

// renderWidth decodes the image at path, turns it upright, takes its grayscale when gray, and scales
// it to width pixels wide (the height in proportion), encoded as its variants are. A JPEG is rendered
// from its coefficients at the least n/8 scale that covers the size (renderWidthDCT) instead of
// decoded whole.
func renderWidth(ctx context.Context, sc *scratch, path, contentType, name string, width int, gray bool, opts processOptions) (encodedVariant, error) {
	if contentType == "image/jpeg" && opts.dct {
		out, err := renderWidthDCT(ctx, sc, path, name, width, gray, opts)
		if err == nil || ctx.Err() != nil {
			return out, err
		}
		// Anything the DCT path does not take (or refuses) goes the standard way.
	}
	src, orient, err := decodeFile(ctx, path, opts.maxPixels)
	if err != nil {
		return encodedVariant{}, err
	}
	if err := ctx.Err(); err != nil {
		return encodedVariant{}, err
	}
	src = orientImage(src, orient)
	if gray {
		src = grayscale(src, true)
	}
	return scaleToWidth(ctx, sc, src, name, width, outputType(contentType), opts.jpegQuality)
}

// renderWidthDCT renders a JPEG's display size from its coefficients (resizeDCT), turned upright and
// written by our encoder (encodeJPEG). Anything the DCT path does not take: errDCTUnsupported.
func renderWidthDCT(ctx context.Context, sc *scratch, path, name string, width int, gray bool, opts processOptions) (encodedVariant, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return encodedVariant{}, err
	}
	orient := exifOrientation(bytes.NewReader(data))
	cfg, err := jpeg.DecodeConfig(bytes.NewReader(data))
	if err != nil || cfg.Width < 1 || cfg.Height < 1 {
		return encodedVariant{}, errDCTUnsupported
	}
	tw, th := displayBox(cfg.Width, cfg.Height, width, orient)
	out, err := resizeDCT(ctx, data, opts.maxPixels, cfg.Width, cfg.Height, tw, th, gray)
	if err != nil {
		return encodedVariant{}, err
	}
	out = orientImage(out, orient)
	b := out.Bounds()
	return writeScratch(sc, name, b.Dx(), b.Dy(), "image/jpeg", false, func(w io.Writer) error {
		return encodeJPEG(w, out, opts.jpegQuality)
	})
}

// resizeDCT decodes the JPEG data, of w×h as stored, resized to tw×th (not turned): a Gray image when
// gray or when it has one component, else 4:2:0 YCbCr, each plane straight from the coefficients
// (planeResizer), row by row as the decoder reads them (a sequential file is never held whole).
func resizeDCT(ctx context.Context, data []byte, maxPixels int64, w, h, tw, th int, gray bool) (image.Image, error) {
	var planes []*planeResizer
	// At 1/8 scale or below, chroma needs only its DC coefficients.
	dcChroma := 8*tw <= w && 8*th <= h
	_, err := decodeDCTRows(ctx, data, maxPixels, func(i int) bool { return dcChroma && i > 0 }, func(img *dctImage, m int) error {
		if planes == nil {
			var err error
			if planes, err = resizers(img, tw, th, gray); err != nil {
				return err
			}
		}
		for _, p := range planes {
			p.mcuRow(m)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if planes == nil {
		return nil, badImage("the jpeg has no rows")
	}
	if len(planes) == 1 {
		return planes[0].out, nil
	}
	yc := image.NewYCbCr(image.Rect(0, 0, tw, th), image.YCbCrSubsampleRatio420)
	yc.Y, yc.Cb, yc.Cr = planes[0].out.Pix, planes[1].out.Pix, planes[2].out.Pix
	return yc, nil
}

// resizers prepares the planes of a tw×th rendering of img: its luma, and for a colour image
// wanted in colour, its chroma at 4:2:0.
func resizers(img *dctImage, tw, th int, gray bool) ([]*planeResizer, error) {
	if len(img.comps) != 1 && len(img.comps) != 3 {
		return nil, errDCTUnsupported
	}
	y, err := img.newPlaneResizer(&img.comps[0], tw, th)
	if err != nil {
		return nil, err
	}
	planes := []*planeResizer{y}
	if gray || len(img.comps) == 1 {
		return planes, nil
	}
	for i := 1; i < 3; i++ {
		p, err := img.newPlaneResizer(&img.comps[i], (tw+1)/2, (th+1)/2)
		if err != nil {
			return nil, err
		}
		planes = append(planes, p)
	}
	return planes, nil
}

// displayBox is the size, as stored (before orient turns it), of a w×h image scaled to width pixels
// wide as it is shown (upright), its height in proportion.
func displayBox(w, h, width int, orient orientation) (int, int) {
	if orient.swapsAxes() {
		return max(1, (w*width+h/2)/h), width
	}
	return width, max(1, (h*width+w/2)/w)
}

// scaleToWidth scales src to width pixels wide (the height in proportion) with resizeRows (a box
// pre-shrink to within twice the size, then Catmull-Rom, in a few rows of memory) and encodes it as
// contentType.
func scaleToWidth(ctx context.Context, sc *scratch, src image.Image, name string, width int, contentType string, quality int) (encodedVariant, error) {
	b := src.Bounds()
	height := max(1, (b.Dy()*width+b.Dx()/2)/b.Dx())
	dst, err := resizeRows(ctx, src, width, height)
	if err != nil {
		return encodedVariant{}, err
	}
	return writeScratch(sc, name, width, height, contentType, false, func(w io.Writer) error {
		return encodeImage(w, dst, contentType, quality)
	})
}

// serveDisplaySize answers display size variant of im that is not made yet: made now (one render
// per size in this process, the others asking meanwhile waiting on it; across replicas the first to
// record its file wins), the request that made it answered from the file as it is being stored, the
// others from storage once recorded; at least as wide as the image, the full-size file itself (never
// enlarged). 409 before the image is ready.
func (a *app) serveDisplaySize(w http.ResponseWriter, r *http.Request, im imageRecord, variant, cacheControl string) {
	width, gray, _ := displaySize(variant)
	if width >= im.Width {
		a.serveFile(w, r, im, fullSizeOf(gray), cacheControl)
		return
	}
	if im.Status != statusReady {
		a.fail(w, r, errNotReady(im))
		return
	}
	served := false
	err := a.renders.do(r.Context(), fmt.Sprint(im.ID, ":", variant), func() error {
		// A fresh context: the render outlives a waiter that gives up, so that the others get it.
		return a.renderDisplaySize(context.WithoutCancel(r.Context()), im, variant, width, gray, func(f *os.File, v storedVariant) {
			served = true
			a.serveRendered(w, r, im, variant, v, f, cacheControl)
		})
	})
	if served {
		if err != nil {
			a.log.Warn("a display size was sent but not stored", slog.Int64("image_id", im.ID), slog.String("variant", variant), slog.Any("error", err))
		}
		return
	}
	if err != nil {
		a.fail(w, r, a.renderFailure(r.Context(), w, err))
		return
	}
	latest, err := a.store.imageByID(r.Context(), im.OwnerID, im.ID)
	if err != nil {
		a.fail(w, r, asImageNotFound(err))
		return
	}
	if latest.Variants[variant].Key == "" {
		a.fail(w, r, errNotReady(latest)) // deleted or reprocessed meanwhile
		return
	}
	a.serveFile(w, r, latest, variant, cacheControl)
}

// serveRendered answers with display size variant of im just rendered into f (v, its key chosen),
// as serveFile answers a stored one: the same headers, ETag, conditionals and ranges.
func (a *app) serveRendered(w http.ResponseWriter, r *http.Request, im imageRecord, variant string, v storedVariant, f *os.File, cacheControl string) {
	etag := keyETag(v.Key)
	fileHeaders(w.Header(), im, variant, v.ContentType, etag, cacheControl)
	honouredRange(r, etag)
	modTime := time.Now()
	if st, err := f.Stat(); err == nil {
		modTime = st.ModTime()
	}
	http.ServeContent(&rangeProblems{ResponseWriter: w, r: r}, r, "", modTime, f)
	// Sent now, before the handler waits for the file to be stored.
	http.NewResponseController(w).Flush()
}

// renderFailure is the answer to a render that failed with err: an original gone (the image deleted
// meanwhile) is 404 as the image is; a file that turns out not to decode
// or a size over WORKER_MEMORY is 422 (nothing a retry changes; the image and its other files stay as
// they were), a render that ran out of JOB_TIMEOUT (waiting for memory while the worker is busy, or
// too slow) 503 with Retry-After; anything else is answered as any failure is.
func (a *app) renderFailure(ctx context.Context, w http.ResponseWriter, err error) error {
	var bad *imageError
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, errNotFound):
		return errImageNotFound // the image was deleted meanwhile
	case errors.As(err, &bad):
		return newError(http.StatusUnprocessableEntity, "this size cannot be made from the image: %s", bad.reason)
	case errors.Is(err, errOverBudget):
		return newError(http.StatusUnprocessableEntity, "making this size of the image needs more memory than this server allows (WORKER_MEMORY %s): ask a smaller size", formatMiB(a.cfg.WorkerMemory))
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterOutage))
		return newError(http.StatusServiceUnavailable, "the server is too busy to make this size now; try again shortly")
	}
	return err
}
