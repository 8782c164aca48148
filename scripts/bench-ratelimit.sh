#!/usr/bin/env bash
# End-to-end load test of the rate-limit layer: the example axum service on
# loopback, driven by wrk at saturation with and without the layer, in one
# run, with 100k tenants picked at random per request, and tower_governor in
# the layer's place as the anchor; the layer with the Redis backend too
# (Redis on 127.0.0.1:6379, started if none answers, and not capped). Then
# the key spray memory check. Figures go in BENCHMARKS.md.
#
#   scripts/bench-ratelimit.sh      # ROUNDS (6), SECONDS_PER_RUN (5), CPU_SHARE (35)
#
# Each pair runs two servers side by side, without the layer and with it,
# both on core 0, each driven by its own wrk on core 1 (this machine has 2).
# Running them at once makes the machine's drift, which is larger than the
# few percent being measured, hit both alike.
#
# Each server gets CPU_SHARE percent of core 0 through its own cgroup. wrk
# spends more CPU per request than the server does, so an uncapped server is
# not saturated and the ratio would partly measure wrk. Capped, both servers
# saturate at the same CPU, wrk has room to spare, and the throughput ratio
# is the inverse ratio of the servers' costs per request. Needs root, for
# the cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p floodgate-ratelimit --example tenant_service --example key_spray
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
        --dir /tmp --logfile /tmp/floodgate-bench-redis.log
    sleep 0.5
fi

work=$(mktemp -d)
caps=()
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
    for cap in "${caps[@]}"; do rmdir "$cap" 2>/dev/null || true; done
}
trap cleanup EXIT

# A cgroup holding CPU_SHARE percent of a core, in 10 ms periods (v1 or v2).
share=${CPU_SHARE:-35}
make_cap() {
    local cap
    if [ -w /sys/fs/cgroup/cpu ]; then
        cap=/sys/fs/cgroup/cpu/floodgate-bench-$1
        mkdir -p "$cap"
        echo 10000 > "$cap/cpu.cfs_period_us"
        echo $((share * 100)) > "$cap/cpu.cfs_quota_us"
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
        cap=/sys/fs/cgroup/floodgate-bench-$1
        mkdir -p "$cap"
        echo "$((share * 100)) 10000" > "$cap/cpu.max"
    else
        echo "no writable cgroup cpu controller: run as root on Linux" >&2
        exit 1
    fi
    caps+=("$cap")
}
make_cap unlimited
make_cap layer

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_server() {
    local port=$1 cap=$2; shift 2
    taskset -c 0 target/release/examples/tenant_service --policy scripts/load/policy.toml \
        --addr "127.0.0.1:$port" "$@" 2>>"$work/server.log" &
    echo $! > "$cap/cgroup.procs"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
}

# One pair: the unlimited server on 3917 and a limited one on 3918, at once.
side_by_side() {
    local label=$1; shift
    start_server 3917 "${caps[0]}" --no-limit
    local unlimited=$!
    start_server 3918 "${caps[1]}" "$@"
    local layer=$!
    local seconds=${SECONDS_PER_RUN:-5}
    local ticks_a ticks_b
    ticks_a=$(cpu_ticks "$unlimited")
    ticks_b=$(cpu_ticks "$layer")
    taskset -c 1 wrk -t1 -c64 -d"$seconds"s -s scripts/load/tenants.lua http://127.0.0.1:3917/ > "$work/a.txt" &
    local wrk_a=$!
    taskset -c 1 wrk -t1 -c64 -d"$seconds"s -s scripts/load/tenants.lua http://127.0.0.1:3918/ > "$work/b.txt" &
    local wrk_b=$!
    wait "$wrk_a" "$wrk_b"
    # Ticks are 10 ms, so ticks / seconds is each server's CPU in percent of
    # a core: at the cap, that server was the bottleneck.
    ticks_a=$((($(cpu_ticks "$unlimited") - ticks_a) / seconds))
    ticks_b=$((($(cpu_ticks "$layer") - ticks_b) / seconds))
    kill "$unlimited" "$layer"; wait "$unlimited" "$layer" 2>/dev/null || true
    local a b
    a=$(awk '/Requests\/sec/ {print $2}' "$work/a.txt")
    b=$(awk '/Requests\/sec/ {print $2}' "$work/b.txt")
    if grep -q Non-2xx "$work/b.txt"; then
        echo "$label refused requests: the load's quota is too tight" >&2
        exit 1
    fi
    python3 -c "print(f'{\"$label\":30} unlimited {$a:>8,.0f} req/s (CPU $ticks_a%), limited {$b:>8,.0f} req/s (CPU $ticks_b%), ratio {$b / $a:.1%}')"
    printf '%s\t%s\n' "$label" "$(echo "$b / $a" | bc -l)" >> "$work/ratios.tsv"
}

rounds=${ROUNDS:-6}
echo "== side by side: $rounds rounds of ${SECONDS_PER_RUN:-5} s, 64 connections each, 100k tenants, each server capped at $share% of core 0"
# tower_governor, keyed by the same tenant, is the anchor: with headers it
# sends its x-ratelimit-limit and x-ratelimit-remaining. Each layer's
# default: Floodgate's RateLimit fields near a limit (which the load's
# tenants never come to), tower_governor's no headers.
for round in $(seq "$rounds"); do
    side_by_side "floodgate, default"
    side_by_side "floodgate, --headers-always" --headers-always
    side_by_side "floodgate, --no-headers" --no-headers
    side_by_side "floodgate, redis backend" --policy scripts/load/policy-redis.toml
    side_by_side "tower_governor, default" --tower-governor
    side_by_side "tower_governor, --headers-always" --tower-governor --headers-always
done
# The medians per pair, in the order the pairs ran.
python3 - "$work/ratios.tsv" <<'PY'
import sys, statistics
ratios = {}
for line in open(sys.argv[1]):
    label, ratio = line.rstrip("\n").split("\t")
    ratios.setdefault(label, []).append(float(ratio))
for label, values in ratios.items():
    print(f"{label:30} median ratio {statistics.median(values):.1%} "
          f"(min {min(values):.1%}, max {max(values):.1%}, {len(values)} rounds)")
PY

echo "== key spray: 10M distinct tenants, cap 1M keys"
target/release/examples/key_spray 10000000 1000000
