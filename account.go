// Accounts people manage: who am I and what I store (me), changing the password, signing out
// everywhere, API keys for scripts, and deleting the account with everything in it — at once for
// its credentials, then durably by the account sweep.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// accountView is GET /auth/me's answer.
type accountView struct {
	ID          int64     `json:"id"`
	Username    string    `json:"username"`
	CreatedAt   time.Time `json:"created_at"`
	Images      int64     `json:"images"`
	BytesStored int64     `json:"bytes_stored"` // originals and variants (reserved for images in processing)
	Quota       *int64    `json:"quota"`        // USER_QUOTA_BYTES; null when unlimited
}

// me answers who the caller is and what they store.
func (a *app) me(w http.ResponseWriter, r *http.Request) {
	uid := userID(r.Context())
	u, err := a.store.userByID(r.Context(), uid)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	images, bytes, err := a.store.accountUsage(r.Context(), uid)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	v := accountView{ID: u.ID, Username: u.Username, CreatedAt: u.CreatedAt, Images: images, BytesStored: bytes}
	if a.cfg.UserQuota > 0 {
		v.Quota = &a.cfg.UserQuota
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, v)
}

// errWrongPassword answers a wrong current password (changing the password, deleting the account).
var errWrongPassword = newError(http.StatusBadRequest, "the current password is incorrect")

// confirmPassword checks password against the caller's account, with the limits and the cost of a
// sign-in (so it is no faster way to guess). It returns the account.
func (a *app) confirmPassword(w http.ResponseWriter, r *http.Request, password string) (user, error) {
	u, err := a.store.userByID(r.Context(), userID(r.Context()))
	if err != nil {
		return user{}, err
	}
	if password == "" || len(password) > maxPasswordLen {
		return user{}, errWrongPassword
	}
	ok, err := a.throttledPasswordCheck(w, r, u.Username, "password checks", func() (bool, error) {
		ok, _, err := a.hasher.verify(r.Context(), password, u.PasswordHash)
		return ok, err
	})
	if err != nil {
		return user{}, err
	}
	if !ok {
		return user{}, errWrongPassword
	}
	return u, nil
}

// passwordChange is the body of POST /auth/password.
type passwordChange struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

// changePassword sets a new password after checking the current one, revokes every token and API
// key issued before (on every replica within accountCheckTTL), and answers a fresh token.
func (a *app) changePassword(w http.ResponseWriter, r *http.Request) {
	var body passwordChange
	if err := decodeJSON(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.confirmPassword(w, r, body.CurrentPassword)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := (credentials{Username: u.Username, Password: body.NewPassword}).validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	hash, err := a.hasher.hash(r.Context(), body.NewPassword)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	gen, err := a.revoke(r.Context(), u.ID, hash)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("password changed; earlier tokens and keys revoked", slog.Int64("user_id", u.ID))
	a.answerToken(w, r, u.ID, gen)
}

// logoutAll revokes every token and API key of the caller's account, the caller's own included.
func (a *app) logoutAll(w http.ResponseWriter, r *http.Request) {
	uid := userID(r.Context())
	if _, err := a.revoke(r.Context(), uid, ""); err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("signed out everywhere", slog.Int64("user_id", uid))
	w.WriteHeader(http.StatusNoContent)
}

// revoke bumps account id's token generation (setting its password hash too, when not empty) and
// deletes its keys; this replica knows at once, the others within accountCheckTTL.
func (a *app) revoke(ctx context.Context, id int64, hash string) (int64, error) {
	gen, err := a.store.revokeTokens(ctx, id, hash)
	if err != nil {
		return 0, err
	}
	a.accounts.remember(id, seenAccount{gen: gen, when: a.accounts.now()})
	a.apiKeys.forgetOwner(id)
	return gen, nil
}

// answerToken answers 200 with a fresh token for account id at generation gen.
func (a *app) answerToken(w http.ResponseWriter, r *http.Request, id, gen int64) {
	tok, _, err := a.tokens.issue(id, gen)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, tokenResponse{AccessToken: tok, TokenType: "bearer", ExpiresIn: int64(a.tokens.ttl / time.Second)})
}

// accountDeletion is the body of DELETE /auth/me.
type accountDeletion struct {
	Password string `json:"password"`
}

