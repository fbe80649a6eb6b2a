// The filesystem blob store: originals and variants as files under UPLOAD_DIR (one host), written
// durably (temp file, fsync, rename, fsync of the directory) and swept of orphans.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// fsBlobs keeps originals and variants as files under root (UPLOAD_DIR), beside the scratch space,
// so that placing a temp file is a rename.
type fsBlobs struct {
	root string
}

// newFSBlobs creates the layout under root.
func newFSBlobs(root string) (*fsBlobs, error) {
	if err := os.MkdirAll(filepath.Join(root, originalDir), 0o750); err != nil {
		return nil, fmt.Errorf("upload dir: %w", err)
	}
	return &fsBlobs{root: root}, nil
}

// path returns the file a key names; errBadKey for anything checkKey refuses.
func (b *fsBlobs) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return filepath.Join(b.root, filepath.FromSlash(key)), nil
}

// place moves the temp file at tmp (its bytes already synced) into the place of key, durably: when
// it returns nil, a power cut cannot lose the file, so the row that points at it may commit.
func (b *fsBlobs) place(_ context.Context, tmp, key, _, _ string) error {
	dst, err := b.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if statErr != nil {
		// A new fan-out directory: its own entry must reach the disk too.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	// The file's bytes were synced before it came here; the rename is durable once its directory is.
	return syncDir(dir)
}

// syncDir flushes a directory's entries to the disk (fsync on the directory).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// open opens the file of key for serving; errNotFound when there is none.
func (b *fsBlobs) open(_ context.Context, key, _ string) (blob, error) {
	p, err := b.path(key)
	if err != nil {
		return blob{}, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return blob{}, fmt.Errorf("open %s: %w", key, errNotFound)
	}
	if err != nil {
		return blob{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return blob{}, err
	}
	return blob{ReadSeekCloser: f, modTime: st.ModTime()}, nil
}

// localCopy returns the path of key's file itself: it is local already.
func (b *fsBlobs) localCopy(_ context.Context, key string) (string, func(), error) {
	p, err := b.path(key)
	return p, func() {}, err
}

// remove deletes the files of keys; missing files are not an error.
func (b *fsBlobs) remove(_ context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		if k == "" {
			continue
		}
		p, err := b.path(k)
		if err == nil {
			err = os.Remove(p)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ping checks that the directory of originals is there.
func (b *fsBlobs) ping(context.Context) error {
	_, err := os.Stat(filepath.Join(b.root, originalDir))
	return err
}

// sweepOrphans walks the files under o/ and removes those of originals no row refers to (orphanSweep).
func (b *fsBlobs) sweepOrphans(ctx context.Context, before time.Time, exists func(context.Context, []string) (map[string]bool, error)) (int, error) {
	sw := newOrphanSweep(before, exists, b.remove)
	root := filepath.Join(b.root, originalDir)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(b.root, p)
		return sw.add(ctx, filepath.ToSlash(rel), info.ModTime())
	})
	if err != nil {
		return sw.removed, err
	}
	return sw.removed, sw.flush(ctx)
}
