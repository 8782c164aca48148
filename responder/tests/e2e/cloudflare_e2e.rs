//! The Cloudflare target through the real binary, beside moto's WAFv2:
//! `run --once`, `plan`, `status`, `block` and `unblock` write the same
//! blocks to both, and a Cloudflare failure never stops the AWS target.

use std::collections::BTreeSet;
use std::path::Path;

use super::cloudflare::{FakeCloudflare, Fault};
use super::{MotoServer, floodgate_bin, local_policy, waf_record, wall_clock_ms};
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::rfc3339_from_ms;
use serde_json::Value;

const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "e2e-token";
const LIST: &str = "floodgate_blocked";

/// Runs the binary in `dir` with the AWS and Cloudflare credentials set
/// (the token only when `token` is); its exit code and output, as JSON
/// for the commands that have `--format json` and as a string otherwise.
async fn floodgate(dir: &Path, token: bool, args: &[&str]) -> (i32, Value) {
    let json = ["run", "plan", "status"].contains(&args[0]);
    let mut command = tokio::process::Command::new(floodgate_bin());
    command
        .args(args)
        .args(["--config", "local.toml"])
        .args(if json {
            ["--format", "json"].as_slice()
        } else {
            &[]
        })
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG")
        .env_remove("CLOUDFLARE_API_TOKEN");
    if token {
        command.env("CLOUDFLARE_API_TOKEN", TOKEN);
    }
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let value = if json {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{stdout}\n{stderr}"))
    } else {
        Value::String(format!("{stdout}{stderr}"))
    };
    (output.status.code().unwrap(), value)
}

/// `floodgate block <ip>` for half an hour.
async fn block(dir: &Path, ip: &str, now: &str) -> (i32, Value) {
    let args = [
        "block",
        ip,
        "--minutes",
        "30",
        "--reason",
        "abuse report",
        "--now",
        now,
    ];
    floodgate(dir, true, &args).await
}

/// `floodgate status` finds the list holding exactly what the ledger says.
async fn status_is_clean(dir: &Path, now: &str, cloudflare: &str) {
    let (code, status) = floodgate(dir, true, &["status", "--now", now]).await;
    assert_eq!(code, 0, "{status}");
    let listed = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == cloudflare)
        .expect("status reads the list")
        .clone();
    assert_eq!(listed["missing"], serde_json::json!([]), "{status}");
    assert_eq!(listed["unexpected"], serde_json::json!([]), "{status}");
    assert!(listed["error"].is_null(), "{status}");
}

