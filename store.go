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
	pgUniqueViolation     = "23505"
	pgForeignKeyViolation = "23503" // an image for a user whose row is gone
	pgInvalidCatalogName  = "3D000" // the database does not exist
	pgDuplicateDatabase   = "42P04"
)

// connectDB opens a pool on url and checks it answers. When the database does not exist it is created
// (when the role may), so `go run .` works against a fresh local server.
func connectDB(ctx context.Context, url string, log *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included: say only what is wrong.
		return nil, errors.New("DATABASE_URL: not a valid PostgreSQL URL")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// A server that does not answer (a partition) fails a request in seconds, as an outage (503),
		// instead of holding it; connect_timeout in the URL overrides.
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
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

// notApplied reports whether a failed write surely changed nothing: the server refused the statement
// (a PostgreSQL error, so its transaction rolled back), the store found nothing to change
// (errNotFound, errConflict, errQuota), or no connection could be made or nothing was sent. Any other
// failure — a connection lost with the statement or its commit in flight — may have been applied.
func notApplied(err error) bool {
	var pe *pgconn.PgError
	var ce *pgconn.ConnectError
	return errors.As(err, &pe) || errors.As(err, &ce) || errors.Is(err, errNotFound) || errors.Is(err, errConflict) ||
		errors.Is(err, errQuota) || pgconn.SafeToRetry(err)
}

// pgCode returns the SQLSTATE of a PostgreSQL error in err's chain, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// The store's sentinel errors, matched with errors.Is (fail maps them to 404 and 409).
var (
	errNotFound = errors.New("not found")
	errConflict = errors.New("conflict")
)

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
	Generation   int64     `json:"-"` // token_generation: tokens of another are revoked
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
		"SELECT id, username, password_hash, created_at, token_generation FROM users WHERE lower(username) = lower($1) AND deleted_at IS NULL",
		name).Scan(&u.ID, &u.Username, &u.PasswordHash, &u.CreatedAt, &u.Generation)
	if errors.Is(err, pgx.ErrNoRows) {
		return user{}, fmt.Errorf("store: user by name: %w", errNotFound)
	}
	if err != nil {
		return user{}, fmt.Errorf("store: user by name: %w", err)
	}
	return u, nil
}

// tokenGeneration returns live account id's token generation, or errAccountGone when the account
// does not exist or is being deleted.
func (s *store) tokenGeneration(ctx context.Context, id int64) (int64, error) {
	var gen int64
	err := s.pool.QueryRow(ctx, "SELECT token_generation FROM users WHERE id = $1 AND deleted_at IS NULL", id).Scan(&gen)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("store: token generation: %w", errAccountGone)
	}
	if err != nil {
		return 0, fmt.Errorf("store: token generation: %w", err)
	}
	return gen, nil
}

// userByID returns live account id, or errAccountGone.
func (s *store) userByID(ctx context.Context, id int64) (user, error) {
	u := user{ID: id}
	err := s.pool.QueryRow(ctx,
		"SELECT username, password_hash, created_at, token_generation FROM users WHERE id = $1 AND deleted_at IS NULL",
		id).Scan(&u.Username, &u.PasswordHash, &u.CreatedAt, &u.Generation)
	if errors.Is(err, pgx.ErrNoRows) {
		return user{}, fmt.Errorf("store: user %d: %w", id, errAccountGone)
	}
	if err != nil {
		return user{}, fmt.Errorf("store: user %d: %w", id, err)
	}
	return u, nil
}

// accountUsage returns how many images owner has and the bytes they store (originals and variants).
func (s *store) accountUsage(ctx context.Context, owner int64) (images, bytes int64, err error) {
	err = s.pool.QueryRow(ctx, `SELECT COALESCE(max(n), 0), COALESCE(max(bytes), 0) FROM image_counts WHERE owner_id = $1 AND tag = ''`, owner).Scan(&images, &bytes)
	if err != nil {
		return 0, 0, fmt.Errorf("store: account usage: %w", err)
	}
	return images, bytes, nil
}

