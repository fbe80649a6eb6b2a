// Image handlers: upload, list, read, edit, delete and download, each seeing only the caller's images.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Image bounds.
const (
	maxNameLen     = 255 // characters
	maxTags        = 32
	maxTagLen      = 64 // characters
	defaultLimit   = 10
	maxLimit       = 100
	maxSkip        = 1_000_000
	multipartSlack = 64 << 10 // multipart framing and small fields allowed beyond MAX_UPLOAD_BYTES
	// uploadBufferSize is the read buffer, and the write buffer, of one upload in flight.
	uploadBufferSize = 128 << 10
	// maxPreambleBytes caps a multipart upload's bytes before the file's own: preamble, part
	// headers and any small fields before "file".
	maxPreambleBytes = 64 << 10
	// retryAfterBacklog is the Retry-After, in seconds, of an upload refused for JOBS_PER_USER.
	retryAfterBacklog = 5
)

// imageView is the API's Image. Width and height are as displayed (after EXIF orientation).
type imageView struct {
	ID          int64                  `json:"id"`
	Name        string                 `json:"name"`
	Tags        []string               `json:"tags"`
	Status      string                 `json:"status"`
	Error       *string                `json:"error"`
	ContentType string                 `json:"content_type"`
	Width       int                    `json:"width"`
	Height      int                    `json:"height"`
	Resolution  string                 `json:"resolution"`
	Size        int64                  `json:"size"`
	SHA256      string                 `json:"sha256"`
	URL         string                 `json:"url"`
	SignedURL   string                 `json:"signed_url"`
	Placeholder *string                `json:"placeholder"`
	CreatedAt   string                 `json:"created_at"`
	UpdatedAt   string                 `json:"updated_at"`
	Variants    map[string]variantJSON `json:"variants"`
	// Srcset is an <img> srcset of the image at the display widths below its own, each by its
	// signed link (made on first request), and the original at its width; empty until it is ready.
	Srcset string `json:"srcset"`
}

// variantJSON is a finished variant in an Image.
type variantJSON struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	URL         string `json:"url"`
	SignedURL   string `json:"signed_url"`
}

// imageJSON is im as the API shows it, with signed links made now (never cached: they expire).
func (a *app) imageJSON(im imageRecord) imageView {
	const rfc3339Micro = "2006-01-02T15:04:05.999999Z07:00"
	fileURL := fmt.Sprintf("/api/v1/images/%d/file", im.ID)
	v := imageView{
		ID: im.ID, Name: im.Name, Tags: im.Tags, Status: im.Status, ContentType: im.ContentType,
		Width: im.Width, Height: im.Height, Resolution: fmt.Sprintf("%dx%d", im.Width, im.Height),
		Size: im.Size, SHA256: im.SHA256, URL: fileURL, SignedURL: a.signer.url(im, variantOriginal),
		CreatedAt: im.CreatedAt.UTC().Format(rfc3339Micro), UpdatedAt: im.UpdatedAt.UTC().Format(rfc3339Micro),
		Variants: make(map[string]variantJSON, len(im.Variants)),
	}
	if im.Error != "" {
		v.Error = &im.Error
	}
	if im.Placeholder != "" {
		v.Placeholder = &im.Placeholder
	}
	for name, f := range im.Variants {
		v.Variants[name] = variantJSON{Width: f.Width, Height: f.Height, Size: f.Size, ContentType: f.ContentType,
			URL: fileURL + "?variant=" + name, SignedURL: a.signer.url(im, name)}
	}
	if im.Status == statusReady {
		var set []string
		for _, w := range displayWidths {
			if w < im.Width {
				set = append(set, fmt.Sprintf("%s %dw", a.signer.url(im, displayPrefix+strconv.Itoa(w)), w))
			}
		}
		v.Srcset = strings.Join(append(set, fmt.Sprintf("%s %dw", v.SignedURL, im.Width)), ", ")
	}
	return v
}

// errImageNotFound answers a missing image and another user's image alike.
var errImageNotFound = newError(http.StatusNotFound, "image not found")

