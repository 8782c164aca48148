#!/usr/bin/env bash
# A botnet-sized cycle (issue 36): CLIENTS distinct offending clients over
# the block tier, half IPv4 addresses and half IPv6 /64s, through detect,
# plan and apply, from a local log file to WAFv2 IP sets in three regions
# and CloudFront on a moto server this script starts. Prints the wall time,
# the peak memory, the WAF API calls and what the sets hold. Figures go in
# BENCHMARKS.md.
#
#   scripts/bench-botnet.sh          # CLIENTS (200000), MOTO_PORT (5077)
#
# Needs the test venv (scripts/test.sh makes .venv) for moto.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${CLIENTS:-200000}
port=${MOTO_PORT:-5077}
venv=${FLOODGATE_VENV:-$PWD/.venv}
work=$(mktemp -d)
cleanup() {
    [ -n "${moto:-}" ] && kill "$moto" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet -p floodgate-responder
floodgate=$PWD/target/release/floodgate
"$venv/bin/moto_server" -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
until curl -s "http://127.0.0.1:$port/moto-api/" >/dev/null; do sleep 0.2; done

# The window ends at END; every client sends 20 to 200 requests in its last
# five minutes (a tier of 20), so some are far worse than others. The
# addresses are spread over the whole unicast space, one client per /64.
end_ms=1795168800000
python3 - "$clients" "$end_ms" "$work/counts.tsv" >"$work/waf.jsonl" <<'EOF'
import random, sys
clients, end_ms = int(sys.argv[1]), int(sys.argv[2])
counts = open(sys.argv[3], "w")
rng = random.Random(36)
out = sys.stdout
for i in range(clients):
    if i % 2 == 0:
        ip = "%d.%d.%d.%d" % (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
    else:
        ip = "2%03x:%x:%x:%x::1" % (rng.randrange(0x1000), rng.randrange(0x10000), rng.randrange(0x10000), rng.randrange(0x10000))
    requests = 20 + int(180 * rng.random() ** 3)
    key = ip + "/32" if i % 2 == 0 else ip.rsplit(":", 2)[0] + "::/64"
    counts.write(f"{key}\t{requests}\n")
    for _ in range(requests):
        ts = end_ms - rng.randrange(1, 300_000)
        out.write('{"timestamp":%d,"action":"ALLOW","httpRequest":{"clientIp":"%s","uri":"/login","httpMethod":"POST"}}\n' % (ts, ip))
EOF
records=$(wc -l <"$work/waf.jsonl")
echo "$clients clients, $records records, $(du -m "$work/waf.jsonl" | cut -f1) MB"

targets=""
for region in eu-west-1 us-east-1 ap-southeast-2; do
    targets+="
[[targets]]
type = \"wafv2\"
scope = \"regional\"
region = \"$region\"
ipv4_sets = [\"fg-v4-a\", \"fg-v4-b\"]
ipv6_sets = [\"fg-v6-a\", \"fg-v6-b\"]
endpoint_url = \"http://127.0.0.1:$port\"
create_missing = true
"
done
cat >"$work/floodgate.toml" <<EOF
[responder]
state_dir = "$work/state"

[safety]
max_new_blocks_per_run = 1000000

[[tiers]]
name = "botnet"
requests = 20
window_seconds = 300
action = "block"
block_minutes = 60

[source]
type = "files"
paths = ["$work/waf.jsonl"]
$targets
[[targets]]
type = "wafv2"
scope = "cloudfront"
ipv4_sets = ["fg-v4-a", "fg-v4-b"]
ipv6_sets = ["fg-v6-a", "fg-v6-b"]
endpoint_url = "http://127.0.0.1:$port"
create_missing = true
EOF

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
/usr/bin/time -v "$floodgate" run --once --format json --now 2026-11-20T10:00:00Z \
    --config "$work/floodgate.toml" >"$work/report.json" 2>"$work/time.txt" || true
python3 - "$work/report.json" "$work/time.txt" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
time = open(sys.argv[2]).read()
peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", time).group(1)
print(f"wall {wall}, peak RSS {peak / 1024:.0f} MiB, cycle {report['seconds']:.2f} s")
print("phases: " + ", ".join(f"{p['phase']} {p['seconds']:.2f} s" for p in report["phases"]))
print(f"offenders per tier: {report['offenders_per_tier']}")
print(f"added {len(report['added'])}, dropped (no room in the sets) {len(report['dropped'])}, WAF API calls {report['api_calls']}")
for target in report["targets"]:
    print(f"  {target['target']}: {target['outcome']}")
EOF
# What one region's and CloudFront's sets hold, read back from moto, and
# whether they hold the worst: the fewest requests of a key kept against the
# most of a key left out, per family.
"$venv/bin/python" - "$port" "$work/counts.tsv" <<'EOF'
import ipaddress, sys, boto3
port = sys.argv[1]
requests = {}
for line in open(sys.argv[2]):
    key, count = line.split("\t")
    key = str(ipaddress.ip_network(key, strict=False))
    requests[key] = requests.get(key, 0) + int(count)
for region, scope in [("eu-west-1", "REGIONAL"), ("us-east-1", "CLOUDFRONT")]:
    waf = boto3.client("wafv2", region_name=region, endpoint_url=f"http://127.0.0.1:{port}")
    held = set()
    for summary in waf.list_ip_sets(Scope=scope)["IPSets"]:
        addresses = waf.get_ip_set(Scope=scope, Name=summary["Name"], Id=summary["Id"])["IPSet"]["Addresses"]
        held.update(str(ipaddress.ip_network(a)) for a in addresses)
        lengths = sorted({a.split("/")[1] for a in addresses}, key=int)
        print(f"  {region} {scope} {summary['Name']}: {len(addresses)} entries, prefix lengths {', '.join('/' + l for l in lengths)}")
    for family in (4, 6):
        keys = [k for k in requests if ipaddress.ip_network(k).version == family]
        kept = [requests[k] for k in keys if k in held]
        left = [requests[k] for k in keys if k not in held]
        print(f"  {region} {scope} IPv{family}: kept {len(kept)} keys of {min(kept)}..{max(kept)} requests, "
              f"left out {len(left)} of {min(left, default=0)}..{max(left, default=0)}")
EOF