// revokeTokens bumps account id's token generation (every token issued before stops working),
// deletes its API keys, and, when hash is not empty, sets its password hash, all in one
// transaction. It returns the new generation.
func (s *store) revokeTokens(ctx context.Context, id int64, hash string) (int64, error) {
	var gen int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			UPDATE users SET token_generation = token_generation + 1,
			       password_hash = CASE WHEN $2 = '' THEN password_hash ELSE $2 END
			WHERE id = $1 AND deleted_at IS NULL RETURNING token_generation`, id, hash).Scan(&gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return errAccountGone
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM api_keys WHERE owner_id = $1`, id)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: revoke tokens: %w", err)
	}
	return gen, nil
}

// markDeleted deletes account id as far as credentials go, at once: no token or key of it works
// again, its username is free; the account sweep removes the rest (deletedAccounts, purgeAccount).
func (s *store) markDeleted(ctx context.Context, id int64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE users SET deleted_at = now(), token_generation = token_generation + 1
			WHERE id = $1 AND deleted_at IS NULL`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errAccountGone
		}
		_, err = tx.Exec(ctx, `DELETE FROM api_keys WHERE owner_id = $1`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: delete account: %w", err)
	}
	return nil
}

// deletedAccounts returns up to limit accounts marked deleted, oldest first.
func (s *store) deletedAccounts(ctx context.Context, limit int) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM users WHERE deleted_at IS NOT NULL ORDER BY deleted_at LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("store: deleted accounts: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("store: deleted accounts: %w", err)
	}
	return ids, nil
}

// imageKeysOf returns up to limit of owner's images, each with the keys of its files (the original
// and its variants).
func (s *store) imageKeysOf(ctx context.Context, owner int64, limit int) (map[int64][]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, file_key, COALESCE((SELECT array_agg(v.file->>'key') FROM jsonb_each(variants) AS v(name, file)), '{}')
		FROM images WHERE owner_id = $1 ORDER BY id LIMIT $2`, owner, limit)
	if err != nil {
		return nil, fmt.Errorf("store: image keys: %w", err)
	}
	out := map[int64][]string{}
	var id int64
	var key string
	var variants []string
	_, err = pgx.ForEachRow(rows, []any{&id, &key, &variants}, func() error {
		out[id] = append([]string{key}, variants...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: image keys: %w", err)
	}
	return out, nil
}

// intentKeysUnder returns the keys of pending writes (blob_intents) of the originals' variants:
// files a job placed but never recorded (a worker killed between the two).
func (s *store) intentKeysUnder(ctx context.Context, originals []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT key FROM blob_intents WHERE split_part(key, '.', 1) = ANY($1)`, originals)
	if err != nil {
		return nil, fmt.Errorf("store: intents under: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("store: intents under: %w", err)
	}
	return keys, nil
}

// deleteImagesByID deletes owner's rows ids.
func (s *store) deleteImagesByID(ctx context.Context, owner int64, ids []int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM images WHERE owner_id = $1 AND id = ANY($2)`, owner, ids); err != nil {
		return fmt.Errorf("store: delete images: %w", err)
	}
	return nil
}

// purgeAccount removes deleted account id's row (and with it whatever still refers to it) once it
// has no image left; false when one is left (an upload that landed meanwhile): the sweep goes on.
func (s *store) purgeAccount(ctx context.Context, id int64) (bool, error) {
	var done bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM users WHERE id = $1 AND deleted_at IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM images WHERE owner_id = $1)`, id)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		done = true
		_, err = tx.Exec(ctx, `DELETE FROM image_counts WHERE owner_id = $1`, id)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: purge account: %w", err)
	}
	return done, nil
}

// apiKey is an API key as its owner sees it; its secret is shown once, when it is made.
type apiKey struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
}

// errTooManyKeys is createAPIKey's answer when the owner has max keys already.
var errTooManyKeys = errors.New("too many API keys")

// createAPIKey stores a key for owner with the secret's hash, unless owner has max keys already
// (errTooManyKeys), checked under the owner's row lock.
func (s *store) createAPIKey(ctx context.Context, owner int64, name, prefix string, hash []byte, expires *time.Time, max int) (apiKey, error) {
	k := apiKey{Name: name, Prefix: prefix, ExpiresAt: expires}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockOwner(ctx, tx, owner); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE owner_id = $1`, owner).Scan(&n); err != nil {
			return err
		}
		if n >= max {
			return errTooManyKeys
		}
		return tx.QueryRow(ctx, `INSERT INTO api_keys (owner_id, name, prefix, hash, expires_at) VALUES ($1, $2, $3, $4, $5)
			RETURNING id, created_at`, owner, name, prefix, hash, expires).Scan(&k.ID, &k.CreatedAt)
	})
	if pgCode(err) == pgForeignKeyViolation {
		return apiKey{}, fmt.Errorf("store: create API key: %w", errAccountGone)
	}
	if err != nil {
		return apiKey{}, fmt.Errorf("store: create API key: %w", err)
	}
	return k, nil
}