// imageID reads {id}: a positive integer in canonical form; anything else is a missing image.
func imageID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != s {
		return 0, errImageNotFound
	}
	return id, nil
}

// cleanText trims s and checks it is valid UTF-8 without control characters, of 1 to max characters.
func cleanText(what, s string, max int) (string, error) {
	s = strings.TrimSpace(s)
	if !utf8.ValidString(s) {
		return "", newError(http.StatusUnprocessableEntity, "%s must be valid UTF-8", what)
	}
	if n := utf8.RuneCountInString(s); n < 1 || n > max {
		return "", newError(http.StatusUnprocessableEntity, "%s must be 1 to %d characters", what, max)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return "", newError(http.StatusUnprocessableEntity, "%s must not contain control characters", what)
	}
	return s, nil
}

// parseTags turns comma-separated lists into tags: trimmed, empties dropped, duplicates removed, at
// most maxTags of at most maxTagLen characters.
func parseTags(lists ...string) ([]string, error) {
	tags := []string{}
	seen := map[string]bool{}
	for _, list := range lists {
		for _, t := range strings.Split(list, ",") {
			if strings.TrimSpace(t) == "" {
				continue
			}
			t, err := cleanText("a tag", t, maxTagLen)
			if err != nil {
				return nil, err
			}
			if !seen[t] {
				seen[t] = true
				tags = append(tags, t)
			}
		}
	}
	if len(tags) > maxTags {
		return nil, newError(http.StatusUnprocessableEntity, "at most %d tags", maxTags)
	}
	return tags, nil
}

// intParam reads query parameter name as an integer from lo to hi, def when absent.
func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		return 0, newError(http.StatusUnprocessableEntity, "query parameter %s must be an integer from %d to %d", name, lo, hi)
	}
	return v, nil
}

// readError marks an error that came from reading the request, not from writing our files.
type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

// requestReader tags its errors as readErrors.
type requestReader struct{ r io.Reader }

func (rr requestReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && err != io.EOF {
		err = readError{err}
	}
	return n, err
}

// uploadImage stores a new image: query name and tags, multipart field file. The file is streamed to
// disk, checked from its bytes, and becomes visible with its row or not at all. 201 with the Image.
func (a *app) uploadImage(w http.ResponseWriter, r *http.Request) {
	im, err := a.receiveUpload(w, r)
	if err != nil {
		var ae *apiError
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = tooLarge("upload", a.cfg.MaxUploadBytes)
		} else if errors.Is(err, errTooSlow) {
			err = newError(http.StatusRequestTimeout, "the upload arrived slower than the minimum of %d bytes a second: %v", a.cfg.MinUploadRate, err)
		} else if errors.Is(err, errUploadTimeout) {
			err = newError(http.StatusRequestTimeout, "the upload took longer than the server allows for one request (%s); send a smaller file or use a faster link", a.cfg.RequestTimeout)
		} else if errors.Is(err, errPreambleTooLarge) {
			err = newError(http.StatusRequestEntityTooLarge, "the multipart body has more than %d bytes before the file's own: send the file part with short headers, first or after small fields", maxPreambleBytes)
		} else if errors.Is(err, errQuota) {
			err = newError(http.StatusRequestEntityTooLarge, "this upload and the variants made from it (a grayscale copy and thumbnails) would take your images past your storage quota of %d bytes; delete some to make room", a.cfg.UserQuota)
		} else if re := (readError{}); errors.As(err, &re) {
			err = newError(http.StatusBadRequest, "the upload ended early or is malformed: %v", re.err)
		}
		if errors.As(err, &ae) && ae.status < 500 {
			a.metrics.uploadRefused.Add(1)
			if ae.status == http.StatusRequestEntityTooLarge || ae.status == http.StatusRequestTimeout {
				// Do not read the rest of a body we refused.
				w.Header().Set("Connection", "close")
			}
		}
		a.fail(w, r, err)
		return
	}
	a.metrics.uploads.Add(1)
	a.metrics.uploadBytes.Add(im.Size)
	a.cache.invalidate(r.Context(), im.OwnerID)
	a.enqueue(r.Context(), im.ID)
	w.Header().Set("Location", fmt.Sprintf("/api/v1/images/%d", im.ID))
	writeJSON(w, http.StatusCreated, a.imageJSON(im))
}

