package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The AWS Signature Version 4 test suite (docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html,
// also kept in aws-c-auth's tests/aws-signing-test-suite): key pair AKIDEXAMPLE, region us-east-1,
// service "service", 2015-08-30T12:36:00Z. Each case is the suite's request and its published
// Authorization header.
func TestPureSigV4Suite(t *testing.T) {
	s := &sigV4{accessKey: "AKIDEXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", region: "us-east-1", service: "service"}
	at := time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC)
	const scope = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
	cases := []struct {
		name, method, url string
		headers           [][2]string // in the order sent
		want              string
	}{
		{"get-vanilla", "GET", "https://example.amazonaws.com/", nil,
			"SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
		{"post-vanilla", "POST", "https://example.amazonaws.com/", nil,
			"SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
		{"get-vanilla-query-order-key-case", "GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", nil,
			"SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
		{"get-unreserved", "GET", "https://example.amazonaws.com/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", nil,
			"SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
		{"post-header-value-case", "POST", "https://example.amazonaws.com/", [][2]string{{"My-Header1", "VALUE1"}},
			"SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
		{"get-header-value-trim", "GET", "https://example.amazonaws.com/", [][2]string{{"My-Header1", " value1"}, {"My-Header2", `"a   b   c"`}},
			"SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
		{"get-header-key-duplicate", "GET", "https://example.amazonaws.com/", [][2]string{{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}},
			"SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
	}
	for _, c := range cases {
		r := newRequestWith(t, c.method, c.url, c.headers)
		s.sign(r, emptySHA256, at)
		if got := r.Header.Get("Authorization"); got != scope+c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, scope+c.want)
		}
		if got := r.Header.Get("X-Amz-Date"); got != "20150830T123600Z" {
			t.Errorf("%s: X-Amz-Date = %q", c.name, got)
		}
	}
}

// The worked examples of S3's own documentation (AmazonS3/latest/API/sig-v4-header-based-auth.html
// and sigv4-query-string-auth.html): key pair AKIAIOSFODNN7EXAMPLE, bucket examplebucket,
// 2013-05-24T00:00:00Z, with their published signatures.
func TestPureSigV4S3Examples(t *testing.T) {
	s := &sigV4{accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1", service: "s3"}
	at := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	sigOf := func(r *http.Request) string {
		a := r.Header.Get("Authorization")
		return a[strings.LastIndex(a, "Signature=")+len("Signature="):]
	}
	cases := []struct {
		name, method, url, payload string
		headers                    [][2]string
		wantSigned, want           string
	}{
		{"GET object with a range", "GET", "https://examplebucket.s3.amazonaws.com/test.txt", emptySHA256,
			[][2]string{{"Range", "bytes=0-9"}},
			"host;range;x-amz-content-sha256;x-amz-date", "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"},
		{"PUT object", "PUT", "https://examplebucket.s3.amazonaws.com/test$file.text",
			"44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072", // SHA-256 of "Welcome to Amazon S3."
			[][2]string{{"Date", "Fri, 24 May 2013 00:00:00 GMT"}, {"X-Amz-Storage-Class", "REDUCED_REDUNDANCY"}},
			"date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class", "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"},
		{"GET bucket (list objects)", "GET", "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J", emptySHA256, nil,
			"host;x-amz-content-sha256;x-amz-date", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"},
	}
	for _, c := range cases {
		r := newRequestWith(t, c.method, c.url, c.headers)
		r.Header.Set("X-Amz-Content-Sha256", c.payload)
		s.sign(r, c.payload, at)
		if got := sigOf(r); got != c.want {
			t.Errorf("%s: signature %s, want %s", c.name, got, c.want)
		}
		if !strings.Contains(r.Header.Get("Authorization"), "SignedHeaders="+c.wantSigned+",") {
			t.Errorf("%s: %s, want SignedHeaders=%s", c.name, r.Header.Get("Authorization"), c.wantSigned)
		}
	}

	// The presigned GET of the query-string example, published URL and all.
	u, _ := url.Parse("https://examplebucket.s3.amazonaws.com/test.txt")
	got := s.presign("GET", u, 24*time.Hour, at).String()
	want := "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
	if got != want {
		t.Errorf("presigned URL:\n got %s\nwant %s", got, want)
	}
}

func TestPureURIEncode(t *testing.T) {
	for _, c := range []struct {
		in    string
		slash bool
		want  string
	}{
		{"a b", true, "a%20b"},
		{"a+b", true, "a%2Bb"},
		{"100%", true, "100%25"},
		{"ключ", true, "%D0%BA%D0%BB%D1%8E%D1%87"},
		{"o/ab/cd.thumb_100.jpg", false, "o/ab/cd.thumb_100.jpg"},
		{"a/b", true, "a%2Fb"},
		{"test$file.text", false, "test%24file.text"},
		{"A-z_0.9~", true, "A-z_0.9~"},
	} {
		if got := uriEncode(c.in, c.slash); got != c.want {
			t.Errorf("uriEncode(%q, %v) = %q, want %q", c.in, c.slash, got, c.want)
		}
	}
	if got, want := canonicalQuery(url.Values{"b": {"2"}, "a": {"x y", "+"}, "c": {""}}), "a=%2B&a=x%20y&b=2&c="; got != want {
		t.Errorf("canonicalQuery = %q, want %q", got, want)
	}
}

// newRequestWith is a request with headers added in the order given (repeats kept).
func newRequestWith(t *testing.T, method, url string, headers [][2]string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		r.Header.Add(h[0], h[1])
	}
	return r
}

// TestS3Client: the calls the blob store makes, against the real endpoint: a put S3 checks against
// its SHA-256 (a wrong one is refused), get with a range, head, a listing over several pages,
// missing keys, and delete.
func TestS3Client(t *testing.T) {
	env := s3TestEnv(t)
	c, err := newS3Client(s3Config{Endpoint: env["S3_ENDPOINT"], Bucket: env["S3_BUCKET"], AccessKey: env["S3_ACCESS_KEY_ID"],
		SecretKey: env["S3_SECRET_ACCESS_KEY"], Prefix: env["S3_PREFIX"]})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := readTestdata(t, "mid.jpg")
	key := newKey()
	sum := sha256Hex(data)
	wrong := sha256Hex([]byte("something else"))
	if err := c.put(ctx, key, bytes.NewReader(data), int64(len(data)), wrong, "image/jpeg"); err == nil {
		t.Fatal("a put whose bytes do not match its SHA-256 was stored")
	}
	if err := c.put(ctx, key, bytes.NewReader(data), int64(len(data)), sum, "image/jpeg"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.head(ctx, key); err != nil || n != int64(len(data)) {
		t.Fatalf("head: %d, %v", n, err)
	}
	resp, err := c.get(ctx, key, http.Header{"Range": {"bytes=10-19"}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[10:20]) {
		t.Fatalf("ranged get: %d, %q", resp.StatusCode, got)
	}
	if _, err := c.get(ctx, newKey(), nil); !errors.Is(err, errNotFound) {
		t.Fatalf("get of a missing key: %v", err)
	}
	if _, err := c.head(ctx, newKey()); !errors.Is(err, errNotFound) {
		t.Fatalf("head of a missing key: %v", err)
	}
	// Listing in pages: 1000 per page is the most S3 gives; here the page is forced small.
	var many []string
	for i := range 7 {
		k := fmt.Sprintf("o/zz/page%d", i)
		many = append(many, k)
		if err := c.put(ctx, k, strings.NewReader("x"), 1, sha256Hex([]byte("x")), "text/plain"); err != nil {
			t.Fatal(err)
		}
	}
	pages, listed := 0, 0
	err = c.listPaged(ctx, "o/zz/", 3, func(objs []s3Object) error {
		pages++
		listed += len(objs)
		return nil
	})
	if err != nil || pages != 3 || listed != 7 {
		t.Fatalf("listing: %d pages, %d objects, %v; want 3 pages of 7", pages, listed, err)
	}
	for _, k := range append(many, key) {
		if err := c.delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.delete(ctx, key); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	if _, err := c.head(ctx, key); !errors.Is(err, errNotFound) {
		t.Errorf("after delete: %v", err)
	}
}
