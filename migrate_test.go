package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
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