// receiveUpload does the work of uploadImage and returns the stored row.
func (a *app) receiveUpload(w http.ResponseWriter, r *http.Request) (imageRecord, error) {
	q := r.URL.Query()
	name, err := cleanText("query parameter name", q.Get("name"), maxNameLen)
	if err != nil {
		return imageRecord{}, err
	}
	tags, err := parseTags(q["tags"]...)
	if err != nil {
		return imageRecord{}, err
	}
	if r.ContentLength > a.cfg.MaxUploadBytes+multipartSlack {
		return imageRecord{}, tooLarge("upload", a.cfg.MaxUploadBytes)
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" || params["boundary"] == "" {
		return imageRecord{}, newError(http.StatusUnsupportedMediaType, "want a multipart/form-data body with the image in field \"file\"")
	}
	uid := userID(r.Context())
	release, err := a.admitUpload(w, r, uid)
	if err != nil {
		return imageRecord{}, err
	}
	defer release()
	part, done, err := a.filePart(w, r, params["boundary"])
	if err != nil {
		return imageRecord{}, err
	}
	defer done()
	up, err := a.scratch.receive(requestReader{part}, uploadLimits{maxBytes: a.cfg.MaxUploadBytes, maxPixels: a.cfg.MaxPixels,
		maxJobBytes: a.cfg.WorkerMemory, dct: a.cfg.JPEGDCT})
	if err != nil {
		return imageRecord{}, err
	}
	key := newKey()
	// Recorded before the write: should the put's answer be lost, or this process die before the
	// row commits, the intent sweep removes the object.
	if err := a.store.recordIntents(r.Context(), key); err != nil {
		os.Remove(up.tmpPath)
		return imageRecord{}, err
	}
	if err := a.blobs.place(r.Context(), up.tmpPath, key, up.contentType, up.sha256); err != nil {
		os.Remove(up.tmpPath)
		// The store may hold the object though it did not say so: remove it now if it answers,
		// else the intent sweep will.
		a.dropLost(key)
		return imageRecord{}, fmt.Errorf("place upload: %w", err)
	}
	im, used, err := a.store.insertImage(r.Context(), a.cfg.UserQuota, imageRecord{
		OwnerID: uid, Name: name, Tags: tags, ContentType: up.contentType,
		Width: up.width, Height: up.height, Size: up.size, SHA256: up.sha256, FileKey: key,
	}, up.variantBytes)
	if err != nil {
		// No row, so no file: the original must not outlive the failed insert. But when the
		// connection died with the commit in flight, the row may exist: the file goes only once
		// the database says it does not.
		a.dropUnreferenced(err, []string{key}, func(ctx context.Context) (bool, error) {
			found, err := a.store.fileKeysExist(ctx, []string{key})
			return found[key], err
		})
		return imageRecord{}, err
	}
	if a.cfg.UserQuota > 0 {
		// What the user stores now, this upload and its variants' reservation included.
		w.Header().Set("X-Storage-Used", strconv.FormatInt(used, 10))
		w.Header().Set("X-Storage-Quota", strconv.FormatInt(a.cfg.UserQuota, 10))
	}
	return im, nil
}

// admitUpload decides, before a byte of the body is read, whether user's upload may start: a slot
// (per user, per client address, in all), room under the quota, and room in the user's backlog.
// release gives the slot back.
func (a *app) admitUpload(w http.ResponseWriter, r *http.Request, uid int64) (_ func(), err error) {
	release, err := a.uploads.take(w, uid, clientKey(r))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	if a.cfg.UserQuota > 0 {
		// A user already at the quota is refused now; the insert checks again with the real size.
		if used, err := a.store.bytesStored(r.Context(), uid); err != nil {
			return nil, err
		} else if used >= a.cfg.UserQuota {
			return nil, errQuota
		}
	}
	// A user's backlog is capped: their jobs wait behind nobody else's (jobPriority), but rows and
	// queue space are everyone's.
	if n, err := a.store.unfinishedJobs(r.Context(), uid); err != nil {
		return nil, err
	} else if n >= int64(a.cfg.JobsPerUser) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterBacklog))
		return nil, newError(http.StatusTooManyRequests, "you have %d images waiting to be processed, the most at once (JOBS_PER_USER); send more as they become ready", n)
	}
	return release, nil
}

