#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the readers of
# untrusted input: the WAF record reader (fast path against the full parse,
# tier matches), the gzip line reader (local .gz files and S3 objects) and
# the policy parser.
#
#   scripts/fuzz.sh              # every target, 60 s each
#   scripts/fuzz.sh 600          # every target, 10 min each
#   scripts/fuzz.sh 60 policy    # one target
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz;
# installs cargo-fuzz if missing. The WAF record target starts from the
# sample logs' records. A crash leaves its input in
# fuzz/artifacts/<target>/; turn it into a regression test next to the
# reader it broke (responder/tests/waf_records.rs, rules/tests/) before
# fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(waf_record gzip_lines policy)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Seeds: sample records, one per file; the example policies.
mkdir -p fuzz/corpus/waf_record fuzz/corpus/policy fuzz/corpus/gzip_lines
if [ -z "$(ls -A fuzz/corpus/waf_record)" ]; then
    zcat examples/logs/sample.jsonl.gz | awk 'NR % 2000 == 1' | head -40 |
        split -l 1 - fuzz/corpus/waf_record/sample-
fi
cp -n examples/*.toml fuzz/corpus/policy/ 2>/dev/null || true
cp -n examples/logs/sample.jsonl.gz fuzz/corpus/gzip_lines/ 2>/dev/null || true

for target in "${targets[@]}"; do
    echo "==> $target, ${seconds} s"
    (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1)
done
