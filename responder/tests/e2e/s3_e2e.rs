//! The S3 source through the real binary against moto: the sample logs,
//! delivered to a bucket as WAF delivers them, read by `top`, `review` and
//! `backtest` (`--logs s3://…`) give what the same logs give as local
//! files; and `run --once` with `[source] type = "s3"` blocks the sample's
//! attackers in moto's WAF.

use std::io::Read;
use std::process::Output;

use super::{MotoServer, floodgate_bin, gzip_lines, stderr, workspace_root};
use aws_sdk_wafv2::types::Scope;
use serde_json::Value;

const BUCKET: &str = "aws-waf-logs-sample";
/// The sample's records run from 10:00 to 10:05 on this day.
const NOW: &str = "2026-11-20T10:05:00Z";

/// The sample, as WAF would deliver it: gzip objects in the 10:00 folder of
/// a regional and a CloudFront web ACL, split across several objects each.
async fn deliver_sample(moto: &MotoServer) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(workspace_root().join("examples/logs/sample.jsonl.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut objects = Vec::new();
    for (i, chunk) in lines.chunks(lines.len().div_ceil(6)).enumerate() {
        let acl = if i % 2 == 0 {
            "eu-west-1/app-acl"
        } else {
            "cloudfront/edge-acl"
        };
        let key = format!(
            "AWSLogs/111122223333/WAFLogs/{acl}/2026/11/20/10/00/111122223333_waflogs_{}_20261120T1000Z_{i:08x}.log.gz",
            acl.replace('/', "_")
        );
        objects.push((key, gzip_lines(chunk)));
    }
    moto.create_bucket(BUCKET).await;
    moto.put_objects(BUCKET, objects).await;
}

/// Runs the binary with moto as the AWS environment.
async fn floodgate_against(moto: &MotoServer, args: &[&str], dir: &std::path::Path) -> Output {
    tokio::process::Command::new(floodgate_bin())
        .args(args)
        .current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env_remove("AWS_PROFILE")
        .env_remove("FLOODGATE_LOG")
        .output()
        .await
        .unwrap()
}

fn json(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_review_and_backtest_read_an_s3_prefix_as_they_read_local_files() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    deliver_sample(&moto).await;
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let config = root.join("examples/floodgate.toml");
    let config = config.to_str().unwrap();
    let local = root.join("examples/logs");
    let local = local.to_str().unwrap();
    let s3 = format!("s3://{BUCKET}/AWSLogs/");
    let commands: [&[&str]; 3] = [
        &[
            "top", "--config", config, "--now", NOW, "--format", "json", "--limit", "40",
        ],
        &[
            "review", "--config", config, "--now", NOW, "--format", "json",
        ],
        &[
            "backtest",
            "--config",
            config,
            "--from",
            "2026-11-20T10:00:00Z",
            "--to",
            "2026-11-20T10:30:00Z",
            "--format",
            "json",
            "--out",
            report.to_str().unwrap(),
        ],
    ];
    for command in commands {
        let from_files = [command, &["--logs", local]].concat();
        let from_files = json(&floodgate_against(&moto, &from_files, dir.path()).await);
        let from_s3 = [command, &["--logs", &s3]].concat();
        let from_s3 = floodgate_against(&moto, &from_s3, dir.path()).await;
        assert_eq!(json(&from_s3), from_files, "{}", command[0]);
        assert!(
            !stderr(&from_s3).contains("skipped"),
            "{}",
            stderr(&from_s3)
        );
    }

    // Not local paths and a location together, and a location that is not one.
    let both = floodgate_against(&moto, &["top", "--logs", local, &s3], dir.path()).await;
    assert_eq!(both.status.code(), Some(1), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("--logs takes one s3:// location"),
        "{}",
        stderr(&both)
    );
    let missing = floodgate_against(
        &moto,
        &["top", "--logs", "s3://aws-waf-logs-nowhere/"],
        dir.path(),
    )
    .await;
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("NoSuchBucket"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_with_an_s3_source_blocks_the_sample_s_attackers_in_waf() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    deliver_sample(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("endpoint_url = \"{}\"\n", moto.endpoint());
    let policy = std::fs::read_to_string(workspace_root().join("examples/s3.toml"))
        .unwrap()
        .replace(
            "bucket = \"aws-waf-logs-example\"\n",
            &format!("bucket = \"{BUCKET}\"\n{endpoint}"),
        )
        .replace(
            "ipv6_sets = [\"floodgate-blocked-v6\"]\n",
            &format!("ipv6_sets = [\"floodgate-blocked-v6\"]\ncreate_missing = true\n{endpoint}"),
        );
    let path = dir.path().join("s3.toml");
    std::fs::write(&path, policy).unwrap();
    let output = floodgate_against(
        &moto,
        &[
            "run",
            "--once",
            "--format",
            "json",
            "--now",
            NOW,
            "--config",
            path.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    let report = json(&output);
    assert_eq!(report["records"], 68_500, "{report}");
    assert_eq!(
        report["s3_objects"],
        serde_json::json!({"read": 6, "skipped": 0})
    );
    let added: Vec<&str> = report["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(added.contains(&"203.0.113.66/32"), "{report}");
    assert!(
        !added.iter().any(|net| net.starts_with("198.51.100.")),
        "never the partner"
    );
    for (region, scope) in [
        ("eu-west-1", Scope::Regional),
        ("us-east-1", Scope::Cloudfront),
    ] {
        let v4 = moto
            .ip_set(region, scope.clone(), "floodgate-blocked-v4")
            .await;
        assert!(v4.contains("203.0.113.66/32"), "{region}: {v4:?}");
    }
    let ledger = std::fs::read_dir(dir.path().join("state/s3"))
        .unwrap()
        .count();
    assert!(ledger > 0, "the ledger is written");
}

/// `top` without `--now` reads the newest objects to find the window's end,
/// then counts: an object it cannot decode is warned about once, with its
/// key, and counted in the summary line (issue 35).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_object_is_warned_about_once() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    deliver_sample(&moto).await;
    let damaged = "AWSLogs/111122223333/WAFLogs/eu-west-1/app-acl/2026/11/20/10/00/damaged.log.gz";
    moto.put_objects(BUCKET, vec![(damaged.to_owned(), b"not gzip".to_vec())])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let location = format!("s3://{BUCKET}/AWSLogs/");
    let output = floodgate_against(&moto, &["top", "--logs", &location], dir.path()).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let err = stderr(&output);
    assert_eq!(err.matches(damaged).count(), 1, "{err}");
    assert!(
        err.contains("warning: skipped 1 S3 objects that could not be fetched or decoded"),
        "{err}"
    );
}
