#!/usr/bin/env bash
# examples/moto.toml, end to end on this machine: starts a moto server (unless
# one answers on MOTO_PORT), puts the committed sample WAF logs into the three
# regions' log groups as WAF would (moved to the last five minutes, as
# CloudWatch Logs refuses events older than 14 days), then runs one responder
# cycle and `status` against it. The sample's attackers end up in every
# region's and CloudFront's IP sets; read them with `status`, or with the AWS
# CLI pointed at the endpoint.
#
#   scripts/moto-demo.sh          # MOTO_PORT (5000), FLOODGATE (cargo run)
#
# Needs the test venv (scripts/test.sh makes .venv) for moto and boto3. Writes
# the ledger under state/moto/, as the policy says.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${MOTO_PORT:-5000}
venv=${FLOODGATE_VENV:-$PWD/.venv}
read -r -a floodgate <<<"${FLOODGATE:-cargo run --quiet -p floodgate-responder --}"
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}

policy=examples/moto.toml
if [ "$port" != 5000 ]; then
    # The example names port 5000; another port gets a copy that names it.
    policy=$(mktemp --suffix .toml)
    trap 'rm -f "$policy"' EXIT
    sed "s|127.0.0.1:5000|127.0.0.1:$port|" examples/moto.toml >"$policy"
fi

if ! curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null; then
    echo "starting moto on 127.0.0.1:$port (log: /tmp/floodgate-moto-$port.log)" >&2
    "$venv/bin/moto_server" -p "$port" >"/tmp/floodgate-moto-$port.log" 2>&1 &
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break
        sleep 0.1
    done
fi

"$venv/bin/python" - "$port" <<'EOF'
import gzip, json, sys, time
import boto3

port = sys.argv[1]
records = [json.loads(line) for line in gzip.open("examples/logs/sample.jsonl.gz", "rt")]
# The sample's newest record lands one second ago, in the record as in the event.
shift = int(time.time() * 1000) - 1000 - max(r["timestamp"] for r in records)
for record in records:
    record["timestamp"] += shift
events = sorted((r["timestamp"], json.dumps(r, separators=(",", ":"))) for r in records)
regions = ["eu-west-1", "us-east-1", "ap-southeast-2"]
for index, region in enumerate(regions):
    logs = boto3.client("logs", region_name=region, endpoint_url=f"http://127.0.0.1:{port}")
    group = "aws-waf-logs-app"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stream = f"demo-{int(time.time())}"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    mine = events[index::len(regions)]
    for start in range(0, len(mine), 5000):
        batch = [{"timestamp": stamp, "message": line} for stamp, line in mine[start:start + 5000]]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
    print(f"{region}: {len(mine)} records in {group}", file=sys.stderr)
EOF

"${floodgate[@]}" run --once --config "$policy"
"${floodgate[@]}" status --config "$policy"
