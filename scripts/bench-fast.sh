#!/usr/bin/env bash
# Time to protection (issue 33): the fast detector against the log path, on
# one daemon with the default schedule (a cycle a minute) and poll interval
# (10 s), three regions and CloudFront in moto behind the managed-keys gate,
# and the Cloudflare fake. Prints, per run, the fast path's latency (from
# the poll that listed the address, and from the rule listing it, to the
# last of the five targets written) and the log path's (from the records
# landing in the source to the last target). Figures go in BENCHMARKS.md.
#
#   scripts/bench-fast.sh            # RUNS=3
#
# Needs the test venv (scripts/test.sh makes .venv) for moto.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOODGATE_VENV=${FLOODGATE_VENV:-$PWD/.venv}
cargo test -q -p floodgate-responder --test integration --no-run
for _ in $(seq "${RUNS:-3}"); do
    FLOODGATE_BENCH_FAST=1 cargo test -q -p floodgate-responder \
        --test integration -- e2e::fast_e2e --nocapture 2>&1 |
        grep '^FIGURES'
done
