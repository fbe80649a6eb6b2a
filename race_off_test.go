//go:build !race

package main

// raceEnabled says this test binary runs under the race detector.
const raceEnabled = false
