package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDownloadRedirect: with DOWNLOAD_REDIRECT=on a download, by token or signed link, answers 307 to
// a presigned S3 GET that serves the bytes with the right type and name, for about a minute.
func TestDownloadRedirect(t *testing.T) {
	s := newTestServer(t, with(s3TestEnv(t), "DOWNLOAD_REDIRECT", "on"))
	_, auth := s.signupAndLogin()
	data := tinyPNG(t, 6, 6)
	v := s.mustUpload(auth, "moon", "", "m.png", data)
	for _, r := range []response{
		s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", v.ID), nil, "Authorization", auth),
		s.do("GET", v.SignedURL, nil),
	} {
		loc := r.header.Get("Location")
		if r.status != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, needS3(t).Endpoint+"/") || !strings.Contains(loc, "X-Amz-Expires=60") {
			t.Fatalf("redirect: %d Location %q", r.status, loc)
		}
		resp, err := http.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("Content-Type") != "image/png" ||
			!strings.Contains(resp.Header.Get("Content-Disposition"), "moon.png") {
			t.Fatalf("presigned GET: %d %s %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), len(body))
		}
	}
	// A presigned URL altered is refused by S3 itself.
	r := s.do("GET", fmt.Sprintf("/api/v1/images/%d/file", v.ID), nil, "Authorization", auth)
	resp, err := http.Get(strings.Replace(r.header.Get("Location"), "X-Amz-Expires=60", "X-Amz-Expires=600", 1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("altered presigned URL: %d", resp.StatusCode)
	}
}

// TestScaleOut: two API processes and two worker processes of the real binary, each with an empty
// UPLOAD_DIR of its own, share nothing but PostgreSQL, RabbitMQ and one bucket: an image uploaded
// through one API is processed by some worker and served, every variant, by the other API, by
// token and by signed link; a delete through the first removes every object, and no UPLOAD_DIR
// holds a file afterwards.
func TestScaleOut(t *testing.T) {
	t.Parallel() // mostly waiting for processes: it overlaps the others
	db, queue, s3env := freshDatabase(t), testQueue(t), s3TestEnv(t)
	var dirs []string
	procEnv := func() map[string]string {
		dirs = append(dirs, t.TempDir())
		return with(s3env, "DATABASE_URL", db, "BROKER_URL", needBroker(t), "QUEUE_NAME", queue, "UPLOAD_DIR", dirs[len(dirs)-1],
			"SECRET_KEY", "scale-out-test-secret-0123456789abcdef")
	}
	apis := []*binaryServer{startBinary(t, procEnv(), "-mode=api"), startBinary(t, procEnv(), "-mode=api")}
	for range 2 {
		startBinary(t, procEnv(), "-mode=worker")
	}
	call := func(base, method, path string, body any, header ...string) response {
		return doRequest(t, base, method, path, body, header...)
	}
	auth := signupVia(t, apis[0].base)
	var ids []int64
	for i, name := range []string{"mid.jpg", "photo.png", "small.webp"} {
		body, ct := multipartBody(t, "file", name, readTestdata(t, name))
		r := call(apis[i%2].base, "POST", "/api/v1/images/?name="+name, body, "Authorization", auth, "Content-Type", ct)
		if r.status != 201 {
			t.Fatalf("upload %s: %d %s", name, r.status, r.body)
		}
		var v imageView
		r.json(t, &v)
		ids = append(ids, v.ID)
	}
	for i, id := range ids {
		other := apis[(i+1)%2].base
		var v imageView
		for deadline := time.Now().Add(time.Minute); v.Status != statusReady; time.Sleep(100 * time.Millisecond) {
			call(other, "GET", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth).json(t, &v)
			if v.Status == statusFailed || time.Now().After(deadline) {
				t.Fatalf("image %d: %s", id, v.Status)
			}
		}
		for name, meta := range v.Variants {
			byToken := call(other, "GET", meta.URL, nil, "Authorization", auth)
			bySignature := call(apis[i%2].base, "GET", meta.SignedURL, nil)
			if byToken.status != 200 || int64(len(byToken.body)) != meta.Size || !bytes.Equal(bySignature.body, byToken.body) {
				t.Fatalf("image %d %s: %d (%d bytes), signed %d", id, name, byToken.status, len(byToken.body), bySignature.status)
			}
		}
		if r := call(other, "GET", v.URL, nil, "Authorization", auth); r.status != 200 || sha256Hex(r.body) != v.SHA256 {
			t.Fatalf("original through the other API: %d", r.status)
		}
	}
	for i, id := range ids {
		if r := call(apis[i%2].base, "DELETE", fmt.Sprint("/api/v1/images/", id), nil, "Authorization", auth); r.status != 204 {
			t.Fatalf("delete %d: %d", id, r.status)
		}
	}
	cfg := needS3(t)
	cfg.Prefix = s3env["S3_PREFIX"]
	s3c, _ := newS3Client(cfg)
	left := 0
	s3c.list(context.Background(), "", func(objs []s3Object) error { left += len(objs); return nil })
	if left != 0 {
		t.Errorf("%d objects left after deleting every image", left)
	}
	// Every process's UPLOAD_DIR holds nothing but its empty temp directory.
	for _, d := range dirs {
		if files := filesUnder(t, d); len(files) != 0 {
			t.Errorf("files left in an UPLOAD_DIR: %v", files)
		}
	}
	for _, a := range apis {
		a.stop(syscall.SIGTERM)
	}
}

// signupVia signs a new user up through the API at base and returns its Authorization header.
func signupVia(t *testing.T, base string) string {
	t.Helper()
	user := "u" + randomHex(6)
	creds := fmt.Sprintf(`{"username":%q,"password":"correct horse battery staple"}`, user)
	for _, path := range []string{"/api/v1/auth/signup", "/api/v1/auth/token"} {
		resp, err := http.Post(base+path, "application/json", strings.NewReader(creds))
		if err != nil {
			t.Fatal(err)
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		err = json.NewDecoder(resp.Body).Decode(&tok)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, err)
		}
		if path == "/api/v1/auth/token" {
			return "Bearer " + tok.AccessToken
		}
	}
	return ""
}

