package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStartupCleansTemp: temp files older than the cutoff (what a crash leaves) are removed at start;
// newer ones may be another replica's upload in flight and stay.
func TestStartupCleansTemp(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, tmpDir), 0o750)
	old, fresh := filepath.Join(dir, tmpDir, "upload-old"), filepath.Join(dir, tmpDir, "upload-new")
	os.WriteFile(old, []byte("x"), 0o600)
	os.WriteFile(fresh, []byte("x"), 0o600)
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, past, past)
	newTestServer(t, map[string]string{"UPLOAD_DIR": dir})
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale temp file survived start-up")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp file removed: %v", err)
	}
}
