package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestPureOutageClassification: what counts as a dependency outage (503) and what stays a bug (500).
func TestPureOutageClassification(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("store: insert image: %w", err) }
	for _, err := range []error{
		wrap(&net.OpError{Op: "read", Err: syscall.ECONNRESET}),
		wrap(io.ErrUnexpectedEOF),
		wrap(&pgconn.PgError{Code: "57P01"}),
		wrap(&pgconn.PgError{Code: "08006"}),
		wrap(&pgconn.PgError{Code: "53300"}),
	} {
		if !databaseUnavailable(err) {
			t.Errorf("%v: not an outage", err)
		}
	}
	_, missing := os.Open("/no/such/file")
	for _, err := range []error{wrap(&pgconn.PgError{Code: "23505"}), wrap(errors.New("bug")), wrap(readError{io.ErrUnexpectedEOF}),
		wrap(missing), wrap(&os.LinkError{Op: "rename", Err: syscall.ENOENT})} {
		if databaseUnavailable(err) {
			t.Errorf("%v: taken for an outage", err)
		}
	}
	for _, err := range []error{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, fmt.Errorf("place: %w", &os.LinkError{Op: "rename", Err: syscall.EROFS})} {
		if !storageUnavailable(err) {
			t.Errorf("%v: not a storage outage", err)
		}
	}
	if storageUnavailable(&os.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}) {
		t.Error("a missing file taken for a storage outage")
	}
}

func TestUnknownRouteIsProblem(t *testing.T) {
	s := newTestServer(t, nil)
	s.do("GET", "/nope", nil).problem(t, http.StatusNotFound)
	s.do("GET", "/api/v1/auth/signup", nil).problem(t, http.StatusMethodNotAllowed)
}
