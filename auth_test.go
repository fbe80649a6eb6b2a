package main

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// unhex decodes the RFC's space-separated hex dumps.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func words(b []byte) []uint32 {
	w := make([]uint32, len(b)/4)
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return w
}

func wordBytes(w []uint32) []byte {
	b := make([]byte, 4*len(w))
	for i, v := range w {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

// RFC 7914 §8.
func TestPureSalsa208RFC7914(t *testing.T) {
	in := unhex(t, `7e 87 9a 21 4f 3e c9 86 7c a9 40 e6 41 71 8f 26
		ba ee 55 5b 8c 61 c1 b5 0d f8 46 11 6d cd 3b 1d
		ee 24 f3 19 df 9b 3d 85 14 12 1e 4b 5a c5 aa 32
		76 02 1d 29 09 c7 48 29 ed eb c6 8d b8 b8 c2 5e`)
	want := unhex(t, `a4 1f 85 9c 66 08 cc 99 3b 81 ca cb 02 0c ef 05
		04 4b 21 81 a2 fd 33 7d fd 7b 1c 63 96 68 2f 29
		b4 39 31 68 e3 c9 e6 bc fe 6b c5 b7 a0 6d 96 ba
		e4 24 cc 10 2c 91 74 5c 24 ad 67 3d c7 61 8f 81`)
	var b [16]uint32
	copy(b[:], words(in))
	salsa208(&b)
	if got := wordBytes(b[:]); !bytes.Equal(got, want) {
		t.Fatalf("salsa20/8 = %x\nwant        %x", got, want)
	}
}

// blockMixIn is the input of RFC 7914 §9 (and of §10's ROMix).
const blockMixIn = `f7 ce 0b 65 3d 2d 72 a4 10 8c f5 ab e9 12 ff dd
	77 76 16 db bb 27 a7 0e 82 04 f3 ae 2d 0f 6f ad
	89 f6 8f 48 11 d1 e8 7b cc 3b d7 40 0a 9f fd 29
	09 4f 01 84 63 95 74 f3 9a e5 a1 31 52 17 bc d7
	89 49 91 44 72 13 bb 22 6c 25 b5 4d a8 63 70 fb
	cd 98 43 80 37 46 66 bb 8f fc b5 bf 40 c2 54 b0
	67 d2 7c 51 ce 4a d5 fe d8 29 c9 0b 50 5a 57 1b
	7f 4d 1c ad 6a 52 3c da 77 0e 67 bc ea af 7e 89`

// RFC 7914 §9, r = 1.
func TestPureBlockMixRFC7914(t *testing.T) {
	want := unhex(t, `a4 1f 85 9c 66 08 cc 99 3b 81 ca cb 02 0c ef 05
		04 4b 21 81 a2 fd 33 7d fd 7b 1c 63 96 68 2f 29
		b4 39 31 68 e3 c9 e6 bc fe 6b c5 b7 a0 6d 96 ba
		e4 24 cc 10 2c 91 74 5c 24 ad 67 3d c7 61 8f 81
		20 ed c9 75 32 38 81 a8 05 40 f6 4c 16 2d cd 3c
		21 07 7c fe 5f 8d 5f e2 b1 a4 16 8f 95 36 78 b7
		7d 3b 3d 80 3b 60 e4 ab 92 09 96 e5 9b 4d 53 b6
		5d 2a 22 58 77 d5 ed f5 84 2c b9 f1 4e ef e4 25`)
	out := make([]uint32, 32)
	var tmp [16]uint32
	blockMix(&tmp, words(unhex(t, blockMixIn)), out, 1)
	if got := wordBytes(out); !bytes.Equal(got, want) {
		t.Fatalf("BlockMix = %x\nwant      %x", got, want)
	}
}

// RFC 7914 §10, r = 1, N = 16.
func TestPureROMixRFC7914(t *testing.T) {
	want := unhex(t, `79 cc c1 93 62 9d eb ca 04 7f 0b 70 60 4b f6 b6
		2c e3 dd 4a 96 26 e3 55 fa fc 61 98 e6 ea 2b 46
		d5 84 13 67 3b 99 b0 29 d6 65 c3 57 60 1f b4 26
		a0 b2 f4 bb a2 00 ee 9f 0a 43 d1 9b 57 1a 9c 71
		ef 11 42 e6 5d 5a 26 6f dd ca 83 2c e5 9f aa 7c
		ac 0b 9c f1 be 2b ff ca 30 0d 01 ee 38 76 19 c4
		ae 12 fd 44 38 f2 03 a0 e4 e1 c4 7e c3 14 86 1f
		4e 90 87 cb 33 39 6a 68 73 e8 f9 d2 53 9a 4b 8e`)
	b := unhex(t, blockMixIn)
	roMix(b, 1, 16, make([]uint32, 32*16), make([]uint32, 64))
	if !bytes.Equal(b, want) {
		t.Fatalf("ROMix = %x\nwant    %x", b, want)
	}
}

// RFC 7914 §11: the PBKDF2-HMAC-SHA256 that scrypt is built on.
func TestPurePBKDF2RFC7914(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		c    int
		want string
	}{
		{"passwd", "salt", 1, `55 ac 04 6e 56 e3 08 9f ec 16 91 c2 25 44 b6 05
			f9 41 85 21 6d de 04 65 e6 8b 9d 57 c2 0d ac bc
			49 ca 9c cc f1 79 b6 45 99 16 64 b3 9d 77 ef 31
			7c 71 b8 45 b1 e3 0b d5 09 11 20 41 d3 a1 97 83`},
		{"Password", "NaCl", 80000, `4d dc d8 f6 0b 98 be 21 83 0c ee 5e f2 27 01 f9
			64 1a 44 18 d0 4c 04 14 ae ff 08 87 6b 34 ab 56
			a1 d4 25 a1 22 58 33 54 9a db 84 1b 51 c9 b3 17
			6a 27 2b de bb a1 d0 78 47 8f 62 b3 97 f3 3c 8d`},
	} {
		got, err := pbkdf2.Key(sha256.New, tc.p, []byte(tc.s), tc.c, 64)
		if err != nil || !bytes.Equal(got, unhex(t, tc.want)) {
			t.Errorf("PBKDF2(%q, %q, %d) = %x, %v", tc.p, tc.s, tc.c, got, err)
		}
	}
}

// RFC 7914 §12: all four scrypt vectors, the last one with N = 2^20 (1 GiB of V).
func TestPureScryptRFC7914(t *testing.T) {
	computeOnly(t)
	for _, tc := range []struct {
		p, s    string
		n, r, q int
		want    string
	}{
		{"", "", 16, 1, 1, `77 d6 57 62 38 65 7b 20 3b 19 ca 42 c1 8a 04 97
			f1 6b 48 44 e3 07 4a e8 df df fa 3f ed e2 14 42
			fc d0 06 9d ed 09 48 f8 32 6a 75 3a 0f c8 1f 17
			e8 d3 e0 fb 2e 0d 36 28 cf 35 e2 0c 38 d1 89 06`},
		{"password", "NaCl", 1024, 8, 16, `fd ba be 1c 9d 34 72 00 78 56 e7 19 0d 01 e9 fe
			7c 6a d7 cb c8 23 78 30 e7 73 76 63 4b 37 31 62
			2e af 30 d9 2e 22 a3 88 6f f1 09 27 9d 98 30 da
			c7 27 af b9 4a 83 ee 6d 83 60 cb df a2 cc 06 40`},
		{"pleaseletmein", "SodiumChloride", 16384, 8, 1, `70 23 bd cb 3a fd 73 48 46 1c 06 cd 81 fd 38 eb
			fd a8 fb ba 90 4f 8e 3e a9 b5 43 f6 54 5d a1 f2
			d5 43 29 55 61 3f 0f cf 62 d4 97 05 24 2a 9a f9
			e6 1e 85 dc 0d 65 1e 40 df cf 01 7b 45 57 58 87`},
		{"pleaseletmein", "SodiumChloride", 1048576, 8, 1, `21 01 cb 9b 6a 51 1a ae ad db be 09 cf 70 f8 81
			ec 56 8d 57 4a 2f fd 4d ab e5 ee 98 20 ad aa 47
			8e 56 fd 8f 4b a5 d0 9f fa 1c 6d 92 7c 40 f4 c3
			37 30 40 49 e8 a9 52 fb cb f4 5c 6f a7 7a 41 a4`},
	} {
		t.Run(fmt.Sprintf("N=%d", tc.n), func(t *testing.T) {
			p := scryptParams{N: tc.n, R: tc.r, P: tc.q}
			got, err := scryptKey([]byte(tc.p), []byte(tc.s), p, 64, make([]uint32, p.memory()))
			if err != nil || !bytes.Equal(got, unhex(t, tc.want)) {
				t.Fatalf("scrypt = %x, %v", got, err)
			}
		})
	}
}

func TestPurePasswordHasher(t *testing.T) {
	ctx := context.Background()
	h, err := newPasswordHasher(scryptParams{N: 1024, R: 8, P: 1}, 2)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := h.hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$scrypt$ln=10,r=8,p=1$") {
		t.Fatalf("hash %q is not in PHC form", enc)
	}
	if again, _ := h.hash(ctx, "correct horse"); again == enc {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	if ok, stale, err := h.verify(ctx, "correct horse", enc); !ok || stale || err != nil {
		t.Fatalf("verify right password = %v %v %v", ok, stale, err)
	}
	if ok, _, err := h.verify(ctx, "correct horsf", enc); ok || err != nil {
		t.Fatalf("verify wrong password = %v %v", ok, err)
	}
	// A hash made with other parameters still verifies, and is reported stale.
	h2, _ := newPasswordHasher(scryptParams{N: 2048, R: 8, P: 1}, 1)
	if ok, stale, err := h2.verify(ctx, "correct horse", enc); !ok || !stale || err != nil {
		t.Fatalf("verify with other params = %v %v %v", ok, stale, err)
	}
	for _, bad := range []string{"", "plain", "$scrypt$ln=10,r=8,p=1$c2FsdA$", "$scrypt$ln=30,r=8,p=1$c2FsdA$" + strings.Repeat("A", 43),
		"$scrypt$ln=10,r=999,p=1$c2FsdA$" + strings.Repeat("A", 43), "$bcrypt$ln=10,r=8,p=1$c2FsdA$" + strings.Repeat("A", 43),
		"$scrypt$ln=10,r=8,p=1$!!$" + strings.Repeat("A", 43)} {
		if _, _, err := h.verify(ctx, "x", bad); err == nil {
			t.Errorf("verify accepted malformed stored hash %q", bad)
		}
	}
}

// TestPureHasherWaitsAndGivesUp: with every slot taken, a hash waits, then answers 503 — it does not
// run beyond the bound.
func TestPureHasherWaitsAndGivesUp(t *testing.T) {
	h, _ := newPasswordHasher(scryptParams{N: 16, R: 1, P: 1}, 1)
	h.wait = 50 * time.Millisecond
	h.slots <- struct{}{} // hold the only slot
	_, err := h.hash(context.Background(), "password")
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusServiceUnavailable {
		t.Fatalf("err = %v, want 503", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.hash(ctx, "password"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
	<-h.slots
	if _, err := h.hash(context.Background(), "password"); err != nil {
		t.Fatal(err)
	}
	// Sequential hashes reuse one buffer; once idle, it is released.
	h.hash(context.Background(), "password")
	h.mu.Lock()
	kept := len(h.free)
	h.mu.Unlock()
	if kept != 1 {
		t.Errorf("%d buffers kept after sequential hashes, want 1", kept)
	}
	h.releaseIdle()
	if len(h.free) != 0 {
		t.Errorf("idle release kept %d buffers", len(h.free))
	}
}

// RFC 7515 appendix A.1: the HS256 example, its key given as a JWK.
func TestPureJWSAppendixA1(t *testing.T) {
	key, err := base64.RawURLEncoding.DecodeString("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
	if err != nil {
		t.Fatal(err)
	}
	const token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." +
		"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ." +
		"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	payload, err := verifyHS256(token, key)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if want := "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"; string(payload) != want {
		t.Fatalf("payload = %q", payload)
	}
	dot := strings.LastIndexByte(token, '.')
	if got := b64.EncodeToString(hmacSHA256(key, token[:dot])); got != token[dot+1:] {
		t.Fatalf("signature = %s", got)
	}
	// The example's claims are well-formed but expired and not ours: the issuer refuses them.
	ti := &tokenIssuer{key: key, issuer: "joe", now: func() time.Time { return time.Unix(1300819380, 0) }}
	if _, err := ti.parse(token); !errors.Is(err, errTokenClaims) {
		t.Fatalf("parse = %v, want a claims error (no iat, no sub)", err)
	}
}

func TestPureTokenRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ti := &tokenIssuer{key: bytes.Repeat([]byte("k"), 32), ttl: time.Hour, issuer: tokenIssuerName, now: func() time.Time { return now }}
	tok, exp, err := ti.issue(42, 0)
	if err != nil || !exp.Equal(now.Add(time.Hour)) {
		t.Fatal(err, exp)
	}
	if id, err := ti.parse(tok); err != nil || id != 42 {
		t.Fatalf("parse = %d, %v", id, err)
	}
	now = now.Add(time.Hour)
	if _, err := ti.parse(tok); !errors.Is(err, errTokenExpired) {
		t.Fatalf("at exp: %v, want expired", err)
	}
}

// forgeToken builds a token from raw header and claims JSON, signed with key ("" signature when key
// is nil).
func forgeToken(header, claims string, key []byte) string {
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(claims))
	if key == nil {
		return in + "."
	}
	return in + "." + b64.EncodeToString(hmacSHA256(key, in))
}

// badTokens are tokens the issuer below must refuse, each with the error it must give.
func badTokens(key []byte, now time.Time) []struct {
	name, token string
	want        error
} {
	n := now.Unix()
	good := fmt.Sprintf(`{"sub":"7","iss":"imageapi","iat":%d,"exp":%d}`, n, n+3600)
	hs := `{"alg":"HS256","typ":"JWT"}`
	valid := forgeToken(hs, good, key)
	return []struct {
		name, token string
		want        error
	}{
		{"alg none, unsigned", forgeToken(`{"alg":"none"}`, good, nil), errTokenAlg},
		{"alg none, signed", forgeToken(`{"alg":"none"}`, good, key), errTokenAlg},
		{"alg None", forgeToken(`{"alg":"None"}`, good, key), errTokenAlg},
		{"alg HS512", forgeToken(`{"alg":"HS512"}`, good, key), errTokenAlg},
		{"alg RS256", forgeToken(`{"alg":"RS256"}`, good, key), errTokenAlg},
		{"alg hs256 lower case", forgeToken(`{"alg":"hs256"}`, good, key), errTokenAlg},
		{"no alg", forgeToken(`{"typ":"JWT"}`, good, key), errTokenAlg},
		{"crit header", forgeToken(`{"alg":"HS256","crit":["exp"]}`, good, key), errTokenAlg},
		{"other key", forgeToken(hs, good, bytes.Repeat([]byte("x"), 32)), errTokenSignature},
		{"empty signature", forgeToken(hs, good, nil), errTokenSignature},
		{"claims swapped after signing", valid[:strings.IndexByte(valid, '.')+1] + b64.EncodeToString([]byte(strings.Replace(good, `"7"`, `"8"`, 1))) + valid[strings.LastIndexByte(valid, '.'):], errTokenSignature},
		{"expired", forgeToken(hs, fmt.Sprintf(`{"sub":"7","iss":"imageapi","iat":%d,"exp":%d}`, n-7200, n-1), key), errTokenExpired},
		{"no exp", forgeToken(hs, fmt.Sprintf(`{"sub":"7","iss":"imageapi","iat":%d}`, n), key), errTokenClaims},
		{"issued in the future", forgeToken(hs, fmt.Sprintf(`{"sub":"7","iss":"imageapi","iat":%d,"exp":%d}`, n+3600, n+7200), key), errTokenClaims},
		{"not before the future", forgeToken(hs, fmt.Sprintf(`{"sub":"7","iss":"imageapi","iat":%d,"exp":%d,"nbf":%d}`, n, n+7200, n+3600), key), errTokenClaims},
		{"other issuer", forgeToken(hs, fmt.Sprintf(`{"sub":"7","iss":"evil","iat":%d,"exp":%d}`, n, n+3600), key), errTokenClaims},
		{"sub not a number", forgeToken(hs, fmt.Sprintf(`{"sub":"admin","iss":"imageapi","iat":%d,"exp":%d}`, n, n+3600), key), errTokenClaims},
		{"sub zero", forgeToken(hs, fmt.Sprintf(`{"sub":"0","iss":"imageapi","iat":%d,"exp":%d}`, n, n+3600), key), errTokenClaims},
		{"sub with leading zero", forgeToken(hs, fmt.Sprintf(`{"sub":"07","iss":"imageapi","iat":%d,"exp":%d}`, n, n+3600), key), errTokenClaims},
		{"sub a JSON number", forgeToken(hs, fmt.Sprintf(`{"sub":7,"iss":"imageapi","iat":%d,"exp":%d}`, n, n+3600), key), errTokenMalformed},
		{"claims not JSON", forgeToken(hs, "hello", key), errTokenMalformed},
		{"header not JSON", forgeToken("hello", good, key), errTokenMalformed},
		{"two parts", strings.Join(strings.Split(valid, ".")[:2], "."), errTokenMalformed},
		{"four parts", valid + ".x", errTokenMalformed},
		{"padded base64", strings.Replace(valid, ".", "=.", 1), errTokenMalformed},
		{"standard base64 alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(valid) + "+/", errTokenMalformed},
		{"empty", "", errTokenMalformed},
		{"too long", valid + strings.Repeat("A", maxTokenLen), errTokenMalformed},
	}
}

func TestPureTokenRejections(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 32)
	now := time.Unix(1_800_000_000, 0)
	ti := &tokenIssuer{key: key, ttl: time.Hour, issuer: tokenIssuerName, now: func() time.Time { return now }}
	for _, tc := range badTokens(key, now) {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ti.parse(tc.token); !errors.Is(err, tc.want) {
				t.Fatalf("parse = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzTokenParse: whatever the input, parse does not panic, and anything it accepts is exactly a
// token this key signed (re-signing its first two parts gives its signature).
func FuzzTokenParse(f *testing.F) {
	key := bytes.Repeat([]byte("k"), 32)
	now := time.Unix(1_800_000_000, 0)
	ti := &tokenIssuer{key: key, ttl: time.Hour, issuer: tokenIssuerName, now: func() time.Time { return now }}
	tok, _, _ := ti.issue(1, 0)
	f.Add(tok)
	for _, tc := range badTokens(key, now) {
		f.Add(tc.token)
	}
	f.Fuzz(func(t *testing.T, token string) {
		id, err := ti.parse(token)
		if err != nil {
			return
		}
		if id <= 0 {
			t.Fatalf("accepted id %d", id)
		}
		dot := strings.LastIndexByte(token, '.')
		if b64.EncodeToString(hmacSHA256(key, token[:dot])) != token[dot+1:] {
			t.Fatalf("accepted %q, whose signature is not ours", token)
		}
	})
}

func TestSignupAndToken(t *testing.T) {
	s := newTestServer(t, nil)
	// The original spec's own test: signup answers 200 with the username.
	name := "testuser_" + randomHex(3)
	r := s.do("POST", "/api/v1/auth/signup", map[string]string{"username": name, "password": "testpass"})
	if r.status != 200 {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	var u map[string]any
	r.json(t, &u)
	if u["username"] != name || u["id"] == nil || u["created_at"] == nil || len(u) != 3 {
		t.Fatalf("signup body = %v, want exactly id, username, created_at", u)
	}
	check := func(r response) string {
		t.Helper()
		if r.status != 200 {
			t.Fatalf("token: %d %s", r.status, r.body)
		}
		var tok tokenResponse
		r.json(t, &tok)
		if tok.TokenType != "bearer" || tok.ExpiresIn != int64((24*time.Hour).Seconds()) || tok.AccessToken == "" {
			t.Fatalf("token body = %+v", tok)
		}
		if cc := r.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", cc)
		}
		id, err := s.tokens.parse(tok.AccessToken)
		if err != nil || float64(id) != u["id"].(float64) {
			t.Fatalf("token is for %d (%v), want %v", id, err, u["id"])
		}
		return tok.AccessToken
	}
	check(s.do("POST", "/api/v1/auth/token", credentials{name, "testpass"}))
	// Usernames match in any case at login.
	check(s.do("POST", "/api/v1/auth/token", credentials{strings.ToUpper(name), "testpass"}))
	// OAuth2 password grant, as Swagger UI's Authorize dialog sends it.
	form := url.Values{"grant_type": {"password"}, "username": {name}, "password": {"testpass"}}.Encode()
	tok := check(s.do("POST", "/api/v1/auth/token", form, "Content-Type", "application/x-www-form-urlencoded"))
	form = url.Values{"username": {name}, "password": {"testpass"}}.Encode()
	check(s.do("POST", "/api/v1/auth/token", form, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8"))

	// The token opens a route behind requireAuth.
	protected := httptestServer(t, s.requireAuth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, userID(r.Context()))
	})))
	if r := doRequest(t, protected, "GET", "/", nil, "Authorization", "Bearer "+tok); r.status != 200 || string(r.body) != fmt.Sprint(u["id"]) {
		t.Fatalf("protected route: %d %s", r.status, r.body)
	}
	if r := doRequest(t, protected, "GET", "/", nil, "Authorization", "bearer "+tok); r.status != 200 {
		t.Fatalf("the scheme is case-insensitive: %d", r.status)
	}
}

func TestSignupRejects(t *testing.T) {
	s := newTestServer(t, nil)
	name := "dup_" + randomHex(3)
	if r := s.do("POST", "/api/v1/auth/signup", credentials{name, "password1"}); r.status != 200 {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	deep := strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1)
	for _, tc := range []struct {
		name   string
		body   any
		header []string
		status int
	}{
		{"taken", credentials{name, "password2"}, nil, 409},
		{"taken in another case", credentials{strings.ToUpper(name), "password2"}, nil, 409},
		{"username too short", credentials{"ab", "password1"}, nil, 422},
		{"username too long", credentials{strings.Repeat("a", maxUsernameLen+1), "password1"}, nil, 422},
		{"username with a space", credentials{"a b c", "password1"}, nil, 422},
		{"username not ASCII", credentials{"аlice", "password1"}, nil, 422},
		{"password too short", credentials{"u_" + randomHex(3), "1234567"}, nil, 422},
		{"password too long", credentials{"u_" + randomHex(3), strings.Repeat("p", maxPasswordLen+1)}, nil, 422},
		{"missing fields", map[string]string{}, nil, 422},
		{"wrong types", `{"username": 5, "password": true}`, []string{"Content-Type", "application/json"}, 422},
		{"malformed JSON", `{"username": "x"`, []string{"Content-Type", "application/json"}, 422},
		{"trailing data", `{"username":"abc","password":"password1"} {}`, []string{"Content-Type", "application/json"}, 422},
		{"empty body", "", []string{"Content-Type", "application/json"}, 422},
		{"too deep", deep, []string{"Content-Type", "application/json"}, 422},
		{"too large", `{"username":"` + strings.Repeat("a", maxJSONBytes) + `"}`, []string{"Content-Type", "application/json"}, 413},
		{"not JSON", "username=a&password=b", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.do("POST", "/api/v1/auth/signup", tc.body, tc.header...).problem(t, tc.status)
		})
	}
}

func TestTokenRejects(t *testing.T) {
	s := newTestServer(t, nil)
	name, _ := s.signupAndLogin()
	formCT := []string{"Content-Type", "application/x-www-form-urlencoded"}
	for _, tc := range []struct {
		name   string
		body   any
		header []string
		status int
	}{
		{"missing password", map[string]string{"username": name}, nil, 422},
		{"missing everything", map[string]string{}, nil, 422},
		{"malformed JSON", "{", []string{"Content-Type", "application/json"}, 422},
		{"form without password", url.Values{"username": {name}}.Encode(), formCT, 422},
		{"form with another grant", url.Values{"username": {name}, "password": {"x"}, "grant_type": {"client_credentials"}}.Encode(), formCT, 400},
		{"form too large", "username=" + strings.Repeat("a", maxJSONBytes), formCT, 413},
		{"text body", "hello", []string{"Content-Type", "text/plain"}, 415},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.do("POST", "/api/v1/auth/token", tc.body, tc.header...).problem(t, tc.status)
		})
	}
}

// TestNoUserEnumeration: a wrong password and an unknown user get the same status and body, and
// both cost exactly one scrypt run.
func TestNoUserEnumeration(t *testing.T) {
	s := newTestServer(t, nil)
	name, _ := s.signupAndLogin()
	try := func(c credentials) (response, int64) {
		before := s.hasher.computed.Load()
		r := s.do("POST", "/api/v1/auth/token", c)
		return r, s.hasher.computed.Load() - before
	}
	wrong, wrongHashes := try(credentials{name, "not the password"})
	unknown, unknownHashes := try(credentials{"nobody_" + randomHex(4), "not the password"})
	wrong.problem(t, http.StatusBadRequest)
	unknown.problem(t, http.StatusBadRequest)
	if !bytes.Equal(wrong.body, unknown.body) {
		t.Errorf("bodies differ:\n%s\n%s", wrong.body, unknown.body)
	}
	if wrongHashes != 1 || unknownHashes != 1 {
		t.Errorf("hashes computed: wrong password %d, unknown user %d; want 1 and 1", wrongHashes, unknownHashes)
	}
}

func TestRequireAuthRejects(t *testing.T) {
	s := newTestServer(t, nil)
	_, good := s.signupAndLogin()
	protected := httptestServer(t, s.requireAuth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("handler reached with %q", r.Header.Get("Authorization"))
	})))
	cases := map[string]string{
		"no header":       "",
		"basic scheme":    "Basic dXNlcjpwYXNz",
		"bearer no token": "Bearer ",
		"token no scheme": strings.TrimPrefix(good, "Bearer "),
	}
	for _, tc := range badTokens(s.tokens.key, s.tokens.now()) {
		cases[tc.name] = "Bearer " + tc.token
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			var hdr []string
			if h != "" {
				hdr = []string{"Authorization", h}
			}
			r := doRequest(t, protected, "GET", "/", nil, hdr...)
			r.problem(t, http.StatusUnauthorized)
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
}