// sha256Hex is the hex SHA-256 of b.
func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// BenchmarkStorage compares the two blob stores through the API: uploads of the 13.4 MP JPEG, 8 at
// once, and downloads of it, 8×GOMAXPROCS at once, streamed by the API or (s3-redirect) fetched from
// the bucket after a 307. The filesystem is the baseline of the bucket (SeaweedFS on the same machine).
func BenchmarkStorage(b *testing.B) {
	photo := readTestdata(b, "large.jpg")
	body, ct := multipartBody(b, "file", "large.jpg", photo)
	for _, be := range backends {
		s := newTestServer(b, with(be.env(b), "LOG_LEVEL", "error"))
		_, auth := s.signupAndLogin()
		v := s.mustUpload(auth, "bench", "", "large.jpg", photo)
		b.Run("upload/"+be.name, func(b *testing.B) {
			b.SetBytes(int64(len(photo)))
			benchPOST(b, 8, s.srv.URL+"/api/v1/images/?name=bench", body, "Content-Type", ct, "Authorization", auth)
		})
		b.Run("download/"+be.name, func(b *testing.B) {
			b.SetBytes(int64(len(photo)))
			benchGET(b, s.srv.URL+v.URL, "Authorization", auth)
		})
	}
	// The bucket's own GET, through DOWNLOAD_REDIRECT's 307 (the client follows it): what the API
	// no longer carries.
	s := newTestServer(b, with(s3TestEnv(b), "LOG_LEVEL", "error", "DOWNLOAD_REDIRECT", "on"))
	_, auth := s.signupAndLogin()
	v := s.mustUpload(auth, "bench", "", "large.jpg", photo)
	b.Run("download/s3-redirect", func(b *testing.B) {
		b.SetBytes(int64(len(photo)))
		benchGET(b, s.srv.URL+v.URL, "Authorization", auth)
	})
}

// TestSweepOrphans: files no row refers to (a crash between placing and inserting, or between
// deleting a row and its files) are removed once old enough; files with rows stay.
func TestSweepOrphans(t *testing.T) { forEachBackend(t, testSweepOrphans) }
