// HTTP plumbing: problem+json errors, capped JSON decoding, middleware, health and readiness.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Bounds on JSON request bodies. No JSON body this API takes is anywhere near them.
const (
	maxJSONBytes = 64 << 10 // larger bodies → 413
	maxJSONDepth = 16       // deeper nesting → 422, checked before decoding
)

// apiError is an error with the status and the client-facing detail to answer with.
type apiError struct {
	status int
	detail string
}

func (e *apiError) Error() string { return e.detail }

// tooLarge is the one 413 for a body or file past a byte limit: what, and the limit.
func tooLarge(what string, limit int64) error {
	return newError(http.StatusRequestEntityTooLarge, "%s is larger than the limit of %d bytes", what, limit)
}

// newError returns an error that fail answers with status and detail (formatted like fmt.Sprintf).
func newError(status int, format string, args ...any) error {
	return &apiError{status: status, detail: fmt.Sprintf(format, args...)}
}

// problem is an RFC 9457 problem document. Detail is always set: it is what FastAPI clients read.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// writeProblem answers with an application/problem+json body for status.
func writeProblem(w http.ResponseWriter, _ *http.Request, status int, detail string) {
	if status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", `Bearer`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	body, _ := json.Marshal(problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail})
	w.Write(append(body, '\n'))
}

// fail answers r with the problem that err stands for. A server error is logged here, once, with the
// request it failed; its text never reaches the client.
func (a *app) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		writeProblem(w, r, ae.status, ae.detail)
	case errors.As(err, &mbe):
		a.fail(w, r, tooLarge("request body", mbe.Limit))
	case errors.Is(err, errNotFound):
		writeProblem(w, r, http.StatusNotFound, "not found")
	case errors.Is(err, errAccountGone):
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeProblem(w, r, http.StatusUnauthorized, errAccountGone.Error())
	case errors.Is(err, errConflict):
		writeProblem(w, r, http.StatusConflict, "conflict")
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		writeProblem(w, r, 499, "client closed request")
	case storageUnavailable(err):
		a.metrics.unavailable.Add(1)
		a.log.Error("storage unavailable", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("error", err))
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterOutage))
		writeProblem(w, r, http.StatusServiceUnavailable, "the image storage is full or failing at the moment; try again later")
	case databaseUnavailable(err):
		// An outage, not a bug: the client may try again, and will succeed once it is over. The
		// pool's idle connections died with it: drop them all, so the first requests after the
		// outage get new ones instead of each finding a dead one.
		a.pool.Reset()
		a.metrics.unavailable.Add(1)
		a.log.Warn("database unavailable", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("error", err))
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterOutage))
		writeProblem(w, r, http.StatusServiceUnavailable, "the database is unreachable at the moment; try again shortly")
	default:
		a.log.Error("request failed", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("error", err))
		writeProblem(w, r, http.StatusInternalServerError, "internal server error")
	}
}

// retryAfterOutage is the Retry-After, in seconds, of a 503 for a dependency outage.
const retryAfterOutage = 5

// databaseUnavailable reports whether err says PostgreSQL could not be reached or dropped the
// connection (rather than refusing the statement): a connect failure, a network error or a connection
// cut mid-query, a timeout, or a SQLSTATE of class 08 (connection exception), 57P01–57P03 (shutting
// down, cannot connect now) or 53300 (too many connections). Such an error clears without any change
// to the request.
func databaseUnavailable(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	var pe *fs.PathError
	var le *os.LinkError
	switch code := pgCode(err); {
	case errors.As(err, &ce):
		return true
	case errors.As(err, &pe), errors.As(err, &le):
		// A file's error (a *fs.PathError is a net.Error too: it has Timeout and Temporary).
		return false
	case errors.As(err, &ne), pgconn.Timeout(err):
		return true
	case strings.HasPrefix(code, "08"), code == "57P01", code == "57P02", code == "57P03", code == "53300":
		return true
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		// Request bodies are read through decodeJSON and the upload's reader, whose errors are
		// apiErrors or readErrors by the time they get here: an EOF here is the database's.
		var re readError
		return !errors.As(err, &re)
	}
	return false
}

