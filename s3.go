// An S3 client from the standard library: AWS Signature Version 4 (headers and presigned query
// strings) and the object calls the blob store needs, with timeouts, retries and connection reuse.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SigV4: the steps are functions of their own, as the specification writes them, so each can be
// held to AWS's published examples (s3_test.go): canonical request → string to sign → signing key →
// signature.

const (
	sigV4Algorithm  = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	// emptySHA256 is the SHA-256 of no bytes: the payload hash of a request without a body.
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// sigV4 signs requests for one service in one region with one key pair.
type sigV4 struct {
	accessKey, secretKey, region, service string

	mu      sync.Mutex
	keyDate string // the date signingKey was derived for
	key     []byte
}

// unsignedHeaders are headers a proxy or the transport may add or change: signing them would break
// the signature on the way.
var unsignedHeaders = map[string]bool{"authorization": true, "user-agent": true, "x-amzn-trace-id": true,
	"expect": true, "accept-encoding": true, "connection": true, "content-length": true}

// sign adds X-Amz-Date and Authorization to r, signing its method, path, query, host, every header
// it carries but unsignedHeaders, and payloadHash (the hex SHA-256 of the body, or unsignedPayload).
// S3 also wants the hash in X-Amz-Content-Sha256: the caller sets it (S3's calls do, in do).
func (s *sigV4) sign(r *http.Request, payloadHash string, t time.Time) {
	t = t.UTC()
	r.Header.Set("X-Amz-Date", t.Format(amzDateFormat))
	names, canonHeaders := canonicalHeaders(r)
	creq := canonicalRequest(r.Method, canonicalURI(r.URL), canonicalQuery(r.URL.Query()), canonHeaders, names, payloadHash)
	scope := s.scope(t)
	sig := s.signature(t, stringToSign(t, scope, creq))
	r.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s/%s, SignedHeaders=%s, Signature=%s", sigV4Algorithm, s.accessKey, scope, names, sig))
}

// presign returns u signed in its query string for method, valid for expires from t: anyone who
// has the URL may make that request until then. Only the host header is signed, and the payload is
// not (UNSIGNED-PAYLOAD), as S3 expects of a presigned URL.
func (s *sigV4) presign(method string, u *url.URL, expires time.Duration, t time.Time) *url.URL {
	t = t.UTC()
	scope := s.scope(t)
	q := u.Query()
	q.Set("X-Amz-Algorithm", sigV4Algorithm)
	q.Set("X-Amz-Credential", s.accessKey+"/"+scope)
	q.Set("X-Amz-Date", t.Format(amzDateFormat))
	q.Set("X-Amz-Expires", strconv.Itoa(int(expires/time.Second)))
	q.Set("X-Amz-SignedHeaders", "host")
	creq := canonicalRequest(method, canonicalURI(u), canonicalQuery(q), "host:"+u.Host+"\n", "host", unsignedPayload)
	sig := s.signature(t, stringToSign(t, scope, creq))
	out := *u
	out.RawQuery = canonicalQuery(q) + "&X-Amz-Signature=" + sig
	return &out
}

// scope is the credential scope: date/region/service/aws4_request.
func (s *sigV4) scope(t time.Time) string {
	return t.Format("20060102") + "/" + s.region + "/" + s.service + "/aws4_request"
}

// signature is the hex HMAC of the string to sign under the day's signing key.
func (s *sigV4) signature(t time.Time, sts string) string {
	return hex.EncodeToString(hmacSHA256(s.signingKey(t.Format("20060102")), sts))
}

// signingKey derives the key for date (HMAC chain over date, region, service, "aws4_request"),
// keeping the last one: it changes once a day.
func (s *sigV4) signingKey(date string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keyDate != date {
		k := hmacSHA256([]byte("AWS4"+s.secretKey), date)
		k = hmacSHA256(k, s.region)
		k = hmacSHA256(k, s.service)
		s.key, s.keyDate = hmacSHA256(k, "aws4_request"), date
	}
	return s.key
}

// canonicalRequest joins the parts of a request that are signed.
func canonicalRequest(method, uri, query, headers, signedHeaders, payloadHash string) string {
	return strings.Join([]string{method, uri, query, headers, signedHeaders, payloadHash}, "\n")
}

// stringToSign is what the signing key signs: the algorithm, the time, the scope and the hash of the
// canonical request.
func stringToSign(t time.Time, scope, creq string) string {
	h := sha256.Sum256([]byte(creq))
	return sigV4Algorithm + "\n" + t.Format(amzDateFormat) + "\n" + scope + "\n" + hex.EncodeToString(h[:])
}

// canonicalURI is the URI-encoded path, each segment encoded once, as S3 wants it (no normalising of
// "." or ".." segments, no double encoding).
func canonicalURI(u *url.URL) string {
	if u.Path == "" {
		return "/"
	}
	return uriEncode(u.Path, false)
}

// canonicalQuery is the query sorted by name, then value, each URI-encoded.
func canonicalQuery(q url.Values) string {
	type pair struct{ k, v string }
	var pairs []pair
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, pair{uriEncode(k, true), uriEncode(v, true)})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if c := strings.Compare(a.k, b.k); c != 0 {
			return c
		}
		return strings.Compare(a.v, b.v)
	})
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k + "=" + p.v)
	}
	return b.String()
}

