package main

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The hostile corpus: files an attacker would upload, made here by the tests (nothing large is
// committed). Each is small on the wire and expensive to the careless.

// progressiveGrayJPEG is a valid w×h one-component progressive JPEG of one DC scan and acScans AC
// scans of the whole band (1–63), each coded as EOB runs: a few bytes, yet every scan walks every
// block. With acScans large it is the scan bomb; a few hundred over a megapixel is refused for its
// coefficient visits (maxVisitsPerSample).
func progressiveGrayJPEG(w, h, acScans int) []byte {
	return progressiveJPEG(w, h, []byte{1}, false, acScans)
}

// bitWriter packs bits MSB first with JPEG's 0xFF stuffing; flush pads with ones.
type bitWriter struct {
	out  []byte
	acc  uint64
	nacc uint
}

func (w *bitWriter) put(v uint32, n uint) {
	w.acc = w.acc<<n | uint64(v)&(1<<n-1)
	w.nacc += n
	for w.nacc >= 8 {
		w.nacc -= 8
		c := byte(w.acc >> w.nacc)
		w.out = append(w.out, c)
		if c == 0xFF {
			w.out = append(w.out, 0)
		}
	}
}

func (w *bitWriter) flush() []byte {
	if w.nacc > 0 {
		w.put(1<<(8-w.nacc)-1, 8-w.nacc)
	}
	out := w.out
	*w = bitWriter{}
	return out
}

// pngChunk appends a PNG chunk with its CRC.
func pngChunk(b *bytes.Buffer, typ string, data []byte) {
	binary.Write(b, binary.BigEndian, uint32(len(data)))
	b.WriteString(typ)
	b.Write(data)
	binary.Write(b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}

// png16Bomb is a w×h 16-bit RGBA PNG of transparent black: a few hundred KiB that decode to 8
// bytes a pixel.
func png16Bomb(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 16, 6 // 16-bit, RGBA
	pngChunk(&b, "IHDR", ihdr)
	// Every row is filter 0 and then zeros: the image data is all zero bytes.
	pngChunk(&b, "IDAT", zlibZeros(t, (1+8*w)*h))
	pngChunk(&b, "IEND", nil)
	return b.Bytes()
}

// zlibZeros is n zero bytes, zlib-compressed at the best level. Compressing hundreds of MB costs
// seconds, and tens of them under the race detector, so only the first few MiB are: once a MiB of
// zeros compresses (between two flushes) to the same bytes as the MiB before, every later one
// would too (the window holds nothing but zeros), and those bytes are repeated instead.
func zlibZeros(t testing.TB, n int) []byte {
	const chunk = 1 << 20
	out := bytes.NewBuffer([]byte{0x78, 0xDA}) // zlib header: deflate, 32 KiB window, best level
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, chunk)
	var last []byte
	left := n
	for left >= chunk {
		fw.Write(zeros)
		fw.Flush() // ends on a byte boundary with an empty stored block
		block := bytes.Clone(buf.Bytes())
		buf.Reset()
		out.Write(block)
		left -= chunk
		if bytes.Equal(block, last) {
			for ; left >= chunk; left -= chunk {
				out.Write(block)
			}
		}
		last = block
	}
	fw.Write(zeros[:left])
	fw.Close()
	out.Write(buf.Bytes())
	// Adler-32 of n zeros: a = 1, b = n·1 (mod 65521).
	binary.Write(out, binary.BigEndian, uint32(n%65521)<<16|1)
	return out.Bytes()
}

// hugeChunkPNG is a 1000×1000 PNG header followed by a chunk declaring 2 GiB and holding nothing.
func hugeChunkPNG() []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, 1000)
	binary.BigEndian.PutUint32(ihdr[4:], 1000)
	ihdr[8], ihdr[9] = 8, 6
	pngChunk(&b, "IHDR", ihdr)
	binary.Write(&b, binary.BigEndian, uint32(0x7FFFFFF0))
	b.WriteString("tEXt")
	b.WriteString("Comment\x00not nearly 2 GiB")
	return b.Bytes()
}

