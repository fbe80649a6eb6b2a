package main

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestKilledWorkerJobsReturn: a worker process SIGKILLed while it holds a job gives the image back
// within one lease (kept short by the heartbeat) and a sweep: another worker finishes it, once. The
// time from the kill to the image being taken up again is logged.
func TestKilledWorkerJobsReturn(t *testing.T) {
	queue := testQueue(t)
	dir := t.TempDir()
	env := map[string]string{"DATABASE_URL": testDB.url, "BROKER_URL": testBrokerURL, "QUEUE_NAME": queue,
		"UPLOAD_DIR": dir, "WORKER_CONCURRENCY": "1"}
	api := newTestServer(t, map[string]string{"MODE": modeAPI, "BROKER_URL": testBrokerURL, "QUEUE_NAME": queue, "UPLOAD_DIR": dir})
	_, auth := api.signupAndLogin()
	doomed := startBinary(t, env, "-mode=worker")
	// A job that takes a while: the 49 MP 16-bit PNG (about 2 s).
	v := api.mustUpload(auth, "held", "", "big.png", png16Bomb(t, 7000, 7000))
	api.waitStatus(auth, v.ID, 30*time.Second, statusProcessing)
	if err := doomed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	doomed.cmd.Process.Wait()
	startBinary(t, env, "-mode=worker") // defaults: JOB_LEASE 15s, SWEEP_INTERVAL 10s
	var back time.Duration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		var attempts int
		var status string
		api.pool.QueryRow(context.Background(), "SELECT attempts, status FROM images WHERE id = $1", v.ID).Scan(&attempts, &status)
		if attempts == 2 && back == 0 {
			back = time.Since(killed)
		}
		if status == statusReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s (attempts %d) a minute after its worker died", status, attempts)
		}
	}
	t.Logf("taken up again %.1f s after the worker was killed (JOB_LEASE 15s, SWEEP_INTERVAL 10s)", back.Seconds())
	if r := api.do("GET", fmt.Sprintf("/api/v1/images/%d/file?variant=thumb_100", v.ID), nil, "Authorization", auth); r.status != http.StatusOK {
		t.Errorf("thumbnail: %d", r.status)
	}
}