// canonicalHeaders returns the signed header names (lowercase, sorted, ';'-joined) and the canonical
// header block: "name:value\n" each, values trimmed with inner runs of spaces collapsed, repeated
// headers joined by commas in the order sent.
func canonicalHeaders(r *http.Request) (names, block string) {
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	vals := map[string]string{"host": host}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if unsignedHeaders[lk] {
			continue
		}
		trimmed := make([]string, len(vs))
		for i, v := range vs {
			trimmed[i] = strings.Join(strings.Fields(v), " ")
		}
		vals[lk] = strings.Join(trimmed, ",")
	}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + ":" + vals[k] + "\n")
	}
	return strings.Join(keys, ";"), b.String()
}

// uriEncode percent-encodes s as SigV4 wants: every byte but A–Z, a–z, 0–9, '-', '.', '_' and '~',
// in uppercase hex; '/' too when encodeSlash (query names and values), not in a path.
func uriEncode(s string, encodeSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}

// s3Config says where the bucket is and who we are to it.
type s3Config struct {
	Endpoint  string // e.g. http://seaweedfs:8333; empty: AWS S3 in Region
	Region    string
	Bucket    string
	Prefix    string // prepended to every key
	AccessKey string
	SecretKey string
}

// s3Client makes the calls the blob store needs on one bucket. A custom endpoint is addressed
// path-style (endpoint/bucket/key), AWS virtual-hosted style (bucket.s3.region.amazonaws.com/key).
type s3Client struct {
	base    *url.URL // the bucket's URL; keys are appended to its path
	bucket  string
	prefix  string
	signer  *sigV4
	http    *http.Client
	timeout time.Duration // of a call without a body to stream (a GET's body may take longer)
	retries int
	now     func() time.Time
}

// s3Error is an error answer from S3, read from its XML body.
type s3Error struct {
	Status  int
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func (e *s3Error) Error() string {
	return fmt.Sprintf("s3: %d %s: %s", e.Status, e.Code, e.Message)
}

// newS3Client returns a client for cfg's bucket. Connections are kept and reused between calls.
func newS3Client(cfg s3Config) (*s3Client, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	var base *url.URL
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3: endpoint %q is not an http(s) URL", cfg.Endpoint)
		}
		base = &url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/") + "/" + cfg.Bucket + "/"}
	} else {
		base = &url.URL{Scheme: "https", Host: cfg.Bucket + ".s3." + region + ".amazonaws.com", Path: "/"}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 64
	transport.ResponseHeaderTimeout = 30 * time.Second
	transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &s3Client{
		base:    base,
		bucket:  cfg.Bucket,
		prefix:  cfg.Prefix,
		signer:  &sigV4{accessKey: cfg.AccessKey, secretKey: cfg.SecretKey, region: region, service: "s3"},
		http:    &http.Client{Transport: transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		timeout: 30 * time.Second,
		retries: 3,
		now:     time.Now,
	}, nil
}

// objectURL is the URL of the object at key (S3_PREFIX prepended); the empty key is the bucket.
func (c *s3Client) objectURL(key string, query url.Values) *url.URL {
	u := *c.base
	if key != "" {
		u.Path += c.prefix + key
	}
	u.RawPath = uriEncode(u.Path, false)
	u.RawQuery = canonicalQuery(query)
	return &u
}

// s3Request is one call: what do sends, and how to send its body again on a retry.
type s3Request struct {
	method      string
	key         string
	query       url.Values
	header      http.Header
	body        func() io.Reader // nil: no body; called once per attempt
	size        int64
	payloadHash string // hex SHA-256 of the body; empty: of no body
	stream      bool   // the caller reads the body after do returns: no deadline on reading it
}

// do sends req, retrying connection errors, 5xx, 429 and SlowDown with jittered backoff. It returns
// the response of a 2xx or 304 (its body for the caller to close), an *s3Error for any other status,
// or an error wrapping errStorageUnavailable once the retries are spent.
func (c *s3Client) do(ctx context.Context, req s3Request) (*http.Response, error) {
	hash := req.payloadHash
	if hash == "" {
		hash = emptySHA256
	}
	var lastErr error
	for attempt := 0; attempt <= c.retries; attempt++ {
		if attempt > 0 {
			// 100 ms, 200 ms, 400 ms … each with up to half again as jitter.
			d := 100 * time.Millisecond << (attempt - 1)
			d += rand.N(d / 2)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(d):
			}
		}
		resp, cancel, err := c.attempt(ctx, req, hash)
		if err == nil && resp.StatusCode < 300 || err == nil && resp.StatusCode == http.StatusNotModified {
			if !req.stream {
				// Read now, under the call's deadline; the caller gets the bytes.
				body, rerr := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
				resp.Body.Close()
				cancel()
				if rerr != nil {
					lastErr = rerr
					continue
				}
				resp.Body = io.NopCloser(bytes.NewReader(body))
				return resp, nil
			}
			resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
			return resp, nil
		}
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = err
			continue
		}
		serr := readS3Error(resp)
		cancel()
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || serr.Code == "SlowDown" {
			lastErr = serr
			continue
		}
		return nil, serr
	}
	return nil, fmt.Errorf("%w: %s %s: %w", errStorageUnavailable, req.method, req.key, lastErr)
}

