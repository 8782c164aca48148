//! A primary and a standby responder, as two real `floodgate run` daemons,
//! sharing a DynamoDB ledger and lease in moto:
//!
//! 0. a standby started first does not take a lease nobody has held: it
//!    keeps it for the primary;
//! 1. only the primary applies while it lives;
//! 2. after it is SIGKILLed, the standby takes over within the lease's ttl
//!    (plus the clock margin and one cycle) and blocks a new attacker;
//! 3. a restarted primary gets the lease back through a handback and blocks
//!    the next attacker;
//! 4. SIGTERMed, it releases the lease, and the standby takes over at its
//!    next cycle, well inside the ttl;
//! 5. across the whole run, no two cycles of different responders applied
//!    at overlapping times, each holder applied under a new fence, and each
//!    report names the holder and a real expiry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Daemon, MotoServer, burst, floodgate_bin, wall_clock_ms};
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::{parse_instant, unix_ms};
use serde_json::Value;

const REGION: &str = "eu-west-1";
const GROUP: &str = "aws-waf-logs-app";
const TTL_SECONDS: i64 = 10;
const SKEW_SECONDS: i64 = 1;
const CYCLE_SECONDS: i64 = 1;

/// One side's policy: the same reviewed rules, its own role, name and port.
fn policy(dir: &Path, moto: &MotoServer, role: &str, name: &str) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = moto.endpoint();
    let text = format!(
        r#"
[responder]
role = "{role}"
state_dir = "state-{name}"
schedule = "* * * * * *"
listen = "127.0.0.1:{port}"
ledger = {{ backend = "dynamodb", table = "floodgate-ledger", region = "{REGION}", endpoint_url = "{endpoint}" }}
lease = {{ holder_id = "{name}", ttl_seconds = {TTL_SECONDS}, max_clock_skew_seconds = {SKEW_SECONDS} }}

[[tiers]]
name = "block"
requests = 1000
window_seconds = 300
action = "block"
block_minutes = 15

[source]
type = "cloudwatch"
api = "events"
endpoint_url = "{endpoint}"
log_groups = [{{ region = "{REGION}", name = "{GROUP}" }}]

[[targets]]
type = "wafv2"
scope = "regional"
region = "{REGION}"
ipv4_sets = ["floodgate-blocked-v4"]
ipv6_sets = ["floodgate-blocked-v6"]
endpoint_url = "{endpoint}"
create_missing = true
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn lease_state(report: &Value) -> &str {
    report["lease"]["state"].as_str().unwrap_or_default()
}

fn ms(text: &Value) -> i64 {
    unix_ms(parse_instant(text.as_str().unwrap()).unwrap())
}

/// An applying cycle's window: from taking or renewing the lease (its end
/// minus the ttl) to the end of the cycle.
fn window(report: &Value) -> (i64, i64) {
    let from = ms(&report["lease"]["expires"]) - TTL_SECONDS * 1000;
    let to = ms(&report["started"]) + (report["seconds"].as_f64().unwrap() * 1000.0) as i64;
    (from, to)
}

async fn blocked(moto: &MotoServer) -> std::collections::BTreeSet<String> {
    moto.ip_set(REGION, Scope::Regional, "floodgate-blocked-v4")
        .await
}

/// Waits until `ip` is in the set. The attackers' addresses are far apart,
/// so the set never aggregates them into one range.
async fn wait_blocked(moto: &MotoServer, ip: &str, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !blocked(moto).await.contains(&format!("{ip}/32")) {
        assert!(
            Instant::now() < deadline,
            "{ip} not blocked within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_primary_dies_and_hands_back_when_it_returns() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    moto.create_ledger_table(REGION, "floodgate-ledger").await;
    moto.create_waf_log_group(REGION, GROUP).await;
    moto.put_waf_logs(REGION, GROUP, burst("203.0.113.10", 1500, wall_clock_ms()))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let primary_policy = policy(dir.path(), &moto, "primary", "primary");
    let standby_policy = policy(dir.path(), &moto, "standby", "standby");

    // 0. The standby comes first: it keeps the lease for the primary.
    let standby = Daemon::start(dir.path(), &standby_policy, "standby");
    standby.wait_for("second cycle", 60, |_| standby.reports().len() >= 2);
    for report in standby.reports() {
        assert_eq!(lease_state(&report), "waiting", "{report}");
        assert_eq!(report["lease"]["holder"], "a primary", "{report}");
        assert!(report["lease"]["expires"].is_null(), "{report}");
    }
    assert!(blocked(&moto).await.is_empty(), "the standby wrote nothing");

    // 1. The primary takes the lease and blocks; the standby only plans.
    let primary = Daemon::start(dir.path(), &primary_policy, "primary");
    primary.wait_for("held cycle", 60, |r| lease_state(r) == "held");
    wait_blocked(&moto, "203.0.113.10", 30).await;
    // The daemon keeps its targets: after the first held cycle looked the
    // sets up (ListIPSets), a cycle that changes nothing reads each set
    // once (GetIPSet per family) and makes no other call.
    let held = |r: &Value| lease_state(r) == "held";
    primary.wait_for("three held cycles", 60, |_| {
        primary.reports().iter().filter(|r| held(r)).count() >= 3
    });
    let calls: Vec<Value> = primary
        .reports()
        .iter()
        .filter(|r| held(r))
        .map(|r| r["api_calls"].clone())
        .collect();
    assert_eq!(calls[1..3], [Value::from(2), Value::from(2)], "{calls:?}");
    let status = Command::new(floodgate_bin())
        .args(["status", "--format", "json", "--config"])
        .arg(&standby_policy)
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["ledger"], "dynamodb://floodgate-ledger", "{status}");
    let lease = &status["lease"];
    assert_eq!(
        (
            &lease["holder"],
            &lease["role"],
            &lease["fence"],
            &lease["lapsed"]
        ),
        (
            &Value::from("primary"),
            &Value::from("primary"),
            &Value::from(1),
            &Value::from(false)
        ),
        "{status}"
    );
    let seen = standby.reports().len();
    standby.wait_for("two more cycles", 60, |_| {
        standby.reports().len() >= seen + 2
    });
    for report in &standby.reports()[seen..] {
        assert_eq!(report["mode"], "standby", "{report}");
        assert_eq!(lease_state(report), "waiting", "{report}");
        assert_eq!(report["lease"]["holder"], "primary", "{report}");
        assert_eq!(report["targets"], Value::Array(vec![]), "{report}");
    }

    // 2. The primary dies without a word; a new attacker arrives.
    let mut primary = primary;
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let killed_ms = wall_clock_ms();
    let first_primary = primary.reports();
    moto.put_waf_logs(REGION, GROUP, burst("203.0.113.20", 1500, wall_clock_ms()))
        .await;
    let took = standby.wait_for("takeover", 60, |r| lease_state(r) == "held");
    let takeover_ms = window(&took).0 - killed_ms;
    let bound_ms = (TTL_SECONDS + SKEW_SECONDS + CYCLE_SECONDS) * 1000 + 2_000;
    assert!(
        takeover_ms <= bound_ms,
        "took over {takeover_ms} ms after the kill; the bound is {bound_ms} ms"
    );
    wait_blocked(&moto, "203.0.113.20", 30).await;
    assert!(blocked(&moto).await.contains("203.0.113.10/32"));

    // 3. The primary comes back, asks, and gets the lease handed back.
    let primary = Daemon::start(dir.path(), &primary_policy, "primary-again");
    primary.wait_for("handback", 60, |r| lease_state(r) == "held");
    moto.put_waf_logs(REGION, GROUP, burst("203.0.113.30", 1500, wall_clock_ms()))
        .await;
    wait_blocked(&moto, "203.0.113.30", 30).await;

    // 4. A graceful stop releases the lease: the standby takes it at once.
    let second_primary = primary.stop();
    let stopped_ms = wall_clock_ms();
    let taken = standby.wait_for("takeover after the release", 60, |r| {
        lease_state(r) == "held" && r["lease"]["fence"] == 4
    });
    let release_takeover_ms = window(&taken).0 - stopped_ms;
    let release_bound_ms = CYCLE_SECONDS * 1000 + 2_000;
    assert!(
        release_takeover_ms <= release_bound_ms,
        "took over {release_takeover_ms} ms after SIGTERM; one cycle is {release_bound_ms} ms"
    );
    let standby_reports = standby.stop();

    // 5. Who applied, under which fence, and never two at once.
    let mut applied: Vec<(&str, u64, (i64, i64))> = Vec::new();
    for (name, reports) in [
        ("primary", &first_primary),
        ("standby", &standby_reports),
        ("primary-again", &second_primary),
    ] {
        for report in reports {
            match lease_state(report) {
                "held" => {
                    assert_eq!(report["mode"], "enforce", "{report}");
                    let holder = name.trim_end_matches("-again");
                    assert_eq!(report["lease"]["holder"], holder, "{report}");
                    assert!(!report["targets"].as_array().unwrap().is_empty());
                    let fence = report["lease"]["fence"].as_u64().unwrap();
                    applied.push((name, fence, window(report)));
                }
                "waiting" => {
                    assert_eq!(report["targets"], Value::Array(vec![]), "{report}");
                }
                other => panic!("{name}: lease state {other}: {report}"),
            }
        }
    }
    let fences = |who: &str| {
        let mut fences: Vec<u64> = applied
            .iter()
            .filter(|(name, ..)| *name == who)
            .map(|(_, fence, _)| *fence)
            .collect();
        fences.dedup();
        fences
    };
    assert_eq!(fences("primary"), [1]);
    assert_eq!(fences("standby"), [2, 4]);
    assert_eq!(fences("primary-again"), [3]);
    for (a, fa, (a_from, a_to)) in &applied {
        for (b, fb, (b_from, b_to)) in &applied {
            if a != b {
                assert!(
                    a_to < b_from || b_to < a_from,
                    "{a} (fence {fa}) applied during {a_from}..{a_to} and {b} (fence {fb}) during {b_from}..{b_to}"
                );
            }
        }
    }
    println!(
        "takeover {takeover_ms} ms after SIGKILL (bound {bound_ms} ms), {release_takeover_ms} ms after SIGTERM; {} applying cycles",
        applied.len()
    );
}