// filePart reads r's multipart body up to the part of field "file" and returns that part: the body
// capped at MAX_UPLOAD_BYTES (and framing), paced at MIN_UPLOAD_RATE, and with at most
// maxPreambleBytes before the file's own bytes. done lifts the pace's read deadline.
func (a *app) filePart(w http.ResponseWriter, r *http.Request, boundary string) (_ io.Reader, _ func(), err error) {
	body, done := io.Reader(r.Body), func() {}
	if a.cfg.MinUploadRate > 0 {
		// The body must be in before the response's own deadline, with time left to answer.
		deadline := time.Now().Add(a.cfg.RequestTimeout - min(5*time.Second, a.cfg.RequestTimeout/10))
		mr := newMinRateReader(w, r.Body, a.cfg.MinUploadRate, a.cfg.UploadRateWindow, deadline)
		body, done = mr, mr.done
	}
	defer func() {
		if err != nil {
			done()
		}
	}()
	// multipart reads through a bufio.Reader of 4 KiB unless it is given a larger one, which it then
	// uses as is: large reads cost far fewer copies and syscalls per megabyte.
	capped := http.MaxBytesReader(w, io.NopCloser(body), a.cfg.MaxUploadBytes+multipartSlack)
	pre := &preambleReader{r: capped, limit: maxPreambleBytes + uploadBufferSize}
	buf := bufio.NewReaderSize(pre, uploadBufferSize)
	mr := multipart.NewReader(buf, boundary)
	var part io.Reader
	for part == nil {
		p, err := mr.NextPart()
		switch {
		case err == io.EOF:
			return nil, nil, newError(http.StatusUnprocessableEntity, "multipart field \"file\" is required")
		case errors.Is(err, errPreambleTooLarge):
			return nil, nil, errPreambleTooLarge
		case err != nil:
			return nil, nil, readError{err}
		case p.FormName() == "file":
			part = p
		}
	}
	// What multipart has taken from the body so far is the preamble and headers, exactly.
	if pre.n-int64(buf.Buffered()) > maxPreambleBytes {
		return nil, nil, errPreambleTooLarge
	}
	pre.open = true
	return part, done, nil
}

