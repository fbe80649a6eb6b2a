package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// openAPIDoc is the embedded document, decoded.
func openAPIDoc(t testing.TB) map[string]any {
	t.Helper()
	b, err := docFiles.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options"}

// TestOpenAPIMatchesRoutes: every route the server registers is in the document, and every
// operation in the document is a route the server registers.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := newTestServer(t, nil)
	served := map[string]bool{}
	for _, rt := range s.routeTable() {
		served[rt.method+" "+strings.TrimSuffix(rt.pattern, "{$}")] = true
	}
	documented := map[string]bool{}
	for path, item := range openAPIDoc(t)["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if slices.Contains(httpMethods, m) {
				documented[strings.ToUpper(m)+" "+path] = true
			}
		}
	}
	for r := range served {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for r := range documented {
		if !served[r] {
			t.Errorf("openapi.json documents %s, which the server does not serve", r)
		}
	}
}

// schemaValidator checks JSON values against the subset of JSON Schema (2020-12, as OpenAPI 3.1
// uses it) that openapi.json uses: $ref, type (one or a list), properties, required,
// additionalProperties, items, maxItems, enum, oneOf, pattern, minLength, maxLength, minimum,
// maximum, and format date-time.
type schemaValidator struct{ doc map[string]any }

func (v schemaValidator) resolve(s map[string]any) map[string]any {
	for {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s
		}
		node := any(v.doc)
		for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			node = node.(map[string]any)[part]
		}
		s = node.(map[string]any)
	}
}

