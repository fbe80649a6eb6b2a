package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPureMemoryBudget: acquisitions wait their turn in order, never exceed the budget together, give
// up with their context, and one larger than the budget is refused outright.
func TestPureMemoryBudget(t *testing.T) {
	b := newMemoryBudget(100)
	if _, err := b.acquire(context.Background(), 101); !errors.Is(err, errOverBudget) {
		t.Fatalf("over the whole budget: %v", err)
	}
	release60, err := b.acquire(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	// A waiter that gives up leaves no trace.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if _, err := b.acquire(ctx, 50); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter: %v", err)
	}
	cancel()
	// In order: 50 waits for the 60 to go; 10 (which would fit) waits behind it.
	var wg sync.WaitGroup
	var peak, held atomic.Int64
	waiting := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.waiters)
	}
	for i, n := range []int64{50, 10} {
		wg.Go(func() {
			rel, err := b.acquire(context.Background(), n)
			if err != nil {
				t.Error(err)
				return
			}
			if h := held.Add(n); h > peak.Load() {
				peak.Store(h)
			}
			time.Sleep(5 * time.Millisecond)
			held.Add(-n)
			rel()
		})
		for waiting() != i+1 { // queue them in this order
			runtime.Gosched()
		}
	}
	if b.inUse() != 60 {
		t.Fatalf("in use %d while both wait: the small one jumped the queue", b.inUse())
	}
	release60()
	wg.Wait()
	if b.inUse() != 0 || peak.Load() > 100 {
		t.Fatalf("in use %d, peak %d", b.inUse(), peak.Load())
	}
}

// TestPureJobMemoryEstimate: for real photos and made files on both paths, the heap a job grows by at
// its peak stays within the estimate its header gives, and the estimate is not absurdly loose.
func TestPureJobMemoryEstimate(t *testing.T) {
	computeOnly(t)
	dir := t.TempDir()
	sc, err := newScratch(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	png16 := writeTempFile(t, "png16.png", png16Bomb(t, 1500, 1200))
	for _, tc := range []struct {
		name, path string
		dct        bool
	}{
		{"large.jpg", filepath.Join("testdata", "large.jpg"), true},
		{"large-progressive.jpg", filepath.Join("testdata", "large-progressive.jpg"), false},
		{"mid-orient6.jpg", filepath.Join("testdata", "mid-orient6.jpg"), true},
		{"mid-orient6.jpg", filepath.Join("testdata", "mid-orient6.jpg"), false},
		{"photo.png", filepath.Join("testdata", "photo.png"), false},
		{"png16.png", png16, false},
	} {
		name, path, dct := tc.name, tc.path, tc.dct
		ct := "image/jpeg"
		if strings.HasSuffix(name, ".png") {
			ct = "image/png"
		}
		want, err := jobMemory(context.Background(), path, dct)
		if err != nil {
			t.Fatal(err)
		}
		stop := sampleHeap()
		outs, _, err := makeVariants(context.Background(), sc, path, ct, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		grew := stop()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, v := range outs {
			os.Remove(v.tmpPath)
		}
		est := float64(want) / (1 << 20)
		t.Logf("%s dct=%v: peak heap +%.1f MiB, estimate %.1f MiB", name, dct, grew, est)
		if grew > est {
			t.Errorf("%s dct=%v: the job grew the heap by %.1f MiB, over its estimate of %.1f MiB", name, dct, grew, est)
		}
		if est > 4*grew+float64(jobBaseBytes>>20) {
			t.Errorf("%s dct=%v: estimate %.1f MiB for a job of %.1f MiB: too loose to be useful", name, dct, est, grew)
		}
	}
}
