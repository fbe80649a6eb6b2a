package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

// sqlRecorder records every statement a pool runs, with its arguments.
type sqlRecorder struct {
	mu    sync.Mutex
	stmts []recordedSQL
}

// recordedSQL is one statement as run.
type recordedSQL struct {
	sql  string
	args []any
}

func (r *sqlRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.add(d.SQL, d.Args)
	return ctx
}
func (r *sqlRecorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *sqlRecorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (r *sqlRecorder) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.add(d.SQL, d.Args)
}
func (r *sqlRecorder) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (r *sqlRecorder) add(sql string, args []any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stmts = append(r.stmts, recordedSQL{sql, args})
}

// TestQueriesUseIndexes: with a library of 200,000 images, every statement the store runs for the
// requests and the housekeeping (list pages by offset and by cursor, a tag's page, counts, one image,
// quota and usage, claims, the sweeps' scans, deletes) is planned without a sequential scan of
// images: each stays on an index however large the table grows.
func TestQueriesUseIndexes(t *testing.T) {
	t.Parallel() // on a database of its own
	ctx := context.Background()
	url := freshDatabase(t)
	setup, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close()
	if err := migrate(ctx, setup, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	owner, small := loadPlanData(t, setup)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	rec := &sqlRecorder{}
	cfg.ConnConfig.Tracer = rec
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st := &store{pool: pool}
	var some imageRecord
	setup.QueryRow(ctx, `SELECT id, file_key, created_at FROM images WHERE owner_id = $1 ORDER BY id DESC LIMIT 1 OFFSET 100000`, owner).Scan(&some.ID, &some.FileKey, &some.CreatedAt)
	// The store's reads and writes, as the requests and the sweeps make them (writes in transactions
	// rolled back would need their own pool: these are planned only, below, never kept).
	st.selectImages(ctx, owner, "", 0, 20, nil)
	st.selectImages(ctx, owner, "", 0, 20, &listCursor{createdAt: some.CreatedAt, id: some.ID})
	st.selectImages(ctx, owner, "cats", 1000, 20, nil)
	st.imageByID(ctx, owner, some.ID)
	st.bytesStored(ctx, owner)
	st.accountUsage(ctx, owner)
	st.jobRank(ctx, some.ID)
	st.unfinishedJobs(ctx, owner)
	st.lostJobs(ctx, time.Minute, time.Minute, 3, 100)
	st.fileKeysExist(ctx, []string{some.FileKey, "o/00/nothing"})
	st.variantsRecorded(ctx, some.ID, []string{"o/00/x.thumb_100.00000000.png"})
	st.staleIntents(ctx, time.Minute, 100)
	st.imageKeysOf(ctx, small, 200)
	st.intentKeysUnder(ctx, []string{some.FileKey})
	rec.mu.Lock()
	stmts := slices.Clone(rec.stmts)
	rec.mu.Unlock()
	// The writes, planned only.
	writes := []recordedSQL{
		{`UPDATE images SET status = 'processing' WHERE id = $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))`, []any{some.ID}},
		{`UPDATE images SET status = 'failed' WHERE attempts >= $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))`, []any{3}},
		{`DELETE FROM images WHERE id = $1 AND owner_id = $2`, []any{some.ID, owner}},
		{`DELETE FROM images WHERE owner_id = $1 AND id = ANY($2)`, []any{small, []int64{1, 2}}},
	}
	if len(stmts) < 14 {
		t.Fatalf("%d statements recorded", len(stmts))
	}
	assertIndexed(t, setup, append(stmts, writes...))
}

// loadPlanData fills a fresh, migrated database with 200,000 images (all but 200 of one owner, 10 %
// tagged cats, one in 5000 pending) and 100 stale intents, counted and analyzed; it returns the two
// owners.
func loadPlanData(t *testing.T, setup *pgxpool.Pool) (owner, small int64) {
	ctx := context.Background()
	setup.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('big', 'x') RETURNING id`).Scan(&owner)
	setup.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('small', 'x') RETURNING id`).Scan(&small)
	// Loaded in one statement with the triggers off (one transaction updating one owner's count row
	// 200,000 times walks an ever longer chain of its versions), then counted as the migration does.
	conn, err := setup.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `
		INSERT INTO images (owner_id, name, tags, status, content_type, width, height, size, sha256, file_key, created_at, attempts)
		SELECT CASE WHEN i % 1000 = 0 THEN $2::bigint ELSE $1::bigint END, 'i' || i,
		       CASE WHEN i % 10 = 0 THEN ARRAY['cats'] ELSE ARRAY['dogs'] END,
		       CASE WHEN i % 5000 = 0 THEN 'pending' ELSE 'ready' END, 'image/png', 4, 4, 100, 'x',
		       'o/' || substr(md5(i::text), 1, 2) || '/' || md5(i::text), now() - i * interval '1 second', 1
		FROM generate_series(1, 200000) AS i`, owner, small)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `
		SET session_replication_role = origin;
		INSERT INTO image_counts (owner_id, tag, n, bytes)
		SELECT owner_id, '', count(*), sum(size + variant_bytes) FROM images GROUP BY owner_id;
		INSERT INTO image_counts (owner_id, tag, n, bytes)
		SELECT owner_id, t, count(*), 0 FROM images, unnest(tags) AS t GROUP BY owner_id, t`)
	if err != nil {
		t.Fatal(err)
	}
	setup.Exec(ctx, `INSERT INTO blob_intents (key, created_at) SELECT 'o/ab/' || md5(i::text) || '.thumb_100.00000000.png', now() - interval '1 hour' FROM generate_series(1, 100) i`)
	if _, err := setup.Exec(ctx, `ANALYZE`); err != nil {
		t.Fatal(err)
	}
	return owner, small
}

// assertIndexed EXPLAINs every statement of stmts that reads or writes images, and fails for each
// planned with a sequential scan of images.
func assertIndexed(t *testing.T, setup *pgxpool.Pool, stmts []recordedSQL) {
	ctx := context.Background()
	for _, s := range stmts {
		if !strings.Contains(s.sql, "images") {
			continue
		}
		rows, err := setup.Query(ctx, "EXPLAIN "+s.sql, s.args...)
		if err != nil {
			t.Errorf("EXPLAIN %s: %v", s.sql, err)
			continue
		}
		lines, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		plan := strings.Join(lines, "\n")
		if strings.Contains(plan, "Seq Scan on images") {
			t.Errorf("a sequential scan of images:\n%s\n%s", strings.Join(strings.Fields(s.sql), " "), plan)
		}
	}
}