// validate returns what is wrong with value under schema, each problem prefixed by where it is.
func (v schemaValidator) validate(schema map[string]any, value any, at string) []string {
	s := v.resolve(schema)
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }
	if alts, ok := s["oneOf"].([]any); ok {
		n := 0
		for _, alt := range alts {
			if len(v.validate(alt.(map[string]any), value, at)) == 0 {
				n++
			}
		}
		if n != 1 {
			fail("matches %d of oneOf's schemas, want exactly 1", n)
		}
	}
	if typ, ok := s["type"]; ok {
		var types []string
		switch t := typ.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, x.(string))
			}
		}
		if !slices.Contains(types, jsonType(value)) && !(jsonType(value) == "integer" && slices.Contains(types, "number")) {
			fail("is %s, want %v", jsonType(value), types)
			return errs
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(value) }) {
		fail("%v is not one of %v", value, enum)
	}
	switch x := value.(type) {
	case string:
		v.validateString(s, x, fail)
	case float64:
		if n, ok := s["minimum"].(float64); ok && x < n {
			fail("%v is below %v", x, n)
		}
		if n, ok := s["maximum"].(float64); ok && x > n {
			fail("%v is above %v", x, n)
		}
	case []any:
		if n, ok := s["maxItems"].(float64); ok && float64(len(x)) > n {
			fail("more than %v items", n)
		}
		if items, ok := s["items"].(map[string]any); ok {
			for i, e := range x {
				errs = append(errs, v.validate(items, e, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	case map[string]any:
		errs = append(errs, v.validateObject(s, x, at, fail)...)
	}
	return errs
}

// validateString checks a string against s's pattern, lengths and date-time format.
func (v schemaValidator) validateString(s map[string]any, x string, fail func(string, ...any)) {
	if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(x) {
		fail("%q does not match %s", x, p)
	}
	if n, ok := s["minLength"].(float64); ok && float64(len([]rune(x))) < n {
		fail("shorter than %v", n)
	}
	if n, ok := s["maxLength"].(float64); ok && float64(len([]rune(x))) > n {
		fail("longer than %v", n)
	}
	if s["format"] == "date-time" {
		if _, err := time.Parse(time.RFC3339Nano, x); err != nil {
			fail("%q is not a date-time", x)
		}
	}
}

// validateObject checks an object against s's required properties, its properties' schemas and
// additionalProperties, returning the errors found below it (fail records those at it).
func (v schemaValidator) validateObject(s map[string]any, x map[string]any, at string, fail func(string, ...any)) []string {
	var errs []string
	props, _ := s["properties"].(map[string]any)
	for _, r := range asStrings(s["required"]) {
		if _, ok := x[r]; !ok {
			fail("lacks required %q", r)
		}
	}
	for k, e := range x {
		if ps, ok := props[k]; ok {
			errs = append(errs, v.validate(ps.(map[string]any), e, at+"."+k)...)
			continue
		}
		switch ap := s["additionalProperties"].(type) {
		case bool:
			if !ap {
				fail("has %q, which the schema does not allow", k)
			}
		case map[string]any:
			errs = append(errs, v.validate(ap, e, at+"."+k)...)
		}
	}
	return errs
}

func asStrings(v any) []string {
	var out []string
	for _, x := range asSlice(v) {
		out = append(out, x.(string))
	}
	return out
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// jsonType names the JSON Schema type of a decoded JSON value.
func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case float64:
		if x == math.Trunc(x) {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	}
	return "object"
}

func TestPureSchemaValidator(t *testing.T) {
	v := schemaValidator{openAPIDoc(t)}
	image := map[string]any{"$ref": "#/components/schemas/Image"}
	good := map[string]any{"id": 1.0, "name": "n", "tags": []any{}, "status": "ready", "error": nil, "content_type": "image/png", "width": 1.0, "height": 1.0,
		"resolution": "1x1", "size": 3.0, "sha256": strings.Repeat("a", 64), "url": "/x", "signed_url": "/x/signed", "placeholder": nil, "created_at": "2026-11-27T05:06:40.872022Z",
		"updated_at": "2026-11-27T05:06:40Z", "srcset": "", "variants": map[string]any{"thumb_100": map[string]any{"width": 1.0, "height": 1.0, "size": 2.0, "content_type": "image/png", "url": "/y", "signed_url": "/y/signed"}}}
	if errs := v.validate(image, good, "image"); len(errs) != 0 {
		t.Fatalf("a valid image is refused: %v", errs)
	}
	for name, mutate := range map[string]func(m map[string]any){
		"missing field":   func(m map[string]any) { delete(m, "sha256") },
		"extra field":     func(m map[string]any) { m["owner_id"] = 1.0 },
		"bad enum":        func(m map[string]any) { m["status"] = "done" },
		"wrong type":      func(m map[string]any) { m["width"] = "1" },
		"bad pattern":     func(m map[string]any) { m["sha256"] = "xyz" },
		"bad date":        func(m map[string]any) { m["created_at"] = "yesterday" },
		"bad variant":     func(m map[string]any) { m["variants"] = map[string]any{"thumb_100": map[string]any{"width": 1.0}} },
		"error not null":  func(m map[string]any) { m["error"] = 5.0 },
		"tags not a list": func(m map[string]any) { m["tags"] = "a,b" },
	} {
		m := map[string]any{}
		for k, val := range good {
			m[k] = val
		}
		mutate(m)
		if errs := v.validate(image, m, "image"); len(errs) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestOpenAPIResponses sends real requests for every documented operation and checks that each
// answer's status is documented for it, and that a JSON body validates against the documented
// schema for its content type.
func TestOpenAPIResponses(t *testing.T) {
	s := newTestServer(t, map[string]string{"MAX_UPLOAD_BYTES": "100000"})
	c := &conformance{t: t, doc: openAPIDoc(t), seen: map[string]map[string]bool{}}
	name, auth := c.authRequests(s)
	c.imageRequests(s, auth)
	c.serviceRequests(s, name)
	c.accountRequests(s)
	c.allSeen()
}

// accountRequests reads, changes and deletes an account and its keys, rightly and wrongly, and
// provokes the password checks' 429.
func (c *conformance) accountRequests(s *testServer) {
	t := c.t
	_, auth := s.signupAndLogin()
	me, pw, out := "/api/v1/auth/me", "/api/v1/auth/password", "/api/v1/auth/logout-all"
	keys, key := "/api/v1/auth/keys", "/api/v1/auth/keys/{id}"
	big := strings.Repeat(" ", maxJSONBytes+1)
	c.check("GET", me, s.do("GET", me, nil, "Authorization", auth))
	c.check("GET", me, s.do("GET", me, nil))
	c.check("POST", keys, s.do("POST", keys, map[string]any{"name": ""}, "Authorization", auth))
	c.check("POST", keys, s.do("POST", keys, "x", "Authorization", auth, "Content-Type", "text/plain"))
	c.check("POST", keys, s.do("POST", keys, big, "Authorization", auth, "Content-Type", "application/json"))
	c.check("POST", keys, s.do("POST", keys, map[string]any{"name": "k"}))
	var made apiKeyCreated
	r := s.do("POST", keys, map[string]any{"name": "doc", "expires_at": time.Now().Add(time.Hour)}, "Authorization", auth)
	c.check("POST", keys, r)
	r.json(t, &made)
	for i := range maxAPIKeysPerUser {
		c.check("POST", keys, s.do("POST", keys, map[string]any{"name": fmt.Sprint("k", i)}, "Authorization", auth))
	}
	c.check("GET", keys, s.do("GET", keys, nil, "Authorization", "Bearer "+made.Key))
	c.check("GET", keys, s.do("GET", keys, nil))
	c.check("DELETE", key, s.do("DELETE", fmt.Sprint(keys, "/", made.ID), nil, "Authorization", auth))
	c.check("DELETE", key, s.do("DELETE", fmt.Sprint(keys, "/", made.ID), nil, "Authorization", auth))
	c.check("DELETE", key, s.do("DELETE", fmt.Sprint(keys, "/", made.ID), nil))
	c.check("POST", pw, s.do("POST", pw, passwordChange{"wrong password", "battery staple"}, "Authorization", auth))
	c.check("POST", pw, s.do("POST", pw, passwordChange{"correct horse", "short"}, "Authorization", auth))
	c.check("POST", pw, s.do("POST", pw, "x", "Authorization", auth, "Content-Type", "text/plain"))
	c.check("POST", pw, s.do("POST", pw, big, "Authorization", auth, "Content-Type", "application/json"))
	c.check("POST", pw, s.do("POST", pw, passwordChange{"correct horse", "battery staple"}))
	r = s.do("POST", pw, passwordChange{"correct horse", "battery staple"}, "Authorization", auth)
	c.check("POST", pw, r)
	var tok tokenResponse
	r.json(t, &tok)
	auth = "Bearer " + tok.AccessToken
	c.check("POST", out, s.do("POST", out, nil, "Authorization", auth))
	c.check("POST", out, s.do("POST", out, nil, "Authorization", auth))
	_, auth = s.signupAndLogin()
	c.check("DELETE", me, s.do("DELETE", me, accountDeletion{"wrong password"}, "Authorization", auth))
	c.check("DELETE", me, s.do("DELETE", me, "x", "Authorization", auth, "Content-Type", "text/plain"))
	c.check("DELETE", me, s.do("DELETE", me, big, "Authorization", auth, "Content-Type", "application/json"))
	c.check("DELETE", me, s.do("DELETE", me, "{", "Authorization", auth, "Content-Type", "application/json"))
	c.check("POST", pw, s.do("POST", pw, "{", "Authorization", auth, "Content-Type", "application/json"))
	c.check("DELETE", me, s.do("DELETE", me, accountDeletion{"correct horse"}, "Authorization", auth))
	c.check("DELETE", me, s.do("DELETE", me, accountDeletion{"correct horse"}, "Authorization", auth))
	// The password checks count as sign-ins: one failure a minute from this address, then 429.
	limited := newTestServer(t, map[string]string{"AUTH_RATE_PER_ADDR": "1"})
	_, lauth := limited.signupAndLogin()
	for range 2 {
		c.check("POST", pw, limited.do("POST", pw, passwordChange{"wrong password", "battery staple"}, "Authorization", lauth))
	}
	c.check("DELETE", me, limited.do("DELETE", me, accountDeletion{"wrong password"}, "Authorization", lauth))
}

// conformance checks real answers against the OpenAPI document and records which documented
// statuses of each operation were seen.
type conformance struct {
	t    *testing.T
	doc  map[string]any
	seen map[string]map[string]bool // operation → statuses exercised
}

// check holds r, the answer to method path (the document's path pattern), to the document: its
// status documented, its content type too, and a JSON body valid against the schema.
func (c *conformance) check(method, path string, r response) {
	t := c.t
	t.Helper()
	op, ok := c.doc["paths"].(map[string]any)[path].(map[string]any)[strings.ToLower(method)].(map[string]any)
	if !ok {
		t.Fatalf("%s %s is not documented", method, path)
	}
	status := fmt.Sprint(r.status)
	if c.seen[method+" "+path] == nil {
		c.seen[method+" "+path] = map[string]bool{}
	}
	c.seen[method+" "+path][status] = true
	resp, ok := op["responses"].(map[string]any)[status].(map[string]any)
	if !ok {
		t.Errorf("%s %s answered %s, which is not documented (body %s)", method, path, status, r.body)
		return
	}
	if len(r.body) == 0 {
		return
	}
	ct, _, _ := mime.ParseMediaType(r.header.Get("Content-Type"))
	content, _ := resp["content"].(map[string]any)
	media, ok := content[ct].(map[string]any)
	if !ok {
		for pattern, m := range content {
			if pattern == "*/*" || strings.HasSuffix(pattern, "/*") && strings.HasPrefix(ct, strings.TrimSuffix(pattern, "*")) {
				media, ok = m.(map[string]any), true
			}
		}
	}
	if !ok {
		t.Errorf("%s %s %s: content type %q is not documented", method, path, status, ct)
		return
	}
	if ct != "application/json" && ct != "application/problem+json" {
		return
	}
	var body any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Errorf("%s %s %s: body is not JSON: %v", method, path, status, err)
		return
	}
	for _, e := range (schemaValidator{c.doc}).validate(media["schema"].(map[string]any), body, "body") {
		t.Errorf("%s %s %s: %s", method, path, status, e)
	}
}

// authRequests signs up and in, rightly and wrongly, and returns the user's name and bearer header.
func (c *conformance) authRequests(s *testServer) (string, string) {
	name := "doc_" + randomHex(4)
	c.check("POST", "/api/v1/auth/signup", s.do("POST", "/api/v1/auth/signup", credentials{name, "password1"}))
	c.check("POST", "/api/v1/auth/signup", s.do("POST", "/api/v1/auth/signup", credentials{name, "password1"}))
	c.check("POST", "/api/v1/auth/signup", s.do("POST", "/api/v1/auth/signup", credentials{"x", "y"}))
	c.check("POST", "/api/v1/auth/signup", s.do("POST", "/api/v1/auth/signup", "a=b", "Content-Type", "text/plain"))
	c.check("POST", "/api/v1/auth/signup", s.do("POST", "/api/v1/auth/signup", strings.Repeat(" ", maxJSONBytes+1), "Content-Type", "application/json"))
	tok := s.do("POST", "/api/v1/auth/token", url.Values{"username": {name}, "password": {"password1"}}.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	c.check("POST", "/api/v1/auth/token", tok)
	c.check("POST", "/api/v1/auth/token", s.do("POST", "/api/v1/auth/token", credentials{name, "wrong pass"}))
	c.check("POST", "/api/v1/auth/token", s.do("POST", "/api/v1/auth/token", map[string]string{}))
	c.check("POST", "/api/v1/auth/token", s.do("POST", "/api/v1/auth/token", "x", "Content-Type", "text/plain"))
	c.check("POST", "/api/v1/auth/token", s.do("POST", "/api/v1/auth/token", "username="+strings.Repeat("u", maxJSONBytes), "Content-Type", "application/x-www-form-urlencoded"))
	var tr tokenResponse
	tok.json(c.t, &tr)
	return name, "Bearer " + tr.AccessToken
}

// imageRequests uploads, lists, reads, edits, downloads (by token and signed link) and deletes,
// rightly and wrongly.
func (c *conformance) imageRequests(s *testServer, auth string) {
	t := c.t
	for _, p := range []string{"/api/v1/images/", "/api/v1/images"} {
		body, ct := multipartBody(t, "file", "a.png", tinyPNG(t, 4, 3))
		c.check("POST", p, s.do("POST", p+"?name=doc&tags=a,b", body, "Authorization", auth, "Content-Type", ct))
		c.check("POST", p, s.do("POST", p+"?name=doc", body, "Content-Type", ct))
		c.check("POST", p, s.do("POST", p+"?name=", body, "Authorization", auth, "Content-Type", ct))
		c.check("POST", p, s.do("POST", p+"?name=doc", []byte("x"), "Authorization", auth, "Content-Type", "image/png"))
		big, bct := multipartBody(t, "file", "m.jpg", readTestdata(t, "mid.jpg"))
		c.check("POST", p, s.do("POST", p+"?name=doc", big, "Authorization", auth, "Content-Type", bct))
		c.check("POST", p, s.do("POST", p+"?name=doc", body[:len(body)-20], "Authorization", auth, "Content-Type", ct))
		c.check("GET", p, s.do("GET", p+"?limit=5", nil, "Authorization", auth))
		c.check("GET", p, s.do("GET", p+"?limit=500", nil, "Authorization", auth))
		c.check("GET", p, s.do("GET", p, nil))
	}
	var list []imageView
	s.do("GET", "/api/v1/images/", nil, "Authorization", auth).json(t, &list)
	id := fmt.Sprint(list[0].ID)
	if out, _ := s.handleJob(t.Context(), list[1].ID); out != jobDone {
		t.Fatal("job failed")
	}
	ready := fmt.Sprint(list[1].ID)
	item := "/api/v1/images/{id}"
	c.check("GET", item, s.do("GET", "/api/v1/images/"+ready, nil, "Authorization", auth))
	c.check("GET", item, s.do("GET", "/api/v1/images/999999999", nil, "Authorization", auth))
	c.check("GET", item, s.do("GET", "/api/v1/images/"+id, nil))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/"+id, map[string]any{"name": "renamed", "tags": []string{"x"}}, "Authorization", auth))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/"+id, map[string]any{"name": ""}, "Authorization", auth))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/"+id, "x", "Authorization", auth, "Content-Type", "text/plain"))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/"+id, strings.Repeat(" ", maxJSONBytes+1), "Authorization", auth, "Content-Type", "application/json"))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/999999999", map[string]any{"name": "x"}, "Authorization", auth))
	c.check("PUT", item, s.do("PUT", "/api/v1/images/"+id, map[string]any{"name": "x"}))
	file := "/api/v1/images/{id}/file"
	d := s.do("GET", "/api/v1/images/"+ready+"/file", nil, "Authorization", auth)
	c.check("GET", file, d)
	c.check("GET", file, s.do("GET", "/api/v1/images/"+ready+"/file?variant=thumb_100", nil, "Authorization", auth))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+ready+"/file", nil, "Authorization", auth, "Range", "bytes=0-9"))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+ready+"/file?variant=", nil, "Authorization", auth, "Range", "bytes=99999999-"))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+ready+"/file", nil, "Authorization", auth, "If-None-Match", d.header.Get("ETag")))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+id+"/file?variant=grayscale", nil, "Authorization", auth))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+id+"/file?variant=sepia", nil, "Authorization", auth))
	c.check("GET", file, s.do("GET", "/api/v1/images/999999999/file", nil, "Authorization", auth))
	c.check("GET", file, s.do("GET", "/api/v1/images/"+id+"/file", nil))
	signed := "/api/v1/images/{id}/file/signed"
	var readyImage imageView
	s.do("GET", "/api/v1/images/"+ready, nil, "Authorization", auth).json(t, &readyImage)
	sd := s.do("GET", readyImage.SignedURL, nil)
	c.check("GET", signed, sd)
	c.check("GET", signed, s.do("GET", readyImage.SignedURL, nil, "Range", "bytes=0-9"))
	c.check("GET", signed, s.do("GET", readyImage.SignedURL, nil, "Range", "bytes=99999999-"))
	c.check("GET", signed, s.do("GET", readyImage.SignedURL, nil, "If-None-Match", sd.header.Get("ETag")))
	c.check("GET", signed, s.do("GET", readyImage.SignedURL+"0", nil))
	var pending imageView
	s.do("GET", "/api/v1/images/"+id, nil, "Authorization", auth).json(t, &pending)
	c.check("GET", signed, s.do("GET", strings.Replace(pending.SignedURL, "variant=original", "variant=grayscale", 1), nil))
	grayLink, err := url.Parse(pending.SignedURL)
	if err != nil {
		t.Fatal(err)
	}
	q := grayLink.Query()
	exp, _ := strconv.ParseInt(q.Get("expires"), 10, 64)
	owner, _ := strconv.ParseInt(q.Get("owner"), 10, 64)
	q.Set("variant", "grayscale")
	q.Set("signature", s.signer.mac(pending.ID, "grayscale", owner, exp))
	c.check("GET", signed, s.do("GET", grayLink.Path+"?"+q.Encode(), nil))
	redirecting := newTestServer(t, with(s3TestEnv(t), "DOWNLOAD_REDIRECT", "on"))
	_, rauth := redirecting.signupAndLogin()
	rv := redirecting.mustUpload(rauth, "r", "", "r.png", tinyPNG(t, 3, 3))
	c.check("GET", file, redirecting.do("GET", fmt.Sprintf("/api/v1/images/%d/file", rv.ID), nil, "Authorization", rauth))
	c.check("GET", signed, redirecting.do("GET", rv.SignedURL, nil))
	c.check("DELETE", item, s.do("DELETE", "/api/v1/images/"+id, nil, "Authorization", auth))
	c.check("DELETE", item, s.do("DELETE", "/api/v1/images/"+id, nil, "Authorization", auth))
	c.check("DELETE", item, s.do("DELETE", "/api/v1/images/"+id, nil))
	c.check("GET", signed, s.do("GET", pending.SignedURL, nil))
}