fn outcomes(report: &Value) -> Vec<String> {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}: {}",
                t["target"].as_str().unwrap(),
                t["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_blocks_on_cloudflare_and_aws_alike() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    let now = rfc3339_from_ms(now_ms);

    // 700 login attempts from one address and from one IPv6 /64: both over
    // the login tier (600 in 5 minutes).
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let mut lines = Vec::new();
    for i in 0..700 {
        lines.push(waf_record(now_ms - i * 100, "203.0.113.9"));
        lines.push(waf_record(
            now_ms - i * 100,
            &format!("2001:db8:bad::{:x}", i % 5 + 1),
        ));
    }
    std::fs::write(logs.join("waf.log"), lines.join("\n") + "\n").unwrap();
    let targets = format!(
        "\n[[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\n\
         ipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\nendpoint_url = \"{}\"\n\
         create_missing = true\n\
         \n[[targets]]\ntype = \"cloudflare\"\naccount_id = \"{ACCOUNT}\"\nlist = \"{LIST}\"\n\
         api_token_env = \"CLOUDFLARE_API_TOKEN\"\napi_url = \"{}\"\ncreate_missing = true\n\
         widen_ipv6 = true\n",
        moto.endpoint(),
        fake.url()
    );
    let policy = local_policy(dir.path(), &logs, &targets);
    // Only the targets above: drop the example's file target.
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "[[targets]]\ntype = \"file\"\ndir = \"state/ip-sets\"\n",
        "",
    );
    std::fs::write(&policy, text).unwrap();
    let waf = "wafv2 regional/eu-west-1";
    let cloudflare = format!("cloudflare {ACCOUNT}/{LIST}");

    let (code, plan) = floodgate(dir.path(), true, &["plan", "--now", &now]).await;
    assert_eq!(code, 0, "{plan}");
    assert!(fake.items(LIST).is_none(), "plan writes nothing");

    let (code, report) = floodgate(dir.path(), true, &["run", "--once", "--now", &now]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        outcomes(&report),
        [
            format!("{waf}: updated +2 −0"),
            format!("{cloudflare}: updated +2 −0")
        ]
    );
    assert_eq!(fake.ips(LIST), ["2001:db8:bad::/64", "203.0.113.9"]);
    let comment = &fake.items(LIST).unwrap()[0].comment;
    assert!(
        comment.starts_with("floodgate: login-flood until "),
        "{comment}"
    );
    let v4 = moto.ip_set("eu-west-1", Scope::Regional, "fg-v4").await;
    assert_eq!(v4, BTreeSet::from(["203.0.113.9/32".to_owned()]));

    status_is_clean(dir.path(), &now, &cloudflare).await;

    let (code, blocked) = block(dir.path(), "192.0.2.200", &now).await;
    assert_eq!(code, 0, "{blocked}");
    assert!(fake.ips(LIST).contains(&"192.0.2.200".to_owned()));
    let (code, unblocked) = floodgate(
        dir.path(),
        true,
        &[
            "unblock",
            "192.0.2.200",
            "--reason",
            "false positive",
            "--now",
            &now,
        ],
    )
    .await;
    assert_eq!(code, 0, "{unblocked}");
    assert!(!fake.ips(LIST).contains(&"192.0.2.200".to_owned()));
    let v4 = moto.ip_set("eu-west-1", Scope::Regional, "fg-v4").await;
    assert_eq!(v4, BTreeSet::from(["203.0.113.9/32".to_owned()]));

    // An IPv6 address is held as its /64, and status counts that as held.
    let (code, blocked) = block(dir.path(), "2001:db8:1::5", &now).await;
    assert_eq!(code, 0, "{blocked}");
    assert!(fake.ips(LIST).contains(&"2001:db8:1::/64".to_owned()));
    status_is_clean(dir.path(), &now, &cloudflare).await;

    // Cloudflare down: AWS is still written, the run says which failed.
    fake.inject(&vec![Fault::Unavailable; 6]);
    let (code, report) = block(dir.path(), "192.0.2.201", &now).await;
    assert_eq!(code, 2, "{report}");
    let text = report.as_str().unwrap();
    assert!(text.contains(&format!("{waf}: updated +1 −0")), "{text}");
    assert!(
        text.contains(&format!("{cloudflare}: failed: GET")),
        "{text}"
    );
    assert!(text.contains("503"), "{text}");

    // No token: the same, and the reason names the variable.
    let (code, report) = floodgate(dir.path(), false, &["run", "--once", "--now", &now]).await;
    assert_eq!(code, 2, "{report}");
    assert!(
        outcomes(&report)[1].contains("CLOUDFLARE_API_TOKEN is not set"),
        "{report}"
    );
}

/// `floodgate gen-logs` into `dir/logs/`, five minutes from 10:00.
fn gen_logs(dir: &Path, format: &str, file: &str) {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let output = std::process::Command::new(floodgate_bin())
        .args(["gen-logs", "--format", format])
        .args(["--start", "2026-11-20T10:00:00Z", "--minutes", "5"])
        .arg("--out")
        .arg(logs.join(file))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_request_logs_drive_the_same_blocks_as_waf_logs() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let now = "2026-11-20T10:05:00Z";
    let plan_of = |dir: &Path| {
        let dir = dir.to_owned();
        async move {
            let (code, plan) = floodgate(&dir, true, &["plan", "--now", now]).await;
            assert_eq!(code, 0, "{plan}");
            plan
        }
    };

    // The same requests, as AWS WAF and as Cloudflare's Logpush write them.
    let waf = tempfile::tempdir().unwrap();
    gen_logs(waf.path(), "waf", "waf.jsonl.gz");
    local_policy(waf.path(), &waf.path().join("logs"), "");
    let cloudflare = tempfile::tempdir().unwrap();
    gen_logs(
        cloudflare.path(),
        "cloudflare",
        "20261120T100000Z_20261120T100500Z_6a2b4f1d.log.gz",
    );
    let policy = local_policy(
        cloudflare.path(),
        &cloudflare.path().join("logs"),
        &format!(
            "\n[[targets]]\ntype = \"cloudflare\"\naccount_id = \"{ACCOUNT}\"\nlist = \"{LIST}\"\n\
             api_token_env = \"CLOUDFLARE_API_TOKEN\"\napi_url = \"{}\"\ncreate_missing = true\n\
             widen_ipv6 = true\n",
            fake.url()
        ),
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replacen(
            "type = \"files\"\n",
            "type = \"files\"\nformat = \"cloudflare\"\n",
            1,
        ),
    )
    .unwrap();

    // Every block planned from one is planned from the other, for the same
    // tier and count: the flood, the distributed flood, the IPv6 flood and
    // rotation, and the login flood.
    let from_waf = plan_of(waf.path()).await;
    let from_cloudflare = plan_of(cloudflare.path()).await;
    assert_eq!(from_cloudflare["targets"][0], from_waf["targets"][0]);
    assert_eq!(from_waf["to_add"], 5, "{from_waf}");

    let (code, report) = floodgate(cloudflare.path(), true, &["run", "--once", "--now", now]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        fake.ips(LIST),
        [
            "192.0.2.44",
            "2001:db8:64:64::/64",
            "2001:db8:bad::/64",
            "203.0.113.128/28",
            "203.0.113.66"
        ]
    );

    // `top` reads the same logs by --logs-from, and says what to do when
    // the format is wrong.
    let top = |format: &'static str| {
        std::process::Command::new(floodgate_bin())
            .args(["top", "--logs", "logs", "--logs-from", format, "--now", now])
            .current_dir(cloudflare.path())
            .output()
            .unwrap()
    };
    let output = top("cloudflare");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        text.contains("203.0.113.66 ") && text.contains("6000"),
        "{text}"
    );
    let output = top("waf");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("--logs-from cloudflare"), "{text}");
}

