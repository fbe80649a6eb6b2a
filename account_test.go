package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// tokenOf signs name in and returns the bearer header.
func (s *testServer) tokenOf(name, password string) string {
	s.t.Helper()
	r := s.do("POST", "/api/v1/auth/token", credentials{name, password})
	if r.status != 200 {
		s.t.Fatalf("sign-in as %s: %d %s", name, r.status, r.body)
	}
	var tok tokenResponse
	r.json(s.t, &tok)
	return "Bearer " + tok.AccessToken
}

// TestMe: who I am and what I store, originals and variants, and the quota when there is one.
func TestMe(t *testing.T) {
	s := newTestServer(t, map[string]string{"USER_QUOTA_BYTES": "10MiB"})
	name, auth := s.signupAndLogin()
	a := s.mustUpload(auth, "a", "", "a.png", tinyPNG(t, 40, 30))
	s.mustUpload(auth, "b", "", "b.png", tinyPNG(t, 20, 10))
	var me accountView
	r := s.do("GET", "/api/v1/auth/me", nil, "Authorization", auth)
	r.json(t, &me)
	if r.status != 200 || me.Username != name || me.Images != 2 || me.Quota == nil || *me.Quota != 10<<20 {
		t.Fatalf("me: %d %+v", r.status, me)
	}
	if me.BytesStored <= a.Size || me.BytesStored >= *me.Quota {
		t.Errorf("bytes stored %d: want the originals and their variants' reservation", me.BytesStored)
	}
	s.do("GET", "/api/v1/auth/me", nil).problem(t, http.StatusUnauthorized)
	unlimited := newTestServer(t, nil)
	_, auth2 := unlimited.signupAndLogin()
	var none map[string]any
	unlimited.do("GET", "/api/v1/auth/me", nil, "Authorization", auth2).json(t, &none)
	if q, ok := none["quota"]; !ok || q != nil || none["images"] != float64(0) {
		t.Errorf("me without a quota: %v", none)
	}
}

// TestChangePassword: the current password is required (and checked like a sign-in), the new one
// obeys the rules, every token issued before stops working on this replica at once and on another
// within accountCheckTTL, and the answer is a fresh token that works.
func TestChangePassword(t *testing.T) {
	db := freshDatabase(t)
	s := newTestServer(t, map[string]string{"DATABASE_URL": db})
	other := newTestServer(t, map[string]string{"DATABASE_URL": db})
	name, old := s.signupAndLogin()
	if r := other.do("GET", "/api/v1/images/", nil, "Authorization", old); r.status != 200 {
		t.Fatalf("the other replica before: %d", r.status)
	}
	s.do("POST", "/api/v1/auth/password", passwordChange{"wrong password", "battery staple"}, "Authorization", old).problem(t, http.StatusBadRequest)
	s.do("POST", "/api/v1/auth/password", passwordChange{"correct horse", "short"}, "Authorization", old).problem(t, http.StatusUnprocessableEntity)
	r := s.do("POST", "/api/v1/auth/password", passwordChange{"correct horse", "battery staple"}, "Authorization", old)
	if r.status != 200 {
		t.Fatalf("change: %d %s", r.status, r.body)
	}
	var tok tokenResponse
	r.json(t, &tok)
	fresh := "Bearer " + tok.AccessToken
	p := s.do("GET", "/api/v1/images/", nil, "Authorization", old).problem(t, http.StatusUnauthorized)
	if !strings.Contains(p.Detail, "revoked") {
		t.Errorf("the old token: %q", p.Detail)
	}
	other.accounts.now = func() time.Time { return time.Now().Add(accountCheckTTL) }
	other.do("GET", "/api/v1/images/", nil, "Authorization", old).problem(t, http.StatusUnauthorized)
	for _, srv := range []*testServer{s, other} {
		if r := srv.do("GET", "/api/v1/images/", nil, "Authorization", fresh); r.status != 200 {
			t.Errorf("the fresh token: %d %s", r.status, r.body)
		}
	}
	s.do("POST", "/api/v1/auth/token", credentials{name, "correct horse"}).problem(t, http.StatusBadRequest)
	s.tokenOf(name, "battery staple")
}

// TestLogoutAll: signing out everywhere ends every token of the account and every API key, this
// one's too; signing in again works; another account is untouched.
func TestLogoutAll(t *testing.T) {
	s := newTestServer(t, nil)
	name, a := s.signupAndLogin()
	b := s.tokenOf(name, "correct horse")
	_, stranger := s.signupAndLogin()
	key := s.createKey(a, "script")
	if r := s.do("POST", "/api/v1/auth/logout-all", nil, "Authorization", b); r.status != http.StatusNoContent {
		t.Fatalf("logout-all: %d %s", r.status, r.body)
	}
	for _, cred := range []string{a, b, "Bearer " + key} {
		s.do("GET", "/api/v1/images/", nil, "Authorization", cred).problem(t, http.StatusUnauthorized)
	}
	if r := s.do("GET", "/api/v1/images/", nil, "Authorization", stranger); r.status != 200 {
		t.Errorf("another account: %d", r.status)
	}
	again := s.tokenOf(name, "correct horse")
	var keys []apiKey
	s.do("GET", "/api/v1/auth/keys", nil, "Authorization", again).json(t, &keys)
	if len(keys) != 0 {
		t.Errorf("keys after signing out everywhere: %v", keys)
	}
}

