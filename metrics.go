// Metrics: counters the service keeps, served at /metrics in the Prometheus text format.
package main

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
)

// metrics are the service's counters. They are plain atomics: no client library, nothing global.
type metrics struct {
	httpResponses [6]atomic.Int64 // by status class: 1xx … 5xx (index 1–5)
	cacheHits     atomic.Int64
	cacheMisses   atomic.Int64
	cacheLoads    atomic.Int64 // database reads made on a miss (concurrent misses share one)
	cacheErrors   atomic.Int64 // Redis failures, each answered from PostgreSQL instead
	uploads       atomic.Int64
	uploadBytes   atomic.Int64
	uploadRefused atomic.Int64
	jobsDone      atomic.Int64
	jobsDCT       atomic.Int64 // of jobsDone, those made in the DCT domain
	jobsFailed    atomic.Int64
	jobsRetried   atomic.Int64
	jobPanics     atomic.Int64 // jobs that panicked (each image failed, the worker went on)
	jobsRequeued  atomic.Int64 // published again by the sweeper
	jobNanos      atomic.Int64 // time spent on jobs that succeeded
	publishErrors atomic.Int64
	unavailable   atomic.Int64 // requests answered 503 because the database or the storage was unavailable
}

// countResponse records a response's status class.
func (m *metrics) countResponse(status int) {
	if c := status / 100; c >= 1 && c <= 5 {
		m.httpResponses[c].Add(1)
	}
}

// serveMetrics writes the counters and a few runtime and pool gauges in the Prometheus text format.
func (a *app) serveMetrics(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	metric := func(name, typ, help string, samples ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, s := range samples {
			fmt.Fprintf(&b, "%s%s\n", name, s)
		}
	}
	val := func(v int64) string { return fmt.Sprintf(" %d", v) }
	m := a.metrics
	var classes []string
	for c := 1; c <= 5; c++ {
		classes = append(classes, fmt.Sprintf(`{class="%dxx"} %d`, c, m.httpResponses[c].Load()))
	}
	metric("imageapi_http_responses_total", "counter", "HTTP responses by status class.", classes...)
	metric("imageapi_cache_hits_total", "counter", "Cache lookups answered by Redis.", val(m.cacheHits.Load()))
	metric("imageapi_cache_misses_total", "counter", "Cache lookups Redis did not answer.", val(m.cacheMisses.Load()))
	metric("imageapi_cache_loads_total", "counter", "Database reads made to fill the cache.", val(m.cacheLoads.Load()))
	metric("imageapi_cache_errors_total", "counter", "Redis failures, served from PostgreSQL instead.", val(m.cacheErrors.Load()))
	metric("imageapi_uploads_total", "counter", "Images accepted.", val(m.uploads.Load()))
	metric("imageapi_upload_bytes_total", "counter", "Bytes of images accepted.", val(m.uploadBytes.Load()))
	metric("imageapi_uploads_refused_total", "counter", "Uploads refused with a 4xx.", val(m.uploadRefused.Load()))
	metric("imageapi_jobs_done_total", "counter", "Images processed.", val(m.jobsDone.Load()))
	metric("imageapi_jobs_dct_total", "counter", "Images processed in the DCT domain (JPEG_DCT).", val(m.jobsDCT.Load()))
	metric("imageapi_jobs_failed_total", "counter", "Images failed for good.", val(m.jobsFailed.Load()))
	metric("imageapi_job_panics_total", "counter", "Jobs that panicked: a bug; the image failed and the worker went on.", val(m.jobPanics.Load()))
	metric("imageapi_jobs_retried_total", "counter", "Failed attempts that will be retried.", val(m.jobsRetried.Load()))
	metric("imageapi_jobs_requeued_total", "counter", "Jobs published again by the sweeper.", val(m.jobsRequeued.Load()))
	metric("imageapi_job_seconds_total", "counter", "Time spent on jobs that succeeded.", fmt.Sprintf(" %.3f", float64(m.jobNanos.Load())/1e9))
	metric("imageapi_unavailable_total", "counter", "Requests answered 503 because PostgreSQL was unreachable or the storage full or failing.", val(m.unavailable.Load()))
	metric("imageapi_queue_publish_errors_total", "counter", "Publishes the broker did not confirm.", val(m.publishErrors.Load()))
	metric("imageapi_password_hashes_total", "counter", "scrypt computations.", val(a.hasher.computed.Load()))
	st := a.pool.Stat()
	metric("imageapi_db_connections", "gauge", "PostgreSQL pool connections by state.",
		fmt.Sprintf(`{state="idle"} %d`, st.IdleConns()), fmt.Sprintf(`{state="in_use"} %d`, st.AcquiredConns()))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	metric("imageapi_heap_bytes", "gauge", "Go heap in use.", val(int64(ms.HeapInuse)))
	metric("imageapi_goroutines", "gauge", "Goroutines.", val(int64(runtime.NumGoroutine())))
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write([]byte(b.String()))
}