// apiKeysOf lists owner's keys, oldest first.
func (s *store) apiKeysOf(ctx context.Context, owner int64) ([]apiKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, prefix, created_at, last_used_at, expires_at FROM api_keys WHERE owner_id = $1 ORDER BY id`, owner)
	if err != nil {
		return nil, fmt.Errorf("store: API keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (apiKey, error) {
		var k apiKey
		err := r.Scan(&k.ID, &k.Name, &k.Prefix, &k.CreatedAt, &k.LastUsedAt, &k.ExpiresAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("store: API keys: %w", err)
	}
	return keys, nil
}

// deleteAPIKey deletes owner's key id, returning its hash; errNotFound when owner has none such.
func (s *store) deleteAPIKey(ctx context.Context, owner, id int64) ([]byte, error) {
	var hash []byte
	err := s.pool.QueryRow(ctx, `DELETE FROM api_keys WHERE id = $1 AND owner_id = $2 RETURNING hash`, id, owner).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("store: delete API key %d: %w", id, errNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: delete API key %d: %w", id, err)
	}
	return hash, nil
}

// apiKeyByHash returns the owner and expiry of the key whose secret hashes to hash, and records its
// use (at most once a minute: a key in constant use is written once a minute, not per request);
// errNotFound when there is none, or its owner is being deleted.
func (s *store) apiKeyByHash(ctx context.Context, hash []byte) (owner int64, expires *time.Time, err error) {
	var id int64
	var used *time.Time
	err = s.pool.QueryRow(ctx, `
		SELECT k.id, k.owner_id, k.expires_at, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.owner_id
		WHERE k.hash = $1 AND u.deleted_at IS NULL`, hash).Scan(&id, &owner, &expires, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, fmt.Errorf("store: API key: %w", errNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: API key: %w", err)
	}
	if used == nil || time.Since(*used) > time.Minute {
		if _, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() WHERE id = $1`, id); err != nil {
			return 0, nil, fmt.Errorf("store: API key used: %w", err)
		}
	}
	return owner, expires, nil
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

// imageRecord is an image row. Its JSON form is the cache's, not the API's (see imageView).
type imageRecord struct {
	ID          int64                    `json:"id"`
	OwnerID     int64                    `json:"owner_id"`
	Name        string                   `json:"name"`
	Tags        []string                 `json:"tags"`
	Status      string                   `json:"status"`
	Error       string                   `json:"error"`
	ContentType string                   `json:"content_type"`
	Width       int                      `json:"width"`
	Height      int                      `json:"height"`
	Size        int64                    `json:"size"`
	SHA256      string                   `json:"sha256"`
	FileKey     string                   `json:"file_key"`
	Variants    map[string]storedVariant `json:"variants"`
	Placeholder string                   `json:"placeholder"` // BlurHash; empty until ready
	CreatedAt   time.Time                `json:"created_at"`
	UpdatedAt   time.Time                `json:"updated_at"`
}

// storedVariant is a finished variant as recorded in images.variants.
type storedVariant struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	Key         string `json:"key"`
}

// Image statuses.
const (
	statusPending    = "pending"
	statusProcessing = "processing"
	statusReady      = "ready"
	statusFailed     = "failed"
)

// imageColumns is the column list scanImage reads, in its order.
const imageColumns = `id, owner_id, name, tags, status, error, content_type, width, height, size, sha256, file_key, variants, placeholder, created_at, updated_at`

// scanImage reads one row of imageColumns.
func scanImage(row pgx.Row) (imageRecord, error) {
	var im imageRecord
	err := row.Scan(&im.ID, &im.OwnerID, &im.Name, &im.Tags, &im.Status, &im.Error, &im.ContentType, &im.Width, &im.Height,
		&im.Size, &im.SHA256, &im.FileKey, &im.Variants, &im.Placeholder, &im.CreatedAt, &im.UpdatedAt)
	if im.Tags == nil {
		im.Tags = []string{}
	}
	return im, err
}

