// Accounts and authentication: signup and token handlers, the requireAuth middleware, scrypt password
// hashing (RFC 7914) and HS256 JSON Web Tokens (RFC 7515, RFC 7519).
package main

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Account bounds.
const (
	minUsernameLen  = 3
	maxUsernameLen  = 32
	minPasswordLen  = 8    // bytes
	maxPasswordLen  = 1024 // bytes: bounds the work one request can ask of PBKDF2
	minSecretBytes  = 32   // SECRET_KEY
	maxTokenLen     = 4096 // a longer bearer token is refused before any parsing
	tokenIssuerName = "imageapi"
	// hashWaitLimit is how long a request waits for a free hashing slot before answering 503.
	hashWaitLimit = 15 * time.Second
)

// credentials is the body of signup and token requests.
type credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// validUsername reports whether name has the shape of a username: minUsernameLen to maxUsernameLen
// of ASCII letters, digits, '_', '.' and '-'.
func validUsername(name string) bool {
	if n := len(name); n < minUsernameLen || n > maxUsernameLen {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

// validate checks the username and password against the account rules.
func (c credentials) validate() error {
	if n := len(c.Username); n < minUsernameLen || n > maxUsernameLen {
		return newError(http.StatusUnprocessableEntity, "username must be %d to %d characters", minUsernameLen, maxUsernameLen)
	}
	if !validUsername(c.Username) {
		return newError(http.StatusUnprocessableEntity, "username may contain only letters, digits, '_', '.' and '-'")
	}
	if n := len(c.Password); n < minPasswordLen || n > maxPasswordLen {
		return newError(http.StatusUnprocessableEntity, "password must be %d to %d bytes", minPasswordLen, maxPasswordLen)
	}
	if !utf8.ValidString(c.Password) {
		return newError(http.StatusUnprocessableEntity, "password must be valid UTF-8")
	}
	return nil
}

// signup creates an account: 200 {id, username, created_at}; 409 when the name is taken in any case;
// 403 with SIGNUP=closed; 429 past SIGNUP_RATE_PER_ADDR.
func (a *app) signup(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.SignupOpen {
		a.fail(w, r, newError(http.StatusForbidden, "sign-up is closed on this server: ask its operator for an account"))
		return
	}
	if ok, wait := a.signupByAddr.allow(clientKey(r)); !ok {
		a.fail(w, r, tooMany(w, wait, "sign-ups from your address"))
		return
	}
	var c credentials
	if err := decodeJSON(w, r, &c); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := c.validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	hash, err := a.hasher.hash(r.Context(), c.Password)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.store.createUser(r.Context(), c.Username, hash)
	if errors.Is(err, errConflict) {
		a.fail(w, r, newError(http.StatusConflict, "username %q is already taken", c.Username))
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("user signed up", slog.Int64("user_id", u.ID))
	writeJSON(w, http.StatusOK, u)
}

// tokenResponse is the OAuth2 access token response (RFC 6749 §5.1).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

// errBadCredentials is the one answer to a wrong password and to an unknown user alike.
var errBadCredentials = newError(http.StatusBadRequest, "incorrect username or password")

// token exchanges a username and password for a JWT. It takes JSON or an OAuth2 password-grant form.
// A wrong password and an unknown user get the same answer after the same work: a full scrypt run.
// Failures are throttled per client address and per account and network (signinThrottle; 429 with
// Retry-After), before any hashing; a name that is no username is refused before either.
func (a *app) token(w http.ResponseWriter, r *http.Request) {
	c, err := readCredentials(w, r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if c.Username == "" || c.Password == "" {
		a.fail(w, r, newError(http.StatusUnprocessableEntity, "username and password are required"))
		return
	}
	if !validUsername(c.Username) || len(c.Password) > maxPasswordLen {
		// No account can have these: refuse before any limiter or hash (the rules are public, so
		// this tells nothing about who has an account).
		a.fail(w, r, errBadCredentials)
		return
	}
	// Throttled per account and network whether or not the account exists (the answer must not tell).
	var u user
	ok, err := a.throttledPasswordCheck(w, r, c.Username, "sign-ins", func() (ok bool, err error) {
		u, ok, err = a.checkPassword(r.Context(), c)
		return ok, err
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !ok {
		a.fail(w, r, errBadCredentials)
		return
	}
	a.answerToken(w, r, u.ID, u.Generation)
}

// throttledPasswordCheck runs check, a password check for username, under the sign-in limits: the
// client address's failures (AUTH_RATE_PER_ADDR) and the account and network's (signinThrottle),
// both before any hashing. A success clears both; a refusal is the 429 to answer. what names the
// attempts in the refusal ("sign-ins", "password checks").
func (a *app) throttledPasswordCheck(w http.ResponseWriter, r *http.Request, username, what string, check func() (bool, error)) (bool, error) {
	client := clientKey(r)
	if ok, wait := a.authByAddr.allow(client); !ok {
		return false, tooMany(w, wait, "failed "+what+" from your address")
	}
	if wait := a.signins.begin(username, client); wait > 0 {
		a.authByAddr.refund(client) // no password was tried
		return false, tooMany(w, wait, "failed "+what+" for this username from your network")
	}
	ok, err := check()
	if err != nil || !ok {
		return false, err
	}
	a.signins.succeeded(username, client)
	a.authByAddr.refund(client)
	return true, nil
}

// checkPassword reports whether c names an account and its password. A wrong password and an
// unknown user cost the same work (a full scrypt run), so timing does not tell which usernames
// exist. A hash made with older parameters is upgraded on the way.
func (a *app) checkPassword(ctx context.Context, c credentials) (user, bool, error) {
	u, err := a.store.userByName(ctx, c.Username)
	switch {
	case errors.Is(err, errNotFound):
		// Spend what a real check spends, so timing does not tell which usernames exist.
		return user{}, false, a.hasher.burn(ctx, c.Password)
	case err != nil:
		return user{}, false, err
	}
	ok, stale, err := a.hasher.verify(ctx, c.Password, u.PasswordHash)
	if err != nil || !ok {
		return user{}, false, err
	}
	if stale {
		// The hash was made with other parameters: upgrade it now that we know the password.
		if h, err := a.hasher.hash(ctx, c.Password); err == nil {
			if err := a.store.setPasswordHash(ctx, u.ID, h); err != nil {
				a.log.Warn("password hash upgrade failed", slog.Int64("user_id", u.ID), slog.Any("error", err))
			}
		}
	}
	return u, true, nil
}

// readCredentials reads a token request: JSON, or an application/x-www-form-urlencoded OAuth2
// password grant (what Swagger UI's Authorize dialog sends).
func readCredentials(w http.ResponseWriter, r *http.Request) (credentials, error) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		var c credentials
		err := decodeJSON(w, r, &c)
		return c, err
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxJSONBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return credentials{}, tooLarge("form body", mbe.Limit)
		}
		return credentials{}, newError(http.StatusUnprocessableEntity, "malformed form body")
	}
	if gt := r.PostForm.Get("grant_type"); gt != "" && gt != "password" {
		return credentials{}, newError(http.StatusBadRequest, "unsupported grant_type %q: only password is supported", gt)
	}
	return credentials{Username: r.PostForm.Get("username"), Password: r.PostForm.Get("password")}, nil
}

// userIDKey is the context key under which requireAuth stores the caller's user id.
type userIDKey struct{}

// userID returns the authenticated caller's id set by requireAuth.
func userID(ctx context.Context) int64 {
	id, _ := ctx.Value(userIDKey{}).(int64)
	return id
}

// requireAuth lets a request through only with a valid credential — a bearer token of a live
// account at its current generation, or an API key (apiKeyPrefix) — and puts the caller's id in its
// context. Anything else is 401 with WWW-Authenticate: Bearer; wrong API keys count as failed
// sign-ins from the client's address (429 past AUTH_RATE_PER_ADDR).
func (a *app) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		tok = strings.TrimSpace(tok)
		if !strings.EqualFold(scheme, "Bearer") || tok == "" {
			writeProblem(w, r, http.StatusUnauthorized, "not authenticated: send Authorization: Bearer <token>")
			return
		}
		var id int64
		var err error
		if strings.HasPrefix(tok, apiKeyPrefix) {
			id, err = a.authenticateKey(w, r, tok)
		} else {
			var gen int64
			if id, gen, err = a.tokens.subject(tok); err == nil {
				// A valid signature is not enough: the account must still be there, at this generation.
				err = a.accounts.check(r.Context(), id, gen)
			}
		}
		var ae *apiError
		switch {
		case errors.As(err, &ae):
			a.fail(w, r, err)
		case err != nil && !isCredentialError(err):
			a.fail(w, r, err)
		case err != nil:
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeProblem(w, r, http.StatusUnauthorized, err.Error())
		default:
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userIDKey{}, id)))
		}
	})
}

