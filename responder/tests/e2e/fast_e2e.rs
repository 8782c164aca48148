//! The fast detector end to end: a real `floodgate run` daemon with a fast
//! tier, three regions and CloudFront in moto (behind the gate that answers
//! `GetRateBasedStatementManagedKeys`, which moto lacks), and the
//! Cloudflare fake. An address one region's rule lists is blocked in every
//! region's set, the CloudFront set and the Cloudflare list; an
//! allow-listed one never is; the next log cycle keeps the block as it is.
//!
//! With `FLOODGATE_BENCH_FAST` set (`scripts/bench-fast.sh`), the daemon
//! runs on the default schedule and poll interval, and a second attacker,
//! in the logs only, measures the log path's time to protection beside
//! the fast path's.

use std::time::Instant;

use aws_sdk_wafv2::types::Scope;
use serde_json::Value;

use super::{Daemon, MotoServer, free_port, metrics_once, wall_clock_ms};
use floodgate_tests::cloudflare::FakeCloudflare;
use floodgate_tests::managed_keys::ManagedKeysGate;

const RULE: &str = "floodgate-tier-block";
const ATTACKER: &str = "203.0.113.77";
/// In the logs only: blocked by the log path.
const LOG_ATTACKER: &str = "203.0.113.88";
const PARTNER: &str = "198.51.100.9";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "e2e-token";
const LIST: &str = "floodgate_blocked";
/// (API region, scope, the gate's place).
const PLACES: [(&str, Scope, &str); 4] = [
    ("eu-west-1", Scope::Regional, "eu-west-1"),
    ("us-east-2", Scope::Regional, "us-east-2"),
    ("ap-southeast-2", Scope::Regional, "ap-southeast-2"),
    ("us-east-1", Scope::Cloudfront, "cloudfront"),
];

