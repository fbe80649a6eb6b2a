package main

import "testing"

// TestPureBadKeysRefused: a storage key that is not one the store makes never becomes a path.
func TestPureBadKeysRefused(t *testing.T) {
	b := &fsBlobs{root: t.TempDir()}
	for _, k := range []string{"../etc/passwd", "o/../../etc/passwd", "/etc/passwd", "o/ab/..", "x/ab/cd", "o/AB/cd", "o/ab/c d", "o\\ab", ""} {
		if p, err := b.path(k); err == nil {
			t.Errorf("%q became %s", k, p)
		}
	}
	if _, err := b.path(newKey() + ".thumb_100.0a1b2c3d.jpg"); err != nil {
		t.Errorf("a variant key: %v", err)
	}
}