// errQuota is insertImage's and finishImage's answer when an image would take its owner past the
// quota.
var errQuota = errors.New("storage quota exceeded")

// usageSQL reads what one owner ($1) stores, originals and variants (reserved or real), from the
// counts the triggers keep (image_counts).
const usageSQL = `SELECT COALESCE((SELECT bytes FROM image_counts WHERE owner_id = $1 AND tag = ''), 0)`

// lockOwner takes the row lock of owner's account for the rest of tx, so that quota checks of one
// owner's images run one after the other.
func lockOwner(ctx context.Context, tx pgx.Tx, owner int64) error {
	_, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE id = $1 FOR UPDATE`, owner)
	return err
}

// insertImage stores a new image row (status pending), reserving reserve bytes for its variants,
// and returns it as stored, with the owner's storage in use after it. With quota > 0 it first checks,
// under a lock on the owner's row (so that concurrent uploads are counted one after the other), that
// what the owner stores and this image with its reservation stay within quota bytes, else it returns
// errQuota. An owner whose account is gone gets errAccountGone.
func (s *store) insertImage(ctx context.Context, quota int64, im imageRecord, reserve int64) (imageRecord, int64, error) {
	var out imageRecord
	var used int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if quota > 0 {
			// Two statements: under READ COMMITTED each sees what committed before it began, so
			// the sum, read after the lock is ours, counts every upload that held it before.
			if err := lockOwner(ctx, tx, im.OwnerID); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, usageSQL, im.OwnerID).Scan(&used); err != nil {
				return err
			}
			if used+im.Size+reserve > quota {
				return errQuota
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM blob_intents WHERE key = $1`, im.FileKey); err != nil {
			return err
		}
		var err error
		out, err = scanImage(tx.QueryRow(ctx, `
			INSERT INTO images (owner_id, name, tags, content_type, width, height, size, sha256, file_key, variant_bytes)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			RETURNING `+imageColumns,
			im.OwnerID, im.Name, im.Tags, im.ContentType, im.Width, im.Height, im.Size, im.SHA256, im.FileKey, reserve))
		return err
	})
	if pgCode(err) == pgForeignKeyViolation {
		return imageRecord{}, 0, fmt.Errorf("store: insert image: %w", errAccountGone)
	}
	if err != nil {
		return imageRecord{}, 0, fmt.Errorf("store: insert image: %w", err)
	}
	return out, used + im.Size + reserve, nil
}

// bytesStored returns what owner stores: originals, and variants (reserved for images in
// processing, real for ready ones).
func (s *store) bytesStored(ctx context.Context, owner int64) (int64, error) {
	var used int64
	if err := s.pool.QueryRow(ctx, usageSQL, owner).Scan(&used); err != nil {
		return 0, fmt.Errorf("store: bytes stored: %w", err)
	}
	return used, nil
}

// imageByID returns owner's image id, or errNotFound — also when it belongs to someone else.
func (s *store) imageByID(ctx context.Context, owner, id int64) (imageRecord, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `SELECT `+imageColumns+` FROM images WHERE id = $1 AND owner_id = $2`, id, owner))
	if errors.Is(err, pgx.ErrNoRows) {
		return imageRecord{}, fmt.Errorf("store: image %d: %w", id, errNotFound)
	}
	if err != nil {
		return imageRecord{}, fmt.Errorf("store: image %d: %w", id, err)
	}
	return im, nil
}

// imagePage is one page of a user's images, how many the query selects in all, and whether more
// follow the page.
type imagePage struct {
	Total  int64         `json:"total"`
	Images []imageRecord `json:"images"`
	More   bool          `json:"more"`
}