// attempt sends req once. Its context is cancelled by the returned func (after the body is read).
func (c *s3Client) attempt(ctx context.Context, req s3Request, hash string) (*http.Response, context.CancelFunc, error) {
	actx, cancel := context.WithCancel(ctx)
	// A body sent gets time for its bytes too, at no less than 512 KiB/s.
	timer := time.AfterFunc(c.timeout+time.Duration(req.size>>19)*time.Second, cancel)
	if req.stream {
		// A streamed body may take longer than the timeout to read: only the answer's headers are
		// bounded (by the transport's ResponseHeaderTimeout, and this timer until they arrive).
		defer timer.Stop()
	}
	var body io.Reader
	if req.body != nil {
		body = req.body()
	}
	r, err := http.NewRequestWithContext(actx, req.method, c.objectURL(req.key, req.query).String(), body)
	if err != nil {
		cancel()
		return nil, func() {}, err
	}
	if req.body != nil {
		r.ContentLength = req.size
	}
	for k, vs := range req.header {
		r.Header[k] = vs
	}
	r.Header.Set("X-Amz-Content-Sha256", hash)
	c.signer.sign(r, hash, c.now())
	resp, err := c.http.Do(r)
	if err != nil {
		timer.Stop()
		cancel()
		return nil, func() {}, err
	}
	return resp, func() { timer.Stop(); cancel() }, nil
}