// isCredentialError reports whether err says the credential is no good (a 401), rather than that
// it could not be checked.
func isCredentialError(err error) bool {
	for _, e := range []error{errTokenMalformed, errTokenAlg, errTokenSignature, errTokenExpired, errTokenClaims,
		errAccountGone, errTokenRevoked, errKeyInvalid, errKeyExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// errAccountGone answers a valid token whose account no longer exists.
var errAccountGone = errors.New("invalid token: the account no longer exists")

// errTokenRevoked answers a token issued before its account signed out everywhere or changed its
// password.
var errTokenRevoked = errors.New("invalid token: revoked (the account signed out everywhere or changed its password); sign in again")

// liveAccounts remembers, for a short while, each account's token generation as the database last
// said it, so that requireAuth asks the database about an account at most once per accountCheckTTL
// per process: a revocation (or a deletion) reaches every replica within that time, and at once the
// replica that made it.
type liveAccounts struct {
	store *store
	ttl   time.Duration
	now   func() time.Time

	mu   sync.Mutex
	seen map[int64]seenAccount
}

// seenAccount is an account's generation as of when.
type seenAccount struct {
	gen  int64
	when time.Time
}

// accountCheckTTL is how long an account's generation is taken as known without asking again.
const accountCheckTTL = time.Second

// maxLiveAccounts bounds liveAccounts' map: past it, expired entries are swept (and, if all are
// fresh, the map is cleared: the next requests ask the database again).
const maxLiveAccounts = 100_000

func newLiveAccounts(st *store) *liveAccounts {
	return &liveAccounts{store: st, ttl: accountCheckTTL, now: time.Now, seen: map[int64]seenAccount{}}
}

// check returns nil when account id exists and gen is its token generation (gen < 0: any), else
// errAccountGone or errTokenRevoked, or the store's error.
func (l *liveAccounts) check(ctx context.Context, id, gen int64) error {
	now := l.now()
	l.mu.Lock()
	s, ok := l.seen[id]
	l.mu.Unlock()
	if !ok || now.Sub(s.when) >= l.ttl {
		cur, err := l.store.tokenGeneration(ctx, id)
		if errors.Is(err, errAccountGone) {
			l.forget(id)
			return errAccountGone
		}
		if err != nil {
			return err
		}
		s = seenAccount{gen: cur, when: now}
		l.remember(id, s)
	}
	if gen >= 0 && gen != s.gen {
		return errTokenRevoked
	}
	return nil
}

// remember records account id's generation, keeping the map bounded.
func (l *liveAccounts) remember(id int64, s seenAccount) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.seen) >= maxLiveAccounts {
		for k, v := range l.seen {
			if s.when.Sub(v.when) >= l.ttl {
				delete(l.seen, k)
			}
		}
		if len(l.seen) >= maxLiveAccounts {
			clear(l.seen)
		}
	}
	l.seen[id] = s
}

