package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// The services the tests talk to are reached lazily, once, by the tests that need them: a test of
// pure code needs none (go test -run TestPure . passes on a laptop with nothing running), and a test
// whose service is down fails with the reason — never skips. Each run owns what it makes on them (a
// database, a bucket; key prefixes and queues per test) and removes it afterwards (TestMain).
var services struct {
	db     lazyService[testDatabase]
	redis  lazyService[string]
	broker lazyService[string]
	s3     lazyService[s3Config]
}

// testDatabase is the database this run owns on the PostgreSQL server at admin.
type testDatabase struct {
	admin string // a database on the server that is not ours, for CREATE/DROP DATABASE
	name  string
	url   string // ours
}

// lazyService is a service found (or made) on first use; its error, if any, is kept and reported
// to every test that needs it.
type lazyService[T any] struct {
	once sync.Once
	val  T
	err  error
	made bool // something was made that TestMain must remove
}

// get connects on first use, and fails t with what, where and why when the service is unreachable.
func (s *lazyService[T]) get(t testing.TB, what, where string, connect func() (T, error)) T {
	t.Helper()
	s.once.Do(func() {
		s.val, s.err = connect()
		s.made = s.err == nil
	})
	if s.err != nil {
		t.Fatalf("%s is required by this test and is not reachable at %s: %v", what, where, s.err)
	}
	return s.val
}

// needDB returns the URL of this run's database (TEST_DATABASE_URL names the server, default the
// local one), creating it on first use.
func needDB(t testing.TB) string {
	t.Helper()
	return needDBServer(t).url
}

// needDBServer returns this run's database and the server's admin URL.
func needDBServer(t testing.TB) testDatabase {
	t.Helper()
	admin := cmp.Or(os.Getenv("TEST_DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	return services.db.get(t, "PostgreSQL", "TEST_DATABASE_URL="+admin, func() (testDatabase, error) {
		db := testDatabase{admin: admin, name: "imageapi_test_" + randomHex(6)}
		var err error
		db.url, err = createTestDatabase(admin, db.name)
		return db, err
	})
}

// needRedis returns the URL of the Redis the cache tests use (TEST_REDIS_URL, default the local
// server); each test uses a key prefix of its own (redisPrefix) and deletes its keys after.
func needRedis(t testing.TB) string {
	t.Helper()
	url := cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
	return services.redis.get(t, "Redis", "TEST_REDIS_URL="+url, func() (string, error) { return url, pingRedis(url) })
}

// needBroker returns the URL of the RabbitMQ the queue tests use (TEST_BROKER_URL, default the local
// server); each test declares queues of its own (testQueue) and deletes them after.
func needBroker(t testing.TB) string {
	t.Helper()
	url := cmp.Or(os.Getenv("TEST_BROKER_URL"), "amqp://guest:guest@127.0.0.1:5672/")
	return services.broker.get(t, "RabbitMQ", "TEST_BROKER_URL="+url, func() (string, error) { return url, pingBroker(url) })
}

// needS3 returns this run's bucket on the S3 endpoint (TEST_S3_ENDPOINT, default the local SeaweedFS
// that `bash .ci/seaweedfs` builds and starts; TEST_S3_ACCESS_KEY_ID and TEST_S3_SECRET_ACCESS_KEY),
// made on first use. Each test keeps its objects under a prefix of its own (s3TestEnv).
func needS3(t testing.TB) s3Config {
	t.Helper()
	cfg := s3Config{
		Endpoint:  cmp.Or(os.Getenv("TEST_S3_ENDPOINT"), "http://127.0.0.1:8333"),
		Region:    "us-east-1",
		Bucket:    "imageapi-test-" + randomHex(6),
		AccessKey: cmp.Or(os.Getenv("TEST_S3_ACCESS_KEY_ID"), "imageapi"),
		SecretKey: cmp.Or(os.Getenv("TEST_S3_SECRET_ACCESS_KEY"), "imageapi-secret"),
	}
	return services.s3.get(t, "An S3 endpoint (bash .ci/seaweedfs starts SeaweedFS)", "TEST_S3_ENDPOINT="+cfg.Endpoint, func() (s3Config, error) {
		c, err := newS3Client(cfg)
		if err != nil {
			return cfg, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return cfg, c.ensureBucket(ctx)
	})
}

// TestMain runs the tests, then removes what they made on the services: this run's database and
// bucket, when a test made them.
func TestMain(m *testing.M) {
	code := m.Run()
	if services.s3.made {
		if err := dropTestBucket(services.s3.val); err != nil {
			fmt.Fprintf(os.Stderr, "dropping test bucket %s: %v\n", services.s3.val.Bucket, err)
		}
	}
	if db := services.db.val; services.db.made {
		if err := dropTestDatabase(db.admin, db.name); err != nil {
			fmt.Fprintf(os.Stderr, "dropping test database %s: %v\n", db.name, err)
		}
	}
	os.Exit(code)
}

// dropTestBucket empties this run's bucket and removes it.
func dropTestBucket(cfg s3Config) error {
	c, err := newS3Client(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := emptyPrefix(ctx, c, ""); err != nil {
		return err
	}
	resp, err := c.do(ctx, s3Request{method: http.MethodDelete})
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