// deleteAccount deletes the caller's account after checking its password: at once, no token or key
// of it works and its username is free; the account sweep then removes its images, files, keys and
// row, resuming after a crash. 204.
func (a *app) deleteAccount(w http.ResponseWriter, r *http.Request) {
	var body accountDeletion
	if err := decodeJSON(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.confirmPassword(w, r, body.Password)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.store.markDeleted(r.Context(), u.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	a.accounts.forget(u.ID)
	a.apiKeys.forgetOwner(u.ID)
	a.cache.invalidate(r.Context(), u.ID)
	a.log.Info("account deleted; its images are being removed", slog.Int64("user_id", u.ID))
	// Removed now, in the background; should this process die first, the account sweep (whichever
	// replica holds it) finishes the work. Both at once do no harm: every step is idempotent.
	a.settling.Go(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { // a shutdown stops it; the sweep goes on from there
			select {
			case <-a.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := a.purgeAccount(ctx, u.ID); err != nil {
			a.log.Warn("account removal interrupted; the account sweep will finish it", slog.Int64("user_id", u.ID), slog.Any("error", err))
		}
	})
	w.WriteHeader(http.StatusNoContent)
}

// accountSweepBatch is how many images the account sweep removes at a time.
const accountSweepBatch = 200

// sweepAccounts removes, once, what deleted accounts still hold: for each, its images' files then
// their rows, a batch at a time, then the account's row. Every step is idempotent, so a sweep that
// dies half-way is finished by the next (on any replica). A store that fails leaves the rest for the
// next sweep.
func (a *app) sweepAccounts(ctx context.Context) {
	ids, err := a.store.deletedAccounts(ctx, 100)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("account sweep failed", slog.Any("error", err))
		}
		return
	}
	for _, id := range ids {
		if err := a.purgeAccount(ctx, id); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("account sweep: cannot finish an account's removal; the next sweep will", slog.Int64("user_id", id), slog.Any("error", err))
			}
			return
		}
	}
}

// purgeAccount removes deleted account id's images (files first, then rows) and then its row.
func (a *app) purgeAccount(ctx context.Context, id int64) error {
	removed := 0
	for ctx.Err() == nil {
		batch, err := a.store.imageKeysOf(ctx, id, accountSweepBatch)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			done, err := a.store.purgeAccount(ctx, id)
			if err != nil || !done {
				return err // an upload landed meanwhile: the next round takes it
			}
			a.cache.invalidateOnce(ctx, id)
			a.log.Info("account removed", slog.Int64("user_id", id), slog.Int("images", removed))
			return nil
		}
		var keys, originals []string
		var rows []int64
		for row, k := range batch {
			keys = append(keys, k...)
			originals = append(originals, k[0])
			rows = append(rows, row)
		}
		// And the files a job placed but never recorded (its worker died between the two).
		pending, err := a.store.intentKeysUnder(ctx, originals)
		if err != nil {
			return err
		}
		if err := a.blobs.remove(ctx, append(keys, pending...)...); err != nil {
			return err
		}
		if err := a.store.deleteImagesByID(ctx, id, rows); err != nil {
			return err
		}
		if err := a.store.clearIntents(ctx, pending); err != nil {
			return err
		}
		removed += len(rows)
	}
	return ctx.Err()
}

// ---- API keys ----

// API key bounds.
const (
	apiKeyPrefix      = "iak_" // every secret starts so: it tells a key from a JWT at a glance
	apiKeyShownChars  = 12     // the prefix kept in clear for the list: "iak_" and 8 characters
	maxAPIKeysPerUser = 20
	maxAPIKeyNameLen  = 64
)

// Key errors. Their text is what a client sees in the 401's detail.
var (
	errKeyInvalid = errors.New("invalid API key")
	errKeyExpired = errors.New("invalid API key: expired")
)

// apiKeyDomain separates the key-hashing key's derivation from every other use of the secret.
const apiKeyDomain = "imageapi API key hash v1"