// cancelOnClose releases a streamed call's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// readS3Error reads and closes an error answer's body: S3's <Error><Code>…</Code></Error>.
func readS3Error(resp *http.Response) *s3Error {
	defer resp.Body.Close()
	e := &s3Error{Status: resp.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if xml.Unmarshal(body, e) != nil || e.Code == "" {
		// A HEAD has no body; some proxies answer in plain text.
		e.Code = http.StatusText(resp.StatusCode)
	}
	e.Status = resp.StatusCode
	return e
}

// missing reports whether err says the key or bucket is not there.
func (e *s3Error) missing() bool {
	return e.Status == http.StatusNotFound || e.Code == "NoSuchKey" || e.Code == "NoSuchBucket"
}

// put stores size bytes from r at key, with contentType. sha256Hex is the content's SHA-256: S3
// checks the bytes it receives against it and refuses the call if one differs.
func (c *s3Client) put(ctx context.Context, key string, r io.ReaderAt, size int64, sha256Hex, contentType string) error {
	h := http.Header{}
	h.Set("Content-Type", contentType)
	resp, err := c.do(ctx, s3Request{method: http.MethodPut, key: key, header: h, size: size, payloadHash: sha256Hex,
		body: func() io.Reader { return io.NewSectionReader(r, 0, size) }})
	if err != nil {
		return fmt.Errorf("s3: put %s: %w", key, err)
	}
	resp.Body.Close()
	return nil
}

// get opens the object at key; header may carry Range and If-None-Match, passed on. The caller
// reads and closes the body. A missing key is errNotFound.
func (c *s3Client) get(ctx context.Context, key string, header http.Header) (*http.Response, error) {
	resp, err := c.do(ctx, s3Request{method: http.MethodGet, key: key, header: header, stream: true})
	var se *s3Error
	if errors.As(err, &se) && se.missing() {
		return nil, fmt.Errorf("s3: get %s: %w", key, errNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: get %s: %w", key, err)
	}
	return resp, nil
}

// head returns the size of the object at key; a missing key is errNotFound.
func (c *s3Client) head(ctx context.Context, key string) (int64, error) {
	resp, err := c.do(ctx, s3Request{method: http.MethodHead, key: key})
	var se *s3Error
	if errors.As(err, &se) && se.missing() {
		return 0, fmt.Errorf("s3: head %s: %w", key, errNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("s3: head %s: %w", key, err)
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

// delete removes the object at key; a missing one is not an error (S3 answers 204 either way).
func (c *s3Client) delete(ctx context.Context, key string) error {
	resp, err := c.do(ctx, s3Request{method: http.MethodDelete, key: key})
	var se *s3Error
	if errors.As(err, &se) && se.missing() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3: delete %s: %w", key, err)
	}
	resp.Body.Close()
	return nil
}

// s3Object is one entry of a listing: its key (without S3_PREFIX) and when it was last written.
type s3Object struct {
	Key          string    `xml:"Key"`
	LastModified time.Time `xml:"LastModified"`
	Size         int64     `xml:"Size"`
}

// list calls fn with each object whose key starts with prefix (S3_PREFIX is added and taken off),
// a page of at most 1000 at a time (ListObjectsV2, following continuation tokens), until fn or a
// call fails or ctx ends.
func (c *s3Client) list(ctx context.Context, prefix string, fn func([]s3Object) error) error {
	return c.listPaged(ctx, prefix, 1000, fn)
}

// listPaged is list with pages of at most pageSize objects.
func (c *s3Client) listPaged(ctx context.Context, prefix string, pageSize int, fn func([]s3Object) error) error {
	token := ""
	for {
		q := url.Values{"list-type": {"2"}, "prefix": {c.prefix + prefix}, "max-keys": {strconv.Itoa(pageSize)}}
		if token != "" {
			q.Set("continuation-token", token)
		}
		resp, err := c.do(ctx, s3Request{method: http.MethodGet, query: q})
		if err != nil {
			return fmt.Errorf("s3: list %s: %w", prefix, err)
		}
		var page struct {
			Contents    []s3Object `xml:"Contents"`
			IsTruncated bool       `xml:"IsTruncated"`
			NextToken   string     `xml:"NextContinuationToken"`
		}
		err = xml.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("s3: list %s: %w", prefix, err)
		}
		for i := range page.Contents {
			page.Contents[i].Key = strings.TrimPrefix(page.Contents[i].Key, c.prefix)
		}
		if err := fn(page.Contents); err != nil {
			return err
		}
		if !page.IsTruncated || page.NextToken == "" {
			return nil
		}
		token = page.NextToken
	}
}

// presignGet returns a URL that reads the object at key without credentials for ttl, answering with
// the given Content-Type and Content-Disposition.
func (c *s3Client) presignGet(key string, ttl time.Duration, contentType, disposition string) string {
	q := url.Values{}
	if contentType != "" {
		q.Set("response-content-type", contentType)
	}
	if disposition != "" {
		q.Set("response-content-disposition", disposition)
	}
	return c.signer.presign(http.MethodGet, c.objectURL(key, q), ttl, c.now()).String()
}

// ensureBucket checks that the bucket exists and creates it when it does not (and the credentials
// allow). Its error names the bucket.
func (c *s3Client) ensureBucket(ctx context.Context) error {
	resp, err := c.do(ctx, s3Request{method: http.MethodHead})
	if err == nil {
		resp.Body.Close()
		return nil
	}
	var se *s3Error
	if !errors.As(err, &se) || !se.missing() {
		return fmt.Errorf("s3: bucket %q: %w", c.bucket, err)
	}
	var body []byte
	if r := c.signer.region; r != "us-east-1" {
		body = []byte(`<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>` + r + `</LocationConstraint></CreateBucketConfiguration>`)
	}
	sum := sha256.Sum256(body)
	resp, err = c.do(ctx, s3Request{method: http.MethodPut, size: int64(len(body)), payloadHash: hex.EncodeToString(sum[:]),
		body: func() io.Reader { return bytes.NewReader(body) }})
	if errors.As(err, &se) && (se.Code == "BucketAlreadyOwnedByYou" || se.Code == "BucketAlreadyExists") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("s3: bucket %q does not exist and cannot be created: %w", c.bucket, err)
	}
	resp.Body.Close()
	return nil
}

// ping checks that the bucket answers (for /readyz).
func (c *s3Client) ping(ctx context.Context) error {
	resp, err := c.do(ctx, s3Request{method: http.MethodHead})
	if err != nil {
		return fmt.Errorf("s3: bucket %q: %w", c.bucket, err)
	}
	resp.Body.Close()
	return nil
}