// TestSecretSharedByServers: with SECRET_KEY unset, servers on one database generate one key between
// them, so a token from one is good at the other, and at a server started later.
func TestSecretSharedByServers(t *testing.T) {
	db := freshDatabase(t)
	env := map[string]string{"DATABASE_URL": db}
	var servers [4]*testServer
	var errs [4]error
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() { servers[i], errs[i] = openTestServer(t, env) })
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	_, tok := servers[0].signupAndLogin()
	later := newTestServer(t, env)
	for i, s := range append(servers[1:], later) {
		if _, err := s.tokens.parse(strings.TrimPrefix(tok, "Bearer ")); err != nil {
			t.Errorf("server %d refuses server 0's token: %v", i+1, err)
		}
	}
	if len(later.tokens.key) != 32 {
		t.Errorf("generated key is %d bytes", len(later.tokens.key))
	}
	// A configured SECRET_KEY wins, so its tokens do not verify under the stored key.
	own := newTestServer(t, map[string]string{"DATABASE_URL": db, "SECRET_KEY": strings.Repeat("s", 32)})
	if _, err := own.tokens.parse(strings.TrimPrefix(tok, "Bearer ")); !errors.Is(err, errTokenSignature) {
		t.Errorf("server with its own SECRET_KEY: %v, want a signature error", err)
	}
}