// apiKeyRequest is the body of POST /auth/keys.
type apiKeyRequest struct {
	Name      string     `json:"name"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// apiKeyCreated is a key as made: with its secret, shown this once.
type apiKeyCreated struct {
	apiKey
	Key string `json:"key"`
}

// createKey makes an API key for the caller: 201 with its secret, which is not kept (only a keyed
// hash of it is), so it is never shown again.
func (a *app) createKey(w http.ResponseWriter, r *http.Request) {
	var body apiKeyRequest
	if err := decodeJSON(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	name, err := cleanText("name", body.Name, maxAPIKeyNameLen)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if body.ExpiresAt != nil && !body.ExpiresAt.After(time.Now()) {
		a.fail(w, r, newError(http.StatusUnprocessableEntity, "expires_at must be in the future"))
		return
	}
	var raw [32]byte
	rand.Read(raw[:])
	secret := apiKeyPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	k, err := a.store.createAPIKey(r.Context(), userID(r.Context()), name, secret[:apiKeyShownChars], a.apiKeys.hash(secret), body.ExpiresAt, maxAPIKeysPerUser)
	if errors.Is(err, errTooManyKeys) {
		a.fail(w, r, newError(http.StatusConflict, "you have %d API keys, the most one account may have: delete one first", maxAPIKeysPerUser))
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Location", "/api/v1/auth/keys/"+strconv.FormatInt(k.ID, 10))
	writeJSON(w, http.StatusCreated, apiKeyCreated{apiKey: k, Key: secret})
}

// listKeys answers the caller's keys (never their secrets).
func (a *app) listKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := a.store.apiKeysOf(r.Context(), userID(r.Context()))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, keys)
}

// deleteKey revokes one of the caller's keys: at once here, within accountCheckTTL elsewhere. 404
// for a key that is not the caller's.
func (a *app) deleteKey(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != r.PathValue("id") {
		a.fail(w, r, newError(http.StatusNotFound, "no such API key"))
		return
	}
	hash, err := a.store.deleteAPIKey(r.Context(), userID(r.Context()), id)
	if errors.Is(err, errNotFound) {
		a.fail(w, r, newError(http.StatusNotFound, "no such API key"))
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.apiKeys.forget(hash)
	w.WriteHeader(http.StatusNoContent)
}

// authenticateKey returns the owner of API key secret, or why not: a wrong key counts as a failed
// sign-in from the client's address (so keys cannot be guessed faster than passwords).
func (a *app) authenticateKey(w http.ResponseWriter, r *http.Request, secret string) (int64, error) {
	client := clientKey(r)
	owner, err := a.apiKeys.owner(r.Context(), secret)
	if errors.Is(err, errKeyInvalid) || errors.Is(err, errKeyExpired) {
		if ok, wait := a.authByAddr.allow(client); !ok {
			return 0, tooMany(w, wait, "failed sign-ins from your address")
		}
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	// The owner's account must still be there (any generation: keys die with revocations).
	return owner, a.accounts.check(r.Context(), owner, -1)
}

// apiKeyCache finds keys by their secret's keyed hash, remembering each for accountCheckTTL so
// that a script's requests do not each ask the database; a deleted key stops working at once on
// this replica and within accountCheckTTL on the others.
type apiKeyCache struct {
	store   *store
	hashKey []byte // HMAC key for secrets, derived from the service's secret
	ttl     time.Duration
	now     func() time.Time

	mu   sync.Mutex
	seen map[string]seenKey // by hash
}

// seenKey is a key's owner and expiry as of when.
type seenKey struct {
	owner   int64
	expires *time.Time
	when    time.Time
}

func newAPIKeyCache(st *store, secret []byte) *apiKeyCache {
	return &apiKeyCache{store: st, hashKey: hmacSHA256(secret, apiKeyDomain), ttl: accountCheckTTL, now: time.Now, seen: map[string]seenKey{}}
}

// hash is the stored form of secret.
func (c *apiKeyCache) hash(secret string) []byte { return hmacSHA256(c.hashKey, secret) }

// owner returns the account secret belongs to, or errKeyInvalid (no such key; its shape is checked
// before anything is looked up) or errKeyExpired.
func (c *apiKeyCache) owner(ctx context.Context, secret string) (int64, error) {
	if len(secret) != len(apiKeyPrefix)+43 {
		return 0, errKeyInvalid
	}
	h := c.hash(secret)
	now := c.now()
	c.mu.Lock()
	k, ok := c.seen[string(h)]
	c.mu.Unlock()
	if !ok || now.Sub(k.when) >= c.ttl {
		owner, expires, err := c.store.apiKeyByHash(ctx, h)
		if errors.Is(err, errNotFound) {
			c.forget(h)
			return 0, errKeyInvalid
		}
		if err != nil {
			return 0, err
		}
		k = seenKey{owner: owner, expires: expires, when: now}
		c.mu.Lock()
		if len(c.seen) >= maxLiveAccounts {
			clear(c.seen)
		}
		c.seen[string(h)] = k
		c.mu.Unlock()
	}
	if k.expires != nil && !now.Before(*k.expires) {
		return 0, errKeyExpired
	}
	return k.owner, nil
}

// forget drops the key whose hash is h.
func (c *apiKeyCache) forget(h []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, string(h))
}

// forgetOwner drops every key of owner (revoked all at once).
func (c *apiKeyCache) forgetOwner(owner int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, k := range c.seen {
		if k.owner == owner {
			delete(c.seen, h)
		}
	}
}