// listImages answers the caller's images, newest first, with X-Total-Count, and, when more follow,
// a cursor to the next page (Link rel="next" and X-Next-Cursor; rel="first" always). A cursor costs
// the same at any depth; skip walks every row it skips, and is kept for the clients that use it.
func (a *app) listImages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	skip, err := intParam(q, "skip", 0, 0, maxSkip)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	limit, err := intParam(q, "limit", defaultLimit, 1, maxLimit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	tag := ""
	if q.Has("tag") {
		if tag, err = cleanText("query parameter tag", q.Get("tag"), maxTagLen); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	uid := userID(r.Context())
	var after *listCursor
	if c := q.Get("cursor"); q.Has("cursor") {
		if skip > 0 {
			a.fail(w, r, newError(http.StatusUnprocessableEntity, "send cursor or skip, not both"))
			return
		}
		pos, err := a.cursors.decode(uid, tag, c)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		after = &pos
	}
	sub := fmt.Sprintf("list:%d:%d:%s:%s", skip, limit, q.Get("cursor"), tag)
	page, err := cacheAside(r.Context(), a.cache, uid, sub, func(ctx context.Context) (imagePage, error) {
		return a.store.selectImages(ctx, uid, tag, skip, limit, after)
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	views := make([]imageView, len(page.Images))
	for i, im := range page.Images {
		views[i] = a.imageJSON(im)
	}
	a.pageLinks(w, r, uid, tag, limit, page)
	writeJSON(w, http.StatusOK, views)
}

// pageLinks sets a list answer's X-Total-Count, and its Link header (RFC 8288): rel="first", and
// rel="next" with X-Next-Cursor when more images follow the page.
func (a *app) pageLinks(w http.ResponseWriter, r *http.Request, uid int64, tag string, limit int, page imagePage) {
	h := w.Header()
	h.Set("X-Total-Count", strconv.FormatInt(page.Total, 10))
	link := func(cursor string) string {
		v := url.Values{"limit": {strconv.Itoa(limit)}}
		if tag != "" {
			v.Set("tag", tag)
		}
		if cursor != "" {
			v.Set("cursor", cursor)
		}
		return "<" + r.URL.Path + "?" + v.Encode() + ">"
	}
	links := []string{link("") + `; rel="first"`}
	if page.More && len(page.Images) > 0 {
		last := page.Images[len(page.Images)-1]
		next := a.cursors.encode(uid, tag, listCursor{createdAt: last.CreatedAt, id: last.ID})
		h.Set("X-Next-Cursor", next)
		links = append(links, link(next)+`; rel="next"`)
	}
	h.Set("Link", strings.Join(links, ", "))
}

// ownImage returns the caller's image {id}, through the cache; errImageNotFound for anything else.
func (a *app) ownImage(r *http.Request) (imageRecord, error) {
	id, err := imageID(r)
	if err != nil {
		return imageRecord{}, err
	}
	return a.imageOf(r.Context(), userID(r.Context()), id)
}

// imageOf returns owner's image id, through the cache; errImageNotFound when owner has none such.
func (a *app) imageOf(ctx context.Context, owner, id int64) (imageRecord, error) {
	im, err := cacheAside(ctx, a.cache, owner, "img:"+strconv.FormatInt(id, 10), func(ctx context.Context) (imageRecord, error) {
		return a.store.imageByID(ctx, owner, id)
	})
	return im, asImageNotFound(err)
}

// asImageNotFound is err, or errImageNotFound when err says the store has no such image (of this
// owner): the one answer for a missing image and another user's.
func asImageNotFound(err error) error {
	if errors.Is(err, errNotFound) {
		return errImageNotFound
	}
	return err
}

// getImage answers one of the caller's images.
func (a *app) getImage(w http.ResponseWriter, r *http.Request) {
	im, err := a.ownImage(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a.imageJSON(im))
}

// imageUpdate is PUT's body. Tags may be a comma-separated string (as the seed sent) or an array.
type imageUpdate struct {
	Name *string         `json:"name"`
	Tags json.RawMessage `json:"tags"`
}

// updateImage renames and/or retags one of the caller's images.
func (a *app) updateImage(w http.ResponseWriter, r *http.Request) {
	id, err := imageID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var body imageUpdate
	if err := decodeJSON(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	var name *string
	if body.Name != nil {
		n, err := cleanText("name", *body.Name, maxNameLen)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		name = &n
	}
	var tags []string // nil: unchanged
	if raw := body.Tags; len(raw) > 0 && string(raw) != "null" {
		var s string
		var list []string
		switch {
		case json.Unmarshal(raw, &s) == nil:
			tags, err = parseTags(s)
		case json.Unmarshal(raw, &list) == nil:
			for _, t := range list {
				if strings.Contains(t, ",") {
					err = newError(http.StatusUnprocessableEntity, "a tag must not contain a comma")
					break
				}
			}
			if err == nil {
				tags, err = parseTags(list...)
			}
		default:
			err = newError(http.StatusUnprocessableEntity, "field \"tags\": want a comma-separated string or an array of strings")
		}
		if err != nil {
			a.fail(w, r, err)
			return
		}
	}
	uid := userID(r.Context())
	im, err := a.store.updateImageRow(r.Context(), uid, id, name, tags)
	err = asImageNotFound(err)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.cache.invalidate(r.Context(), uid)
	writeJSON(w, http.StatusOK, a.imageJSON(im))
}

// deleteImage removes one of the caller's images: its row, then its original and variants.
func (a *app) deleteImage(w http.ResponseWriter, r *http.Request) {
	id, err := imageID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	uid := userID(r.Context())
	im, err := a.store.deleteImageRow(r.Context(), uid, id)
	err = asImageNotFound(err)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.cache.invalidate(r.Context(), uid)
	keys := []string{im.FileKey}
	for _, v := range im.Variants {
		keys = append(keys, v.Key)
	}
	// The row is gone, so the image is gone for the user; a file that fails to go now is an orphan
	// the sweeper removes later.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Minute)
	defer cancel()
	if err := a.blobs.remove(ctx, keys...); err != nil {
		a.log.Warn("removing a deleted image's files", slog.Int64("image_id", id), slog.Any("error", err))
	}
	w.WriteHeader(http.StatusNoContent)
}

// downloadImage serves the caller's original (byte for byte as uploaded) or a finished variant, with
// ETag, conditional requests and ranges.
func (a *app) downloadImage(w http.ResponseWriter, r *http.Request) {
	im, err := a.ownImage(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.serveFile(w, r, im, r.URL.Query().Get("variant"), "private")
}

// downloadSigned serves a file through a signed link (signed.go), without an Authorization header:
// the signature says whose image and which file, and until when. A deleted image's links end with it.
func (a *app) downloadSigned(w http.ResponseWriter, r *http.Request) {
	link, err := a.signer.check(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	im, err := a.imageOf(r.Context(), link.owner, link.id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// A browser may keep the bytes while the link lives, and not a second longer.
	a.serveFile(w, r, im, link.variant, fmt.Sprintf("private, max-age=%d", int(link.remaining/time.Second)))
}

// serveFile answers with variant of im (empty or "original": the upload itself): the bytes with
// ETag, 304 and ranges through http.ServeContent, or with DOWNLOAD_REDIRECT=on a 307 to a presigned
// S3 GET of a minute.
func (a *app) serveFile(w http.ResponseWriter, r *http.Request, im imageRecord, variant, cacheControl string) {
	key, contentType, etag := im.FileKey, im.ContentType, `"`+im.SHA256+`"`
	switch {
	case variant == "" || variant == variantOriginal:
		variant = variantOriginal
	case isDisplaySize(variant) && im.Variants[variant].Key == "":
		a.serveDisplaySize(w, r, im, variant, cacheControl)
		return
	case !knownVariant(variant) && !isDisplaySize(variant):
		names := []string{variantOriginal}
		for _, v := range variantSpecs {
			names = append(names, v.name)
		}
		a.fail(w, r, newError(http.StatusUnprocessableEntity, "unknown variant %q: want one of %s; or a display size: %s", variant, strings.Join(names, ", "), displayNames()))
		return
	default:
		vf, ok := im.Variants[variant]
		if !ok {
			detail := fmt.Sprintf("variant %q is not ready: the image is %s", variant, im.Status)
			if im.Status == statusFailed {
				detail += ": " + im.Error
			}
			a.fail(w, r, newError(http.StatusConflict, "%s", detail))
			return
		}
		// A variant's key is new each time it is written, so it names this content.
		key, contentType, etag = vf.Key, vf.ContentType, keyETag(vf.Key)
	}
	if p, ok := a.blobs.(presigner); ok && a.cfg.DownloadRedirect {
		u, err := p.presignedDownload(key, presignedDownloadTTL, contentType, downloadName(im, variant, contentType))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store") // the presigned URL outlives no request
		w.Header().Set("Location", u)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	h := w.Header()
	fileHeaders(h, im, variant, contentType, etag, cacheControl)
	if etagListed(r.Header.Get("If-None-Match"), etag) && r.Header.Get("If-Match") == "" && r.Header.Get("If-Unmodified-Since") == "" {
		// The client has these bytes (RFC 9110 13.1.2): no store is asked. (With If-Match or
		// If-Unmodified-Since, which come first, ServeContent decides.)
		h.Del("Content-Type")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	// A bucket that stalls mid-body must not hold the handler past REQUEST_TIMEOUT.
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RequestTimeout)
	defer cancel()
	b, err := a.blobs.open(ctx, key, honouredRange(r, etag))
	if errors.Is(err, errNotFound) {
		// Deleted between reading the row and opening the file.
		h.Del("Content-Disposition")
		h.Del("ETag")
		a.fail(w, r, errImageNotFound)
		return
	}
	if err != nil {
		h.Del("Content-Disposition")
		h.Del("ETag")
		a.fail(w, r, err)
		return
	}
	defer b.Close()
	// The file itself (for the filesystem store, an *os.File) goes to ServeContent, and every writer
	// on the way passes ReadFrom down: the kernel sends the bytes (sendfile), not a copy loop.
	http.ServeContent(&rangeProblems{ResponseWriter: w, r: r}, r, "", b.modTime, b.ReadSeekCloser)
}

// downloadName is the file name variant of im is offered under: the image's name, the variant's,
// and the extension of its type.
func downloadName(im imageRecord, variant, contentType string) string {
	filename := im.Name
	if variant != variantOriginal {
		filename += "." + variant
	}
	if ext := extensionFor(contentType); !strings.HasSuffix(strings.ToLower(filename), ext) {
		filename += ext
	}
	return filename
}

// fileHeaders sets the headers every answer with a file has: its type, ETag, caching, and its name.
func fileHeaders(h http.Header, im imageRecord, variant, contentType, etag, cacheControl string) {
	h.Set("Content-Type", contentType)
	h.Set("ETag", etag)
	h.Set("Cache-Control", cacheControl)
	h.Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": downloadName(im, variant, contentType)}))
}

// maxRanges is the most ranges one download may ask for; with more, the Range header is ignored
// and the whole file is served (RFC 9110 14.2 lets a server ignore Range): a bucket read costs a
// request per range.
const maxRanges = 4

// honouredRange decides which Range of r is honoured, before any store is asked, and removes from r
// what is not, so that ServeContent and the store agree: none when If-Range does not name this
// file's ETag exactly (a date or another validator: the file may have changed, so the whole of it),
// none when more than maxRanges are asked.
func honouredRange(r *http.Request, etag string) string {
	rng := r.Header.Get("Range")
	if rng == "" {
		return ""
	}
	if ir := r.Header.Get("If-Range"); ir != "" && ir != etag {
		r.Header.Del("Range")
		r.Header.Del("If-Range")
		return ""
	}
	if strings.Count(rng, ",") >= maxRanges {
		r.Header.Del("Range")
		return ""
	}
	return rng
}

// presignedDownloadTTL is the life of the presigned S3 URL a redirected download answers with: long
// enough to follow the redirect, too short to be worth sharing.
const presignedDownloadTTL = time.Minute

// etagListed reports whether an If-None-Match header lists etag (or is "*"), compared weakly as
// RFC 9110 says for If-None-Match.
func etagListed(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t != "" && t == strings.TrimPrefix(etag, "W/") {
			return true
		}
	}
	return false
}

// rangeProblems turns http.ServeContent's plain-text 416 (a Range no byte of the file satisfies)
// into a problem+json one, keeping the Content-Range: bytes */size it set.
type rangeProblems struct {
	http.ResponseWriter
	r        *http.Request
	replaced bool
}

func (p *rangeProblems) WriteHeader(code int) {
	if code != http.StatusRequestedRangeNotSatisfiable {
		p.ResponseWriter.WriteHeader(code)
		return
	}
	p.replaced = true
	h := p.Header()
	h.Del("Content-Length")
	h.Del("Content-Disposition")
	h.Del("ETag")
	writeProblem(p.ResponseWriter, p.r, code, fmt.Sprintf("the range %q selects no byte of this file (%s)", p.r.Header.Get("Range"), h.Get("Content-Range")))
}

func (p *rangeProblems) Write(b []byte) (int, error) {
	if p.replaced {
		return len(b), nil // ServeContent's own text: already answered
	}
	return p.ResponseWriter.Write(b)
}

// ReadFrom keeps the underlying writer's sendfile path for http.ServeContent.
func (p *rangeProblems) ReadFrom(src io.Reader) (int64, error) {
	if p.replaced {
		return io.Copy(io.Discard, src)
	}
	if rf, ok := p.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{p.ResponseWriter}, src)
}

// Unwrap lets http.ResponseController reach the connection.
func (p *rangeProblems) Unwrap() http.ResponseWriter { return p.ResponseWriter }
