// Schema migrations: embedded SQL files applied in order under a PostgreSQL advisory lock.
package main

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationFiles holds migrations/NNNN_name.sql; they apply in lexical order, each exactly once.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockKey is the advisory lock that serializes migrations across processes ("imgapimg").
const migrationLockKey int64 = 0x696d6761_70696d67

// migrationNames lists the embedded migrations in the order they apply.
func migrationNames() ([]string, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		names[i] = strings.TrimPrefix(n, "migrations/")
	}
	slices.Sort(names)
	return names, nil
}

// migrate applies every embedded migration the database lacks, each in its own transaction, while
// holding an advisory lock, so replicas starting together apply each file once. It records what it
// applied in schema_migrations.
func migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (err error) {
	names, err := migrationNames()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockKey); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		if _, uerr := conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", migrationLockKey); uerr != nil {
			// A session lock must not stay behind on a pooled connection: drop the connection.
			conn.Conn().Close(context.Background())
		}
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    text        PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// On the locked connection: a second one from the pool could be the one it does not have
	// (pool_max_conns=1), and wait for ever.
	applied, err := appliedMigrations(ctx, conn)
	if err != nil {
		return err
	}
	for _, name := range names {
		if applied[name] {
			continue
		}
		sql, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", name, err)
		}
		// Exec without arguments uses the simple protocol, which runs a file of several statements.
		if _, err := tx.Exec(ctx, string(sql)); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", name); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate %s: record: %w", name, err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("migrate %s: commit: %w", name, err)
		}
		log.Info("migration applied", slog.String("version", name))
	}
	return nil
}

// querier is what appliedMigrations reads through: a pool or one connection.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// appliedMigrations returns the versions recorded in schema_migrations; none when it does not exist.
func appliedMigrations(ctx context.Context, db querier) (map[string]bool, error) {
	var exists bool
	if err := db.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	applied := map[string]bool{}
	if !exists {
		return applied, nil
	}
	rows, err := db.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
		applied[v] = true
	}
	return applied, rows.Err()
}

// checkSchema returns an error naming the embedded migrations the database lacks. A worker calls it
// instead of migrating: it must not run against an older schema than the one it was built for.
func checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	names, err := migrationNames()
	if err != nil {
		return err
	}
	applied, err := appliedMigrations(ctx, pool)
	if err != nil {
		return err
	}
	var missing []string
	for _, n := range names {
		if !applied[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("database schema is older than this binary (missing %s): run -mode=migrate, or start an api first", strings.Join(missing, ", "))
	}
	return nil
}
