// Signed URLs: a link to one image's file that works without an Authorization header until it
// expires, so that a page can show a private image in an <img>.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// urlSigner makes and checks signed download URLs. Its key is derived from SECRET_KEY (or the key
// kept in the database) apart from the JWT's: a token's signature is never a URL's, nor the reverse.
type urlSigner struct {
	key  []byte
	ttl  time.Duration // SIGNED_URL_TTL
	now  func() time.Time
	macs sync.Pool // of keyed hmac hashes, reset before each use
}

// signedURLDomain separates this key's derivation from every other use of the secret.
const signedURLDomain = "imageapi signed download URL key v1"

func newURLSigner(secret []byte, ttl time.Duration) *urlSigner {
	return &urlSigner{key: hmacSHA256(secret, signedURLDomain), ttl: ttl, now: time.Now}
}

// expiry is when a URL signed now expires: within the TTL, on a grid of a quarter of it (at least a
// second), so that a page asking again soon gets the same URL, and the browser's cached image with
// it. A link thus lives between ¾ of the TTL and all of it.
func (s *urlSigner) expiry() int64 {
	ttl := max(int64(s.ttl/time.Second), 1)
	step := max(ttl/4, 1)
	return (s.now().Unix() + ttl) / step * step
}

// mac is the signature of a link to variant of image id, owned by owner, until expires (Unix seconds),
// in hex. A page lists a dozen links for each of its images: the keyed hash is reused (hmac keeps its
// keyed state after the first use) and nothing is formatted through fmt.
func (s *urlSigner) mac(id int64, variant string, owner, expires int64) string {
	var buf [128]byte
	return string(s.appendMAC(buf[:0], id, variant, owner, expires))
}

// appendMAC appends mac's hex signature to b.
func (s *urlSigner) appendMAC(b []byte, id int64, variant string, owner, expires int64) []byte {
	m, _ := s.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, s.key)
	}
	defer s.macs.Put(m)
	var msg [96]byte
	data := strconv.AppendInt(msg[:0], id, 10)
	data = append(append(data, '\n'), variant...)
	data = strconv.AppendInt(append(data, '\n'), owner, 10)
	data = strconv.AppendInt(append(data, '\n'), expires, 10)
	m.Reset()
	m.Write(data)
	var sum [sha256.Size]byte
	return hex.AppendEncode(b, m.Sum(sum[:0]))
}

// url is the signed link to variant of im (variantOriginal for the upload itself).
func (s *urlSigner) url(im imageRecord, variant string) string {
	exp := s.expiry()
	b := make([]byte, 0, 160)
	b = strconv.AppendInt(append(b, "/api/v1/images/"...), im.ID, 10)
	b = appendSignedQuery(append(b, "/file/signed?"...), variant, im.OwnerID, exp, func(b []byte) []byte {
		return s.appendMAC(b, im.ID, variant, im.OwnerID, exp)
	})
	return string(b)
}

// signedQuery is the one spelling of a signed link's query: these four parameters, in this order
// (url.Values.Encode's: sorted), integers in canonical decimal, the variant query-escaped.
func signedQuery(variant string, owner, expires int64, signature string) string {
	return string(appendSignedQuery(nil, variant, owner, expires, func(b []byte) []byte { return append(b, signature...) }))
}

// appendSignedQuery appends signedQuery to b, the signature appended by sign.
func appendSignedQuery(b []byte, variant string, owner, expires int64, sign func([]byte) []byte) []byte {
	b = strconv.AppendInt(append(b, "expires="...), expires, 10)
	b = strconv.AppendInt(append(b, "&owner="...), owner, 10)
	b = sign(append(b, "&signature="...))
	return append(append(b, "&variant="...), url.QueryEscape(variant)...)
}

// errBadSignature answers a signed link that was altered, made for another image or variant, or
// has expired: the same answer for each, so that none tells an attacker which part was wrong.
var errBadSignature = newError(http.StatusForbidden, "this link is invalid or has expired: ask the API for the image again to get a fresh signed_url")

// signedLink is a checked signed link: whose image, which file, and for how long still.
type signedLink struct {
	id, owner int64
	variant   string
	remaining time.Duration
}

// check reads and verifies r's signed link (on route /api/v1/images/{id}/file/signed), in constant
// time; every failure is errBadSignature, and so is any spelling of the link but the one url made.
func (s *urlSigner) check(r *http.Request) (signedLink, error) {
	id, err := imageID(r)
	if err != nil {
		return signedLink{}, errBadSignature
	}
	q := r.URL.Query()
	owner, err1 := strconv.ParseInt(q.Get("owner"), 10, 64)
	exp, err2 := strconv.ParseInt(q.Get("expires"), 10, 64)
	variant := q.Get("variant")
	if err1 != nil || err2 != nil || (variant != variantOriginal && !knownVariant(variant) && !isDisplaySize(variant)) {
		return signedLink{}, errBadSignature
	}
	want := s.mac(id, variant, owner, exp)
	if !hmac.Equal([]byte(want), []byte(q.Get("signature"))) || r.URL.RawQuery != signedQuery(variant, owner, exp, want) {
		// A link has one spelling: no "+1", leading zeros, other parameters, repeats or reordering.
		return signedLink{}, errBadSignature
	}
	remaining := time.Unix(exp, 0).Sub(s.now())
	if remaining <= 0 {
		return signedLink{}, errBadSignature
	}
	return signedLink{id: id, owner: owner, variant: variant, remaining: remaining}, nil
}
