#!/usr/bin/env bash
# Checks the Dockerfile's runtime stage without a container engine (none
# runs on the project's machines, and base images cannot be pulled):
#
#   1. builds the same root filesystem with debootstrap (Debian's minimal
#      base, as debian:<release>-slim) and runs the Dockerfile's own runtime
#      RUN instruction in it (CA certificates, the uid 10001 user);
#   2. copies in the release binary, as the Dockerfile's COPY does;
#   3. runs, as uid 10001 in that root with the image's ENV and WORKDIR:
#      `floodgate --version`, `floodgate check` and `floodgate run --once`
#      against the embedded default (examples/local.toml and its logs);
#   4. proves the AWS clients find the image's CA roots: a WAFv2 call to a
#      local HTTPS endpoint whose certificate a test CA signed fails TLS
#      until that CA is added to the root's store with
#      update-ca-certificates, then reaches the endpoint.
#
#   scripts/verify-image.sh            # needs root, debootstrap and openssl
#
# FLOODGATE_BINARY names the binary to copy in (default: a release build).
# scripts/test.sh passes the one its tests built: the runtime stage's
# checks (shared libraries, CA roots, uid) do not depend on the profile,
# and a second, release build of the whole tree would double the test time.
#
# The root filesystem is cached in ~/.cache/floodgate/verify-image/
# (FLOODGATE_CACHE overrides ~/.cache/floodgate) and reused, by every clone,
# while the Dockerfile's release and runtime RUN are unchanged.
# DEBIAN_MIRROR overrides the mirror (default: the first one apt uses here).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

fail() { echo "verify-image: FAILED: $*" >&2; exit 1; }
passed=0
pass() { passed=$((passed + 1)); echo "verify-image: ok: $*"; }

for tool in debootstrap openssl python3 chroot; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/test.sh installs it)"
done
[ "$(id -u)" = 0 ] || fail "debootstrap and chroot need root"

# The Dockerfile's runtime stage: its Debian release, and its one RUN.
release=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' Dockerfile)
[ -n "$release" ] || fail "no ARG DEBIAN_RELEASE in the Dockerfile"
runtime_run=$(awk '
    /^FROM .* AS runtime/ { stage = 1; next }
    /^FROM / { stage = 0 }
    stage && /^RUN / { running = 1; sub(/^RUN /, "") }
    stage && running { line = $0; more = sub(/\\$/, "", line); printf "%s ", line; if (!more) running = 0 }
' Dockerfile)
[ -n "$runtime_run" ] || fail "no RUN in the Dockerfile's runtime stage"
config=$(sed -n 's/^ENV FLOODGATE_CONFIG=//p' Dockerfile)
workdir=$(awk '/^FROM .* AS runtime/ { stage = 1 } stage && /^WORKDIR / { print $2 }' Dockerfile)
user=$(awk '/^FROM .* AS runtime/ { stage = 1 } stage && /^USER / { print $2 }' Dockerfile)
[ "$user" = "10001:10001" ] || fail "the runtime stage runs as '$user', not 10001:10001"

apt_mirror() {
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '/^(URIs:|deb) +https?:\/\// && !/security/ { print $2; exit }'
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror || true)}
mirror=${mirror:-http://deb.debian.org/debian}

work=$root/target/verify-image
mkdir -p "$work"
cache=${FLOODGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/floodgate}/verify-image
rootfs=$cache/rootfs
stamp=$(printf '%s\n%s\n' "$release" "$runtime_run" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$cache/rootfs.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "verify-image: debootstrap $release from $mirror into $rootfs"
    rm -rf "$rootfs" "$cache/rootfs.stamp"
    mkdir -p "$cache"
    debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || fail "debootstrap; see $cache/debootstrap.log"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    chroot "$rootfs" /bin/sh -c "$runtime_run" >"$cache/runtime-run.log" 2>&1 \
        || fail "the Dockerfile's runtime RUN; see $cache/runtime-run.log"
    echo "$stamp" >"$cache/rootfs.stamp"
fi
pass "root filesystem: debootstrap $release + the Dockerfile's runtime RUN ($(du -sh "$rootfs" | cut -f1))"

# The release binary, as the Dockerfile's COPY puts it.
binary=${FLOODGATE_BINARY:-}
if [ -z "$binary" ]; then
    cargo build --release --locked --quiet -p floodgate-responder --bin floodgate
    binary=target/release/floodgate
fi
install -m 0755 "$binary" "$rootfs/usr/local/bin/floodgate"

# Run as the image does: uid 10001, its WORKDIR and ENV, no shell.
in_image() {
    chroot --userspec=10001:10001 "$rootfs" /usr/bin/env -i -C "$workdir" \
        PATH=/usr/local/bin:/usr/bin:/bin FLOODGATE_CONFIG="$config" \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
        "$@"
}

version=$(in_image floodgate --version) || fail "floodgate --version"
[[ $version == "floodgate "* ]] || fail "floodgate --version printed '$version'"
pass "floodgate --version: $version"

# The embedded default as the image's policy, its sample logs beside it.
install -m 0644 examples/local.toml "$rootfs$config"
rm -rf "$rootfs$workdir/examples" "$rootfs$workdir/state"
install -d -o 10001 -g 10001 "$rootfs$workdir/examples"
cp -r examples/logs "$rootfs$workdir/examples/logs"
chown -R 10001:10001 "$rootfs$workdir/examples"

in_image floodgate check >/dev/null || fail "floodgate check of $config"
pass "floodgate check $config"

report=$(in_image floodgate run --once --now 2026-11-20T10:05:00Z --format json) \
    || fail "floodgate run --once"
added=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["added"]))' <<<"$report")
[ "$added" -gt 0 ] || fail "run --once blocked nothing: $report"
[ -s "$rootfs$workdir/state/ip-sets/floodgate-blocked-v4.json" ] || fail "no IP set file written"
owner=$(stat -c %u "$rootfs$workdir/state/ledger.json")
[ "$owner" = 10001 ] || fail "the ledger belongs to uid $owner"
pass "floodgate run --once as uid 10001: $added blocks, IP set files and ledger written"

