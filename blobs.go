// Blob stores: the interface the handlers and the worker keep originals and variants behind (its
// implementations: blobs_fs.go, blobs_s3.go), the storage keys, the storage-neutral outage error,
// and the orphan sweep both stores share.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// blobStore keeps originals and variants by key (newKey, variantKey below). Implementations:
// fsBlobs (files under UPLOAD_DIR, one host) and s3Blobs (a bucket, any number of hosts). Every
// method refuses a key checkKey refuses; an outage of the storage is an error storageUnavailable
// recognises.
type blobStore interface {
	// place stores the local temp file at tmp under key and removes tmp: once it returns nil the
	// bytes are durable, so a row may point at key. sha256Hex is the file's SHA-256 (a bucket checks
	// the bytes against it); contentType is kept with an object where the store keeps one.
	place(ctx context.Context, tmp, key, contentType, sha256Hex string) error
	// open opens key's bytes for serving; errNotFound when missing. rangeHint is the request's
	// Range header: a store that reads over the network starts there.
	open(ctx context.Context, key, rangeHint string) (blob, error)
	// localCopy returns a local file with key's bytes (a job's input) and a func that releases it.
	localCopy(ctx context.Context, key string) (path string, release func(), err error)
	// remove deletes keys; a missing one is not an error.
	remove(ctx context.Context, keys ...string) error
	// sweepOrphans removes what a crash left behind: originals (and their variants) that no row
	// refers to, written before before (the app passes orphanGrace ago). exists reports which
	// original keys have rows. It returns how many files it removed.
	sweepOrphans(ctx context.Context, before time.Time, exists func(context.Context, []string) (map[string]bool, error)) (int, error)
	// ping checks that the storage answers (/readyz).
	ping(ctx context.Context) error
}

// presigner is a blob store that can send a client to fetch an object from the store itself
// (DOWNLOAD_REDIRECT=on): the bucket is one, the filesystem is not.
type presigner interface {
	// presignedDownload returns a URL that GETs key for ttl, answering with contentType and as an
	// inline file named filename.
	presignedDownload(key string, ttl time.Duration, contentType, filename string) (string, error)
	// origin is the scheme and host such URLs point at (for the page's Content-Security-Policy).
	origin() string
}

// blob is stored bytes opened for serving with http.ServeContent.
type blob struct {
	io.ReadSeekCloser
	modTime time.Time
}

// orphanSweep collects stored keys by their original and removes the files of originals that no row
// refers to, a batch of originals at a time.
type orphanSweep struct {
	exists  func(context.Context, []string) (map[string]bool, error)
	remove  func(context.Context, ...string) error
	batch   []string            // original keys, in the order first seen
	keys    map[string][]string // original key → its stored keys (original and variants)
	removed int
	before  time.Time // only what was written before it is considered
}

// orphanBatch is how many originals one exists query asks about.
const orphanBatch = 500

func newOrphanSweep(before time.Time, exists func(context.Context, []string) (map[string]bool, error), remove func(context.Context, ...string) error) *orphanSweep {
	return &orphanSweep{exists: exists, remove: remove, keys: map[string][]string{}, before: before}
}

// add considers one stored key written at modTime: one written since o.before may belong to an
// upload whose row is about to commit, and is left alone.
func (o *orphanSweep) add(ctx context.Context, key string, modTime time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !modTime.Before(o.before) || checkKey(key) != nil {
		return nil
	}
	original := originalOf(key)
	if _, seen := o.keys[original]; !seen {
		o.batch = append(o.batch, original)
	}
	o.keys[original] = append(o.keys[original], key)
	if len(o.batch) >= orphanBatch {
		return o.flush(ctx)
	}
	return nil
}

// flush asks which originals of the batch have rows and removes the files of those that do not.
func (o *orphanSweep) flush(ctx context.Context) error {
	if len(o.batch) == 0 {
		return nil
	}
	found, err := o.exists(ctx, o.batch)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range o.batch {
		if !found[k] {
			if err := o.remove(ctx, o.keys[k]...); err != nil {
				errs = append(errs, err)
			} else {
				o.removed += len(o.keys[k])
			}
		}
	}
	o.batch, o.keys = o.batch[:0], map[string][]string{}
	return errors.Join(errs...)
}