// TestLoginBurstMemory: a burst of logins far wider than HASH_CONCURRENCY queues for the slots,
// and the scrypt buffers held never exceed one per slot: counted where they are made (the hasher's
// high-water mark), not sampled from the heap, which could miss the peak.
func TestLoginBurstMemory(t *testing.T) {
	const slots, n, burst = 2, 1 << 10, 60 // 1 MiB per hash
	s := newTestServer(t, map[string]string{"SCRYPT_N": fmt.Sprint(n), "HASH_CONCURRENCY": fmt.Sprint(slots)})
	s.hasher.wait = 10 * time.Minute // the burst is meant to queue, not to be refused
	name, _ := s.signupAndLogin()
	var wg sync.WaitGroup
	var ok atomic.Int32
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: burst}}
	for range burst {
		wg.Go(func() {
			body, _ := json.Marshal(credentials{name, "correct horse"})
			resp, err := client.Post(s.srv.URL+"/api/v1/auth/token", "application/json", bytes.NewReader(body))
			if err == nil {
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if ok.Load() != burst {
		t.Fatalf("%d of %d logins succeeded", ok.Load(), burst)
	}
	perHash := int64(128 * 8 * n)
	peak := s.hasher.peak.Load()
	t.Logf("%d concurrent logins: at most %d scrypt buffers held at once (%d slots; unbounded would be %d)", burst, peak/perHash, slots, burst)
	if peak > slots*perHash {
		t.Fatalf("%d bytes of scrypt buffers held at once, over %d slots × %d", peak, slots, perHash)
	}
	if s.hasher.computed.Load() < burst {
		t.Fatalf("%d hashes computed for %d logins", s.hasher.computed.Load(), burst)
	}
}

// BenchmarkScrypt measures one password hash at the default parameters (N=2^15, r=8, p=1).
func BenchmarkScrypt(b *testing.B) {
	p := scryptParams{N: 1 << 15, R: 8, P: 1}
	v := make([]uint32, p.memory())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := scryptKey([]byte("correct horse"), []byte("0123456789abcdef"), p, 32, v); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPureStoredHashBounds: a stored hash asking for more memory or work than a check may take (a row
// is data) is refused before any hashing, whatever the parameters' validity.
func TestPureStoredHashBounds(t *testing.T) {
	key := base64.RawStdEncoding.EncodeToString(make([]byte, 32))
	salt := base64.RawStdEncoding.EncodeToString(make([]byte, 16))
	for _, params := range []string{"ln=20,r=32,p=1", "ln=20,r=8,p=1", "ln=17,r=8,p=16", "ln=18,r=8,p=16"} {
		if _, _, _, err := parsePHC("$scrypt$" + params + "$" + salt + "$" + key); err == nil {
			t.Errorf("%s accepted", params)
		}
	}
	for _, params := range []string{"ln=15,r=8,p=1", "ln=17,r=8,p=1", "ln=15,r=8,p=16"} {
		if _, _, _, err := parsePHC("$scrypt$" + params + "$" + salt + "$" + key); err != nil {
			t.Errorf("%s refused: %v", params, err)
		}
	}
}

// TestTokenOfGoneAccount: a valid token whose account row is gone is 401 on every route that takes
// one, never a 500 or an empty list; also when the row goes between the check and the write.
func TestTokenOfGoneAccount(t *testing.T) {
	s := newTestServer(t, nil)
	_, auth := s.signupAndLogin()
	im := s.mustUpload(auth, "a", "", "a.png", tinyPNG(t, 4, 4))
	drop := func(auth string) {
		t.Helper()
		tok := strings.TrimPrefix(auth, "Bearer ")
		id, err := s.tokens.parse(tok)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(context.Background(), "DELETE FROM users WHERE id = $1", id); err != nil {
			t.Fatal(err)
		}
	}
	// The row goes while the account is remembered as live: the upload's insert finds it gone.
	drop(auth)
	r := s.upload(auth, "b", "", "b.png", tinyPNG(t, 4, 4))
	r.problem(t, http.StatusUnauthorized)
	// Once the check is due, every route says so.
	s.accounts.now = func() time.Time { return time.Now().Add(accountCheckTTL) }
	id := strconv.FormatInt(im.ID, 10)
	for _, rt := range []struct{ method, path string }{
		{"GET", "/api/v1/images/"}, {"GET", "/api/v1/images"}, {"GET", "/api/v1/images/" + id},
		{"PUT", "/api/v1/images/" + id}, {"DELETE", "/api/v1/images/" + id}, {"GET", "/api/v1/images/" + id + "/file"},
	} {
		r := s.do(rt.method, rt.path, map[string]string{"name": "x"}, "Authorization", auth)
		if p := r.problem(t, http.StatusUnauthorized); !strings.Contains(p.Detail, "no longer exists") {
			t.Errorf("%s %s: %q", rt.method, rt.path, p.Detail)
		}
	}
	s.upload(auth, "c", "", "c.png", tinyPNG(t, 4, 4)).problem(t, http.StatusUnauthorized)
}