# TLS: a local HTTPS endpoint with a certificate from a test CA.
tls=$work/tls
rm -rf "$tls" && mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=floodgate test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$tls/san.ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 1 -extfile "$tls/san.ext" -out "$tls/server.crt" 2>/dev/null
cat >"$tls/server.py" <<'EOF'
# Answers any POST with an empty WAFv2 ListIPSets page and records it.
import http.server, ssl, sys
tls_dir, port_file = sys.argv[1], sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(f"{tls_dir}/requests", "a") as log:
            log.write(self.headers.get("x-amz-target", "?") + "\n")
        body = b'{"IPSets": []}'
        self.send_response(200)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{tls_dir}/server.crt", f"{tls_dir}/server.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
open(port_file, "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
python3 "$tls/server.py" "$tls" "$tls/port" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 50); do [ -s "$tls/port" ] && break; sleep 0.1; done
port=$(cat "$tls/port")
cat >"$rootfs/etc/floodgate/tls.toml" <<EOF
[[tiers]]
name = "block"
requests = 100
window_seconds = 300
action = "block"
block_minutes = 15

[[targets]]
type = "wafv2"
scope = "regional"
region = "eu-west-1"
ipv4_sets = ["floodgate-blocked-v4"]
ipv6_sets = ["floodgate-blocked-v6"]
endpoint_url = "https://127.0.0.1:$port"
EOF
ca_in_image=$rootfs/usr/local/share/ca-certificates/floodgate-test-ca.crt
rm -f "$ca_in_image" "$tls/requests"
chroot "$rootfs" update-ca-certificates --fresh >/dev/null 2>&1
untrusted=$(in_image floodgate status --config /etc/floodgate/tls.toml 2>&1 || true)
[ ! -e "$tls/requests" ] || fail "a request got through with the test CA untrusted"
grep -qi "certificate\|UnknownIssuer" <<<"$untrusted" \
    || fail "without the test CA the error names no certificate problem: $untrusted"
cp "$tls/ca.crt" "$ca_in_image"
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
in_image floodgate status --config /etc/floodgate/tls.toml >/dev/null 2>&1 || true
grep -q "ListIPSets" "$tls/requests" 2>/dev/null \
    || fail "with the test CA in the image's store, no WAFv2 call reached the endpoint"
rm -f "$ca_in_image"
chroot "$rootfs" update-ca-certificates --fresh >/dev/null 2>&1
pass "TLS: the AWS client trusts exactly the image's CA store (refused without the test CA, connected with it)"

echo "verify-image: $passed passed, 0 failed"
