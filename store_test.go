package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestConnectCreatesDatabase: a DATABASE_URL naming a database that does not exist yet works; the
// database is created.
func TestConnectCreatesDatabase(t *testing.T) {
	name := "imageapi_test_" + randomHex(6)
	db := needDB(t)
	url := strings.Replace(db, db[strings.LastIndexByte(db, '/')+1:strings.IndexByte(db, '?')], name, 1)
	t.Cleanup(func() { dropTestDatabase(needDBServer(t).admin, name) })
	pool, err := connectDB(context.Background(), url, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("connectDB: %v", err)
	}
	defer pool.Close()
	var got string
	if err := pool.QueryRow(context.Background(), "SELECT current_database()").Scan(&got); err != nil || got != name {
		t.Fatalf("current_database = %q, %v", got, err)
	}
	if _, err := connectDB(context.Background(), "postgres://postgres:secretpw@127.0.0.1:1/x", slog.New(slog.NewJSONHandler(io.Discard, nil))); err == nil || strings.Contains(err.Error(), "secretpw") {
		t.Fatalf("unreachable database: %v (must fail without echoing the password)", err)
	}
}

// TestStatusNames: the status words the SQL spells (in store.go and the migrations) are exactly the
// Go constants and the schema's CHECK, so a misspelled one in a WHERE (which would silently match
// nothing) fails here.
func TestStatusNames(t *testing.T) {
	want := []string{statusFailed, statusPending, statusProcessing, statusReady}
	var def string
	err := newTestServer(t, nil).pool.QueryRow(context.Background(), `
		SELECT pg_get_constraintdef(oid) FROM pg_constraint
		WHERE conrelid = 'images'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'`).Scan(&def)
	if err != nil {
		t.Fatal(err)
	}
	words := func(src string, re *regexp.Regexp) []string {
		var out []string
		for _, m := range re.FindAllStringSubmatch(src, -1) {
			if !slices.Contains(out, m[1]) {
				out = append(out, m[1])
			}
		}
		slices.Sort(out)
		return out
	}
	if got := words(def, regexp.MustCompile(`'(\w+)'`)); !slices.Equal(got, want) {
		t.Errorf("the schema's CHECK allows %v; the constants are %v", got, want)
	}
	src, err := os.ReadFile("store.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range words(string(src), regexp.MustCompile(`(?:status\s*(?:=|IN \(|THEN)|THEN|ELSE)\s*'(\w+)'`)) {
		if !slices.Contains(want, w) {
			t.Errorf("store.go's SQL spells a status %q that is not one of %v", w, want)
		}
	}
}