// createKey makes an API key named name with auth and returns its secret.
func (s *testServer) createKey(auth, name string) string {
	s.t.Helper()
	r := s.do("POST", "/api/v1/auth/keys", map[string]any{"name": name}, "Authorization", auth)
	if r.status != http.StatusCreated {
		s.t.Fatalf("create key: %d %s", r.status, r.body)
	}
	var k apiKeyCreated
	r.json(s.t, &k)
	return k.Key
}

// TestAPIKeys: a key is made with its secret shown once, listed without it, works wherever a token
// does, is another user's to see or delete never, is revoked at once by its deletion, expires, is
// capped at maxAPIKeysPerUser, and wrong keys count as failed sign-ins (429).
func TestAPIKeys(t *testing.T) {
	s := newTestServer(t, map[string]string{"AUTH_RATE_PER_ADDR": "10"})
	_, auth := s.signupAndLogin()
	_, stranger := s.signupAndLogin()
	r := s.do("POST", "/api/v1/auth/keys", map[string]any{"name": "  backup  "}, "Authorization", auth)
	var made apiKeyCreated
	r.json(t, &made)
	if r.status != http.StatusCreated || made.Name != "backup" || !strings.HasPrefix(made.Key, apiKeyPrefix) ||
		made.Prefix != made.Key[:apiKeyShownChars] || r.header.Get("Location") != fmt.Sprint("/api/v1/auth/keys/", made.ID) {
		t.Fatalf("create: %d %+v", r.status, made)
	}
	key := "Bearer " + made.Key
	v := s.mustUpload(key, "by key", "", "a.png", tinyPNG(t, 4, 4))
	if r := s.do("GET", fmt.Sprint("/api/v1/images/", v.ID), nil, "Authorization", auth); r.status != 200 {
		t.Fatalf("the key's upload is the owner's: %d", r.status)
	}
	list := s.do("GET", "/api/v1/auth/keys", nil, "Authorization", auth)
	if list.status != 200 || strings.Contains(string(list.body), made.Key) || !strings.Contains(string(list.body), `"last_used_at":"`) {
		t.Fatalf("list: %d %s", list.status, list.body)
	}
	var theirs []apiKey
	s.do("GET", "/api/v1/auth/keys", nil, "Authorization", stranger).json(t, &theirs)
	if len(theirs) != 0 {
		t.Errorf("a stranger lists %v", theirs)
	}
	s.do("DELETE", fmt.Sprint("/api/v1/auth/keys/", made.ID), nil, "Authorization", stranger).problem(t, http.StatusNotFound)
	for _, bad := range []map[string]any{{"name": ""}, {"name": strings.Repeat("k", 65)}, {"name": "x", "expires_at": time.Now().Add(-time.Hour)}} {
		s.do("POST", "/api/v1/auth/keys", bad, "Authorization", auth).problem(t, http.StatusUnprocessableEntity)
	}
	// Expiry.
	soon := s.do("POST", "/api/v1/auth/keys", map[string]any{"name": "brief", "expires_at": time.Now().Add(time.Hour)}, "Authorization", auth)
	var brief apiKeyCreated
	soon.json(t, &brief)
	s.apiKeys.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	s.do("GET", "/api/v1/images/", nil, "Authorization", "Bearer "+brief.Key).problem(t, http.StatusUnauthorized)
	s.apiKeys.now = time.Now
	// Deletion revokes at once.
	if r := s.do("DELETE", fmt.Sprint("/api/v1/auth/keys/", made.ID), nil, "Authorization", auth); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d", r.status)
	}
	s.do("GET", "/api/v1/images/", nil, "Authorization", key).problem(t, http.StatusUnauthorized)
	s.do("DELETE", fmt.Sprint("/api/v1/auth/keys/", made.ID), nil, "Authorization", auth).problem(t, http.StatusNotFound)
	// The cap (one key, brief, is left).
	for i := range maxAPIKeysPerUser - 1 {
		s.createKey(auth, fmt.Sprint("k", i))
	}
	s.do("POST", "/api/v1/auth/keys", map[string]any{"name": "one too many"}, "Authorization", auth).problem(t, http.StatusConflict)
	// Wrong keys: 401, then 429 past the address's failures (two so far: the expired and the deleted key).
	for range 8 {
		s.do("GET", "/api/v1/images/", nil, "Authorization", "Bearer "+apiKeyPrefix+strings.Repeat("A", 43)).problem(t, http.StatusUnauthorized)
	}
	s.do("GET", "/api/v1/images/", nil, "Authorization", "Bearer "+apiKeyPrefix+strings.Repeat("B", 43)).problem(t, http.StatusTooManyRequests)
}