// forget drops what is known of account id (it was deleted here).
func (l *liveAccounts) forget(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, id)
}

// ---- JSON Web Tokens (HS256 only) ----

// Token errors. Their text is what a client sees in the 401's detail.
var (
	errTokenMalformed = errors.New("invalid token: malformed")
	errTokenAlg       = errors.New("invalid token: only HS256 is accepted")
	errTokenSignature = errors.New("invalid token: bad signature")
	errTokenExpired   = errors.New("invalid token: expired")
	errTokenClaims    = errors.New("invalid token: bad claims")
)

// b64 is the JWS base64url encoding: no padding, and strict, so each token has one spelling.
var b64 = base64.RawURLEncoding.Strict()

// jwtHeaderHS256 is the header of every token we issue.
var jwtHeaderHS256 = b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// tokenClaims are the registered claims we issue and require.
type tokenClaims struct {
	Sub string `json:"sub"`
	Iss string `json:"iss"`
	Iat int64  `json:"iat"`
	Exp int64  `json:"exp"`
	Nbf *int64 `json:"nbf,omitempty"`
	Gen int64  `json:"gen,omitempty"` // the account's token generation when issued (0: omitted)
}

// tokenIssuer issues and checks access tokens under one key.
type tokenIssuer struct {
	key    []byte
	ttl    time.Duration
	issuer string
	now    func() time.Time
}