fn policy(
    dir: &std::path::Path,
    logs: &std::path::Path,
    gate: &str,
    cloudflare: &str,
    port: u16,
    bench: bool,
) -> std::path::PathBuf {
    // The test runs cycles every 2 s and polls every second; the benchmark
    // runs on the defaults (a cycle a minute, a poll every 10 s).
    let timing = match bench {
        true => "",
        false => "schedule = \"*/2 * * * * *\"\nfast_interval_seconds = 1\n",
    };
    let mut targets = String::new();
    for (region, scope, _) in PLACES {
        let scope = match scope {
            Scope::Cloudfront => "scope = \"cloudfront\"".to_owned(),
            _ => format!("scope = \"regional\"\nregion = \"{region}\""),
        };
        targets.push_str(&format!(
            "[[targets]]\ntype = \"wafv2\"\n{scope}\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\nendpoint_url = \"{gate}\"\ncreate_missing = true\n\n"
        ));
    }
    let text = format!(
        r#"[responder]
state_dir = "state"
{timing}listen = "127.0.0.1:{port}"

[[tiers]]
name = "block"
requests = 100
window_seconds = 300
action = "block"
block_minutes = 15
fast = true

[[allow]]
cidr = "198.51.100.0/24"
owner = "partners@example.com"
reason = "a partner's crawler"
expires = "2099-01-01"

[source]
type = "files"
paths = ["{logs}"]

{targets}[[targets]]
type = "cloudflare"
account_id = "{ACCOUNT}"
list = "{LIST}"
api_token_env = "CLOUDFLARE_API_TOKEN"
api_url = "{cloudflare}"
create_missing = true
widen_ipv6 = true
"#,
        logs = logs.display()
    );
    let path = dir.join("fast.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn ipv4_sets(moto: &MotoServer) -> Vec<std::collections::BTreeSet<String>> {
    let mut sets = Vec::new();
    for (region, scope, _) in PLACES {
        sets.push(moto.ip_set(region, scope, "fg-v4").await);
    }
    sets
}

fn is_fast(report: &Value) -> bool {
    report["report"] == "fast"
}

/// Whether the report's `field` lists `ip` (as `ip/32`).
fn lists(report: &Value, field: &str, ip: &str) -> bool {
    let key = format!("{ip}/32");
    report[field]
        .as_array()
        .is_some_and(|keys| keys.iter().any(|k| k == &key))
}

/// 150 requests from `ip` just now, a tier's worth, written to `path`.
fn write_burst(path: &std::path::Path, ip: &str) {
    let lines: String = floodgate_tests::burst(ip, 150, wall_clock_ms())
        .into_iter()
        .map(|(_, line)| line + "\n")
        .collect();
    std::fs::write(path, lines).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_one_rule_lists_is_blocked_in_every_region_cloudfront_and_cloudflare_issue_33() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let gate = ManagedKeysGate::start(&moto.endpoint());
    let cloudflare = FakeCloudflare::start(ACCOUNT, TOKEN);
    for (region, scope, place) in PLACES {
        moto.create_rate_rule(region, scope, "floodgate", RULE, 100, 300)
            .await;
        gate.set(place, RULE, &[]);
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let benign = floodgate_tests::waf_record(wall_clock_ms(), "192.0.2.1");
    std::fs::write(logs.join("waf.jsonl"), benign + "\n").unwrap();
    let port = free_port();
    let bench = std::env::var_os("FLOODGATE_BENCH_FAST").is_some();
    let policy = policy(
        dir.path(),
        &logs,
        &gate.endpoint(),
        &cloudflare.url(),
        port,
        bench,
    );
    let daemon = Daemon::start_with(
        dir.path(),
        &policy,
        "fast",
        &[("CLOUDFLARE_API_TOKEN", TOKEN)],
    );
    // A first cycle adopts what the sets hold; until then no pass writes.
    daemon.wait_for("a first cycle", 90, |r| r.get("records").is_some());

    let listed_at = Instant::now();
    gate.set(
        "eu-west-1",
        RULE,
        &[&format!("{ATTACKER}/32"), &format!("{PARTNER}/32")],
    );
    let fast = daemon.wait_for("a fast block", 90, |r| {
        is_fast(r) && !r["added"].as_array().unwrap().is_empty()
    });
    let seen = listed_at.elapsed();
    assert_eq!(
        fast["added"][0]["key"],
        format!("{ATTACKER}/32"),
        "{fast:#}"
    );
    assert_eq!(
        fast["allow_listed"],
        serde_json::json!([format!("{PARTNER}/32")])
    );
    assert!(
        fast["added"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("regional/eu-west-1")
    );
    let targets = fast["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{fast:#}");
    assert!(targets.iter().all(|t| t["state"] == "updated"), "{fast:#}");
    for set in ipv4_sets(&moto).await {
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            [format!("{ATTACKER}/32")]
        );
    }
    let cloudflare_ips = cloudflare.ips(LIST);
    assert_eq!(cloudflare_ips, [ATTACKER], "never the partner");
    let schema =
        std::fs::read_to_string(super::workspace_root().join("docs/schemas/run-fast.schema.json"))
            .unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&schema).unwrap()).unwrap();
    assert!(validator.is_valid(&fast), "the documented shape: {fast:#}");
    let latency = fast["added"][0]["latency_seconds"].as_f64().unwrap();
    eprintln!(
        "fast path: {latency:.2} s from the poll that listed {ATTACKER} to the last of 5 targets written; {:.2} s from the rule listing it (1 s polls)",
        seen.as_secs_f64()
    );

    let metrics = metrics_once(port, "fast block metrics", |m| {
        m.contains("floodgate_responder_fast_blocks_total{tier=\"block\"} 1")
    });
    assert!(
        metrics.contains("floodgate_responder_fast_block_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("floodgate_responder_managed_keys_calls_total"));

    // The next log cycle sees the attacker in the logs: the block stays one
    // block, not shortened.
    write_burst(&logs.join("attack.jsonl"), ATTACKER);
    let cycle = daemon.wait_for("a log cycle after the fast block", 90, |r| {
        !is_fast(r) && lists(r, "extended", ATTACKER)
    });
    assert_eq!(cycle["added"], serde_json::json!([]), "{cycle:#}");
    assert_eq!(cloudflare.ips(LIST), [ATTACKER]);
    for set in ipv4_sets(&moto).await {
        assert_eq!(set.len(), 1);
    }
    if bench {
        log_path(&daemon, &logs, latency, seen.as_secs_f64());
    }
    let reports = daemon.stop();
    let fast_blocks = reports
        .iter()
        .filter(|r| is_fast(r))
        .flat_map(|r| r["added"].as_array().unwrap().clone())
        .count();
    assert_eq!(fast_blocks, 1, "blocked once");

    // `status` holds the deployed rules to the policy: in step, then, with
    // the tier's threshold raised, drift (exit 2) in all four web ACLs.
    let status = |policy: &std::path::Path| {
        let output = std::process::Command::new(super::floodgate_bin())
            .args(["status", "--format", "json", "--config"])
            .arg(policy)
            .current_dir(dir.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("CLOUDFLARE_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (output.status.code(), report["rate_rules"].clone())
    };
    let (code, rules) = status(&policy);
    assert_eq!(rules.as_array().unwrap().len(), 4, "{rules:#}");
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["drift"].is_null() && r["error"].is_null()),
        "{rules:#}"
    );
    assert_eq!(code, Some(0), "in sync: {rules:#}");
    let raised = dir.path().join("raised.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&raised, text.replace("requests = 100", "requests = 200")).unwrap();
    let (code, rules) = status(&raised);
    assert_eq!(code, Some(2));
    for rule in rules.as_array().unwrap() {
        assert_eq!(
            rule["drift"], "its limit is 100, the tier's requests 200",
            "{rule:#}"
        );
    }
}

/// The log path on the same kind of attack: from its records landing in
/// the source to the cycle's report of its block in every target.
fn log_path(daemon: &Daemon, logs: &std::path::Path, fast_latency: f64, fast_listed: f64) {
    let landed = Instant::now();
    write_burst(&logs.join("log-attack.jsonl"), LOG_ATTACKER);
    let cycle = daemon.wait_for("the log path's block", 150, |r| {
        !is_fast(r) && lists(r, "added", LOG_ATTACKER)
    });
    assert!(
        cycle["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["failure"].is_null())
    );
    println!(
        "FIGURES fast: {fast_latency:.2} s poll to last target, {fast_listed:.2} s rule listing to last target (10 s polls); log path: {:.1} s records landing to last target (cycle a minute, files source: no delivery lag)",
        landed.elapsed().as_secs_f64()
    );
}

/// A standby daemon polls the rules but, while the primary holds the
/// lease, writes nothing: no set, no ledger entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_daemon_polls_and_writes_nothing_issue_33() {
    use floodgate_responder::lease::dynamodb::DynamoDbLease;
    use floodgate_responder::lease::{Contender, Standing, acquire};
    use floodgate_responder::ledger::Ledger;
    use floodgate_responder::ledger::dynamodb::DynamoDbLedger;
    use floodgate_rules::policy::Role;

    const REGION: &str = "eu-west-1";
    const TABLE: &str = "floodgate-ledger";
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let gate = ManagedKeysGate::start(&moto.endpoint());
    moto.create_rate_rule(REGION, Scope::Regional, "floodgate", RULE, 100, 300)
        .await;
    moto.create_ledger_table(REGION, TABLE).await;
    // A cycle has run (so passes may write), and the primary holds the lease.
    let ledger = DynamoDbLedger::new(moto.dynamodb_client(REGION), TABLE);
    let ran = floodgate_responder::ledger::LedgerState {
        version: 1,
        last_run_ms: Some(wall_clock_ms()),
        ..Default::default()
    };
    ledger.save(&ran).await.unwrap();
    let lease = DynamoDbLease::new(moto.dynamodb_client(REGION), TABLE);
    let primary = Contender {
        holder_id: "primary",
        role: Role::Primary,
        ttl_ms: 900_000,
        skew_ms: 1_000,
    };
    let held = acquire(&lease, &primary, wall_clock_ms()).await.unwrap();
    assert!(matches!(held, Standing::Holding { .. }));
    gate.set(REGION, RULE, &[&format!("{ATTACKER}/32")]);

    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("waf.jsonl");
    std::fs::write(
        &logs,
        floodgate_tests::waf_record(wall_clock_ms(), "192.0.2.1") + "\n",
    )
    .unwrap();
    let port = free_port();
    let (moto_url, gate_url) = (moto.endpoint(), gate.endpoint());
    let text = format!(
        r#"[responder]
role = "standby"
schedule = "0 */5 * * * *"
fast_interval_seconds = 1
listen = "127.0.0.1:{port}"
ledger = {{ backend = "dynamodb", table = "{TABLE}", region = "{REGION}", endpoint_url = "{moto_url}" }}
lease = {{ holder_id = "standby", ttl_seconds = 900, max_clock_skew_seconds = 1 }}

[[tiers]]
name = "block"
requests = 100
window_seconds = 300
action = "block"
block_minutes = 15
fast = true

[source]
type = "files"
paths = ["{logs}"]

[[targets]]
type = "wafv2"
scope = "regional"
region = "{REGION}"
ipv4_sets = ["fg-v4"]
ipv6_sets = ["fg-v6"]
endpoint_url = "{gate_url}"
create_missing = true
"#,
        logs = logs.display()
    );
    let policy = dir.path().join("standby.toml");
    std::fs::write(&policy, text).unwrap();
    let daemon = Daemon::start(dir.path(), &policy, "standby");
    let metrics = metrics_once(port, "three fast polls", |m| {
        m.lines()
            .find_map(|l| l.strip_prefix("floodgate_responder_fast_polls_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 3)
    });
    assert!(gate.calls() >= 3, "the standby polls the rules");
    assert!(
        !metrics.contains("floodgate_responder_fast_blocks_total{"),
        "{metrics}"
    );
    let reports = daemon.stop();
    assert!(
        reports.iter().all(|r| !is_fast(r)),
        "nothing to say: {reports:#?}"
    );
    let sets = moto
        .wafv2_client(REGION)
        .list_ip_sets()
        .scope(Scope::Regional)
        .send()
        .await
        .unwrap();
    assert!(sets.ip_sets().is_empty(), "no set written");
    let after = ledger.load().await.unwrap();
    assert!(after.entries.is_empty() && after.version == 1, "{after:?}");
}
