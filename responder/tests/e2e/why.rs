//! `floodgate why` against what a real cycle built: attack logs in moto's
//! CloudWatch Logs, the ledger in moto's DynamoDB, blocks in a WAFv2 IP set
//! and a file target; then the file ledger, an operator's unblock and
//! drift (issue 38).

use std::path::Path;

use super::{MotoServer, burst, floodgate_bin, local_policy, wall_clock_ms, workspace_root};
use floodgate_responder::clock::rfc3339_from_ms;
use serde_json::{Value, json};

const REGION: &str = "eu-west-1";
const GROUP: &str = "aws-waf-logs-app";
const TABLE: &str = "floodgate-ledger";

/// `floodgate <args> --config <policy>` in `dir`, with moto's credentials:
/// its exit code and standard output.
async fn floodgate_in(dir: &Path, policy: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(floodgate_bin())
        .args(args)
        .arg("--config")
        .arg(policy)
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() != Some(1), "{args:?}: {stderr}");
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

async fn why(dir: &Path, policy: &Path, subject: &str, now: &str) -> Value {
    let (code, out) = floodgate_in(
        dir,
        policy,
        &["why", subject, "--now", now, "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str(&out).unwrap()
}

fn nets(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_answers_from_the_dynamodb_ledger_and_the_targets_a_cycle_wrote() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    // One address floods; 30 addresses of one IPv6 /64 (counted as one key)
    // rotate, one of them allow-listed; the partner NAT floods but is
    // allow-listed; a little benign traffic.
    let mut events = burst("203.0.113.9", 1500, now_ms);
    for host in 1..=30 {
        events.extend(burst(&format!("2001:db8:64:64::{host:x}"), 40, now_ms));
    }
    events.extend(burst("198.51.100.7", 4000, now_ms));
    events.extend(burst("192.0.2.1", 50, now_ms));
    moto.create_waf_log_group(REGION, GROUP).await;
    moto.put_waf_logs(REGION, GROUP, events).await;
    moto.create_ledger_table(REGION, TABLE).await;

    let dir = tempfile::tempdir().unwrap();
    let endpoint = moto.endpoint();
    let policy = dir.path().join("floodgate.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[responder]
ledger = {{ backend = "dynamodb", table = "{TABLE}", region = "{REGION}", endpoint_url = "{endpoint}" }}

[[tiers]]
name = "block"
requests = 1000
window_seconds = 300
action = "block"
block_minutes = 15
escalation = {{ factor = 4, max_minutes = 1440 }}

[[allow]]
cidr = "198.51.100.0/24"
reason = "Partner office NAT"
owner = "partnerships@example.com"
expires = 2099-12-31

[[allow]]
cidr = "2001:db8:64:64::7"
reason = "A monitoring probe"
owner = "sre@example.com"
expires = 2099-12-31

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

[[targets]]
type = "file"
dir = "ip-sets"
"#
        ),
    )
    .unwrap();
    let now = rfc3339_from_ms(now_ms);
    let (code, _) = floodgate_in(dir.path(), &policy, &["run", "--once", "--now", &now]).await;
    assert_eq!(code, Some(0));
    let expires = rfc3339_from_ms(now_ms + 15 * 60_000);

    // A blocked address: its block, in sync on both targets, and the command.
    let blocked = why(dir.path(), &policy, "203.0.113.9", &now).await;
    assert_eq!(blocked["state"], "blocked", "{blocked}");
    let block = &blocked["blocks"][0];
    assert_eq!(blocked["blocks"].as_array().unwrap().len(), 1);
    assert_eq!(block["net"], "203.0.113.9/32");
    assert_eq!(block["active"], true);
    assert_eq!(block["tier"], "block");
    assert_eq!(block["requests"], 1500);
    assert_eq!(block["source"], format!("{REGION}/{GROUP}"));
    assert_eq!(block["expires"], expires);
    assert_eq!(block["offences"], 1);
    assert_eq!(block["next_block_minutes"], 60, "escalated by 4");
    let targets = blocked["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for target in targets {
        assert_eq!(nets(&target["holds"]), ["203.0.113.9/32"], "{target}");
        assert_eq!(target["in_sync"], true, "{target}");
    }
    assert_eq!(
        blocked["unblock"],
        format!(
            "floodgate unblock 203.0.113.9/32 --reason \"<why, for the ledger>\" --config {}",
            policy.display()
        )
    );

    // An address inside a blocked /64: the prefix's block, and the command
    // names the /64 (unblocking the address alone would end nothing).
    let inside = why(dir.path(), &policy, "2001:db8:64:64::5", &now).await;
    assert_eq!(inside["state"], "blocked", "{inside}");
    assert_eq!(inside["blocks"][0]["net"], "2001:db8:64:64::/64");
    assert_eq!(inside["blocks"][0]["addresses"], 30);
    assert!(
        inside["unblock"]
            .as_str()
            .unwrap()
            .starts_with("floodgate unblock 2001:db8:64:64::/64 "),
        "{inside}"
    );
    for target in inside["targets"].as_array().unwrap() {
        let holds = nets(&target["holds"]);
        assert_eq!(holds.len(), 1, "{target}");
        let held: ipnet::IpNet = holds[0].parse().unwrap();
        assert!(held.contains(&"2001:db8:64:64::5".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(target["in_sync"], true, "{target}");
    }

    // The allow-listed address inside that /64: cut out of its block.
    let probe = why(dir.path(), &policy, "2001:db8:64:64::7", &now).await;
    assert_eq!(probe["state"], "allow-listed", "{probe}");
    assert_eq!(probe["blocks"][0]["net"], "2001:db8:64:64::/64");
    assert_eq!(probe["allow"][0]["cidr"], "2001:db8:64:64::7/128");
    assert_eq!(probe["allow"][0]["owner"], "sre@example.com");
    assert_eq!(probe["allow"][0]["grant"], json!({"kind": "exempt"}));
    for target in probe["targets"].as_array().unwrap() {
        assert!(target["holds"].as_array().unwrap().is_empty(), "{target}");
    }
    assert!(
        probe["summary"]
            .as_str()
            .unwrap()
            .contains("cut out of 2001:db8:64:64::/64"),
        "{probe}"
    );

    // The allow-listed partner, which flooded: never blocked.
    let partner = why(dir.path(), &policy, "198.51.100.7", &now).await;
    assert_eq!(partner["state"], "allow-listed", "{partner}");
    assert!(partner["blocks"].as_array().unwrap().is_empty());
    assert!(partner.get("unblock").is_none());

    // An address nobody blocked.
    let unknown = why(dir.path(), &policy, "192.0.2.1", &now).await;
    assert_eq!(unknown["state"], "not-blocked", "{unknown}");
    assert!(unknown["blocks"].as_array().unwrap().is_empty());
    assert!(unknown["allow"].as_array().unwrap().is_empty());
    for target in unknown["targets"].as_array().unwrap() {
        assert_eq!(target["in_sync"], true);
    }

    // A day later: the block is history, and the table says so.
    let later = rfc3339_from_ms(now_ms + 86_400_000);
    let (code, text) = floodgate_in(
        dir.path(),
        &policy,
        &["why", "203.0.113.9", "--now", &later],
    )
    .await;
    assert_eq!(code, Some(0));
    assert!(text.starts_with("203.0.113.9/32 is not blocked"), "{text}");
    assert!(
        text.contains(&format!("block 203.0.113.9/32: ended {expires}")),
        "{text}"
    );
    assert!(!text.contains("to lift it"), "{text}");
}

/// With the file ledger: drift on a target, and an operator's unblock.
#[test]
fn why_shows_drift_and_an_operators_unblock_with_the_file_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let policy = local_policy(dir.path(), &workspace_root().join("examples/logs"), "");
    let floodgate = |args: &[&str]| {
        let output = std::process::Command::new(floodgate_bin())
            .args(args)
            .arg("--config")
            .arg(&policy)
            .current_dir(dir.path())
            .env_remove("FLOODGATE_LOG")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let now = "2026-11-20T10:05:00Z";
    assert_eq!(floodgate(&["run", "--once", "--now", now]).0, Some(0));

    // Someone empties the file target's IPv4 set by hand.
    let set = dir.path().join("state/ip-sets/floodgate-blocked-v4.json");
    let mut contents: Value =
        serde_json::from_str(&std::fs::read_to_string(&set).unwrap()).unwrap();
    assert!(nets(&contents["Addresses"]).contains(&"203.0.113.66/32"));
    contents["Addresses"] = json!([]);
    std::fs::write(&set, contents.to_string()).unwrap();
    let (code, text) = floodgate(&["why", "203.0.113.66", "--now", now]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("203.0.113.66/32 is blocked by 203.0.113.66/32 (tier block-24h"),
        "{text}"
    );
    assert!(
        text.contains("file state/ip-sets: holds none of it; should hold 203.0.113.66/32 (drift; the next run repairs it)"),
        "{text}"
    );

    let (code, _) = floodgate(&[
        "unblock",
        "203.0.113.66",
        "--reason",
        "customer ticket 42",
        "--now",
        now,
    ]);
    assert_eq!(code, Some(0));
    let (code, text) = floodgate(&["why", "203.0.113.66", "--now", now, "--format", "json"]);
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["state"], "not-blocked", "{report}");
    let block = &report["blocks"][0];
    assert_eq!(block["active"], false);
    assert_eq!(block["suppressed_until"], "2026-11-20T11:05:00Z");
    assert!(
        block["reason"]
            .as_str()
            .unwrap()
            .contains("customer ticket 42")
    );
    assert_eq!(
        report["targets"][0]["in_sync"], true,
        "the unblock rewrote the set"
    );

    let (code, _) = floodgate(&["why", "203.0.113.66/24"]);
    assert_eq!(code, Some(1), "host bits are bad input");
}
