#!/usr/bin/env bash
# User-space instructions per request of the example service end to end,
# counted by callgrind while wrk drives it: unlimited, and with the layer
# sending its RateLimit fields as by default (only near a limit, which the
# load's tenants never come to), on every response, and never. Wall-clock
# end-to-end figures move by more than the few percent the layer costs;
# instruction counts don't, so they tell which part of the server's work a
# change cut. They leave out the kernel's share (about half of the server's
# time) and cache misses, so the goal itself is measured by
# scripts/bench-ratelimit.sh. Figures go in BENCHMARKS.md.
#
#   scripts/bench-e2e-instructions.sh [TENANTS]     # default: 10000
#
# Each server first serves WARMUP_SECONDS (default 10) of traffic uncounted,
# so its tables and heap settle, then MEASURE_SECONDS (default 10) counted.
# KEEP=DIR keeps the callgrind files, for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk valgrind; do
    command -v "$tool" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
done
cargo build --release --quiet -p floodgate-ratelimit --example tenant_service
export TENANTS=${1:-10000}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

count() {
    local label=$1; shift
    local out=$work/$label.callgrind
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" \
        target/release/examples/tenant_service --policy scripts/load/policy.toml \
        --addr 127.0.0.1:3919 "$@" 2>/dev/null &
    local pid=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null http://127.0.0.1:3919/ && break
        sleep 0.2
    done
    taskset -c 1 wrk -t1 -c16 -d"${WARMUP_SECONDS:-10}"s -s scripts/load/tenants.lua http://127.0.0.1:3919/ >/dev/null
    # Dump (and zero) the warm-up's counts while the server is idle, so the
    # counts at exit are the measured run's alone.
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 100); do
        [ -s "$out.1" ] && break
        sleep 0.2
    done
    [ -s "$out.1" ] || { echo "callgrind did not dump the warm-up" >&2; exit 1; }
    taskset -c 1 wrk -t1 -c16 -d"${MEASURE_SECONDS:-10}"s -s scripts/load/tenants.lua http://127.0.0.1:3919/ > "$work/$label.wrk"
    # valgrind's server ignores SIGINT; SIGTERM ends it and writes the counts.
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    local requests instructions
    requests=$(awk '/requests in/ {print $1}' "$work/$label.wrk")
    instructions=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%-12s %10d requests %10d instr/req\n' "$label" "$requests" $((instructions / requests))
    [ -z "${KEEP:-}" ] || cp "$out" "$KEEP/$label.callgrind"
}

echo "== user-space instructions per request, $TENANTS tenants"
count unlimited --no-limit
count layer
count headers_always --headers-always
count no_headers --no-headers
