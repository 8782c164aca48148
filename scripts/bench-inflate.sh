#!/usr/bin/env bash
# Times the inflate implementations on crates.io on one gzip file (default:
# the gzip benchmark file of scripts/bench-logs.sh), best of 3 each, the
# file in memory so that only inflating is timed. Figures go in BENCHMARKS.md.
#
#   scripts/bench-inflate.sh [FILE.gz]
set -euo pipefail
cd "$(dirname "$0")/inflate-bench"
file=${1:-${BENCH_DIR:-/tmp/floodgate-bench}/waf-1gib.jsonl.gz}
[ -f "$file" ] || { echo "$file: missing; run scripts/bench-logs.sh first, or name a .gz file" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/floodgate-inflate-bench}
cargo run --quiet --release --no-default-features --features miniz -- "$file"
cargo run --quiet --release -- "$file"
