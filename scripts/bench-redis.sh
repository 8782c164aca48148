#!/usr/bin/env bash
# The Redis backend's throughput and latency per check, next to the ceiling:
# redis-benchmark running the same GCRA script with EVALSHA, on the same
# servers, in one run: one Redis, then a three-primary Redis Cluster this
# script starts (and stops). Figures go in BENCHMARKS.md.
#
#   scripts/bench-redis.sh      # ROUNDS (3), SECONDS_PER_RUN (5), CLUSTER_PORT (17001)
#
# Each round runs, one after the other: the ceiling and Floodgate against one
# Redis with 2 requests in flight; against the cluster with 2 in flight; and
# against the cluster with 6 in flight. redis-benchmark's -c is its total
# clients; in cluster mode it runs a thread per node.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-5}
base=${CLUSTER_PORT:-17001}
command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
        --dir /tmp --logfile /tmp/floodgate-bench-redis.log
    sleep 0.5
fi

work=$(mktemp -d)
ports=("$base" "$((base + 1))" "$((base + 2))")
cleanup() {
    for port in "${ports[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for port in "${ports[@]}"; do
    mkdir -p "$work/$port"
    (cd "$work/$port" && redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --save '' --appendonly no --daemonize yes --logfile "$work/$port/log")
done
sleep 0.5
redis-cli -p "$base" --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
until redis-cli -p "$base" cluster info | grep -q cluster_state:ok; do sleep 0.1; done

cargo build --release --quiet -p floodgate-ratelimit --example redis_bench
bench=target/release/examples/redis_bench
script=$($bench --print-script)
sha=$(redis-cli -h 127.0.0.1 SCRIPT LOAD "$script")
for port in "${ports[@]}"; do redis-cli -p "$port" SCRIPT LOAD "$script" >/dev/null; done

# The arguments are what the layer sends for its benchmark plan: cost 1, the
# limits' fingerprint, 1 limit, a 1 µs interval and a 1 s burst.
ceiling() { # LABEL redis-benchmark-args... KEY
    local label=$1 key=${*: -1}
    set -- "${@:2:$#-2}"
    redis-benchmark "$@" -n 200000 -r 1000 -q EVALSHA "$sha" 1 "$key" 1 1234 1 1 1000000 |
        tr '\r' '\n' | grep 'requests per second' | tail -1 |
        sed "s/^.*: \([0-9.]* requests per second.*\)/$label redis-benchmark EVALSHA (ceiling): \1/"
}
floodgate() { # LABEL TASKS redis_bench-args...
    local label=$1 tasks=$2
    shift 2
    FLOODGATE_BENCH_TASKS=$tasks "$bench" "$seconds" "$@" | sed "s/^/$label /"
}

for round in $(seq "$rounds"); do
    echo "== round $round"
    ceiling "one node, 2 in flight:" -h 127.0.0.1 -c 2 'floodgate:{t:bench-__rand_int__}'
    floodgate "one node, 2 in flight:" 2 redis://127.0.0.1:6379
    ceiling "cluster, 2 in flight:" --cluster -h 127.0.0.1 -p "$base" -c 2 'floodgate:{tag}:bench-__rand_int__'
    floodgate "cluster, 2 in flight:" 2 --cluster "redis://127.0.0.1:$base"
    ceiling "cluster, 6 in flight:" --cluster -h 127.0.0.1 -p "$base" -c 6 'floodgate:{tag}:bench-__rand_int__'
    floodgate "cluster, 6 in flight:" 6 --cluster "redis://127.0.0.1:$base"
done