// issue returns a token for userID at token generation gen, and its expiry time.
func (t *tokenIssuer) issue(userID, gen int64) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(t.ttl)
	payload, err := json.Marshal(tokenClaims{Sub: strconv.FormatInt(userID, 10), Iss: t.issuer, Iat: now.Unix(), Exp: exp.Unix(), Gen: gen})
	if err != nil {
		return "", time.Time{}, err
	}
	input := jwtHeaderHS256 + "." + b64.EncodeToString(payload)
	return input + "." + b64.EncodeToString(hmacSHA256(t.key, input)), exp, nil
}

// parse checks token (structure, algorithm, signature, issuer, expiry) and returns its user id.
func (t *tokenIssuer) parse(token string) (int64, error) {
	id, _, err := t.subject(token)
	return id, err
}

// subject checks token as parse does and returns its user id and token generation.
func (t *tokenIssuer) subject(token string) (int64, int64, error) {
	payload, err := verifyHS256(token, t.key)
	if err != nil {
		return 0, 0, err
	}
	var c tokenClaims
	if err := json.Unmarshal(payload, &c); err != nil || c.Gen < 0 {
		return 0, 0, errTokenMalformed
	}
	now := t.now().Unix()
	const skew = 60 // seconds of clock difference tolerated between replicas
	if c.Exp == 0 || c.Iat == 0 || c.Iss != t.issuer || c.Iat > now+skew || (c.Nbf != nil && *c.Nbf > now+skew) {
		return 0, 0, errTokenClaims
	}
	if now >= c.Exp {
		return 0, 0, errTokenExpired
	}
	id, err := strconv.ParseInt(c.Sub, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != c.Sub {
		return 0, 0, errTokenClaims
	}
	return id, c.Gen, nil
}

// verifyHS256 checks a compact JWS: three strict base64url parts, a header whose alg is exactly HS256
// (never "none", never another algorithm) with no critical extensions, and an HMAC-SHA256 signature
// compared in constant time. It returns the decoded payload.
func verifyHS256(token string, key []byte) ([]byte, error) {
	if len(token) > maxTokenLen || strings.Count(token, ".") != 2 {
		return nil, errTokenMalformed
	}
	h, rest, _ := strings.Cut(token, ".")
	p, s, _ := strings.Cut(rest, ".")
	header, err := b64.DecodeString(h)
	if err != nil {
		return nil, errTokenMalformed
	}
	var hdr struct {
		Alg  string          `json:"alg"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(header, &hdr); err != nil {
		return nil, errTokenMalformed
	}
	if hdr.Alg != "HS256" || hdr.Crit != nil {
		return nil, errTokenAlg
	}
	sig, err := b64.DecodeString(s)
	if err != nil {
		return nil, errTokenMalformed
	}
	if !hmac.Equal(sig, hmacSHA256(key, token[:len(h)+1+len(p)])) {
		return nil, errTokenSignature
	}
	payload, err := b64.DecodeString(p)
	if err != nil {
		return nil, errTokenMalformed
	}
	return payload, nil
}

// hmacSHA256 is HMAC-SHA256 of data under key: the one MAC this service uses (HS256 JWTs, signed
// links, SigV4).
func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// ---- Password hashing: scrypt (RFC 7914) ----

// scryptParams are scrypt's cost parameters: N (CPU/memory, a power of two), r (block size) and p
// (parallelization). One hash uses 128·r·N bytes of memory.
type scryptParams struct{ N, R, P int }

// Bounds on parameters read back from stored hashes, so a corrupt row cannot ask for unbounded work.
const (
	maxScryptN = 1 << 20
	maxScryptR = 32
	maxScryptP = 16
)

func (p scryptParams) valid() bool {
	return p.N >= 2 && p.N <= maxScryptN && p.N&(p.N-1) == 0 && p.R >= 1 && p.R <= maxScryptR && p.P >= 1 && p.P <= maxScryptP
}

// Bounds on the parameters a stored hash may ask for: a row is data, and one check must not take
// gigabytes (N=2^20, r=32 would take 4 GiB) or minutes, whatever the database holds.
const (
	maxStoredHashBytes = 256 << 20 // 128·r·N: 8× the default's memory
	maxStoredHashWork  = 1 << 23   // p·r·N: 32× the default's work, about 2 s of one core
)

// storable reports whether a stored hash with these parameters may be checked.
func (p scryptParams) storable() bool {
	return 128*int64(p.R)*int64(p.N) <= maxStoredHashBytes && int64(p.P)*int64(p.R)*int64(p.N) <= maxStoredHashWork
}

// memory is the size, in 32-bit words, of the V array one hash needs.
func (p scryptParams) memory() int { return 32 * p.R * p.N }

// passwordHasher computes scrypt hashes in a fixed number of slots: however many requests arrive, at
// most `slots` hashes run at once, so hashing memory never exceeds slots × 128·r·N bytes; the rest
// wait (up to wait, then 503). V buffers are reused, most recent first, so sequential logins keep
// one buffer warm; after idleRelease with no hashing they are dropped, and the memory goes back.
type passwordHasher struct {
	params   scryptParams
	slots    chan struct{}
	wait     time.Duration // longest wait for a slot before 503
	computed atomic.Int64  // hashes computed, for tests and metrics

	mu   sync.Mutex
	free [][]uint32   // buffers not in use, the most recently used last
	idle *time.Timer  // drops free buffers once no hash has run for idleRelease
	held atomic.Int64 // bytes of buffers held, in use or free
	peak atomic.Int64 // the most held at any time, for tests
	// onChange, when set, is called after held changes (the memory governor follows it).
	onChange func()
}

// idleRelease is how long unused V buffers are kept.
const idleRelease = 30 * time.Second

// newPasswordHasher returns a hasher making new hashes with params, running at most slots at once.
func newPasswordHasher(params scryptParams, slots int) (*passwordHasher, error) {
	if !params.valid() || slots < 1 {
		return nil, fmt.Errorf("scrypt: invalid parameters N=%d r=%d p=%d, slots=%d", params.N, params.R, params.P, slots)
	}
	h := &passwordHasher{params: params, slots: make(chan struct{}, slots), wait: hashWaitLimit}
	h.idle = time.AfterFunc(idleRelease, h.releaseIdle)
	return h, nil
}

// releaseIdle drops the free buffers unless a hash is running.
func (h *passwordHasher) releaseIdle() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.slots) == 0 && len(h.free) > 0 {
		for _, v := range h.free {
			h.held.Add(-4 * int64(len(v)))
		}
		clear(h.free)
		h.free = h.free[:0]
		if h.onChange != nil {
			h.onChange()
		}
	}
}

// derive runs scrypt in a slot. It waits for a slot until ctx ends or h.wait passes.
func (h *passwordHasher) derive(ctx context.Context, password string, salt []byte, p scryptParams, keyLen int) ([]byte, error) {
	wait := time.NewTimer(h.wait)
	defer wait.Stop()
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wait.C:
		return nil, newError(http.StatusServiceUnavailable, "server busy: too many sign-ins at once, retry shortly")
	}
	h.mu.Lock()
	var v []uint32
	if n := len(h.free); n > 0 {
		v, h.free = h.free[n-1], h.free[:n-1]
	}
	h.mu.Unlock()
	if len(v) < p.memory() {
		h.held.Add(-4 * int64(len(v)))
		v = make([]uint32, max(p.memory(), h.params.memory()))
		for held := h.held.Add(4 * int64(len(v))); ; {
			if old := h.peak.Load(); held <= old || h.peak.CompareAndSwap(old, held) {
				break
			}
		}
		if h.onChange != nil {
			h.onChange()
		}
	}
	defer func() {
		h.mu.Lock()
		h.free = append(h.free, v)
		h.idle.Reset(idleRelease)
		h.mu.Unlock()
		<-h.slots
	}()
	h.computed.Add(1)
	return scryptKey([]byte(password), salt, p, keyLen, v)
}

// hash returns a new PHC-format hash of password: $scrypt$ln=…,r=…,p=…$salt$hash.
func (h *passwordHasher) hash(ctx context.Context, password string) (string, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	key, err := h.derive(ctx, password, salt, h.params, 32)
	if err != nil {
		return "", err
	}
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$scrypt$ln=%d,r=%d,p=%d$%s$%s", bits.TrailingZeros(uint(h.params.N)), h.params.R, h.params.P,
		enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// verify reports whether password matches encoded, compared in constant time, and whether encoded was
// made with other parameters than the current ones (stale: worth rehashing).
func (h *passwordHasher) verify(ctx context.Context, password, encoded string) (ok, stale bool, err error) {
	p, salt, want, err := parsePHC(encoded)
	if err != nil {
		return false, false, err
	}
	got, err := h.derive(ctx, password, salt, p, len(want))
	if err != nil {
		return false, false, err
	}
	return subtle.ConstantTimeCompare(got, want) == 1, p != h.params, nil
}

// burn does the work of one verify and discards it: the answer for an unknown user.
func (h *passwordHasher) burn(ctx context.Context, password string) error {
	var salt [16]byte
	_, err := h.derive(ctx, password, salt[:], h.params, 32)
	return err
}

// parsePHC reads $scrypt$ln=L,r=R,p=P$salt$hash, rejecting parameters outside the bounds.
func parsePHC(s string) (scryptParams, []byte, []byte, error) {
	bad := fmt.Errorf("scrypt: malformed stored hash")
	parts := strings.Split(s, "$")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "scrypt" {
		return scryptParams{}, nil, nil, bad
	}
	var ln, r, p int
	if n, err := fmt.Sscanf(parts[2], "ln=%d,r=%d,p=%d", &ln, &r, &p); err != nil || n != 3 || ln < 1 || ln > 20 {
		return scryptParams{}, nil, nil, bad
	}
	params := scryptParams{N: 1 << ln, R: r, P: p}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[3])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[4])
	if !params.valid() || !params.storable() || err1 != nil || err2 != nil || len(key) < 16 || len(key) > 64 {
		return scryptParams{}, nil, nil, bad
	}
	return params, salt, key, nil
}

// scryptKey is scrypt (RFC 7914 §6): PBKDF2-HMAC-SHA256 spreads the password over p blocks of 128·r
// bytes, ROMix mixes each through the memory-hard V array, and PBKDF2 condenses the result to keyLen
// bytes. v must hold at least 32·r·N words; it is scratch space.
func scryptKey(password, salt []byte, p scryptParams, keyLen int, v []uint32) ([]byte, error) {
	if !p.valid() {
		return nil, fmt.Errorf("scrypt: invalid parameters N=%d r=%d p=%d", p.N, p.R, p.P)
	}
	blockLen := 128 * p.R
	b, err := pbkdf2.Key(sha256.New, string(password), salt, 1, p.P*blockLen)
	if err != nil {
		return nil, err
	}
	xy := make([]uint32, 64*p.R)
	for i := range p.P {
		roMix(b[i*blockLen:(i+1)*blockLen], p.R, p.N, v, xy)
	}
	return pbkdf2.Key(sha256.New, string(password), b, 1, keyLen)
}

// roMix is scryptROMix (RFC 7914 §5): it rewrites the 128·r-byte block b in place. v (32·r·N words)
// and xy (64·r words) are scratch.
func roMix(b []byte, r, n int, v, xy []uint32) {
	words := 32 * r
	x, y := xy[:words], xy[words:2*words]
	for i := range x {
		x[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	var t [16]uint32
	// n is a power of two ≥ 2, so the loops go two steps at a time and swap x and y without copying.
	for i := 0; i < n; i += 2 {
		copy(v[i*words:], x)
		blockMix(&t, x, y, r)
		copy(v[(i+1)*words:], y)
		blockMix(&t, y, x, r)
	}
	mask := uint32(n - 1)
	for i := 0; i < n; i += 2 {
		// Integerify: the first word of the last 64-byte block, mod n (n ≤ 2^20 fits in 32 bits).
		j := int(x[words-16] & mask)
		xorWords(x, v[j*words:(j+1)*words])
		blockMix(&t, x, y, r)
		j = int(y[words-16] & mask)
		xorWords(y, v[j*words:(j+1)*words])
		blockMix(&t, y, x, r)
	}
	for i, w := range x {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
}

// xorWords sets dst ^= src.
func xorWords(dst, src []uint32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// blockMix is scryptBlockMix (RFC 7914 §4) from in to out (32·r words each): X starts as the last
// 64-byte block; each block is XORed into X and mixed by Salsa20/8; even results fill the first half of
// out and odd ones the second. t is scratch.
func blockMix(t *[16]uint32, in, out []uint32, r int) {
	copy(t[:], in[(2*r-1)*16:])
	for i := 0; i < 2*r; i += 2 {
		salsaXOR(t, in[i*16:i*16+16], out[i*8:i*8+16])
		salsaXOR(t, in[i*16+16:i*16+32], out[i*8+r*16:i*8+r*16+16])
	}
}

// salsaXOR sets t = Salsa20/8(t ^ in) and copies the result to out.
func salsaXOR(t *[16]uint32, in, out []uint32) {
	in, out = in[:16], out[:16]
	for i := range t {
		t[i] ^= in[i]
	}
	salsa208(t)
	copy(out, t[:])
}

// salsa20/8 core (RFC 7914 §3): eight rounds (four double rounds) of Salsa20, then the input added.
func salsa208(b *[16]uint32) {
	x0, x1, x2, x3, x4, x5, x6, x7 := b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
	x8, x9, x10, x11, x12, x13, x14, x15 := b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
	rotl := bits.RotateLeft32
	for range 4 {
		// Columns.
		x4 ^= rotl(x0+x12, 7)
		x8 ^= rotl(x4+x0, 9)
		x12 ^= rotl(x8+x4, 13)
		x0 ^= rotl(x12+x8, 18)
		x9 ^= rotl(x5+x1, 7)
		x13 ^= rotl(x9+x5, 9)
		x1 ^= rotl(x13+x9, 13)
		x5 ^= rotl(x1+x13, 18)
		x14 ^= rotl(x10+x6, 7)
		x2 ^= rotl(x14+x10, 9)
		x6 ^= rotl(x2+x14, 13)
		x10 ^= rotl(x6+x2, 18)
		x3 ^= rotl(x15+x11, 7)
		x7 ^= rotl(x3+x15, 9)
		x11 ^= rotl(x7+x3, 13)
		x15 ^= rotl(x11+x7, 18)
		// Rows.
		x1 ^= rotl(x0+x3, 7)
		x2 ^= rotl(x1+x0, 9)
		x3 ^= rotl(x2+x1, 13)
		x0 ^= rotl(x3+x2, 18)
		x6 ^= rotl(x5+x4, 7)
		x7 ^= rotl(x6+x5, 9)
		x4 ^= rotl(x7+x6, 13)
		x5 ^= rotl(x4+x7, 18)
		x11 ^= rotl(x10+x9, 7)
		x8 ^= rotl(x11+x10, 9)
		x9 ^= rotl(x8+x11, 13)
		x10 ^= rotl(x9+x8, 18)
		x12 ^= rotl(x15+x14, 7)
		x13 ^= rotl(x12+x15, 9)
		x14 ^= rotl(x13+x12, 13)
		x15 ^= rotl(x14+x13, 18)
	}
	b[0] += x0
	b[1] += x1
	b[2] += x2
	b[3] += x3
	b[4] += x4
	b[5] += x5
	b[6] += x6
	b[7] += x7
	b[8] += x8
	b[9] += x9
	b[10] += x10
	b[11] += x11
	b[12] += x12
	b[13] += x13
	b[14] += x14
	b[15] += x15
}
