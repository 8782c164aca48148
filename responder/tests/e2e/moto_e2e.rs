//! The responder end to end against moto, as a user runs it: attack logs go
//! into CloudWatch Logs in three regions, `floodgate run --once` (the real
//! binary, `examples/moto.toml`) blocks the attackers in every region and at
//! the CloudFront edge (one attacker spread over the three regions, and an
//! IPv6 /64 rotating its addresses, among them), never the allow-listed
//! partner nor the allow-listed address inside the rotating /64, nor a
//! spread over an IPv4 /24 (counted per address by default), and a day
//! later the blocks are gone.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{MotoServer, burst, floodgate_bin, wall_clock_ms, workspace_root};
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::rfc3339_from_ms;
use serde_json::Value;

const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-southeast-2"];
const GROUP: &str = "aws-waf-logs-app";

async fn run_once(policy: &std::path::Path, dir: &std::path::Path, now: &str) -> Value {
    let output = tokio::process::Command::new(floodgate_bin())
        .args(["run", "--once", "--format", "json", "--now", now])
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
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_in_three_regions_are_blocked_everywhere_and_expire_on_time() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    // Each region sees its own attacker; the partner NAT floods eu-west-1
    // but is allow-listed; a little benign traffic everywhere.
    let mut traffic: Vec<Vec<(i64, String)>> = vec![
        burst("203.0.113.9", 1500, now_ms),
        burst("203.0.113.10", 1200, now_ms),
        burst("2001:db8:bad::1", 1100, now_ms),
    ];
    traffic[0].extend(burst("198.51.100.7", 4000, now_ms));
    for (i, events) in traffic.iter_mut().enumerate() {
        events.extend(burst(&format!("192.0.2.{}", i + 1), 50, now_ms));
        // 400 in each region: under the tier of 1000 everywhere, 1200 in all.
        events.extend(burst("203.0.113.77", 400, now_ms));
    }
    // 30 addresses of one /64, 40 requests each, rotating over the regions;
    // one of them (::7) is allow-listed.
    for host in 1..=30 {
        traffic[host % 3].extend(burst(&format!("2001:db8:64:64::{host:x}"), 40, now_ms));
    }
    // 100 addresses of one IPv4 /24, 20 requests each: 2000 in the /24, but
    // IPv4 counts per address unless a tier says otherwise.
    for host in 1..=100 {
        traffic[host % 3].extend(burst(&format!("198.18.0.{host}"), 20, now_ms));
    }
    for (region, events) in REGIONS.iter().zip(traffic) {
        moto.create_waf_log_group(region, GROUP).await;
        moto.put_waf_logs(region, GROUP, events).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("moto.toml");
    let text = std::fs::read_to_string(workspace_root().join("examples/moto.toml"))
        .unwrap()
        .replace("http://127.0.0.1:5000", &moto.endpoint())
        + "\n[[allow]]\ncidr = \"2001:db8:64:64::7\"\nreason = \"a monitoring probe\"\nowner = \"sre@example.com\"\nexpires = 2099-12-31\n";
    std::fs::write(&policy, text).unwrap();

    let report = run_once(&policy, dir.path(), &rfc3339_from_ms(now_ms)).await;
    assert_eq!(
        report["records"],
        1500 + 1200 + 1100 + 4000 + 150 + 1200 + 30 * 40 + 100 * 20,
        "{report}"
    );
    let added: BTreeSet<&str> = report["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from([
            "203.0.113.9/32",
            "203.0.113.10/32",
            "203.0.113.77/32",
            "2001:db8:bad::/64",
            "2001:db8:64:64::/64"
        ]),
        "every attacker, wherever it was seen; never the partner nor the /24"
    );
    let v4 = BTreeSet::from([
        "203.0.113.9/32".to_owned(),
        "203.0.113.10/32".to_owned(),
        "203.0.113.77/32".to_owned(),
    ]);
    let v6 = moto
        .ip_set("eu-west-1", Scope::Regional, "floodgate-blocked-v6")
        .await;
    let blocked = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        v6.iter()
            .any(|net| net.parse::<ipnet::IpNet>().unwrap().contains(&ip))
    };
    assert!(blocked("2001:db8:bad::1") && blocked("2001:db8:bad::ffff"));
    for host in (1..=30).filter(|&h| h != 7) {
        assert!(blocked(&format!("2001:db8:64:64::{host:x}")), "::{host:x}");
    }
    assert!(blocked("2001:db8:64:64:ffff::1"), "the whole /64");
    assert!(
        !blocked("2001:db8:64:64::7"),
        "the allow-listed address is cut out of its /64: {v6:?}"
    );
    for region in REGIONS {
        assert_eq!(
            moto.ip_set(region, Scope::Regional, "floodgate-blocked-v4")
                .await,
            v4,
            "{region}"
        );
        assert_eq!(
            moto.ip_set(region, Scope::Regional, "floodgate-blocked-v6")
                .await,
            v6,
            "{region}"
        );
    }
    assert_eq!(
        moto.ip_set("us-east-1", Scope::Cloudfront, "floodgate-blocked-v4")
            .await,
        v4
    );
    assert_eq!(
        moto.ip_set("us-east-1", Scope::Cloudfront, "floodgate-blocked-v6")
            .await,
        v6
    );

    // A day later the logs are old news and every 15-minute block has ended.
    let later = run_once(&policy, dir.path(), &rfc3339_from_ms(now_ms + 86_400_000)).await;
    assert_eq!(later["expired"].as_array().unwrap().len(), 5, "{later}");
    for region in REGIONS {
        assert!(
            moto.ip_set(region, Scope::Regional, "floodgate-blocked-v4")
                .await
                .is_empty()
        );
        assert!(
            moto.ip_set(region, Scope::Regional, "floodgate-blocked-v6")
                .await
                .is_empty()
        );
    }
    assert!(
        moto.ip_set("us-east-1", Scope::Cloudfront, "floodgate-blocked-v4")
            .await
            .is_empty()
    );
}

/// examples/moto.toml's documented steps (scripts/moto-demo.sh) work as
/// written: the sample's 20 blocks reach every region and CloudFront, and
/// `status` finds each target in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moto_example_runs_as_its_header_says() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let port = moto.endpoint().rsplit(':').next().unwrap().to_owned();
    // The repository's layout, so the ledger lands in this directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::copy(
        workspace_root().join("scripts/moto-demo.sh"),
        dir.path().join("scripts/moto-demo.sh"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    let venv = super::venv_bin("python");
    let output = tokio::process::Command::new(dir.path().join("scripts/moto-demo.sh"))
        .env("MOTO_PORT", &port)
        .env("FLOODGATE", floodgate_bin())
        .env("FLOODGATE_VENV", venv.parent().unwrap().parent().unwrap())
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("20 blocks in force"), "{stdout}");
    assert_eq!(stdout.matches(": in sync").count(), 4, "{stdout}");
    assert!(dir.path().join("state/moto/ledger.json").exists());
    let held = moto
        .ip_set("ap-southeast-2", Scope::Regional, "floodgate-blocked-v4")
        .await;
    assert!(held.contains("203.0.113.66/32"), "{held:?}");
}
