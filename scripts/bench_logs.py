"""Times `floodgate top` against DuckDB and `wc -l` on the same WAF logs.

Called by scripts/bench-logs.sh with a data directory, the floodgate binary
and one or more Python interpreters, each with a DuckDB release installed (the
pinned one from .venv first). Generates the inputs once (deterministic), warms
the page cache, runs each contender several times and reports the best and
median, and every ratio against the fastest DuckDB release of the run. The
top-100 results of floodgate and each DuckDB are asserted equal before any
figure is shown.
"""
import glob
import json
import os
import statistics
import subprocess
import sys
import time

DATA, FLOODGATE, PYTHONS = sys.argv[1], sys.argv[2], sys.argv[3:]
RUNS = 5
START = "2026-11-20T10:00:00Z"
MINUTES = 60
END = "2026-11-20T11:00:00Z"  # every record is inside (END - 2h, END]
os.makedirs(DATA, exist_ok=True)


def generate(name, **options):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        args = [FLOODGATE, "gen-logs", "--out", path, "--start", START, "--minutes", str(MINUTES)]
        for key, value in options.items():
            args += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
        subprocess.run(args, check=True)
    return path


def timed(args, runs=RUNS):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), out.stdout


# DuckDB's query counts per address, so floodgate is timed doing the same:
# every address its own key (by default an IPv6 address counts under its /64).
PER_ADDRESS = os.path.join(DATA, "per-address.toml")
with open(PER_ADDRESS, "w") as policy:
    policy.write("[detection]\nipv4_prefix = 32\nipv6_prefix = 128\n")


def floodgate_top(path, limit, config=PER_ADDRESS, binary=FLOODGATE):
    args = [binary, "top", "--logs", path, "--now", END, "--window", "2h", "--limit", str(limit), "--format", "json"]
    return args + (["--config", config] if config else [])


# Runs in each DuckDB release's own interpreter: the query RUNS times, then
# its version, the times and the last result as JSON.
DUCKDB_RUN = """
import json, sys, time, duckdb
path, runs, fmt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ip, columns = {
    "waf": ("httpRequest.clientIp", "{'httpRequest': 'STRUCT(clientIp VARCHAR)'}"),
    "cloudflare": ("ClientIP", "{'ClientIP': 'VARCHAR'}"),
}[fmt]
times, rows = [], None
for _ in range(runs):
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    rows = con.execute(
        f"SELECT {ip} AS ip, count(*) AS n "
        f"FROM read_json(?, format = 'newline_delimited', columns = {columns}) "
        "GROUP BY ip ORDER BY n DESC, ip LIMIT 100",
        [path],
    ).fetchall()
    times.append(time.perf_counter() - started)
print(json.dumps({"version": duckdb.__version__, "times": times, "rows": rows}))
"""


def time_duckdb(python, path, runs=RUNS, fmt="waf"):
    """DuckDB's best and median time on `path`, its version and its top 100."""
    out = subprocess.run([python, "-c", DUCKDB_RUN, path, str(runs), fmt], check=True, capture_output=True)
    result = json.loads(out.stdout)
    times = result["times"]
    return min(times), statistics.median(times), result["version"], [tuple(r) for r in result["rows"]]


def top100(stdout):
    offenders = json.loads(stdout)["offenders"]
    # top writes every key with its length; DuckDB's rows are bare addresses.
    keys = ((o["key"].removesuffix("/32").removesuffix("/128"), o["requests"]) for o in offenders)
    ranked = sorted(keys, key=lambda r: (-r[1], r[0]))
    return ranked[:100]


# About 1 GiB of 1.19 KB records: the attack scenarios (655k records over the
# hour) plus 250k requests from 100k benign clients.
plain = generate("waf-1gib.jsonl", benign_records=250_000, benign_ips=100_000)

def compare(label, path, floor_name, floor_args, runs, goal, fmt="waf"):
    """Times the floor, floodgate and every DuckDB on `path` (records in
    `fmt`); checks they agree; prints the times and the ratios against the
    fastest DuckDB."""
    files = sorted(glob.glob(path))
    subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL)  # warm the page cache
    floor_best, floor_median, _ = timed(floor_args, runs)
    fg_best, fg_median, fg_out = timed(floodgate_top(path, 1000) + ["--logs-from", fmt], runs)
    anchors = [time_duckdb(python, path, runs, fmt) for python in PYTHONS]
    for _, _, version, rows in anchors:
        assert top100(fg_out) == [(ip, n) for ip, n in rows], f"floodgate and DuckDB {version} disagree on the top 100 of {path}"
    dk_best, dk_median, dk_version, _ = min(anchors)
    size = sum(os.path.getsize(f) for f in files)
    print(f"{label}: {path}, {len(files)} files, {size / 1e9:.3f} GB, {json.loads(fg_out)['records']} records")
    print(f"{'contender':<26}{'best s':>8}{'median s':>10}")
    rows = [(floor_name, floor_best, floor_median)]
    rows += [(f"duckdb {version} read_json", best, median) for best, median, version, _ in anchors]
    rows += [("floodgate top", fg_best, fg_median)]
    for name, best, median in rows:
        print(f"{name:<26}{best:>8.3f}{median:>10.3f}")
    print(f"{label}: floodgate vs the fastest DuckDB ({dk_version}): {dk_best / fg_best:.2f}x (best), "
          f"{dk_median / fg_median:.2f}x (median)" + (f"; goal >= {goal}x" if goal else ""))
    print(f"{label}: floodgate takes {fg_best / floor_best:.2f}x the {floor_name} time (best)")


