#!/usr/bin/env bash
# Instructions per request for the rate-limit layer and tower_governor,
# counted by callgrind over the `layer` criterion bench. Unlike wall time,
# the count does not move with the machine's noise, so it tells a small
# change apart. Figures go in BENCHMARKS.md.
#
#   scripts/bench-instructions.sh [CLIENTS...]     # default: 1 10000
#
# Per request means inclusive of the benches' `contenders::call` (the service call, the
# poll and dropping the response), divided by the times it ran. The quanta
# clock falls back to clock_gettime under valgrind; both layers pay that.
# The clock's first use calibrates it for a while, inside the first call:
# a run now and then counts a few more per request, so take the lower of two.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
bench=$(cargo bench -p floodgate-ratelimit --bench layer --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "could not build the layer bench" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(1 10000)
printf '%-8s %-20s %12s %10s\n' clients layer calls 'instr/req'
for n in "${clients[@]}"; do
    for name in no_layer floodgate floodgate_headers floodgate_classes tower_governor; do
        out=$work/$name.$n.out
        valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$bench" --bench "layer/$n/$name/" --profile-time 1 >/dev/null 2>&1
        # Every copy of the bench's `call` (the compiler may keep one for the
        # warm-up apart), with its callers' counts.
        callgrind_annotate --inclusive=yes --tree=caller "$out" 2>/dev/null |
            awk -v n="$n" -v name="$name" '
                /^$/ { calls = 0; next }
                / < .*\(([0-9,]+)x\)/ { line = $0; sub(/.*\(/, "", line); sub(/x\).*/, "", line); gsub(",", "", line); calls += line; next }
                /\*  .*contenders\/mod.rs:layer::contenders::call( |$)/ { ir = $1; gsub(",", "", ir); total += ir; all += calls; calls = 0 }
                END {
                    if (all == 0) { print "no call counts for " name > "/dev/stderr"; exit }
                    printf "%-8s %-20s %12d %10.0f\n", n, name, all, total / all
                }' || true
    done
done
