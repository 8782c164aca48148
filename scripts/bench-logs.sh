#!/usr/bin/env bash
# End-to-end benchmark of the local WAF log path against DuckDB and `wc -l`,
# in one run on the same cached 1 GiB file. Figures go in BENCHMARKS.md.
#
#   scripts/bench-logs.sh            # data under /tmp/floodgate-bench
#   BENCH_DIR=/path scripts/bench-logs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/test.sh once first: it creates .venv with duckdb" >&2; exit 1; }
cargo build --release --quiet -p floodgate-responder --bin floodgate
exec .venv/bin/python scripts/bench_logs.py "${BENCH_DIR:-/tmp/floodgate-bench}" target/release/floodgate
