#!/usr/bin/env bash
# The `floodgate` binary's size and the start-up time of `floodgate check`,
# built from the same source with the workspace's release profile (symbols
# stripped, thin LTO) and with cargo's default release profile, measured in
# the same run.
#
#   scripts/bench-binary.sh
#
# The default-profile build goes to target/default-profile (a full build of
# its own the first time, about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }

build=(cargo build --release --locked --quiet -p floodgate-responder --bin floodgate)
"${build[@]}"
CARGO_TARGET_DIR=target/default-profile CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_PROFILE_RELEASE_LTO=false "${build[@]}"

profile=target/release/floodgate
default=target/default-profile/release/floodgate
printf 'binary size: %s bytes with the workspace profile, %s bytes with the default one\n' \
    "$(stat -c %s "$profile")" "$(stat -c %s "$default")"
for policy in examples/local.toml examples/floodgate.toml; do
    hyperfine -N --warmup 20 --runs 300 \
        -n "workspace profile, check $policy" "$profile check --config $policy" \
        -n "default profile, check $policy" "$default check --config $policy"
done