// promiseJPEG is mid.jpg's headers with its frame declaring w×h, cut a little into the scan: the
// header promises far more than the data holds.
func promiseJPEG(t testing.TB, w, h int) []byte {
	data := bytes.Clone(readTestdata(t, "mid.jpg"))
	i := bytes.Index(data, []byte{0xFF, 0xC0})
	if i < 0 {
		t.Fatal("mid.jpg has no SOF0")
	}
	binary.BigEndian.PutUint16(data[i+5:], uint16(h))
	binary.BigEndian.PutUint16(data[i+7:], uint16(w))
	sos := bytes.Index(data, []byte{0xFF, 0xDA})
	return data[:sos+2000]
}

// hugeFrameGIF is a w×h GIF (one frame as large as the screen) whose image data stops after a
// few codes: the decoder must not trust the header's size.
func hugeFrameGIF(w, h int) []byte {
	var b bytes.Buffer
	b.WriteString("GIF89a")
	binary.Write(&b, binary.LittleEndian, uint16(w))
	binary.Write(&b, binary.LittleEndian, uint16(h))
	b.Write([]byte{0x80, 0, 0}) // global colour table of 2 entries
	b.Write([]byte{0, 0, 0, 255, 255, 255})
	b.WriteByte(0x2C) // image descriptor
	binary.Write(&b, binary.LittleEndian, uint16(0))
	binary.Write(&b, binary.LittleEndian, uint16(0))
	binary.Write(&b, binary.LittleEndian, uint16(w))
	binary.Write(&b, binary.LittleEndian, uint16(h))
	b.WriteByte(0)
	b.WriteByte(2)                 // LZW minimum code size
	b.Write([]byte{2, 0x44, 0x01}) // a couple of codes
	b.WriteByte(0)                 // end of data
	b.WriteByte(0x3B)
	return b.Bytes()
}