// serviceRequests asks the service routes, the page and the docs, and the limits' refusals.
func (c *conformance) serviceRequests(s *testServer, name string) {
	t := c.t
	c.check("GET", "/healthz", s.do("GET", "/healthz", nil))
	c.check("GET", "/readyz", s.do("GET", "/readyz", nil))
	c.check("GET", "/metrics", s.do("GET", "/metrics", nil))
	c.check("GET", "/", s.do("GET", "/", nil))
	c.check("GET", "/app/{file}", s.do("GET", "/app/app.js", nil))
	c.check("GET", "/app/{file}", s.do("GET", "/app/nope.js", nil))
	c.check("GET", "/docs", s.do("GET", "/docs", nil))
	c.check("GET", "/docs/{file}", s.do("GET", "/docs/init.js", nil))
	c.check("GET", "/docs/{file}", s.do("GET", "/docs/nope.js", nil))
	c.check("GET", "/openapi.json", s.do("GET", "/openapi.json", nil))
	down := newTestServer(t, map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0"})
	c.check("GET", "/readyz", down.do("GET", "/readyz", nil))
	closed := newTestServer(t, map[string]string{"SIGNUP": "closed"})
	c.check("POST", "/api/v1/auth/signup", closed.do("POST", "/api/v1/auth/signup", credentials{"doc_" + randomHex(4), "password1"}))
	limited := newTestServer(t, map[string]string{"SIGNUP_RATE_PER_ADDR": "1", "AUTH_RATE_PER_ADDR": "1"})
	for range 2 {
		c.check("POST", "/api/v1/auth/signup", limited.do("POST", "/api/v1/auth/signup", credentials{"doc_" + randomHex(4), "password1"}))
		c.check("POST", "/api/v1/auth/token", limited.do("POST", "/api/v1/auth/token", credentials{name, "wrong pass"}))
	}
}

// allSeen fails for every documented status of every operation that no request got, except those
// no request here can provoke: 500-class errors are not documented, and these need a real outage or
// overload.
func (c *conformance) allSeen() {
	t, doc, seen := c.t, c.doc, c.seen
	unprovoked := map[string]bool{"POST /api/v1/auth/token 503": true}
	// A 503 for an outage needs the database cut off: TestDatabaseOutage provokes it on every route.
	for path, item := range doc["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if strings.HasPrefix(path, "/api/v1/") {
				unprovoked[strings.ToUpper(m)+" "+path+" 503"] = true
			}
		}
	}
	// A display size past the quota needs a replica of another quota: TestDisplaySizes provokes it.
	for _, p := range []string{"/api/v1/images/{id}/file", "/api/v1/images/{id}/file/signed"} {
		unprovoked["GET "+p+" 413"] = true
	}
	// A display size that cannot be made needs a photo whose original is then spoilt:
	// TestDisplaySizeFailures provokes it through a signed link too.
	unprovoked["GET /api/v1/images/{id}/file/signed 422"] = true
	// The upload limits need uploads held open or trickled for a window: limits_test.go provokes
	// them (TestUploadSlots, TestSlowUploadCutOff).
	for _, p := range []string{"/api/v1/images/", "/api/v1/images"} {
		for _, status := range []string{"408", "429", "503"} {
			unprovoked["POST "+p+" "+status] = true
		}
	}
	for path, item := range doc["paths"].(map[string]any) {
		for m, op := range item.(map[string]any) {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			for status := range op.(map[string]any)["responses"].(map[string]any) {
				key := strings.ToUpper(m) + " " + path
				if !seen[key][status] && !unprovoked[key+" "+status] {
					t.Errorf("%s %s is documented but no request here got it", key, status)
				}
			}
		}
	}
}