// writeJSON answers with v as JSON and status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types are written here; a failure is a programming error.
		panic(fmt.Sprintf("writeJSON: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// decodeJSON reads r's body, at most maxJSONBytes and maxJSONDepth deep, into dst. Its errors are
// apiErrors: 415 for another content type, 413 for a body over the cap, 422 for anything malformed.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return newError(http.StatusUnsupportedMediaType, "want a JSON body (Content-Type: application/json)")
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge("JSON body", mbe.Limit)
		}
		return newError(http.StatusBadRequest, "reading the request body: %v", err)
	}
	if err := checkJSONDepth(body, maxJSONDepth); err != nil {
		return newError(http.StatusUnprocessableEntity, "%v", err)
	}
	if err := json.Unmarshal(body, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return newError(http.StatusUnprocessableEntity, "field %q: want %s, got JSON %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return newError(http.StatusUnprocessableEntity, "request body is empty: want a JSON object")
		}
		return newError(http.StatusUnprocessableEntity, "malformed JSON: %v", err)
	}
	return nil
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "struct", "map":
		return "an object"
	case "bool":
		return "a boolean"
	}
	return "a number"
}

// checkJSONDepth reports an error when body nests arrays and objects deeper than max. It only counts
// brackets outside strings; malformed JSON is left for the decoder to reject.
func checkJSONDepth(body []byte, max int) error {
	depth, inString, escaped := 0, false, false
	for _, c := range body {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			if depth > max {
				return fmt.Errorf("JSON nests deeper than %d levels", max)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// muxProblems answers the requests no route takes (404, and 405 with Allow) with problem+json
// instead of the mux's plain text.
func muxProblems(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// Let the mux decide between 404 and 405, then say it our way.
		rec := &discardWriter{header: http.Header{}}
		mux.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		switch rec.status {
		case http.StatusMethodNotAllowed:
			writeProblem(w, r, rec.status, fmt.Sprintf("method %s is not allowed here (allowed: %s)", r.Method, rec.header.Get("Allow")))
		default:
			writeProblem(w, r, http.StatusNotFound, "no such resource")
		}
	})
}

// discardWriter records a response's header and status and drops its body.
type discardWriter struct {
	header http.Header
	status int
}

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(code int)        { d.status = code }

// statusRecorder remembers the status and size of a response for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// ReadFrom keeps the underlying writer's sendfile path for http.ServeContent.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := io.Copy(s.ResponseWriter, r)
	s.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs one line per request (never headers: they carry tokens) and sets headers every
// response shares.
func (a *app) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w.Header().Set("X-Content-Type-Options", "nosniff")
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		a.metrics.countResponse(rec.status)
		level := slog.LevelInfo
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" {
			level = slog.LevelDebug
		}
		a.log.LogAttrs(r.Context(), level, "request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Int64("bytes", rec.bytes),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.String("remote", r.RemoteAddr),
		)
	})
}

// recoverPanics turns a panic in a handler into a logged 500 instead of a dropped connection.
func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			log.Error("handler panicked", slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Any("panic", v), slog.String("stack", string(debug.Stack())))
			writeProblem(w, r, http.StatusInternalServerError, "internal server error")
		}()
		next.ServeHTTP(w, r)
	})
}

// healthz answers 200 while the process serves: liveness, no dependency checked.
func (a *app) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when every configured dependency answers, else 503 naming what is down.
func (a *app) readyz(w http.ResponseWriter, r *http.Request) {
	checks := map[string]func(context.Context) error{
		"database": a.pool.Ping,
		"storage":  a.blobs.ping,
	}
	if a.cache != nil {
		checks["cache"] = a.cache.ping
	}
	if a.cfg.BrokerURL != "" {
		checks["broker"] = a.queue.ping
	}
	results := make(map[string]string, len(checks))
	var down []string
	for name, check := range checks {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		err := check(ctx)
		cancel()
		if err != nil {
			results[name] = "down"
			down = append(down, name)
			a.log.Warn("not ready", slog.String("dependency", name), slog.Any("error", err))
			continue
		}
		results[name] = "ok"
	}
	if len(down) > 0 {
		slices.Sort(down)
		writeProblem(w, r, http.StatusServiceUnavailable, "not ready: "+strings.Join(down, ", ")+" unreachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": results})
}
