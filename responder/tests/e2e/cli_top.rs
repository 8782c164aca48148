//! `floodgate top` and `floodgate gen-logs`, run as a user runs them,
//! against files and against moto's CloudWatch Logs.

use super::{MotoServer, floodgate, floodgate_bin, stderr, wall_clock_ms};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use floodgate_responder::waflog::parse_hit_full_only;
use serde_json::Value;

/// `floodgate top` over the committed sample, at the end of its window,
/// with the example policy.
const TOP_OF_THE_SAMPLE: [&str; 7] = [
    "top",
    "--logs",
    "examples/logs",
    "--config",
    "examples/floodgate.toml",
    "--now",
    "2026-11-20T10:05:00Z",
];

fn json(output: &std::process::Output) -> Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn top_ranks_the_sample_logs_with_tiers_and_allow_list() {
    let report = json(&floodgate(
        &[
            &TOP_OF_THE_SAMPLE[..],
            &["--format", "json", "--limit", "30"],
        ]
        .concat(),
    ));
    assert_eq!(report["window"]["start"], "2026-11-20T10:00:00Z");
    assert_eq!(report["window"]["end"], "2026-11-20T10:05:00Z");
    assert_eq!(report["records"], 68500);
    assert_eq!(report["malformed"], 0);
    let offenders = report["offenders"].as_array().unwrap();
    assert_eq!(offenders.len(), 30);
    let first = &offenders[0];
    assert_eq!(first["key"], "203.0.113.66/32");
    assert_eq!(first["requests"], 6000);
    assert_eq!(first["tier"], "block-24h");
    assert_eq!(first["allow_listed"], false);
    assert_eq!(
        first["actions"],
        serde_json::json!({"ALLOW": 2000, "BLOCK": 4000})
    );
    let corporate: Vec<&Value> = offenders
        .iter()
        .filter(|o| o["key"].as_str().unwrap().starts_with("198.51.100."))
        .collect();
    assert_eq!(corporate.len(), 5);
    for o in corporate {
        assert_eq!(
            (o["tier"].as_str(), o["allow_listed"].as_bool()),
            (Some("watch"), Some(true)),
            "{o}"
        );
    }
    // The IPv6 rotation: 60 addresses far below every tier, counted as
    // their /64 (issue 18).
    let rotation = offenders
        .iter()
        .find(|o| o["key"] == "2001:db8:64:64::/64")
        .expect("the /64 rotation is ranked");
    assert_eq!(
        (
            &rotation["addresses"],
            &rotation["requests"],
            &rotation["tier"]
        ),
        (
            &serde_json::json!(60),
            &serde_json::json!(2400),
            &serde_json::json!("block")
        )
    );
    assert_eq!(report["offenders"][0]["addresses"], 1);
    // Sorted by requests, then IP with IPv4 first.
    let requests: Vec<u64> = offenders
        .iter()
        .map(|o| o["requests"].as_u64().unwrap())
        .collect();
    assert!(requests.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn top_without_a_policy_ranks_only_and_defaults_to_the_newest_record() {
    let report = json(&floodgate(&[
        "top",
        "--logs",
        "examples/logs/sample.jsonl.gz",
        "--window",
        "1m",
        "--format",
        "json",
        "--limit",
        "3",
    ]));
    // The newest record ends the window.
    assert!(
        report["window"]["end"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-20T10:04:59."),
        "{report}"
    );
    assert_eq!(report["offenders"][0]["key"], "203.0.113.66/32");
    // 20 a second; the minute ends mid-second, so the edges hold a
    // request more or less (exact counts are checked against a naive count
    // in the responder's tests).
    let requests = report["offenders"][0]["requests"].as_u64().unwrap();
    assert!((1195..=1205).contains(&requests), "{requests}");
    assert_eq!(report["offenders"][0]["tier"], Value::Null);
}

#[test]
fn records_counts_the_valid_records_only_issue_18() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mixed.log");
    let record =
        r#"{"timestamp":1795168800000,"action":"ALLOW","httpRequest":{"clientIp":"192.0.2.1"}}"#;
    std::fs::write(
        &log,
        format!("{record}\nnot a record\n{record}\n{{\"timestamp\":1}}\n"),
    )
    .unwrap();
    let output = floodgate(&["top", "--logs", log.to_str().unwrap(), "--format", "json"]);
    let report = json(&output);
    assert_eq!(
        (&report["records"], &report["malformed"]),
        (&Value::from(2), &Value::from(2))
    );
    assert_eq!(report["offenders"][0]["requests"], 2);
}

#[test]
fn bad_log_input_exits_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = floodgate(&["top", "--logs", empty.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no WAF log files"),
        "{}",
        stderr(&output)
    );

    let garbage = dir.path().join("garbage.log");
    std::fs::write(&garbage, "this is not\na WAF log\n\x01\x02\n").unwrap();
    let output = floodgate(&["top", "--logs", garbage.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("all 3 lines are malformed"),
        "{}",
        stderr(&output)
    );

    let output = floodgate(&["top", "--window", "5x", "--logs", "examples/logs"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("\"5x\""), "{}", stderr(&output));

    let output = floodgate(&["top"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("give --logs PATH, or --config with a [source] section"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn gen_logs_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    for path in [&a, &b] {
        let output = floodgate(&[
            "gen-logs",
            "--out",
            path.to_str().unwrap(),
            "--minutes",
            "1",
            "--benign-records",
            "500",
            "--seed",
            "9",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    // Every line is a WAF record that parses.
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        parse_hit_full_only(line).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_reads_the_policy_source_from_cloudwatch_logs() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let client = moto.logs_client("eu-west-1");
    client
        .create_log_group()
        .log_group_name("aws-waf-logs-e2e")
        .send()
        .await
        .unwrap();
    client
        .create_log_stream()
        .log_group_name("aws-waf-logs-e2e")
        .log_stream_name("s")
        .send()
        .await
        .unwrap();
    // A flood of 30 requests from one client, in the last minute.
    let now_ms = wall_clock_ms();
    let events: Vec<InputLogEvent> = (0..30)
        .map(|i| {
            let ts = now_ms - 60_000 + i * 1000;
            let message = format!(r#"{{"timestamp":{ts},"action":"ALLOW","httpRequest":{{"clientIp":"203.0.113.9","country":"NL","headers":[],"uri":"/","httpMethod":"GET"}}}}"#);
            InputLogEvent::builder().timestamp(ts).message(message).build().unwrap()
        })
        .collect();
    client
        .put_log_events()
        .log_group_name("aws-waf-logs-e2e")
        .log_stream_name("s")
        .set_log_events(Some(events))
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[tiers]]\nname = \"block\"\nrequests = 20\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\n\n\
             [source]\ntype = \"cloudwatch\"\napi = \"events\"\nendpoint_url = \"{}\"\nlog_groups = [{{ region = \"eu-west-1\", name = \"aws-waf-logs-e2e\" }}]\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(floodgate_bin())
        .args([
            "top",
            "--config",
            policy.to_str().unwrap(),
            "--format",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .unwrap();
    let report = json(&output);
    assert_eq!(report["records"], 30);
    assert_eq!(report["offenders"][0]["key"], "203.0.113.9/32");
    assert_eq!(report["offenders"][0]["requests"], 30);
    assert_eq!(report["offenders"][0]["tier"], "block");
}

/// `floodgate top | head -1`: a reader that closes the pipe early is not a
/// failure of the command, so the pipeline's status stays 0.
#[test]
fn a_reader_that_closes_the_pipe_early_leaves_exit_code_zero() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(floodgate_bin())
        .args(TOP_OF_THE_SAMPLE)
        .current_dir(super::workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the command writes its table.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("error"), "{}", stderr(&output));
}

/// The first thing a new user may see: the documented policy on a machine
/// without AWS credentials. One line naming the service, the log group and
/// the fix, not the SDK's error structures (issue 35).
#[test]
fn no_aws_credentials_is_one_line_with_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(floodgate_bin())
        .args(["top", "--config", "examples/floodgate.toml"])
        .current_dir(super::workspace_root())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("floodgate: error: CloudWatch Logs in us-east-1 (aws-waf-logs-floodgate): no AWS credentials"),
        "{text}"
    );
    assert!(text.contains("set AWS_PROFILE"), "{text}");
    assert!(
        !text.contains("DispatchFailure") && text.len() < 400,
        "{text}"
    );
}

/// `top` finds its policy as every command does: --config, else
/// FLOODGATE_CONFIG, else ./floodgate.toml (issue 35).
#[test]
fn top_finds_its_policy_by_the_rule_of_every_command() {
    let allow_listed = |output: &std::process::Output| {
        let report = json(output);
        report["offenders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["allow_listed"] == true)
            .count()
    };
    let args = [
        "top",
        "--logs",
        "examples/logs",
        "--now",
        "2026-11-20T10:05:00Z",
        "--format",
        "json",
        "--limit",
        "30",
    ];
    let from_env = std::process::Command::new(floodgate_bin())
        .args(args)
        .current_dir(super::workspace_root())
        .env("FLOODGATE_CONFIG", "examples/floodgate.toml")
        .output()
        .unwrap();
    assert_eq!(allow_listed(&from_env), 5, "{}", stderr(&from_env));

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        super::workspace_root().join("examples/floodgate.toml"),
        dir.path().join("floodgate.toml"),
    )
    .unwrap();
    let logs = super::workspace_root().join("examples/logs");
    let mut here = args.map(str::to_owned);
    here[2] = logs.display().to_string();
    let from_folder = std::process::Command::new(floodgate_bin())
        .args(&here)
        .current_dir(dir.path())
        .env_remove("FLOODGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(allow_listed(&from_folder), 5, "{}", stderr(&from_folder));

    // No policy anywhere: rank only, nothing allow-listed.
    let none = std::process::Command::new(floodgate_bin())
        .args(&here)
        .current_dir(tempfile::tempdir().unwrap().path())
        .env_remove("FLOODGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(allow_listed(&none), 0, "{}", stderr(&none));
}

#[test]
fn gen_logs_creates_its_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/folder/waf.jsonl");
    let output = std::process::Command::new(floodgate_bin())
        .args([
            "gen-logs",
            "--minutes",
            "1",
            "--benign-records",
            "10",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
}
