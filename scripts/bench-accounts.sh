#!/usr/bin/env bash
# One cycle across many AWS accounts (issue 34): the responder's own account
# and N member accounts, each with a WAF log group and IP sets in two
# regions, on one moto server the test starts, with STS in front of it.
# Prints, for 2 and 10 member accounts (twice each), the wall time of
# `floodgate run --once`, its WAF API calls and its AssumeRole calls.
# Figures go in BENCHMARKS.md.
#
#   scripts/bench-accounts.sh            # ACCOUNTS="2 10" RUNS=2
#
# Needs the test venv (scripts/test.sh makes .venv) for moto.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOODGATE_VENV=${FLOODGATE_VENV:-$PWD/.venv}
cargo test -q -p floodgate-responder --test integration --no-run
for accounts in ${ACCOUNTS:-2 10}; do
    for _ in $(seq "${RUNS:-2}"); do
        FLOODGATE_BENCH_ACCOUNTS=$accounts cargo test -q -p floodgate-responder \
            --test integration -- e2e::accounts::one_cycle --nocapture 2>&1 |
            grep '^accounts figures'
    done
done
