#!/usr/bin/env bash
# The Redis backend's throughput and latency per check, next to the ceiling:
# redis-benchmark running the same GCRA script with EVALSHA, on the same
# machine, in one run. Figures go in BENCHMARKS.md.
#
#   scripts/bench-redis.sh            # Redis on 127.0.0.1:6379 (started if absent)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
        --dir /tmp --logfile /tmp/floodgate-bench-redis.log
    sleep 0.5
fi
cargo build --release --quiet -p floodgate-ratelimit --example redis_bench
bench=target/release/examples/redis_bench
sha=$(redis-cli -h 127.0.0.1 SCRIPT LOAD "$($bench --print-script)")

for round in 1 2 3; do
    echo "== round $round"
    # The ceiling: 2 connections, no pipelining, 1,000 random keys; the
    # arguments are what the layer sends for its benchmark plan (fingerprint,
    # 1 limit, 1 µs interval, a 1 s burst).
    redis-benchmark -h 127.0.0.1 -c 2 -n 200000 -r 1000 -q \
        EVALSHA "$sha" 1 'floodgate:{t:bench-__rand_int__}' 1234 1 1 1000000 |
        tr '\r' '\n' | grep 'requests per second' | sed 's/^.*: \([0-9.]* requests per second.*\)/redis-benchmark EVALSHA (ceiling): \1/'
    "$bench" 5
done
