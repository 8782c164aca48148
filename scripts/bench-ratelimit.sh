#!/usr/bin/env bash
# End-to-end load test of the rate-limit layer: the example axum service on
# loopback, driven by wrk at saturation with and without the layer, in one
# run, with 100k tenants picked at random per request: alternating runs,
# then the two servers side by side on one core. Then the key spray memory
# check. Figures go in BENCHMARKS.md.
#
#   scripts/bench-ratelimit.sh
#
# The server runs on core 0 and wrk on core 1 (this machine has 2).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet -p floodgate-ratelimit --example tenant_service --example key_spray

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
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

run() {
    local label=$1; shift
    taskset -c 0 target/release/examples/tenant_service --policy "$work/policy.toml" \
        --addr 127.0.0.1:3917 "$@" 2>"$work/server.log" &
    local pid=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null http://127.0.0.1:3917/ && break
        sleep 0.1
    done
    taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_RUN:-6}"s -s "$work/tenants.lua" http://127.0.0.1:3917/ > "$work/$label.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local rps
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/$label.txt")
    local non2xx
    non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$label.txt")
    printf '%-12s %12s req/s   non-2xx: %s\n' "$label" "$rps" "${non2xx:-0}"
    echo "$rps" > "$work/$label.rps"
}

echo "== wrk, ${SECONDS_PER_RUN:-6} s per run, 64 connections, 100k tenants"
# Alternating short runs: this machine's load drifts by more than the 5%
# being measured, so each round compares runs made seconds apart.
rounds=${ROUNDS:-5}
for round in $(seq "$rounds"); do
    run "unlimited$round" --no-limit
    run "layer$round"
    run "no_headers$round" --no-headers
done
python3 - "$work" "$rounds" <<'PY'
import sys, pathlib, statistics
w, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rps = lambda name: float((w / f"{name}.rps").read_text())
for kind in ("layer", "no_headers"):
    ratios = [rps(f"{kind}{r}") / rps(f"unlimited{r}") for r in range(1, rounds + 1)]
    mean = statistics.mean(rps(f"{kind}{r}") for r in range(1, rounds + 1))
    print(f"{kind}: mean {mean:,.0f} req/s; per-round ratio to unlimited: "
          f"median {statistics.median(ratios):.1%}, min {min(ratios):.1%}, max {max(ratios):.1%}")
print(f"unlimited: mean {statistics.mean(rps(f'unlimited{r}') for r in range(1, rounds + 1)):,.0f} req/s")
PY

# Side by side: both servers share core 0 and run at once, each driven by its
# own wrk on core 1. The machine's drift then hits both alike, and since the
# scheduler gives each half the core, the throughput ratio is the cost ratio.
side_by_side() {
    local label=$1; shift
    taskset -c 0 target/release/examples/tenant_service --policy "$work/policy.toml" \
        --addr 127.0.0.1:3917 --no-limit 2>"$work/unlimited.log" &
    local unlimited=$!
    taskset -c 0 target/release/examples/tenant_service --policy "$work/policy.toml" \
        --addr 127.0.0.1:3918 "$@" 2>"$work/layer.log" &
    local layer=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null http://127.0.0.1:3917/ && curl -s -o /dev/null http://127.0.0.1:3918/ && break
        sleep 0.1
    done
    local seconds=${SIDE_SECONDS:-10}
    taskset -c 1 wrk -t1 -c32 -d"$seconds"s -s "$work/tenants.lua" http://127.0.0.1:3917/ > "$work/a.txt" &
    local wrk_a=$!
    taskset -c 1 wrk -t1 -c32 -d"$seconds"s -s "$work/tenants.lua" http://127.0.0.1:3918/ > "$work/b.txt" &
    local wrk_b=$!
    wait "$wrk_a" "$wrk_b"
    kill "$unlimited" "$layer"; wait "$unlimited" "$layer" 2>/dev/null || true
    local a b
    a=$(awk '/Requests\/sec/ {print $2}' "$work/a.txt")
    b=$(awk '/Requests\/sec/ {print $2}' "$work/b.txt")
    python3 -c "print(f'$label: unlimited {$a:,.0f} req/s, layer {$b:,.0f} req/s, ratio {$b / $a:.1%}')"
}

echo "== side by side on one core, ${SIDE_SECONDS:-10} s per round"
for round in $(seq "${SIDE_ROUNDS:-4}"); do
    side_by_side "round $round, headers on"
    side_by_side "round $round, --no-headers" --no-headers
done

echo "== key spray: 10M distinct tenants, cap 1M keys"
target/release/examples/key_spray 10000000 1000000
