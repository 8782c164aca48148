//! One responder for several AWS accounts, end to end against moto: the
//! responder's own account and two member accounts each log an attacker's
//! requests in two regions, none of them enough alone to reach the tier;
//! counted as one traffic, the attacker is blocked in every account's sets
//! in both regions, the allow-listed partner nowhere. A third account whose
//! role refuses the external id fails only its own targets (exit 2), with
//! the STS error and the role named.

use std::collections::BTreeSet;

use super::{MotoServer, burst, floodgate_bin, wall_clock_ms};
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::rfc3339_from_ms;
use floodgate_tests::sts::StsGate;
use serde_json::Value;

const REGIONS: [&str; 2] = ["eu-west-1", "us-east-1"];
const GROUP: &str = "aws-waf-logs-app";
const OWN: &str = "123456789012";
/// The member accounts that log traffic: name and account id.
const MEMBERS: [(&str, &str); 2] = [("shop", "111111111111"), ("api", "222222222222")];
/// An account whose role requires an external id the responder gets wrong.
const REFUSING: (&str, &str) = ("legacy", "333333333333");

fn role(account_id: &str) -> String {
    format!("arn:aws:iam::{account_id}:role/floodgate-member")
}

/// The policy: a tier of 1000 requests, the partner allow-listed, the
/// member accounts' roles (through `gate`), one log group per account and
/// region, and a target per account and region.
fn policy(moto: &str, gate: &str) -> String {
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
    for (name, id) in MEMBERS.iter().chain([&REFUSING]) {
        text += &format!(
            "\n[[accounts]]\nname = \"{name}\"\nrole_arn = \"{}\"\nexternal_id_env = \"FG_EXTERNAL_ID_{}\"\nendpoint_url = \"{gate}\"\n",
            role(id),
            name.to_uppercase()
        );
    }
    let mut groups = Vec::new();
    for region in REGIONS {
        groups.push(format!("{{ region = \"{region}\", name = \"{GROUP}\" }}"));
        for (name, _) in MEMBERS {
            groups.push(format!(
                "{{ region = \"{region}\", name = \"{GROUP}\", account = \"{name}\" }}"
            ));
        }
    }
    text += &format!(
        "\n[source]\ntype = \"cloudwatch\"\napi = \"events\"\nendpoint_url = \"{moto}\"\nlog_groups = [\n  {}\n]\n",
        groups.join(",\n  ")
    );
    for region in REGIONS {
        for account in [
            None,
            Some(MEMBERS[0].0),
            Some(MEMBERS[1].0),
            Some(REFUSING.0),
        ] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_spread_over_accounts_is_blocked_in_every_account_and_a_refused_role_fails_only_its_own()
 {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let refusing_role = role(REFUSING.1);
    let gate = StsGate::start(
        &moto.endpoint(),
        &[
            (&role(MEMBERS[0].1), "shop-secret"),
            (&refusing_role, "the-id-legacy-requires"),
        ],
    );
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    // Six log groups (three accounts, two regions), 300 requests of the
    // attacker in each: 600 per account, 1800 in all. The partner sends
    // 4000, all in one member account.
    let mut accounts = vec![(OWN, moto.in_account(OWN).await)];
    for (_, id) in MEMBERS {
        accounts.push((id, moto.in_account(id).await));
    }
    for (id, view) in &accounts {
        for region in REGIONS {
            let mut events = burst("203.0.113.9", 300, now_ms);
            events.extend(burst("192.0.2.1", 40, now_ms));
            if *id == MEMBERS[1].1 && region == "eu-west-1" {
                events.extend(burst("198.51.100.7", 4000, now_ms));
            }
            view.create_waf_log_group(region, GROUP).await;
            view.put_waf_logs(region, GROUP, events).await;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("floodgate.toml");
    std::fs::write(&policy_path, policy(&moto.endpoint(), &gate.endpoint())).unwrap();
    let output = tokio::process::Command::new(floodgate_bin())
        .args(["run", "--once", "--format", "json", "--now"])
        .arg(rfc3339_from_ms(now_ms))
        .arg("--config")
        .arg(&policy_path)
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("FG_EXTERNAL_ID_SHOP", "shop-secret")
        .env("FG_EXTERNAL_ID_API", "api-needs-none")
        .env("FG_EXTERNAL_ID_LEGACY", "a-wrong-id")
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "one account's targets failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["records"],
        6 * (300 + 40) + 4000,
        "every account's logs were read: {report}"
    );
    assert_eq!(report["added"], serde_json::json!(["203.0.113.9/32"]));

    let blocked = BTreeSet::from(["203.0.113.9/32".to_owned()]);
    for (id, view) in &accounts {
        for region in REGIONS {
            assert_eq!(
                view.ip_set(region, Scope::Regional, "floodgate-blocked-v4")
                    .await,
                blocked,
                "account {id}, {region}: the attacker, never the partner"
            );
        }
    }
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

    // status names every target's and every log group's account, and
    // tells the refused account's targets from drift.
    let status = tokio::process::Command::new(floodgate_bin())
        .args(["status", "--format", "json", "--config"])
        .arg(&policy_path)
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("FG_EXTERNAL_ID_SHOP", "shop-secret")
        .env("FG_EXTERNAL_ID_API", "api-needs-none")
        .env("FG_EXTERNAL_ID_LEGACY", "a-wrong-id")
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
