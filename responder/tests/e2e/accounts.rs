//! One responder for several AWS accounts, end to end against moto: the
//! responder's own account and two member accounts each log an attacker's
//! requests in two regions, none of them enough alone to reach the tier;
//! counted as one traffic, the attacker is blocked in every account's sets
//! in both regions, the allow-listed partner nowhere. A third account whose
//! role refuses the external id fails only its own targets (exit 2), with
//! the STS error and the role named.

use std::collections::BTreeSet;

use super::{MotoServer, burst, floodgate_bin, gzip_lines, wall_clock_ms};
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::rfc3339_from_ms;
use floodgate_tests::sts::StsGate;
use serde_json::Value;

const REGIONS: [&str; 2] = ["eu-west-1", "us-east-1"];
const GROUP: &str = "aws-waf-logs-app";
const OWN: &str = "123456789012";
/// An account whose role requires an external id the responder gets wrong.
const REFUSING: (&str, &str) = ("legacy", "333333333333");

fn role(account_id: &str) -> String {
    format!("arn:aws:iam::{account_id}:role/floodgate-member")
}

/// `count` member accounts that log traffic, as (name, account id): "shop"
/// and "api", then "member3"…
fn members(count: usize) -> Vec<(String, String)> {
    (1..=count)
        .map(|i| {
            let name = match i {
                1 => "shop".to_owned(),
                2 => "api".to_owned(),
                _ => format!("member{i}"),
            };
            (name, (111_111_111_110 + i as u64).to_string())
        })
        .collect()
}

/// The policy: a tier of 1000 requests, the partner allow-listed, the
/// accounts' roles (through `gate`), one log group per account and
/// region, and a target per account and region; `refusing` has targets
/// only.
fn policy(moto: &str, gate: &str, members: &[(String, String)], refusing: bool) -> String {
    let mut groups = Vec::new();
    for region in REGIONS {
        groups.push(format!("{{ region = \"{region}\", name = \"{GROUP}\" }}"));
        for (name, _) in members {
            groups.push(format!(
                "{{ region = \"{region}\", name = \"{GROUP}\", account = \"{name}\" }}"
            ));
        }
    }
    let source = format!(
        "[source]\ntype = \"cloudwatch\"\napi = \"events\"\nendpoint_url = \"{moto}\"\nlog_groups = [\n  {}\n]\n",
        groups.join(",\n  ")
    );
    policy_reading(&source, moto, gate, members, refusing)
}

/// The policy with `source` as its `[source]`.
fn policy_reading(
    source: &str,
    moto: &str,
    gate: &str,
    members: &[(String, String)],
    refusing: bool,
) -> String {
    let mut text = r#"[responder]
state_dir = "state"

[[tiers]]
name = "block"
requests = 1000
window_seconds = 300
action = "block"
block_minutes = 60

[[allow]]
cidr = "198.51.100.7/32"
reason = "Partner office NAT"
owner = "partnerships@example.com"
expires = 2099-12-31
"#
    .to_owned();
    let refusing = refusing.then(|| (REFUSING.0.to_owned(), REFUSING.1.to_owned()));
    let with_roles: Vec<&(String, String)> = members.iter().chain(&refusing).collect();
    for (name, id) in &with_roles {
        text += &format!(
            "\n[[accounts]]\nname = \"{name}\"\nrole_arn = \"{}\"\nexternal_id_env = \"FG_EXTERNAL_ID_{}\"\nendpoint_url = \"{gate}\"\n",
            role(id),
            name.to_uppercase()
        );
    }
    text += &format!("\n{source}");
    for region in REGIONS {
        for account in std::iter::once(None).chain(with_roles.iter().map(|(name, _)| Some(name))) {
            text += &format!(
                "\n[[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"{region}\"\nipv4_sets = [\"floodgate-blocked-v4\"]\nipv6_sets = [\"floodgate-blocked-v6\"]\nendpoint_url = \"{moto}\"\ncreate_missing = true\n"
            );
            if let Some(account) = account {
                text += &format!("account = \"{account}\"\n");
            }
        }
    }
    text
}

/// Each account's (own first, then `members`') log groups in both regions,
/// with 300 of the attacker's requests and 40 of a benign client's in
/// each: 600 of the attacker's per account, under the tier everywhere.
/// The partner sends 4000, all in the second account. Returns a view of
/// moto in each account.
async fn seed(
    moto: &MotoServer,
    members: &[(String, String)],
    now_ms: i64,
) -> Vec<(String, MotoServer)> {
    let mut accounts = vec![(OWN.to_owned(), moto.in_account(OWN).await)];
    for (_, id) in members {
        accounts.push((id.clone(), moto.in_account(id).await));
    }
    for (i, (_, view)) in accounts.iter().enumerate() {
        for region in REGIONS {
            let mut events = burst("203.0.113.9", 300, now_ms);
            events.extend(burst("192.0.2.1", 40, now_ms));
            if i == 1 && region == "eu-west-1" {
                events.extend(burst("198.51.100.7", 4000, now_ms));
            }
            view.create_waf_log_group(region, GROUP).await;
            view.put_waf_logs(region, GROUP, events).await;
        }
    }
    accounts
}

