// The bucket blob store: originals and variants as objects in an S3-compatible bucket (any number of
// hosts), over the client in s3.go; ranged reads that resume, and presigned downloads.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// s3Blobs keeps originals and variants as objects in a bucket; temp files stay local (scratch).
type s3Blobs struct {
	c       *s3Client
	scratch *scratch
}

// place uploads tmp as key (S3 checks the bytes against sha256Hex) and removes tmp.
func (s *s3Blobs) place(ctx context.Context, tmp, key, contentType, sha256Hex string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := s.c.put(ctx, key, f, st.Size(), sha256Hex, contentType); err != nil {
		return err
	}
	f.Close()
	return os.Remove(tmp)
}

// open starts reading key at the request's range (a single range is passed on to S3; anything
// else reads from the start), so that an unreachable bucket is an error before any byte is answered.
func (s *s3Blobs) open(ctx context.Context, key, rangeHint string) (blob, error) {
	if err := checkKey(key); err != nil {
		return blob{}, err
	}
	h := http.Header{}
	if strings.HasPrefix(rangeHint, "bytes=") && !strings.Contains(rangeHint, ",") {
		h.Set("Range", rangeHint)
	}
	resp, err := s.c.get(ctx, key, h)
	var se *s3Error
	if errors.As(err, &se) && se.Status == http.StatusRequestedRangeNotSatisfiable {
		// No byte in range: ServeContent answers the 416 from the size alone.
		size, err := s.c.head(ctx, key)
		if err != nil {
			return blob{}, err
		}
		return blob{ReadSeekCloser: &s3Reader{ctx: ctx, c: s.c, key: key, size: size}}, nil
	}
	if err != nil {
		return blob{}, err
	}
	r := &s3Reader{ctx: ctx, c: s.c, key: key, size: resp.ContentLength, body: resp.Body, bodyEnd: resp.ContentLength}
	if resp.StatusCode == http.StatusPartialContent {
		// Content-Range: bytes first-last/size
		var first, last int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &r.size); err != nil {
			resp.Body.Close()
			return blob{}, fmt.Errorf("s3: get %s: Content-Range %q: %w", key, resp.Header.Get("Content-Range"), err)
		}
		r.bodyPos, r.bodyEnd = first, last+1
	}
	mod, _ := http.ParseTime(resp.Header.Get("Last-Modified"))
	return blob{ReadSeekCloser: r, modTime: mod}, nil
}

// s3Reader reads an object as an io.ReadSeeker: it reads on from the open response while the reads
// follow each other, and asks again from the new offset after a seek elsewhere.
type s3Reader struct {
	ctx     context.Context
	c       *s3Client
	key     string
	size    int64
	pos     int64         // where the next Read reads
	body    io.ReadCloser // nil: none open
	bodyPos int64         // the offset of body's next byte
	bodyEnd int64         // the offset just past body's last byte (a ranged answer ends before size)
}

func (r *s3Reader) Read(p []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if r.body != nil && (r.bodyPos != r.pos || r.bodyPos >= r.bodyEnd) {
		// Elsewhere, or at the end of a ranged answer that stopped short of the object's end.
		r.body.Close()
		r.body = nil
	}
	if r.body == nil {
		resp, err := r.c.get(r.ctx, r.key, http.Header{"Range": {"bytes=" + strconv.FormatInt(r.pos, 10) + "-"}})
		if err != nil {
			return 0, err
		}
		r.body, r.bodyPos, r.bodyEnd = resp.Body, r.pos, r.size
		if resp.StatusCode != http.StatusPartialContent {
			// A store that ignores Range answers the whole object: skip to pos.
			if _, err := io.CopyN(io.Discard, resp.Body, r.pos); err != nil {
				return 0, err
			}
		}
	}
	n, err := r.body.Read(p[:min(int64(len(p)), r.bodyEnd-r.bodyPos)])
	r.pos += int64(n)
	r.bodyPos += int64(n)
	switch {
	case err == io.EOF && r.bodyPos < r.bodyEnd:
		err = io.ErrUnexpectedEOF // the store cut the body short
	case err == io.EOF && r.pos < r.size:
		err = nil // the ranged answer is done; the next Read asks for the rest
	}
	return n, err
}

func (r *s3Reader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += r.pos
	case io.SeekEnd:
		off += r.size
	}
	if off < 0 {
		return 0, errors.New("s3: seek before the start")
	}
	r.pos = off
	return off, nil
}

func (r *s3Reader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

// localCopy downloads key into a scratch file, checking that every byte arrived.
func (s *s3Blobs) localCopy(ctx context.Context, key string) (string, func(), error) {
	if err := checkKey(key); err != nil {
		return "", nil, err
	}
	resp, err := s.c.get(ctx, key, nil)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	f, err := s.scratch.createTemp("original-*")
	if err != nil {
		return "", nil, err
	}
	release := func() { os.Remove(f.Name()) }
	n, err := io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("s3: get %s: %d of %d bytes: %w", key, n, resp.ContentLength, io.ErrUnexpectedEOF)
	}
	if err != nil {
		release()
		if !storageUnavailable(err) && ctx.Err() == nil {
			// Cut off mid-body: an outage of the bucket, not a fault of the image.
			err = fmt.Errorf("%w: %w", errStorageUnavailable, err)
		}
		return "", nil, err
	}
	return f.Name(), release, nil
}

// remove deletes the objects of keys.
func (s *s3Blobs) remove(ctx context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		if k == "" {
			continue
		}
		err := checkKey(k)
		if err == nil {
			err = s.c.delete(ctx, k)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sweepOrphans lists the objects under o/ (a page at a time) and removes those of originals no row
// refers to (orphanSweep).
func (s *s3Blobs) sweepOrphans(ctx context.Context, before time.Time, exists func(context.Context, []string) (map[string]bool, error)) (int, error) {
	sw := newOrphanSweep(before, exists, s.remove)
	err := s.c.list(ctx, originalDir+"/", func(objs []s3Object) error {
		for _, o := range objs {
			if err := sw.add(ctx, o.Key, o.LastModified); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return sw.removed, err
	}
	return sw.removed, sw.flush(ctx)
}

func (s *s3Blobs) ping(ctx context.Context) error { return s.c.ping(ctx) }

// origin is the scheme and host the bucket's presigned URLs point at.
func (s *s3Blobs) origin() string {
	u := url.URL{Scheme: s.c.base.Scheme, Host: s.c.base.Host}
	return u.String()
}

// presignedDownload returns a presigned GET of key, valid for ttl, answering with contentType and as
// an inline file named filename.
func (s *s3Blobs) presignedDownload(key string, ttl time.Duration, contentType, filename string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return s.c.presignGet(key, ttl, contentType, mime.FormatMediaType("inline", map[string]string{"filename": filename})), nil
}