// TestDocsServing: the Swagger UI and the document are served from the binary with the right types,
// caching, compression and Content-Security-Policy.
func TestDocsServing(t *testing.T) {
	s := newTestServer(t, nil)
	page := s.do("GET", "/docs", nil)
	if page.status != 200 || page.header.Get("Content-Type") != "text/html; charset=utf-8" || !bytes.Contains(page.body, []byte(`src="/docs/swagger-ui-bundle.js"`)) {
		t.Fatalf("/docs: %d %s", page.status, page.header.Get("Content-Type"))
	}
	csp := page.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "script-src 'self' 'unsafe") {
		t.Errorf("CSP allows unsafe scripts: %q", csp)
	}
	if bytes.Contains(page.body, []byte("<script>")) {
		t.Error("the page has an inline script, which its CSP forbids")
	}
	for file, ct := range map[string]string{"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
		"init.js": "text/javascript; charset=utf-8", "favicon-32x32.png": "image/png"} {
		r := s.do("GET", "/docs/"+file, nil)
		if r.status != 200 || r.header.Get("Content-Type") != ct || r.header.Get("ETag") == "" || r.header.Get("Cache-Control") == "" {
			t.Errorf("/docs/%s: %d %q etag=%q cache=%q", file, r.status, r.header.Get("Content-Type"), r.header.Get("ETag"), r.header.Get("Cache-Control"))
		}
		if r2 := s.do("GET", "/docs/"+file, nil, "If-None-Match", r.header.Get("ETag")); r2.status != 304 {
			t.Errorf("/docs/%s revalidation: %d", file, r2.status)
		}
	}
	// Compressed for clients that take gzip (Go's client would decompress silently: ask by hand).
	req, _ := http.NewRequest("GET", s.srv.URL+"/docs/swagger-ui-bundle.js", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("bundle not gzipped: %v %q", err, resp.Header.Get("Content-Encoding"))
	}
	plain, _ := io.ReadAll(zr)
	resp.Body.Close()
	want, _ := docFiles.ReadFile("swagger-ui/swagger-ui-bundle.js")
	if !bytes.Equal(plain, want) {
		t.Fatal("gzipped bundle differs from the file")
	}
	for _, f := range []string{"README.md", "nope.js", "..%2Fopenapi.json", "%2E%2E%2Fmain.go"} {
		s.do("GET", "/docs/"+f, nil).problem(t, http.StatusNotFound)
	}
	var spec map[string]any
	r := s.do("GET", "/openapi.json", nil)
	r.json(t, &spec)
	if spec["openapi"] != "3.1.0" || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("/openapi.json: %v %q", spec["openapi"], r.header.Get("Content-Type"))
	}
}