/// `floodgate ARGS --config floodgate.toml` in `dir`, with the external
/// ids the roles require ("NAME-secret"; the refused account's is wrong).
fn floodgate_in(
    dir: &std::path::Path,
    members: &[(String, String)],
    args: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(floodgate_bin());
    command
        .args(args)
        .args(["--config", "floodgate.toml"])
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("FG_EXTERNAL_ID_LEGACY", "a-wrong-id")
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG");
    for (name, _) in members {
        command.env(
            format!("FG_EXTERNAL_ID_{}", name.to_uppercase()),
            format!("{name}-secret"),
        );
    }
    command
}

/// `floodgate run --once` at `now_ms`: its exit code, report and wall time.
async fn run_once(
    dir: &std::path::Path,
    now_ms: i64,
    members: &[(String, String)],
) -> (Option<i32>, Value, std::time::Duration) {
    let now = rfc3339_from_ms(now_ms);
    let started = std::time::Instant::now();
    let output = floodgate_in(
        dir,
        members,
        &["run", "--once", "--format", "json", "--now", &now],
    )
    .output()
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code(), report, elapsed)
}

/// The attacker, and only it, in every account's sets in both regions.
async fn blocked_everywhere(accounts: &[(String, MotoServer)]) {
    let blocked = BTreeSet::from(["203.0.113.9/32".to_owned()]);
    for (id, view) in accounts {
        for region in REGIONS {
            assert_eq!(
                view.ip_set(region, Scope::Regional, "floodgate-blocked-v4")
                    .await,
                blocked,
                "account {id}, {region}: the attacker, never the partner"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_spread_over_accounts_is_blocked_in_every_account_and_a_refused_role_fails_only_its_own()
 {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let members = members(2);
    let refusing_role = role(REFUSING.1);
    let gate = StsGate::start(
        &moto.endpoint(),
        &[
            (&role(&members[0].1), "shop-secret"),
            (&refusing_role, "the-id-legacy-requires"),
        ],
    );
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    let accounts = seed(&moto, &members, now_ms).await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("floodgate.toml");
    std::fs::write(
        &policy_path,
        policy(&moto.endpoint(), &gate.endpoint(), &members, true),
    )
    .unwrap();
    let (code, report, _) = run_once(dir.path(), now_ms, &members).await;
    assert_eq!(code, Some(2), "one account's targets failed: {report}");
    assert_eq!(
        report["records"],
        6 * (300 + 40) + 4000,
        "every account's logs were read: {report}"
    );
    assert_eq!(report["added"], serde_json::json!(["203.0.113.9/32"]));
    blocked_everywhere(&accounts).await;
    let refusing = moto.in_account(REFUSING.1).await;
    let sets = refusing
        .wafv2_client("eu-west-1")
        .list_ip_sets()
        .scope(Scope::Regional)
        .send()
        .await
        .unwrap();
    assert!(
        sets.ip_sets().is_empty(),
        "nothing was written where the role was refused"
    );

    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 8, "{report}");
    for target in targets {
        let label = target["target"].as_str().unwrap();
        match target["account"].as_str() {
            Some("legacy") => {
                assert_eq!(target["state"], "failed", "{target}");
                assert_eq!(target["failure"], "denied", "{target}");
                let outcome = target["outcome"].as_str().unwrap();
                for part in ["account legacy", &refusing_role, "AccessDenied"] {
                    assert!(outcome.contains(part), "{part} in {outcome}");
                }
            }
            account => {
                assert_eq!(target["state"], "updated", "{target}");
                assert_eq!(
                    label.starts_with("wafv2 regional/"),
                    account.is_none(),
                    "{label}"
                );
            }
        }
    }
    // One AssumeRole per granted role for all its clients in the cycle
    // (two of them: "shop" and "api"); the refused one is asked again by
    // each client, as a refusal is not cached.
    let (calls, refused) = (gate.assume_role_calls(), gate.refused());
    assert!(refused >= 1, "the gate refused the wrong external id");
    assert_eq!(calls - refused, 2, "{calls} calls, {refused} refused");

    // The table groups the targets by account, the own first.
    let now = rfc3339_from_ms(now_ms);
    let table = floodgate_in(dir.path(), &members, &["run", "--once", "--now", &now])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let headings: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with(" own account:") || l.starts_with(" account "))
        .collect();
    assert_eq!(
        headings,
        [
            " own account:",
            " account api:",
            " account legacy:",
            " account shop:"
        ],
        "{table}"
    );
    let legacy = table.split(" account legacy:\n").nth(1).unwrap();
    assert!(
        legacy.starts_with("  wafv2 legacy/regional/eu-west-1: failed: "),
        "{table}"
    );

    // status names every target's and every log group's account, and
    // tells the refused account's targets from drift.
    let status = floodgate_in(dir.path(), &members, &["status", "--format", "json"])
        .output()
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let reads: Vec<&str> = status["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for place in [
        "eu-west-1/aws-waf-logs-app",
        "shop/eu-west-1/aws-waf-logs-app",
        "api/us-east-1/aws-waf-logs-app",
    ] {
        assert!(reads.contains(&place), "{place} in {reads:?}");
    }
    for target in status["targets"].as_array().unwrap() {
        let label = target["target"].as_str().unwrap();
        let refused = label.starts_with("wafv2 legacy/");
        assert_eq!(target["error"].is_string(), refused, "{target}");
        if !refused {
            assert_eq!(target["unexpected"], serde_json::json!([]), "{target}");
            assert_eq!(target["missing"], serde_json::json!([]), "{target}");
        }
    }
    assert!(
        status["active"][0]["source"]
            .as_str()
            .unwrap()
            .contains("shop/eu-west-1/aws-waf-logs-app"),
        "{status}"
    );
}

/// The cost of one cycle across member accounts, all granted: each role is
/// assumed once, every account's sets get the attacker. With
/// `FLOODGATE_BENCH_ACCOUNTS=N` (2 by default) it prints the figures
/// BENCHMARKS.md gives (`scripts/bench-accounts.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cycle_across_member_accounts_assumes_each_role_once() {
    let count: usize = std::env::var("FLOODGATE_BENCH_ACCOUNTS").map_or(2, |n| {
        n.parse().expect("FLOODGATE_BENCH_ACCOUNTS is a number")
    });
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let gate = StsGate::start(&moto.endpoint(), &[]);
    let members = members(count);
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    let accounts = seed(&moto, &members, now_ms).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("floodgate.toml"),
        policy(&moto.endpoint(), &gate.endpoint(), &members, false),
    )
    .unwrap();
    let (code, report, elapsed) = run_once(dir.path(), now_ms, &members).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["added"], serde_json::json!(["203.0.113.9/32"]));
    blocked_everywhere(&accounts).await;
    let assumed = gate.assume_role_calls();
    assert_eq!(assumed, count, "one session per role");
    let targets = report["targets"].as_array().unwrap().len();
    assert_eq!(targets, 2 * (count + 1));
    // A second cycle, a minute later, with nothing to change.
    let (code, again, again_elapsed) = run_once(dir.path(), now_ms + 60_000, &members).await;
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(again["added"], serde_json::json!([]));
    println!(
        "accounts figures: {count} member accounts + the own, {targets} targets, {} log groups, {} records: \
         run --once {:.2} s, {} WAF API calls, {} AssumeRole calls; the next cycle {:.2} s, {} WAF API calls",
        2 * (count + 1),
        report["records"],
        elapsed.as_secs_f64(),
        report["api_calls"],
        assumed,
        again_elapsed.as_secs_f64(),
        again["api_calls"],
    );
}