// TestDeleteAccount: the password is required; at once every credential of the account is 401 and
// its username free; then its images, files and keys go; deleting again is 401.
func TestDeleteAccount(t *testing.T) {
	forEachBackend(t, func(t *testing.T, env map[string]string) {
		s := newTestServer(t, env)
		name, auth := s.signupAndLogin()
		key := "Bearer " + s.createKey(auth, "k")
		for i := range 5 {
			s.mustUpload(auth, fmt.Sprint("i", i), "", "a.png", tinyPNG(t, 40, 30))
		}
		_, stranger := s.signupAndLogin()
		theirs := s.mustUpload(stranger, "theirs", "", "a.png", tinyPNG(t, 8, 8))
		s.do("DELETE", "/api/v1/auth/me", accountDeletion{"wrong password"}, "Authorization", auth).problem(t, http.StatusBadRequest)
		if r := s.do("DELETE", "/api/v1/auth/me", accountDeletion{"correct horse"}, "Authorization", auth); r.status != http.StatusNoContent {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
		for _, cred := range []string{auth, key} {
			s.do("GET", "/api/v1/images/", nil, "Authorization", cred).problem(t, http.StatusUnauthorized)
		}
		s.do("DELETE", "/api/v1/auth/me", accountDeletion{"correct horse"}, "Authorization", auth).problem(t, http.StatusUnauthorized)
		s.do("POST", "/api/v1/auth/token", credentials{name, "correct horse"}).problem(t, http.StatusBadRequest)
		if r := s.do("POST", "/api/v1/auth/signup", credentials{name, "another password"}); r.status != 200 {
			t.Fatalf("the username is not free again: %d %s", r.status, r.body)
		}
		s.waitAccountsGone(t)
		if keys := s.storedKeys(); len(keys) != 1 || keys[0] != theirsKey(t, s, theirs.ID) {
			t.Errorf("files left: %v (only the stranger's original should be)", keys)
		}
	})
}

// theirsKey is image id's original key.
func theirsKey(t *testing.T, s *testServer, id int64) string {
	var key string
	if err := s.pool.QueryRow(context.Background(), "SELECT file_key FROM images WHERE id = $1", id).Scan(&key); err != nil {
		t.Fatal(err)
	}
	return key
}

// waitAccountsGone waits until no deleted account is left in s's database.
func (s *testServer) waitAccountsGone(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var n int
		s.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL").Scan(&n)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d deleted accounts still there after 30 s", n)
		}
	}
}

// TestAccountDeletionSurvivesACrash: the process is killed while it removes a deleted account's
// images; another process, started after, finishes the removal: no row, no file is left.
func TestAccountDeletionSurvivesACrash(t *testing.T) {
	t.Parallel() // mostly waiting: it overlaps the others
	dir := t.TempDir()
	env := map[string]string{"UPLOAD_DIR": dir, "SWEEP_INTERVAL": "100ms", "UPLOADS_PER_USER": "64", "UPLOADS_PER_ADDR": "64"}
	first := startBinary(t, env)
	env["DATABASE_URL"] = first.dbURL
	c := newBinaryClient(t, first)
	for i := range 300 {
		if r := c.upload(fmt.Sprintf("i%d.png", i), tinyPNG(t, 16, 16)); r.status != http.StatusCreated {
			t.Fatalf("upload %d: %d %s", i, r.status, r.body)
		}
	}
	if r := doRequest(t, first.base, "DELETE", "/api/v1/auth/me", accountDeletion{"correct horse"}, "Authorization", c.auth); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	// Killed once the removal is under way (the first batch gone), or at the latest after 5 s.
	for deadline := time.Now().Add(5 * time.Second); countRows(t, first.dbURL, "SELECT count(*) FROM images") == 300 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	first.stop(syscall.SIGKILL)
	left := countRows(t, first.dbURL, "SELECT count(*) FROM images")
	t.Logf("killed with %d of 300 images left to remove", left)
	second := startBinary(t, env)
	for deadline := time.Now().Add(time.Minute); countRows(t, second.dbURL, "SELECT count(*) FROM users") > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the account is still there a minute after the restart")
		}
	}
	if n := countRows(t, second.dbURL, "SELECT count(*) FROM images"); n != 0 {
		t.Errorf("%d image rows left", n)
	}
	if files := filesUnder(t, filepath.Join(dir, originalDir)); len(files) != 0 {
		t.Errorf("%d files left, e.g. %s", len(files), files[0])
	}
}

// countRows runs query, which answers one integer (a count), on the database at url.
func countRows(t *testing.T, url, query string, args ...any) int {
	t.Helper()
	db, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var n int
	if err := db.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
