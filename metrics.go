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

// counter is one counter of metrics as exposed: its name, its help, and the field that counts it.
type counter struct {
	name, help string
	v          *atomic.Int64
}

// counters is the table of metrics' plain counters, in the order they are exposed. Every
// atomic.Int64 field of metrics is here but jobNanos (exposed in seconds); TestPureMetricsTable holds the
// two together.
func (m *metrics) counters() []counter {
	return []counter{
		{"imageapi_cache_hits_total", "Cache lookups answered by Redis.", &m.cacheHits},
		{"imageapi_cache_misses_total", "Cache lookups Redis did not answer.", &m.cacheMisses},
		{"imageapi_cache_loads_total", "Database reads made to fill the cache.", &m.cacheLoads},
		{"imageapi_cache_errors_total", "Redis failures, served from PostgreSQL instead.", &m.cacheErrors},
		{"imageapi_uploads_total", "Images accepted.", &m.uploads},
		{"imageapi_upload_bytes_total", "Bytes of images accepted.", &m.uploadBytes},
		{"imageapi_uploads_refused_total", "Uploads refused with a 4xx.", &m.uploadRefused},
		{"imageapi_jobs_done_total", "Images processed.", &m.jobsDone},
		{"imageapi_jobs_dct_total", "Images processed in the DCT domain (JPEG_DCT).", &m.jobsDCT},
		{"imageapi_jobs_failed_total", "Images failed for good.", &m.jobsFailed},
		{"imageapi_job_panics_total", "Jobs that panicked: a bug; the image failed and the worker went on.", &m.jobPanics},
		{"imageapi_jobs_retried_total", "Failed attempts that will be retried.", &m.jobsRetried},
		{"imageapi_jobs_requeued_total", "Jobs published again by the sweeper.", &m.jobsRequeued},
		{"imageapi_unavailable_total", "Requests answered 503 because PostgreSQL was unreachable or the storage full or failing.", &m.unavailable},
		{"imageapi_queue_publish_errors_total", "Publishes the broker did not confirm.", &m.publishErrors},
	}
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
	for _, c := range m.counters() {
		metric(c.name, "counter", c.help, val(c.v.Load()))
	}
	metric("imageapi_job_seconds_total", "counter", "Time spent on jobs that succeeded.", fmt.Sprintf(" %.3f", float64(m.jobNanos.Load())/1e9))
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