// fibonacciJPEG is the crafted grayscale baseline JPEG whose AC symbol counts grow like the
// Fibonacci sequence (fibonacciComponent), as an uploaded file.
func fibonacciJPEG(t testing.TB) []byte {
	c := fibonacciComponent(32)
	var q [64]uint16
	for i := range q {
		q[i] = 1
	}
	var out bytes.Buffer
	if err := encodeGray(&out, c, c.bw*8, c.bh*8, q); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// writeTempFile writes data to a file in a temp dir and returns its path.
func writeTempFile(t testing.TB, name string, data []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPureScanJPEG: the scan count and frame layout of real and made files, and the limit.
func TestPureScanJPEG(t *testing.T) {
	for _, tc := range []struct {
		name        string
		data        []byte
		scans       int
		progressive bool
		samples     float64
	}{
		{"large.jpg", readTestdata(t, "large.jpg"), 1, false, 2},
		{"mid.jpg", readTestdata(t, "mid.jpg"), 1, false, 1.5},
		{"large-progressive.jpg", readTestdata(t, "large-progressive.jpg"), 10, true, 2},
		{"progressive-gray.jpg", readTestdata(t, "jpeg/progressive-gray.jpg"), 6, true, 1},
		{"s1x1.jpg", readTestdata(t, "jpeg/s1x1.jpg"), 1, false, 3},
		{"1000 scans", progressiveGrayJPEG(64, 64, 999), 1000, true, 1},
	} {
		lay, err := scanJPEG(bytes.NewReader(tc.data))
		if err != nil || lay.scans != tc.scans || lay.progressive != tc.progressive || lay.samples != tc.samples {
			t.Errorf("%s: %+v, %v; want %d scans, progressive %v, %v samples", tc.name, lay, err, tc.scans, tc.progressive, tc.samples)
		}
	}
	if _, err := scanJPEG(bytes.NewReader(progressiveGrayJPEG(64, 64, 1000))); !errors.Is(err, errTooManyScans) {
		t.Errorf("1001 scans: %v, want errTooManyScans", err)
	}
}

// TestPureDecodersRefuseTooManyScans: neither path decodes a file of too many scans, and the refusal is
// the user's to read; a file at the limit decodes on both.
func TestPureJPEGWorkBound(t *testing.T) {
	computeOnly(t)
	for _, tc := range []struct {
		name      string
		data      []byte
		refused   bool
		perSample float64 // at most, when accepted
	}{
		{"a baseline photo", readTestdata(t, "large.jpg"), false, 1.1},
		{"a progressive photo (libjpeg's script)", readTestdata(t, "large-progressive.jpg"), false, 4},
		{"12 scans of 4 MP", progressiveGrayJPEG(2000, 2000, 12), false, 13},
		{"1000 scans of 40 kP (under the floor)", progressiveGrayJPEG(200, 200, 999), false, 1000},
		{"1000 scans of 1 MP", progressiveGrayJPEG(1000, 1000, 999), true, 0},
		{"100 scans of 50 MP", progressiveGrayJPEG(7000, 7000, 99), true, 0},
	} {
		lay, err := scanJPEG(bytes.NewReader(tc.data))
		if tc.refused {
			if !errors.Is(err, errTooMuchWork) {
				t.Errorf("%s: %v, want errTooMuchWork", tc.name, err)
			}
			if _, err := decodeDCT(context.Background(), tc.data, 50_000_000, nil); !errors.Is(err, errTooMuchWork) {
				t.Errorf("%s: the DCT decoder: %v, want errTooMuchWork", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		per := float64(lay.visits) / (float64(lay.frame.width) * float64(lay.frame.height) * lay.samples)
		t.Logf("%s: %d scans, %.2f visits a sample", tc.name, lay.scans, per)
		if per > tc.perSample {
			t.Errorf("%s: %.2f visits a sample, want at most %.2f", tc.name, per, tc.perSample)
		}
	}
}

func TestPureDecodersRefuseTooManyScans(t *testing.T) {
	computeOnly(t)
	ctx := context.Background()
	sc, err := newScratch(t.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	bomb := progressiveGrayJPEG(100, 100, 1500) // small: the scan count, not the visits, is what refuses it
	if _, err := decodeDCT(ctx, bomb, 50_000_000, nil); !errors.Is(err, errTooManyScans) {
		t.Errorf("DCT path: %v, want errTooManyScans", err)
	}
	path := writeTempFile(t, "bomb.jpg", bomb)
	for _, dct := range []bool{true, false} {
		_, _, err := makeVariants(ctx, sc, path, "image/jpeg", processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		var ie *imageError
		if !errors.As(err, &ie) || !errors.Is(err, errTooManyScans) {
			t.Errorf("dct=%v: %v, want the scan limit as the image's error", dct, err)
		}
	}
	ok := writeTempFile(t, "ok.jpg", progressiveGrayJPEG(200, 200, 999))
	for _, dct := range []bool{true, false} {
		outs, _, err := makeVariants(ctx, sc, ok, "image/jpeg", processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
		if err != nil {
			t.Errorf("dct=%v: a small file of 1000 scans: %v", dct, err)
		}
		for _, v := range outs {
			os.Remove(v.tmpPath)
		}
	}
}

// TestPureDecodersStopWhenCancelled: a job whose context has ended stops in either path with the
// context's error, and leaves no temp file.
func TestPureDecodersStopWhenCancelled(t *testing.T) {
	dir := t.TempDir()
	sc, err := newScratch(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := decodeDCT(ctx, readTestdata(t, "large.jpg"), 50_000_000, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("decodeDCT: %v", err)
	}
	for _, name := range []string{"large.jpg", "large-progressive.jpg", "photo.png"} {
		ct := "image/jpeg"
		if filepath.Ext(name) == ".png" {
			ct = "image/png"
		}
		for _, dct := range []bool{true, false} {
			_, _, err := makeVariants(ctx, sc, filepath.Join("testdata", name), ct, processOptions{jpegQuality: 85, maxPixels: 50_000_000, dct: dct})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s dct=%v: %v, want context.Canceled", name, dct, err)
			}
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(left) != 0 {
		t.Errorf("%d temp files left", len(left))
	}
}

// builtBinary builds the real program once per test run (without -race: it is the binary an
// operator runs) and returns its path.
var builtBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "imageapi-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "imageapi")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// binaryServer is the real binary running as a child process.
type binaryServer struct {
	cmd    *exec.Cmd
	base   string
	dbURL  string
	log    *syncBuffer
	exited chan struct{} // closed when the process has exited
}

// stop sends sig to the process and, for a signal that ends it, waits until it has exited.
func (s *binaryServer) stop(sig os.Signal) {
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(40 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// startBinary runs the built binary (with args) in the test environment plus env (its own fresh
// database unless env names one), waits for /healthz, and stops it (SIGTERM) when the test ends.
func startBinary(t *testing.T, env map[string]string, args ...string) *binaryServer {
	bin, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	vars := map[string]string{"UPLOAD_DIR": t.TempDir(), "ADDR": addr, "SCRYPT_N": "1024", "LOG_LEVEL": "warn", "METRICS_ADDR": "127.0.0.1:0"}
	if env["DATABASE_URL"] == "" {
		vars["DATABASE_URL"] = freshDatabase(t)
	}
	maps.Copy(vars, env)
	cmd := exec.Command(bin, append([]string{"-env-file="}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	s := &binaryServer{cmd: cmd, base: "http://" + addr, dbURL: vars["DATABASE_URL"], log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		select {
		case <-s.exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(40 * time.Second):
			cmd.Process.Kill()
			t.Error("the binary did not stop within 40 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(s.base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the binary did not come up:\n%s", s.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procStatusKiB reads a field (in kB) of the process's /proc status, such as VmHWM.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb
		}
	}
	return 0
}

// scanBombJPEG is the scan bomb at its worst: a w×h progressive JPEG of as many whole-band AC scans
// (a few dozen bytes each) as fit in maxBytes.
func scanBombJPEG(w, h int, maxBytes int) []byte {
	one, two := len(progressiveGrayJPEG(w, h, 1)), len(progressiveGrayJPEG(w, h, 2))
	return progressiveGrayJPEG(w, h, 1+(maxBytes-one)/(two-one))
}

// TestHostileCorpus runs the real binary with its default settings (one process, API and worker),
// a fresh one for each hostile file, and uploads the file: it is refused with a 4xx or ends failed
// or ready within a minute, a normal photo uploaded right after still becomes ready, no image is
// tried more than JOB_MAX_ATTEMPTS times, /healthz answers throughout, the process never exits,
// and its peak resident memory stays under 512 MiB. Each file's outcome, time and peak memory are
// logged (go test -run HostileCorpus -v).
func TestHostileCorpus(t *testing.T) {
	t.Parallel() // each file on a binary of its own: it overlaps the others
	if runtime.GOOS != "linux" {
		t.Fatal("this test reads /proc: it runs on Linux")
	}
	cases := []struct {
		name string
		data []byte
		want string // a status code ("413") or the image's final status
	}{
		{"fibonacci-counts.jpg", fibonacciJPEG(t), statusReady},
		{"scan-bomb-49mp.jpg", scanBombJPEG(7000, 7000, 25<<20-4096), "422"},
		{"1000-scans-1mp.jpg", progressiveGrayJPEG(1000, 1000, 999), "422"},
		{"1000-scans-0.25mp.jpg", progressiveGrayJPEG(500, 500, 999), "422"},
		{"100-scans-2mp.jpg", progressiveGrayJPEG(2000, 1000, 99), "422"},
		{"12-scans-4mp.jpg", progressiveGrayJPEG(2000, 2000, 12), statusReady},
		{"15-scans-49mp.jpg", progressiveGrayJPEG(7000, 7000, 15), statusReady}, // the most work accepted
		{"png16-bomb-49mp.png", png16Bomb(t, 7000, 7000), statusReady},
		// Structures whose decoding takes more than their colour model says: refused by the estimate.
		{"inflating-strip-49mp.tiff", inflatingTIFF(t, 7000, 7000), "413"},
		{"interlaced-trns16-49mp.png", interlacedTRNSPNG(t, 7000, 7000), "413"},
		{"progressive-rgb-49mp.jpg", progressiveJPEG(7000, 7000, []byte("RGB"), false, 6), "413"},
		{"progressive-cmyk-49mp.jpg", progressiveJPEG(7000, 7000, []byte("CMYK"), true, 8), "413"},
		{"progressive-rgb-16mp.jpg", progressiveJPEG(4000, 4000, []byte("RGB"), false, 6), statusReady},
		{"promises-49mp.jpg", promiseJPEG(t, 7000, 7000), statusFailed},
		{"huge-chunk.png", hugeChunkPNG(), statusFailed},
		{"huge-frame-49mp.gif", hugeFrameGIF(7000, 7000), statusFailed},
		{"over-pixels.png", readTestdata(t, "bad/huge-header.png"), "413"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outcome, took, peak := hostileUpload(t, tc.name, tc.data, tc.want)
			t.Logf("%-22s %6d KiB  %-40s %6.2f s  peak RSS %4d MiB", tc.name, len(tc.data)>>10, outcome, took.Seconds(), peak>>20)
		})
	}
}

// hostileUpload uploads data to a fresh binary and checks what TestHostileCorpus promises. It
// returns the outcome, how long until it was known, and the process's peak RSS in bytes.
func hostileUpload(t *testing.T, filename string, data []byte, want string) (string, time.Duration, int64) {
	srv := startBinary(t, nil)
	pid := srv.cmd.Process.Pid
	stopHealth := watchHealth(srv.base)
	c := newBinaryClient(t, srv)
	start := time.Now()
	r := c.upload(filename, data)
	outcome := strconv.Itoa(r.status)
	switch {
	case r.status == http.StatusCreated:
		var v imageView
		r.json(t, &v)
		got := c.wait(v.ID, time.Minute)
		outcome = got.Status
		if got.Error != nil {
			outcome += ": " + *got.Error
		}
		if attempts := countRows(t, srv.dbURL, "SELECT attempts FROM images WHERE id = $1", v.ID); attempts > 3 {
			t.Errorf("%d attempts, past JOB_MAX_ATTEMPTS", attempts)
		}
		if got.Status != want {
			t.Errorf("%s, want %s", outcome, want)
		}
	case outcome != want:
		t.Errorf("%d %s, want %s", r.status, r.body, want)
	default:
		var p problem
		r.json(t, &p)
		outcome += ": " + p.Detail
	}
	took := time.Since(start)
	peak := procStatusKiB(pid, "VmHWM") << 10
	// A normal photo right after still becomes ready.
	if r := c.upload("after.jpg", readTestdata(t, "mid.jpg")); r.status != http.StatusCreated {
		t.Fatalf("normal upload after: %d %s", r.status, r.body)
	} else {
		var v imageView
		r.json(t, &v)
		if got := c.wait(v.ID, time.Minute); got.Status != statusReady {
			t.Fatalf("normal photo after: %s %v", got.Status, got.Error)
		}
	}
	select {
	case <-srv.exited:
		t.Fatalf("the process exited:\n%s", srv.log.String())
	default:
	}
	if err := srv.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process exited:\n%s", srv.log.String())
	}
	if fails, ok := stopHealth(); fails > 0 || ok == 0 {
		t.Errorf("/healthz: %d failures, %d answers", fails, ok)
	}
	if peak>>20 >= 512 {
		t.Errorf("peak RSS %d MiB, want under 512", peak>>20)
	}
	return outcome, took, peak
}

// watchHealth asks base's /healthz every 20 ms until the returned func is called, which returns how
// many times it failed and answered.
func watchHealth(base string) (stop func() (fails, ok int64)) {
	var healthFails, healthOK atomic.Int64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		c := &http.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			resp, err := c.Get(base + "/healthz")
			if err != nil || resp.StatusCode != 200 {
				healthFails.Add(1)
			} else {
				healthOK.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
		}
	}()
	return func() (int64, int64) {
		close(done)
		<-stopped
		return healthFails.Load(), healthOK.Load()
	}
}

// binaryClient is a user of a binaryServer: signed up and in.
type binaryClient struct {
	t      *testing.T
	srv    *binaryServer
	auth   string
	client *http.Client
}

// newBinaryClient signs a new user up and in on srv.
func newBinaryClient(t *testing.T, srv *binaryServer) *binaryClient {
	name := "h_" + randomHex(4)
	if r := doRequest(t, srv.base, "POST", "/api/v1/auth/signup", credentials{name, "correct horse"}); r.status != 200 {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	doRequest(t, srv.base, "POST", "/api/v1/auth/token", credentials{name, "correct horse"}).json(t, &tok)
	return &binaryClient{t: t, srv: srv, auth: "Bearer " + tok.AccessToken, client: &http.Client{Timeout: 2 * time.Minute}}
}

// upload sends data as an image named filename.
func (c *binaryClient) upload(filename string, data []byte) response {
	body, ct := multipartBody(c.t, "file", filename, data)
	req, _ := http.NewRequest("POST", c.srv.base+"/api/v1/images/?name="+filename, bytes.NewReader(body))
	req.Header.Set("Authorization", c.auth)
	req.Header.Set("Content-Type", ct)
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("upload %s: %v", filename, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// wait polls image id until it is ready or failed, for at most within.
func (c *binaryClient) wait(id int64, within time.Duration) imageView {
	deadline := time.Now().Add(within)
	for {
		var v imageView
		doRequest(c.t, c.srv.base, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", c.auth).json(c.t, &v)
		if v.Status == statusReady || v.Status == statusFailed {
			return v
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("image %d still %s after %s", id, v.Status, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
