// Storage: the PostgreSQL connection and the store type, with every query inline.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgreSQL error codes the store handles.
const (
	pgUniqueViolation    = "23505"
	pgInvalidCatalogName = "3D000" // the database does not exist
	pgDuplicateDatabase  = "42P04"
)

// connectDB opens a pool on url and checks it answers. When the database does not exist it is created
// (when the role may), so `go run .` works against a fresh local server.
func connectDB(ctx context.Context, url string, log *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included: say only what is wrong.
		return nil, errors.New("DATABASE_URL: not a valid PostgreSQL URL")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = pool.Ping(pctx)
	if pgCode(err) == pgInvalidCatalogName {
		if cerr := createDatabase(pctx, cfg.ConnConfig); cerr != nil {
			pool.Close()
			return nil, fmt.Errorf("database %q does not exist and could not be created: %w", cfg.ConnConfig.Database, cerr)
		}
		log.Info("database created", slog.String("database", cfg.ConnConfig.Database))
		err = pool.Ping(pctx)
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("database %s:%d/%s unreachable: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// createDatabase creates the database that cc names, connecting to the server's "postgres" database
// with the same credentials. A database created meanwhile by another process is not an error.
func createDatabase(ctx context.Context, cc *pgx.ConnConfig) error {
	admin := cc.Copy()
	name := admin.Database
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	if pgCode(err) == pgDuplicateDatabase {
		return nil
	}
	return err
}

// pgCode returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// store is the service's data access: one type over the pool, SQL inline and parameterised. Methods
// return errNotFound when a row does not exist and errConflict when a unique key is taken.
type store struct {
	pool *pgxpool.Pool
}

// user is an account. The password hash never leaves the server.
type user struct {
	ID           int64     `json:"id"`
	Username     string    `json:"username"`
	CreatedAt    time.Time `json:"created_at"`
	PasswordHash string    `json:"-"`
}

// createUser inserts an account. It returns errConflict when the username is taken in any case.
func (s *store) createUser(ctx context.Context, username, passwordHash string) (user, error) {
	u := user{Username: username, PasswordHash: passwordHash}
	err := s.pool.QueryRow(ctx,
		"INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id, created_at",
		username, passwordHash).Scan(&u.ID, &u.CreatedAt)
	if pgCode(err) == pgUniqueViolation {
		return user{}, fmt.Errorf("store: create user: %w", errConflict)
	}
	if err != nil {
		return user{}, fmt.Errorf("store: create user: %w", err)
	}
	return u, nil
}

// userByName returns the account whose username equals name in any case, or errNotFound.
func (s *store) userByName(ctx context.Context, name string) (user, error) {
	var u user
	err := s.pool.QueryRow(ctx,
		"SELECT id, username, password_hash, created_at FROM users WHERE lower(username) = lower($1)",
		name).Scan(&u.ID, &u.Username, &u.PasswordHash, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return user{}, fmt.Errorf("store: user by name: %w", errNotFound)
	}
	if err != nil {
		return user{}, fmt.Errorf("store: user by name: %w", err)
	}
	return u, nil
}

// setPasswordHash replaces an account's password hash (to upgrade its parameters).
func (s *store) setPasswordHash(ctx context.Context, id int64, hash string) error {
	if _, err := s.pool.Exec(ctx, "UPDATE users SET password_hash = $2 WHERE id = $1", id, hash); err != nil {
		return fmt.Errorf("store: set password hash: %w", err)
	}
	return nil
}

// sharedSecret returns the 32-byte secret called name, generating and storing it on first use. Every
// process on the database gets the same value, however many ask at once.
func (s *store) sharedSecret(ctx context.Context, name string) ([]byte, error) {
	candidate := make([]byte, 32)
	rand.Read(candidate)
	var secret []byte
	// The insert is a no-op when another process got there first; the select then sees its value.
	if _, err := s.pool.Exec(ctx,
		"INSERT INTO app_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
		name, candidate); err != nil {
		return nil, fmt.Errorf("store: shared secret: %w", err)
	}
	if err := s.pool.QueryRow(ctx, "SELECT value FROM app_secrets WHERE name = $1", name).Scan(&secret); err != nil {
		return nil, fmt.Errorf("store: shared secret: %w", err)
	}
	return secret, nil
}
