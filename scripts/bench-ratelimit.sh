#!/usr/bin/env bash
# End-to-end load test of the rate-limit layer: the example axum service on
# loopback, driven by wrk at saturation with and without the layer, in one
# run, with 100k tenants picked at random per request. Then the key spray
# memory check. Figures go in BENCHMARKS.md.
#
#   scripts/bench-ratelimit.sh      # ROUNDS (20), SECONDS_PER_RUN (2), CPU_SHARE (50)
#
# The server runs on core 0 and wrk on core 1 (this machine has 2). wrk
# spends more CPU per request than the server, so a server with a whole core
# is not saturated, and the ratio would partly measure wrk. The server
# therefore gets CPU_SHARE percent of core 0 through a cgroup: it saturates,
# wrk has room to spare, and the throughput ratio is the inverse ratio of the
# server's cost per request. Needs root, for the cgroup.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p floodgate-ratelimit --example tenant_service --example key_spray

work=$(mktemp -d)
cap=""
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; [ -z "$cap" ] || rmdir "$cap" 2>/dev/null || true' EXIT
# Limits no tenant reaches at these rates: the layer's cost, not its refusals.
cat > "$work/policy.toml" <<'TOML'
[quotas]
default_plan = "load"
plans = [{ name = "load", limits = [{ requests = 1000000, per_seconds = 1 }, { requests = 100000000, per_seconds = 86400 }] }]
TOML
cat > "$work/tenants.lua" <<'LUA'
math.randomseed(42)
request = function()
  local tenant = "tenant-" .. math.random(0, 99999)
  return wrk.format("GET", "/", { ["authorization"] = "Bearer " .. tenant })
end
LUA

# The server's CPU cap, in 10 ms periods: cgroup v1 or v2.
share=${CPU_SHARE:-50}
if [ -w /sys/fs/cgroup/cpu ]; then
    cap=/sys/fs/cgroup/cpu/floodgate-bench
    mkdir -p "$cap"
    echo 10000 > "$cap/cpu.cfs_period_us"
    echo $((share * 100)) > "$cap/cpu.cfs_quota_us"
elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
    cap=/sys/fs/cgroup/floodgate-bench
    mkdir -p "$cap"
    echo "$((share * 100)) 10000" > "$cap/cpu.max"
else
    echo "no writable cgroup cpu controller: run as root on Linux" >&2
    exit 1
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
    local label=$1; shift
    taskset -c 0 target/release/examples/tenant_service --policy "$work/policy.toml" \
        --addr 127.0.0.1:3917 "$@" 2>"$work/server.log" &
    local pid=$!
    echo "$pid" > "$cap/cgroup.procs"
    for _ in $(seq 100); do
        curl -s -o /dev/null http://127.0.0.1:3917/ && break
        sleep 0.1
    done
    local seconds=${SECONDS_PER_RUN:-2} before after
    before=$(cpu_ticks "$pid")
    taskset -c 1 wrk -t1 -c64 -d"$seconds"s -s "$work/tenants.lua" http://127.0.0.1:3917/ > "$work/$label.txt"
    after=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local rps non2xx
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/$label.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$label.txt")
    # Ticks are 10 ms, so ticks / seconds is the server's CPU in percent of
    # a core: at the cap, the server was the bottleneck.
    printf '%-14s %10s req/s   server CPU %3d%%   non-2xx: %s\n' "$label" "$rps" \
        $(((after - before) / seconds)) "${non2xx:-0}"
    echo "$rps" > "$work/$label.rps"
}

rounds=${ROUNDS:-20}
echo "== wrk: $rounds rounds of ${SECONDS_PER_RUN:-2} s runs, 64 connections, 100k tenants, server capped at $share% of a core"
# Alternating short runs: this machine's speed drifts by more than the 5%
# being measured, so each round compares runs made seconds apart.
for round in $(seq "$rounds"); do
    run "unlimited$round" --no-limit
    run "layer$round"
    run "no_headers$round" --no-headers
done
python3 - "$work" "$rounds" <<'PY'
import sys, pathlib, statistics
w, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rps = lambda name: float((w / f"{name}.rps").read_text())
mean = lambda kind: statistics.mean(rps(f"{kind}{r}") for r in range(1, rounds + 1))
for kind in ("layer", "no_headers"):
    ratios = [rps(f"{kind}{r}") / rps(f"unlimited{r}") for r in range(1, rounds + 1)]
    print(f"{kind}: mean {mean(kind):,.0f} req/s, {mean(kind) / mean('unlimited'):.1%} of unlimited; "
          f"per-round ratio median {statistics.median(ratios):.1%}, "
          f"min {min(ratios):.1%}, max {max(ratios):.1%}")
print(f"unlimited: mean {mean('unlimited'):,.0f} req/s")
PY

echo "== key spray: 10M distinct tenants, cap 1M keys"
target/release/examples/key_spray 10000000 1000000
