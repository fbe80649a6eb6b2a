package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPureLoadConfig(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	c, err := loadConfig(env())
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.Addr != ":8000" || c.UploadDir != "./uploads" || c.MaxUploadBytes != 25<<20 || c.MaxPixels != 50_000_000 ||
		c.TokenTTL != 24*time.Hour || c.JPEGQuality != 85 || !c.JPEGDCT || c.Concurrency < 1 || len(c.SecretKey) != 0 {
		t.Errorf("defaults = %+v", c)
	}
	c, err = loadConfig(env("DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/image_db", "JPEG_DCT", "off", "TOKEN_TTL", "1h"))
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgresql://u:p@db:5432/image_db" || c.JPEGDCT || c.TokenTTL != time.Hour {
		t.Errorf("got %q dct=%v ttl=%v", c.DatabaseURL, c.JPEGDCT, c.TokenTTL)
	}
	bad := []struct{ name, key, val string }{
		{"short secret", "SECRET_KEY", "too-short-secret-value"},
		{"upload bytes not a number", "MAX_UPLOAD_BYTES", "25MB"},
		{"zero pixels", "MAX_PIXELS", "0"},
		{"quality over 100", "JPEG_QUALITY", "101"},
		{"bad ttl", "TOKEN_TTL", "forever"},
		{"dct neither on nor off", "JPEG_DCT", "maybe"},
		{"scrypt N not a power of two", "SCRYPT_N", "1000"},
		{"broker not amqp", "BROKER_URL", "http://broker"},
		{"redis not redis", "REDIS_URL", "cache:6379"},
		{"zero concurrency", "WORKER_CONCURRENCY", "0"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(env(tc.key, tc.val))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %s", err, tc.key)
			}
			if tc.key == "SECRET_KEY" && strings.Contains(err.Error(), tc.val) {
				t.Fatalf("error message leaks the secret: %v", err)
			}
		})
	}
}

func TestPureReadDotenv(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".env")
	os.WriteFile(path, []byte("# comment\n\nexport ADDR=:9000\nREDIS_URL=\"redis://cache:6379/0\"\nSECRET_KEY='abc=def'\n"), 0o600)
	vals, err := readDotenv(path)
	if err != nil {
		t.Fatal(err)
	}
	if vals["ADDR"] != ":9000" || vals["REDIS_URL"] != "redis://cache:6379/0" || vals["SECRET_KEY"] != "abc=def" {
		t.Errorf("vals = %v", vals)
	}
	getenv := withFallback(func(k string) string {
		if k == "ADDR" {
			return ":7000"
		}
		return ""
	}, vals)
	if getenv("ADDR") != ":7000" || getenv("REDIS_URL") != "redis://cache:6379/0" {
		t.Errorf("the real environment must win over .env")
	}
	if vals, err := readDotenv(filepath.Join(t.TempDir(), "missing")); err != nil || vals != nil {
		t.Errorf("missing file: %v %v", vals, err)
	}
	os.WriteFile(path, []byte("NOT A PAIR\n"), 0o600)
	if _, err := readDotenv(path); err == nil {
		t.Error("a line without = must be an error")
	}
}