// newBlobStore opens the store cfg names: the bucket when S3_BUCKET is set (creating it when it does
// not exist and the credentials allow; a bucket that is missing and cannot be made, or refuses the
// credentials, is an error naming it), else UPLOAD_DIR. Scratch space is under UPLOAD_DIR either way.
func newBlobStore(ctx context.Context, cfg config, sc *scratch, log *slog.Logger) (blobStore, error) {
	if cfg.S3.Bucket == "" {
		return newFSBlobs(cfg.UploadDir)
	}
	c, err := newS3Client(cfg.S3)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch err := c.ensureBucket(cctx); {
	case storageUnavailable(err):
		// Like the broker: a process that starts during an outage runs, answers 503 where it needs
		// the bucket, and /readyz says storage is down until it answers.
		log.Warn("starting without the bucket: it does not answer", slog.String("bucket", cfg.S3.Bucket), slog.Any("error", err))
	case err != nil:
		return nil, err
	}
	log.Info("images kept in a bucket", slog.String("bucket", cfg.S3.Bucket), slog.String("endpoint", c.base.Host), slog.String("prefix", cfg.S3.Prefix))
	return &s3Blobs{c: c, scratch: sc}, nil
}

// errBadKey is the blob stores' answer for a key this service could not have made.
var errBadKey = errors.New("blob store: not a storage key")

// checkKey refuses anything but a key this service makes (under o/, of lowercase letters, digits,
// '.', '_', '-' and '/', local, no ".."): a key comes from the database or the cache, so it is data,
// never joined to a directory or a bucket's URL unchecked.
func checkKey(key string) error {
	ok := strings.HasPrefix(key, originalDir+"/") && filepath.IsLocal(key) && !strings.Contains(key, "..")
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%w: %q", errBadKey, key)
	}
	return nil
}

// variantKey is a new key for variant name (with file extension ext) of the original at key.
// Variants sit beside their original, named "<original key>.<variant>.<random>.<ext>", so the
// orphan sweep finds the original's key before the first dot.
func variantKey(original, name, ext string) string {
	return fmt.Sprintf("%s.%s.%08x%s", original, name, mrand.Uint32(), ext)
}

// originalOf returns the key of the original a stored file's key belongs to: the key itself for an
// original, the part before the first dot for a variant.
func originalOf(key string) string {
	original, _, _ := strings.Cut(key, ".")
	return original
}

// keyETag is the strong ETag of a variant's file: its key names its content, since a variant's key
// is new each time it is written.
func keyETag(key string) string {
	return `"` + strings.ReplaceAll(key[strings.LastIndexByte(key, '/')+1:], ".", "-") + `"`
}

// newKey returns a fresh random key for an original.
func newKey() string {
	var r [16]byte
	rand.Read(r[:])
	h := hex.EncodeToString(r[:])
	return originalDir + "/" + h[:2] + "/" + h
}

// Layout under UPLOAD_DIR:
//
//	tmp/                      uploads being received, and variants being written
//	o/ab/abcdef…              originals, named by a random key (two-level fan-out)
//	o/ab/abcdef….thumb_100.…  variants beside their original
const (
	tmpDir      = "tmp"
	originalDir = "o"
	// orphanGrace is how old an unreferenced file must be before the sweeper removes it: far longer
	// than the moment between an original's rename and its row's insert.
	orphanGrace = time.Hour
)

// Keys. A key names a stored file, relative to the store: an original's is "o/ab/<32 hex digits>"
// (newKey), a variant's is its original's followed by ".<variant>.<8 hex digits><ext>" (variantKey),
// fresh each time it is written. Only this file makes and takes apart keys (originalOf, keyETag);
// only checkKey's callers turn them into paths or object names (fsBlobs.path, s3's key).

// errStorageUnavailable marks an outage of the blob store, whichever it is: the bucket could not be
// reached or kept failing (connection errors, timeouts, 5xx and SlowDown after the client's
// retries), or a fetch of an original outlasted its deadline. Answered 503, retried by jobs without
// counting an attempt.
var errStorageUnavailable = errors.New("storage unavailable")

// storageUnavailable reports whether err says the storage is out: the disk under UPLOAD_DIR full,
// read-only or failing, or the bucket unreachable or failing past the client's retries. Such an
// error is not a bug in the request or the code, and clears without any change to the request.
func storageUnavailable(err error) bool {
	if errors.Is(err, errStorageUnavailable) {
		return true
	}
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