// selectImages returns owner's images newest first, with tag (when not empty) as a filter: after
// cursor when it is not nil (a keyset seek on created_at, id: the same cost at any depth), else
// skipping skip (OFFSET: it walks every row it skips); at most limit. Total, read from the counts
// the triggers keep, is every image the filter selects.
func (s *store) selectImages(ctx context.Context, owner int64, tag string, skip, limit int, after *listCursor) (imagePage, error) {
	// One round trip: the page and the count as a batch. One row past the page says whether more follow.
	b := &pgx.Batch{}
	filter := `owner_id = $1 AND ($2 = '' OR tags @> ARRAY[$2])`
	if after != nil {
		b.Queue(`SELECT `+imageColumns+` FROM images WHERE `+filter+` AND (created_at, id) < ($3, $4)
			ORDER BY created_at DESC, id DESC LIMIT $5`, owner, tag, after.createdAt, after.id, limit+1)
	} else {
		b.Queue(`SELECT `+imageColumns+` FROM images WHERE `+filter+` ORDER BY created_at DESC, id DESC OFFSET $3 LIMIT $4`, owner, tag, skip, limit+1)
	}
	b.Queue(`SELECT COALESCE((SELECT n FROM image_counts WHERE owner_id = $1 AND tag = $2), 0)`, owner, tag)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return imagePage{}, fmt.Errorf("store: list images: %w", err)
	}
	page := imagePage{Images: []imageRecord{}}
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			rows.Close()
			return imagePage{}, fmt.Errorf("store: list images: %w", err)
		}
		page.Images = append(page.Images, im)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return imagePage{}, fmt.Errorf("store: list images: %w", err)
	}
	if len(page.Images) > limit {
		page.Images, page.More = page.Images[:limit], true
	}
	if err := br.QueryRow().Scan(&page.Total); err != nil {
		return imagePage{}, fmt.Errorf("store: count images: %w", err)
	}
	return page, nil
}

// updateImageRow sets the name and/or tags (nil: unchanged) of owner's image id, or returns errNotFound.
func (s *store) updateImageRow(ctx context.Context, owner, id int64, name *string, tags []string) (imageRecord, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `
		UPDATE images SET name = COALESCE($3, name), tags = COALESCE($4, tags), updated_at = now()
		WHERE id = $1 AND owner_id = $2
		RETURNING `+imageColumns, id, owner, name, tags))
	if errors.Is(err, pgx.ErrNoRows) {
		return imageRecord{}, fmt.Errorf("store: update image %d: %w", id, errNotFound)
	}
	if err != nil {
		return imageRecord{}, fmt.Errorf("store: update image %d: %w", id, err)
	}
	return im, nil
}

// deleteImageRow removes owner's image id and returns the row it was, for its files to be removed; or
// errNotFound.
func (s *store) deleteImageRow(ctx context.Context, owner, id int64) (imageRecord, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `DELETE FROM images WHERE id = $1 AND owner_id = $2 RETURNING `+imageColumns, id, owner))
	if errors.Is(err, pgx.ErrNoRows) {
		return imageRecord{}, fmt.Errorf("store: delete image %d: %w", id, errNotFound)
	}
	if err != nil {
		return imageRecord{}, fmt.Errorf("store: delete image %d: %w", id, err)
	}
	return im, nil
}

// fileKeysExist reports which of keys are the original of some image.
func (s *store) fileKeysExist(ctx context.Context, keys []string) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT file_key FROM images WHERE file_key = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("store: file keys: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("store: file keys: %w", err)
	}
	m := make(map[string]bool, len(found))
	for _, k := range found {
		m[k] = true
	}
	return m, nil
}

// errAttemptsExhausted is claimImage's answer for an image whose attempts are used up: it is now
// failed, and the returned row carries its owner.
var errAttemptsExhausted = errors.New("attempts used up")

// exhaustedReason is the error an image gets when no attempt of maxAttempts finished.
func exhaustedReason(maxAttempts int) string {
	return fmt.Sprintf("processing did not finish in %d attempts", maxAttempts)
}

