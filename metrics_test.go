package main

import (
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

// TestPureMetricsTable: every counter field of metrics is exposed exactly once (jobNanos as seconds),
// and every exposed name is a Prometheus counter name.
func TestPureMetricsTable(t *testing.T) {
	m := &metrics{}
	exposed := map[*atomic.Int64]string{}
	for _, c := range m.counters() {
		if prev, dup := exposed[c.v]; dup {
			t.Errorf("%s and %s count the same field", prev, c.name)
		}
		exposed[c.v] = c.name
		if !strings.HasPrefix(c.name, "imageapi_") || !strings.HasSuffix(c.name, "_total") || c.help == "" {
			t.Errorf("counter %q (help %q)", c.name, c.help)
		}
	}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Type() != reflect.TypeFor[atomic.Int64]() || v.Type().Field(i).Name == "jobNanos" {
			continue
		}
		if _, ok := exposed[(*atomic.Int64)(f.Addr().UnsafePointer())]; !ok {
			t.Errorf("metrics.%s is not exposed", v.Type().Field(i).Name)
		}
	}
}
