"""Times `floodgate top` against DuckDB and `wc -l` on the same WAF logs.

Called by scripts/bench-logs.sh with a data directory, the floodgate binary
and one or more Python interpreters, each with a DuckDB release installed (the
pinned one from .venv first). Generates the inputs once (deterministic), warms
the page cache, runs each contender several times and reports the best and
median, and every ratio against the fastest DuckDB release of the run. The
top-100 results of floodgate and each DuckDB are asserted equal before any
figure is shown.
"""
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


def floodgate_top(path, limit):
    return [FLOODGATE, "top", "--logs", path, "--now", END, "--window", "2h", "--limit", str(limit), "--format", "json"]


# Runs in each DuckDB release's own interpreter: the query RUNS times, then
# its version, the times and the last result as JSON.
DUCKDB_RUN = """
import json, sys, time, duckdb
path, runs = sys.argv[1], int(sys.argv[2])
times, rows = [], None
for _ in range(runs):
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    rows = con.execute(
        "SELECT httpRequest.clientIp AS ip, count(*) AS n "
        "FROM read_json(?, format = 'newline_delimited', columns = {'httpRequest': 'STRUCT(clientIp VARCHAR)'}) "
        "GROUP BY ip ORDER BY n DESC, ip LIMIT 100",
        [path],
    ).fetchall()
    times.append(time.perf_counter() - started)
print(json.dumps({"version": duckdb.__version__, "times": times, "rows": rows}))
"""


def time_duckdb(python, path, runs=RUNS):
    """DuckDB's best and median time on `path`, its version and its top 100."""
    out = subprocess.run([python, "-c", DUCKDB_RUN, path, str(runs)], check=True, capture_output=True)
    result = json.loads(out.stdout)
    times = result["times"]
    return min(times), statistics.median(times), result["version"], [tuple(r) for r in result["rows"]]


def top100(stdout):
    offenders = json.loads(stdout)["offenders"]
    ranked = sorted(((o["ip"], o["requests"]) for o in offenders), key=lambda r: (-r[1], r[0]))
    return ranked[:100]


# About 1 GiB of 1.19 KB records: the attack scenarios (655k records over the
# hour) plus 250k requests from 100k benign clients.
plain = generate("waf-1gib.jsonl", benign_records=250_000, benign_ips=100_000)
size = os.path.getsize(plain)
subprocess.run(["cat", plain], check=True, stdout=subprocess.DEVNULL)  # warm the page cache

wc_best, wc_median, _ = timed(["wc", "-l", plain])
fg_best, fg_median, fg_out = timed(floodgate_top(plain, 1000))
anchors = [time_duckdb(python, plain) for python in PYTHONS]
for _, _, version, rows in anchors:
    assert top100(fg_out) == [(ip, n) for ip, n in rows], f"floodgate and DuckDB {version} disagree on the top 100"
dk_best, dk_median, dk_version, _ = min(anchors)

print(f"input: {plain}, {size / 1e9:.3f} GB, {json.loads(fg_out)['records']} records")
print(f"{'contender':<26}{'best s':>8}{'median s':>10}{'best GB/s':>11}")
rows = [("wc -l", wc_best, wc_median)]
rows += [(f"duckdb {version} read_json", best, median) for best, median, version, _ in anchors]
rows += [("floodgate top", fg_best, fg_median)]
for name, best, median in rows:
    print(f"{name:<26}{best:>8.3f}{median:>10.3f}{size / best / 1e9:>11.2f}")
print(f"plain: floodgate vs the fastest DuckDB ({dk_version}): {dk_best / fg_best:.2f}x (best), {dk_median / fg_median:.2f}x (median); goal >= 2.5x")
print(f"plain: floodgate takes {fg_best / wc_best:.2f}x the wc -l time (best); goal <= 1.5x")

gz = generate("waf-1gib.jsonl.gz", benign_records=250_000, benign_ips=100_000)
subprocess.run(["cat", gz], check=True, stdout=subprocess.DEVNULL)
zcat_best, zcat_median, _ = timed(["sh", "-c", f"zcat {gz} > /dev/null"], runs=3)
gz_best, gz_median, gz_out = timed(floodgate_top(gz, 1000), runs=3)
gz_anchors = [time_duckdb(python, gz, runs=3) for python in PYTHONS]
for _, _, version, rows in gz_anchors:
    assert top100(gz_out) == [(ip, n) for ip, n in rows], f"floodgate and DuckDB {version} disagree on the .gz top 100"
gz_dk_best, gz_dk_median, gz_dk_version, _ = min(gz_anchors)
records = json.loads(gz_out)["records"]
print(f"gzip: {os.path.getsize(gz) / 1e6:.1f} MB compressed, {records} records")
rows = [("zcat > /dev/null (1 core)", zcat_best, zcat_median)]
rows += [(f"duckdb {version} read_json", best, median) for best, median, version, _ in gz_anchors]
rows += [("floodgate top", gz_best, gz_median)]
for name, best, median in rows:
    print(f"{name:<26}{best:>8.3f}{median:>10.3f}")
print(f"gzip: floodgate vs the fastest DuckDB ({gz_dk_version}): {gz_dk_best / gz_best:.2f}x (best), {gz_dk_median / gz_median:.2f}x (median); goal >= 1.2x")
print(f"gzip: floodgate takes {gz_best / zcat_best:.2f}x the zcat time (best)")


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
    print(f"memory ({name}): {json.loads(out)['distinct_ips']} distinct IPs in {os.path.getsize(path) / 1e9:.2f} GB: "
          f"peak anonymous RSS {peak / 1024:.0f} MiB")
