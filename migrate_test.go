package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestMigrateConcurrentlyAndTwice: four processes migrating one empty database at once apply each
// file exactly once; migrating again changes nothing; a worker's schema check passes only after.
func TestMigrateConcurrentlyAndTwice(t *testing.T) {
	url := freshDatabase(t)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ctx := context.Background()
	first, err := connectDB(ctx, url, log)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := checkSchema(ctx, first); err == nil || !strings.Contains(err.Error(), "0001_init.sql") {
		t.Fatalf("checkSchema on an empty database = %v, want it to name the missing migration", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			pool, err := connectDB(ctx, url, log)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			errs[i] = migrate(ctx, pool, log)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent migrate: %v", err)
	}
	if err := migrate(ctx, first, log); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	names, _ := migrationNames()
	var n int
	if err := first.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n != len(names) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, len(names))
	}
	if err := checkSchema(ctx, first); err != nil {
		t.Fatalf("checkSchema after migrate: %v", err)
	}
	// The advisory lock was released: a session of its own (advisory locks are re-entrant within
	// one session, so a pooled connection migrate used could take it even if it were still held)
	// takes it at once.
	other, err := pgx.ConnectConfig(ctx, first.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	var got bool
	if err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", migrationLockKey).Scan(&got); err != nil || !got {
		t.Fatalf("advisory lock still held after migrate (%v)", err)
	}
	other.Exec(ctx, "SELECT pg_advisory_unlock_all()")
}

// TestMigrateModeAndWorkerCheck: -mode=migrate applies and exits; -mode=worker refuses a database
// that was never migrated.
func TestMigrateModeAndWorkerCheck(t *testing.T) {
	empty := freshDatabase(t)
	err := run(context.Background(), []string{"-mode=worker", "-env-file="}, testEnv(t, map[string]string{"DATABASE_URL": empty}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "schema is older") {
		t.Fatalf("worker on an empty database: %v", err)
	}
	if err := run(context.Background(), []string{"-mode=migrate", "-env-file="}, testEnv(t, map[string]string{"DATABASE_URL": empty}), io.Discard, io.Discard); err != nil {
		t.Fatalf("-mode=migrate: %v", err)
	}
	conn, err := pgx.Connect(context.Background(), empty)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	conn.QueryRow(context.Background(), "SELECT to_regclass('images') IS NOT NULL").Scan(&exists)
	if !exists {
		t.Fatal("-mode=migrate did not create the images table")
	}
}

// TestConnectCreatesDatabase: a DATABASE_URL naming a database that does not exist yet works; the
// database is created.
func TestConnectCreatesDatabase(t *testing.T) {
	name := "imageapi_test_" + randomHex(6)
	url := strings.Replace(needDB(t), needDB(t)[strings.LastIndexByte(needDB(t), '/')+1:strings.IndexByte(needDB(t), '?')], name, 1)
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
