#!/usr/bin/env bash
# Peak memory and throughput of the real binary with its defaults (-mode=all, no broker, no cache).
#
#   bench/memory.sh FILE N [VAR=VALUE...]
#
# Builds the binary, starts it on a fresh database (imageapi_bench, on the local PostgreSQL), signs
# in (one scrypt hash), uploads FILE N times, 4 at a time, waits until all are ready, and prints the
# time that took and the process's peak RSS (VmHWM). VAR=VALUE pairs go into its environment, e.g.
# JPEG_DCT=off, or GOMEMLIMIT=1TiB to lift the runtime memory limit the service otherwise sets.
set -euo pipefail
cd "$(dirname "$0")/.."
file=$1 n=$2; shift 2
port=${PORT:-18080}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS imageapi_bench WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/imageapi" .
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS imageapi_bench" >/dev/null 2>&1
env -i PATH="$PATH" DATABASE_URL="postgres://postgres@127.0.0.1:5432/imageapi_bench?sslmode=disable" \
  UPLOAD_DIR="$work/uploads" ADDR="127.0.0.1:$port" LOG_LEVEL=warn "$@" "$work/imageapi" -env-file= >"$work/log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "$base/api/v1/auth/signup" -H 'Content-Type: application/json' -d '{"username":"bench","password":"correct horse"}' >/dev/null
token=$(curl -sf "$base/api/v1/auth/token" -d 'username=bench&password=correct horse' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
start=$(date +%s.%N)
seq "$n" | xargs -P 4 -I{} curl -sf -o /dev/null -H "Authorization: Bearer $token" -F "file=@$file" "$base/api/v1/images/?name=bench"
until [ "$(curl -sf -H "Authorization: Bearer $token" "$base/api/v1/images/?limit=100" | grep -o '"status":"\(ready\|failed\)"' | wc -l)" -ge "$n" ]; do
  sleep 0.05
done
end=$(date +%s.%N)
printf '%s x%d: all done in %.2f s; peak RSS %d MiB\n' "$file" "$n" "$(echo "$end - $start" | bc)" \
  "$(( $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") / 1024 ))"