// claimImage takes image id for processing: pending, or processing under an expired lease. It sets
// status processing, counts the attempt and holds the image until now+lease. It returns the row and
// the attempts made so far (this one included), or errNotFound when there is nothing to do: the image
// is gone, finished, or held by a live worker. An image that already had maxAttempts attempts (the
// workers that took them died) is marked failed instead, and errAttemptsExhausted returned with the
// row: an attempt counts from its claim, so a crash in the middle of one counts too.
func (s *store) claimImage(ctx context.Context, id int64, lease time.Duration, maxAttempts int) (imageRecord, int, error) {
	var attempts int
	var status string
	var im imageRecord
	err := s.pool.QueryRow(ctx, `
		UPDATE images SET
		       status = CASE WHEN attempts >= $3 THEN 'failed' ELSE 'processing' END,
		       attempts = CASE WHEN attempts >= $3 THEN attempts ELSE attempts + 1 END,
		       error = CASE WHEN attempts >= $3 THEN $4 ELSE '' END,
		       lease_until = CASE WHEN attempts >= $3 THEN NULL ELSE now() + $2::interval END,
		       variant_bytes = CASE WHEN attempts >= $3 THEN 0 ELSE variant_bytes END,
		       updated_at = now()
		WHERE id = $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))
		RETURNING owner_id, content_type, file_key, attempts, status`,
		id, lease, maxAttempts, exhaustedReason(maxAttempts)).Scan(&im.OwnerID, &im.ContentType, &im.FileKey, &attempts, &status)
	if errors.Is(err, pgx.ErrNoRows) {
		return imageRecord{}, 0, fmt.Errorf("store: claim image %d: %w", id, errNotFound)
	}
	if err != nil {
		return imageRecord{}, 0, fmt.Errorf("store: claim image %d: %w", id, err)
	}
	im.ID = id
	if status == statusFailed {
		return im, attempts, fmt.Errorf("store: claim image %d: %w", id, errAttemptsExhausted)
	}
	return im, attempts, nil
}

// failExhaustedJobs marks failed every image waiting for an attempt (pending, or held past its
// lease) that has had maxAttempts already, and returns their owners (one entry per image).
func (s *store) failExhaustedJobs(ctx context.Context, maxAttempts int) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `
		UPDATE images SET status = 'failed', error = $2, lease_until = NULL, variant_bytes = 0, updated_at = now()
		WHERE attempts >= $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))
		RETURNING owner_id`, maxAttempts, exhaustedReason(maxAttempts))
	if err != nil {
		return nil, fmt.Errorf("store: fail exhausted jobs: %w", err)
	}
	owners, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("store: fail exhausted jobs: %w", err)
	}
	return owners, nil
}

// A claim is named by the image and the attempt it counted: a worker's later writes to the row
// (renewing, finishing, releasing, failing) apply only while the row is still processing under that
// same attempt, so a worker whose lease ran out and was taken over can no longer touch it.

// renewLease extends the lease of an image this worker holds (the claim's attempt) to now+lease. It
// returns errNotFound when the claim is no longer this worker's.
func (s *store) renewLease(ctx context.Context, id int64, attempt int, lease time.Duration) error {
	tag, err := s.pool.Exec(ctx, `
		UPDATE images SET lease_until = now() + $3::interval
		WHERE id = $1 AND status = 'processing' AND attempts = $2`, id, attempt, lease)
	if err != nil {
		return fmt.Errorf("store: renew lease %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("store: renew lease %d: %w", id, errNotFound)
	}
	return nil
}

// finishImage records the variants of an image this worker holds and marks it ready, settling its
// variants' reservation to their real sizes. It returns errNotFound when the image is no longer held
// (deleted, or its lease taken over): the caller's files are then nobody's; and with quota > 0,
// errQuota when the real variants would take the owner past it (nothing is recorded).
func (s *store) finishImage(ctx context.Context, id int64, attempt int, variants map[string]storedVariant, placeholder string, quota int64) error {
	var real int64
	for _, v := range variants {
		real += v.Size
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if quota > 0 {
			var owner, size int64
			err := tx.QueryRow(ctx, `SELECT owner_id, size FROM images WHERE id = $1 AND status = 'processing' AND attempts = $2`, id, attempt).Scan(&owner, &size)
			if errors.Is(err, pgx.ErrNoRows) {
				return errNotFound
			}
			if err != nil {
				return err
			}
			if err := lockOwner(ctx, tx, owner); err != nil {
				return err
			}
			var all, mine int64
			if err := tx.QueryRow(ctx, usageSQL, owner).Scan(&all); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `SELECT size + variant_bytes FROM images WHERE id = $1`, id).Scan(&mine); err != nil {
				return err
			}
			if all-mine+size+real > quota {
				return errQuota
			}
		}
		tag, err := tx.Exec(ctx, `
			UPDATE images SET status = 'ready', variants = $3, placeholder = $4, variant_bytes = $5, error = '', lease_until = NULL, updated_at = now()
			WHERE id = $1 AND status = 'processing' AND attempts = $2`, id, attempt, variants, placeholder, real)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errNotFound
		}
		keys := make([]string, 0, len(variants))
		for _, v := range variants {
			keys = append(keys, v.Key)
		}
		_, err = tx.Exec(ctx, `DELETE FROM blob_intents WHERE key = ANY($1)`, keys)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: finish image %d: %w", id, err)
	}
	return nil
}