/// What the run report and `status` say at the list's edges (issue 36): a
/// /64 holding an allow-listed address cannot be widened into the list, so
/// it is reported once as left out, not as added, and `status` calls the
/// list in sync; an item the operator added before the first run is adopted
/// with its comment kept; one added after is named as it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_and_status_say_what_was_written_left_out_and_removed() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    fake.add_list(LIST, "ip", &[]);
    fake.add_item(LIST, "192.0.2.77", "blocked by hand: ticket 4312");
    let now_ms = wall_clock_ms() / 60_000 * 60_000;
    let now = rfc3339_from_ms(now_ms);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // 700 login attempts from one IPv6 /64: over the login tier.
    let lines: Vec<String> = (0..700)
        .map(|i| waf_record(now_ms - i * 100, &format!("2001:db8:bad::{:x}", i % 5 + 1)))
        .collect();
    std::fs::write(logs.join("waf.log"), lines.join("\n") + "\n").unwrap();
    let extra = format!(
        "\n[[allow]]\ncidr = \"2001:db8:bad::ffff/128\"\nreason = \"the office's monitoring probe\"\n\
         owner = \"ops@example.com\"\nexpires = 2099-01-01\n\
         \n[[targets]]\ntype = \"cloudflare\"\naccount_id = \"{ACCOUNT}\"\nlist = \"{LIST}\"\n\
         api_token_env = \"CLOUDFLARE_API_TOKEN\"\napi_url = \"{}\"\nwiden_ipv6 = true\n",
        fake.url()
    );
    let policy = local_policy(dir.path(), &logs, &extra);
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "[[targets]]\ntype = \"file\"\ndir = \"state/ip-sets\"\n",
        "",
    );
    std::fs::write(&policy, text).unwrap();

    let (code, report) = floodgate(dir.path(), true, &["run", "--once", "--now", &now]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["added"],
        serde_json::json!([]),
        "nothing was written: {report}"
    );
    assert_eq!(
        report["adopted"],
        serde_json::json!(["192.0.2.77/32"]),
        "{report}"
    );
    let left_out = report["targets"][0]["left_out"].as_array().unwrap();
    assert_eq!(left_out.len(), 1, "one line for one reason: {report}");
    let line = left_out[0].as_str().unwrap();
    assert!(
        line.contains("more: its /64 2001:db8:bad::/64 holds the allow-listed 2001:db8:bad::ffff"),
        "{line}"
    );
    let items = fake.items(LIST).unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        items[0].comment, "blocked by hand: ticket 4312",
        "the operator's comment"
    );

    let (code, status) = floodgate(dir.path(), true, &["status", "--now", &now]).await;
    assert_eq!(code, 0, "left out on purpose is not drift: {status}");
    assert_eq!(
        status["targets"][0]["missing"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(
        status["targets"][0]["left_out"].as_array().unwrap().len(),
        1,
        "{status}"
    );

    // An item added by hand now is a stranger: removed, and named.
    fake.add_item(LIST, "192.0.2.88", "");
    let (code, report) = floodgate(dir.path(), true, &["run", "--once", "--now", &now]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["targets"][0]["strangers_removed"],
        serde_json::json!(["192.0.2.88/32"]),
        "{report}"
    );
    assert_eq!(fake.ips(LIST), ["192.0.2.77"]);
}
