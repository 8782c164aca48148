#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (a Python venv with pinned moto, cfn-lint, kubernetes-validate and checkov, a Redis
# server if none is running, debootstrap), runs the format and lint gates
# and every test, then checks the container image's runtime stage with the
# binary the tests ran.
#
#   scripts/test.sh
#
# Safe to run again: each install step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f /tmp/.floodgate-apt-updated ]; then
        apt-get update -qq && touch /tmp/.floodgate-apt-updated
    fi
    apt-get install -y -qq "$@" >/dev/null
}

# --- Python tools (moto server, cfn-lint) -----------------------------------
step "Python venv with pinned test tools (.venv)"
venv=$root/.venv
stamp=$venv/.requirements.sha256
wanted=$(sha256sum requirements-test.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    # --no-compile: byte-compiling every module of checkov and botocore
    # took 40 s; Python compiles the few the tests import when they do.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-compile -r requirements-test.txt
    echo "$wanted" > "$stamp"
fi
"$venv/bin/moto_server" --help >/dev/null
echo "moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)'), $("$venv/bin/cfn-lint" --version)"
export FLOODGATE_VENV=$venv

# --- Redis on 127.0.0.1:6379 ------------------------------------------------
step "Redis on 127.0.0.1:6379"
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
# The Redis backend's tests also start servers of their own: single nodes,
# TLS servers with certificates openssl makes, and Redis Clusters that
# redis-cli (redis-tools) creates.
command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools
command -v openssl >/dev/null || apt_install openssl
if ! redis_up; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
        --dir /tmp --logfile /tmp/floodgate-test-redis.log
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "redis-server did not start; see /tmp/floodgate-test-redis.log" >&2; exit 1; }
fi
echo "redis answers PONG"

# --- Rust gates and tests ---------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

# The middleware without its `redis` feature: no Redis client and no TLS in
# its dependency tree, and its library tests pass (a policy that asks for
# Redis is then a build error).
step "floodgate-ratelimit without the redis feature"
lean=(-p floodgate-ratelimit --no-default-features --features axum --locked)
if cargo tree "${lean[@]}" -e normal | grep -E ' (redis|rustls|aws-lc-rs) v'; then
    echo "the middleware without its redis feature still depends on the above" >&2
    exit 1
fi
cargo test "${lean[@]}" --lib 2>&1 | tee -a "$log"

# --- The container image's runtime stage -----------------------------------
# No container engine runs here: scripts/verify-image.sh builds the runtime
# stage's root filesystem with debootstrap (from the Debian mirror) and runs
# the binary in it as uid 10001.
step "Container runtime stage (scripts/verify-image.sh)"
command -v debootstrap >/dev/null || apt_install debootstrap
command -v openssl >/dev/null || apt_install openssl
FLOODGATE_BINARY=${CARGO_TARGET_DIR:-target}/debug/floodgate scripts/verify-image.sh | tee -a "$log"
# One closing line for the whole workspace (cargo prints one per test binary).
# The image check's own line ("verify-image: N passed, 0 failed") counts too.
awk '/^test result:/ { passed += $4; failed += $6 }
     /^verify-image: [0-9]+ passed/ { passed += $2; failed += $4 }
     END { printf "\ntotal: %d passed, %d failed\n", passed, failed }' "$log"