// addVariant records variant v of ready image id under name, unless one is recorded already (the
// first writer wins: false, and the caller's file is nobody's), adding its bytes to the image's and
// clearing its intent, in one transaction; with quota > 0, errQuota when the bytes would take the
// owner past it (checked under the owner's lock).
func (s *store) addVariant(ctx context.Context, id int64, name string, v storedVariant, quota int64) (bool, error) {
	var added bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if quota > 0 {
			var owner, used int64
			if err := tx.QueryRow(ctx, `SELECT owner_id FROM images WHERE id = $1`, id).Scan(&owner); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return nil
				}
				return err
			}
			if err := lockOwner(ctx, tx, owner); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, usageSQL, owner).Scan(&used); err != nil {
				return err
			}
			if used+v.Size > quota {
				return errQuota
			}
		}
		tag, err := tx.Exec(ctx, `
			UPDATE images SET variants = variants || jsonb_build_object($2::text, $3::jsonb), variant_bytes = variant_bytes + $4
			WHERE id = $1 AND status = 'ready' AND NOT variants ? $2`, id, name, v, v.Size)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		added = true
		_, err = tx.Exec(ctx, `DELETE FROM blob_intents WHERE key = $1`, v.Key)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: add variant %s of image %d: %w", name, id, err)
	}
	return added, nil
}

// releaseImage hands a held image back: status pending. With failed set, the attempt is counted as
// made; without (a shutdown abandoned it), it is not. queued says whether a message for it is
// already on its way (else the sweeper will publish one).
func (s *store) releaseImage(ctx context.Context, id int64, attempt int, failed, queued bool) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE images SET status = 'pending', lease_until = NULL, updated_at = now(),
		       attempts = attempts - CASE WHEN $3 THEN 0 ELSE 1 END,
		       queued_at = CASE WHEN $4 THEN now() ELSE NULL END
		WHERE id = $1 AND status = 'processing' AND attempts = $2`, id, attempt, failed, queued)
	if err != nil {
		return fmt.Errorf("store: release image %d: %w", id, err)
	}
	return nil
}

// failImage marks a held image failed with a reason the user will read.
func (s *store) failImage(ctx context.Context, id int64, attempt int, reason string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE images SET status = 'failed', error = $3, lease_until = NULL, variant_bytes = 0, updated_at = now()
		WHERE id = $1 AND status = 'processing' AND attempts = $2`, id, attempt, reason)
	if err != nil {
		return fmt.Errorf("store: fail image %d: %w", id, err)
	}
	return nil
}

// variantsRecorded reports whether image id records any of the variant files keys.
func (s *store) variantsRecorded(ctx context.Context, id int64, keys []string) (bool, error) {
	var found bool
	err := s.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM images, jsonb_each(variants) AS v(name, file)
		               WHERE id = $1 AND file->>'key' = ANY($2))`, id, keys).Scan(&found)
	if err != nil {
		return false, fmt.Errorf("store: variants recorded: %w", err)
	}
	return found, nil
}

// pendingInvalidation is a user with cache invalidations in the outbox, up to id maxID.
type pendingInvalidation struct {
	owner, maxID int64
}

// pendingInvalidations returns up to limit users with rows in cache_outbox.
func (s *store) pendingInvalidations(ctx context.Context, limit int) ([]pendingInvalidation, error) {
	rows, err := s.pool.Query(ctx, `SELECT owner_id, max(id) FROM cache_outbox GROUP BY owner_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("store: pending invalidations: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pendingInvalidation, error) {
		var p pendingInvalidation
		err := r.Scan(&p.owner, &p.maxID)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("store: pending invalidations: %w", err)
	}
	return out, nil
}