compare("plain", plain, "wc -l", ["wc", "-l", plain], RUNS, 2.5)

# The same requests as Cloudflare's Logpush writes them (no goal: for the record).
cloudflare = generate("cloudflare.jsonl", benign_records=250_000, benign_ips=100_000, format="cloudflare")
compare("cloudflare", cloudflare, "wc -l", ["wc", "-l", cloudflare], RUNS, None, fmt="cloudflare")


def keys(baseline):
    """The cost of client keys on the plain file: `baseline` (a floodgate
    from before keys, counting per address) against this one per address,
    with its defaults (IPv6 per /64), with a tier scoped to POST /login, and
    with a second key (an IPv4 /24 tier), runs interleaved so the machine's
    drift hits all alike."""
    subnet = os.path.join(DATA, "subnet-tier.toml")
    with open(subnet, "w") as policy:
        policy.write('[[tiers]]\nname = "subnets"\nrequests = 50000\nwindow_seconds = 7200\n'
                     'action = "observe"\nipv4_prefix = 24\n')
    scoped = os.path.join(DATA, "scoped-tier.toml")
    with open(scoped, "w") as policy:
        policy.write('[[tiers]]\nname = "login"\nrequests = 600\nwindow_seconds = 7200\n'
                     'action = "observe"\nmatch = { path = "/login", method = "POST" }\n')
    contenders = [
        ("baseline, per address", floodgate_top(plain, 1000, config=None, binary=baseline)),
        ("per address", floodgate_top(plain, 1000)),
        ("default keys (IPv6 /64)", floodgate_top(plain, 1000, config=None)),
        ("default keys + a scoped tier", floodgate_top(plain, 1000, config=scoped)),
        ("default keys + a /24 tier", floodgate_top(plain, 1000, config=subnet)),
    ]
    times = {name: [] for name, _ in contenders}
    for _ in range(RUNS):
        for name, args in contenders:
            started = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    base = min(times["baseline, per address"])
    print(f"keys: {plain}, best of {RUNS} interleaved runs")
    print(f"{'contender':<28}{'best s':>8}{'median s':>10}{'vs baseline':>13}")
    for name, _ in contenders:
        best = min(times[name])
        print(f"{name:<28}{best:>8.3f}{statistics.median(times[name]):>10.3f}{best / base:>12.2f}x")


if os.environ.get("BASELINE_FLOODGATE"):
    keys(os.environ["BASELINE_FLOODGATE"])
gz = generate("waf-1gib.jsonl.gz", benign_records=250_000, benign_ips=100_000)
compare("gzip", gz, "zcat (1 core)", ["sh", "-c", f"zcat {gz} > /dev/null"], 3, 1.2)


def objects(count):
    """The plain file cut at line ends into `count` gzip files, as S3 holds
    a period's objects."""
    folder = os.path.join(DATA, f"{count}-objects")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".tmp", exist_ok=True)
        subprocess.run(["split", "-n", f"l/{count}", "-d", "-a", "3", "--additional-suffix=.jsonl",
                        plain, os.path.join(folder + ".tmp", "part-")], check=True)
        subprocess.run(["sh", "-c", f"gzip -6 {folder}.tmp/*.jsonl"], check=True)
        os.rename(folder + ".tmp", folder)
    return os.path.join(folder, "*.jsonl.gz")


parts = objects(200)
compare("200 gzip objects", parts, "zcat (1 core)", ["sh", "-c", f"zcat {parts} > /dev/null"], 3, 2.0)


def peak_anonymous_kib(args):
    """Runs args, sampling RssAnon: the process's own memory, without the
    page-cache pages of the memory-mapped input, which RSS would include."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
        except FileNotFoundError:
            break
        time.sleep(0.005)
    out = process.stdout.read()
    assert process.wait() == 0
    return peak, out


for name, path in [("1 GiB, ~100k IPs", plain), ("1M distinct IPs", generate("waf-1m-ips.jsonl", benign_records=2_000_000, benign_ips=1_000_000, no_attacks=True))]:
    peak, out = peak_anonymous_kib(floodgate_top(path, 10))
    print(f"memory ({name}): {json.loads(out)['distinct_keys']} distinct IPs in {os.path.getsize(path) / 1e9:.2f} GB: "
          f"peak anonymous RSS {peak / 1024:.0f} MiB")