/// S3 buckets in two accounts are one source: the attacker's requests,
/// 600 in the responder's log bucket and 600 in a member account's, are
/// under the tier in each and counted as 1200 over it; the allow-listed
/// partner's 4000 in the member bucket block nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_buckets_in_two_accounts_count_as_one_traffic() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let gate = StsGate::start(&moto.endpoint(), &[]);
    let members = members(1);
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    let folder = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .unwrap()
        .format(time::macros::format_description!(
            "[year]/[month]/[day]/[hour]/[minute]"
        ))
        .unwrap();
    let mut views = Vec::new();
    for (bucket, id) in [
        ("aws-waf-logs-main", OWN),
        ("aws-waf-logs-shop", &members[0].1),
    ] {
        let view = moto.in_account(id).await;
        let mut lines: Vec<String> = burst("203.0.113.9", 600, now_ms)
            .into_iter()
            .map(|(_, record)| record)
            .collect();
        if id != OWN {
            lines.extend(
                burst("198.51.100.7", 4000, now_ms)
                    .into_iter()
                    .map(|(_, r)| r),
            );
        }
        let key = format!(
            "AWSLogs/{id}/WAFLogs/eu-west-1/app-acl/{folder}/{id}_waflogs_eu-west-1_app-acl_0001.log.gz"
        );
        view.create_bucket(bucket).await;
        view.put_objects(bucket, vec![(key, gzip_lines(&lines))])
            .await;
        views.push((id.to_owned(), view));
    }
    let source = format!(
        "[source]\ntype = \"s3\"\nendpoint_url = \"{}\"\nbuckets = [\n  {{ bucket = \"aws-waf-logs-main\", region = \"eu-west-1\" }},\n  {{ bucket = \"aws-waf-logs-shop\", region = \"eu-west-1\", prefix = \"AWSLogs\", account = \"{}\" }},\n]\n",
        moto.endpoint(),
        members[0].0
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("floodgate.toml"),
        policy_reading(&source, &moto.endpoint(), &gate.endpoint(), &members, false),
    )
    .unwrap();
    let (code, report, _) = run_once(dir.path(), now_ms, &members).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["records"], 600 + 600 + 4000, "{report}");
    assert_eq!(report["added"], serde_json::json!(["203.0.113.9/32"]));
    blocked_everywhere(&views).await;
}