// clearInvalidations removes owner's outbox rows up to maxID: a generation bump made after they
// committed covers them. Rows added since stay for the next drain.
func (s *store) clearInvalidations(ctx context.Context, owner, maxID int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM cache_outbox WHERE owner_id = $1 AND id <= $2`, owner, maxID); err != nil {
		return fmt.Errorf("store: clear invalidations: %w", err)
	}
	return nil
}

// jobRank returns image id's place among its owner's unfinished images (1 for the oldest), or
// errNotFound when it is finished or gone.
func (s *store) jobRank(ctx context.Context, id int64) (int64, error) {
	var rank int64
	err := s.pool.QueryRow(ctx, `
		SELECT count(*) FROM images u, images me
		WHERE me.id = $1 AND me.status IN ('pending', 'processing')
		  AND u.owner_id = me.owner_id AND u.status IN ('pending', 'processing') AND u.id <= me.id`, id).Scan(&rank)
	if err != nil {
		return 0, fmt.Errorf("store: job rank: %w", err)
	}
	if rank == 0 {
		return 0, fmt.Errorf("store: job rank: %w", errNotFound)
	}
	return rank, nil
}

// unfinishedJobs returns how many of owner's images wait for or are in processing.
func (s *store) unfinishedJobs(ctx context.Context, owner int64) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM images WHERE owner_id = $1 AND status IN ('pending', 'processing')`, owner).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: unfinished jobs: %w", err)
	}
	return n, nil
}

// recordIntents records that keys are about to be written to the blob store (blob_intents): until
// the transaction that refers to them from a row clears them, the intent sweep may remove them.
func (s *store) recordIntents(ctx context.Context, keys ...string) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO blob_intents (key) SELECT unnest($1::text[]) ON CONFLICT (key) DO NOTHING`, keys); err != nil {
		return fmt.Errorf("store: record intents: %w", err)
	}
	return nil
}

// staleIntents returns up to limit intents older than grace, each with whether a row refers to its
// key: an original by its file_key, a variant by its original's row's variants.
func (s *store) staleIntents(ctx context.Context, grace time.Duration, limit int) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT i.key,
		       EXISTS (SELECT 1 FROM images m WHERE m.file_key = i.key)
		       OR EXISTS (SELECT 1 FROM images m, jsonb_each(m.variants) AS v(name, file)
		                  WHERE m.file_key = split_part(i.key, '.', 1) AND v.file->>'key' = i.key)
		FROM blob_intents i
		WHERE i.created_at < now() - $1::interval
		ORDER BY i.created_at LIMIT $2`, grace, limit)
	if err != nil {
		return nil, fmt.Errorf("store: stale intents: %w", err)
	}
	out := map[string]bool{}
	var key string
	var referenced bool
	_, err = pgx.ForEachRow(rows, []any{&key, &referenced}, func() error {
		out[key] = referenced
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: stale intents: %w", err)
	}
	return out, nil
}

// clearIntents forgets the intents of keys.
func (s *store) clearIntents(ctx context.Context, keys []string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM blob_intents WHERE key = ANY($1)`, keys); err != nil {
		return fmt.Errorf("store: clear intents: %w", err)
	}
	return nil
}

// markQueued records that the queue confirmed a message for each of ids.
func (s *store) markQueued(ctx context.Context, ids ...int64) error {
	if _, err := s.pool.Exec(ctx, `UPDATE images SET queued_at = now() WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("store: mark queued: %w", err)
	}
	return nil
}

// lostJobs returns up to limit images whose job may be lost: pending and never confirmed by the queue
// (for longer than grace, so an upload's own publish is not raced), pending and confirmed longer than
// requeueAfter ago, or processing under an expired lease (the worker died); never one whose attempts
// reached maxAttempts (failExhaustedJobs ends those).
func (s *store) lostJobs(ctx context.Context, grace, requeueAfter time.Duration, maxAttempts, limit int) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id FROM images
		WHERE attempts < $3
		  AND ((status = 'pending' AND ((queued_at IS NULL AND updated_at < now() - $1::interval)
		                                OR queued_at < now() - $2::interval))
		       OR (status = 'processing' AND lease_until < now()))
		ORDER BY id LIMIT $4`, grace, requeueAfter, maxAttempts, limit)
	if err != nil {
		return nil, fmt.Errorf("store: lost jobs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("store: lost jobs: %w", err)
	}
	return ids, nil
}
