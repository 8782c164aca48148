#!/usr/bin/env bash
# End-to-end benchmark of the local WAF log path against DuckDB and `wc -l`
# (and, for gzip, `zcat`), in one run on the same cached 1 GiB file. Figures
# go in BENCHMARKS.md.
#
#   scripts/bench-logs.sh            # data under /tmp/floodgate-bench
#   BENCH_DIR=/path scripts/bench-logs.sh
#   DUCKDB_ALSO="2.0.1" scripts/bench-logs.sh   # other DuckDB releases too
#   BASELINE_FLOODGATE=/path/to/older/floodgate scripts/bench-logs.sh
#                                    # and the cost of client keys against it
#
# The anchor is the DuckDB release pinned in requirements-test.txt (the
# fastest on this query here); DUCKDB_ALSO lists other releases to time in
# the same run, each in a venv of its own under the data directory, and the
# ratios are taken against the fastest of them all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/test.sh once first: it creates .venv with duckdb" >&2; exit 1; }
data=${BENCH_DIR:-/tmp/floodgate-bench}
mkdir -p "$data"
pythons=(.venv/bin/python)
for version in ${DUCKDB_ALSO:-}; do
    venv=$data/duckdb-$version
    [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "duckdb==$version"; }
    pythons+=("$venv/bin/python")
done
cargo build --release --locked --quiet -p floodgate-responder --bin floodgate
exec .venv/bin/python scripts/bench_logs.py "$data" target/release/floodgate "${pythons[@]}"
