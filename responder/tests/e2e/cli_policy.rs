//! `floodgate check` and `floodgate review`, run as a user runs them.

use super::{floodgate, stderr, stdout};
use serde_json::Value;

const EXAMPLE: &str = "examples/floodgate.toml";
const NOW: &str = "2026-11-22T09:00:00Z";

#[test]
fn check_accepts_the_example_policy() {
    let output = floodgate(&["check", "--config", EXAMPLE, "--now", NOW]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "examples/floodgate.toml: valid: 4 tiers, 3 allow entries, 4 plans, 3 tenant overrides, 2 routes, 4 targets, source cloudwatch; 0 warnings\n"
    );
    assert_eq!(stderr(&output), "");
}

#[test]
fn check_prints_every_error_and_exits_1() {
    let output = floodgate(&[
        "check",
        "--config",
        "rules/tests/broken/zero-threshold.toml",
        "--now",
        NOW,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(
            "zero-threshold.toml:8:12: error: tiers[0].requests: must be at least 1, got 0"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "zero-threshold.toml:9:18: error: tiers[0].window_seconds: must be at least 1, got -300"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "zero-threshold.toml:17:17: error: tiers[1].block_minutes: must be at least 1, got 0"
        ),
        "{err}"
    );
    assert!(
        err.ends_with("rules/tests/broken/zero-threshold.toml: invalid: 3 errors, 0 warnings\n"),
        "{err}"
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn check_prints_warnings_but_passes() {
    let output = floodgate(&[
        "check",
        "--config",
        "rules/tests/warnings/expired-and-overlapping.toml",
        "--now",
        NOW,
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stderr(&output)
            .lines()
            .filter(|l| l.contains(": warning: "))
            .count(),
        6,
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("4 allow entries (1 expired)"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("2 plans, 1 tenant override (1 expired)"),
        "{}",
        stdout(&output)
    );
    assert!(stdout(&output).ends_with("; 6 warnings\n"));
}

#[test]
fn expiry_follows_the_clock() {
    // The globex override expires on 2026-12-15: a warning from the 16th on.
    let on_the_day = floodgate(&[
        "check",
        "--config",
        EXAMPLE,
        "--now",
        "2026-12-15T23:59:59Z",
    ]);
    assert!(
        stdout(&on_the_day).ends_with("; 0 warnings\n"),
        "{}",
        stdout(&on_the_day)
    );
    let day_after = floodgate(&["check", "--config", EXAMPLE, "--now", "2026-12-16"]);
    assert_eq!(day_after.status.code(), Some(0));
    assert!(
        stderr(&day_after).contains("quotas.overrides[1].expires: expired on 2026-12-15"),
        "{}",
        stderr(&day_after)
    );
}

#[test]
fn a_missing_policy_file_is_a_clear_error() {
    let output = floodgate(&["check", "--config", "no/such/policy.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with("floodgate: error: cannot read policy file no/such/policy.toml: "),
        "{text}"
    );
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "the cause once: {text}"
    );
    assert!(
        text.contains("--config FILE or FLOODGATE_CONFIG"),
        "how to name one: {text}"
    );
}

#[test]
fn review_table_shows_owner_reason_expiry_and_days_left() {
    let output = floodgate(&["review", "--config", EXAMPLE, "--now", NOW]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert!(lines[0].starts_with("KIND"));
    let globex = lines.iter().find(|l| l.contains("globex")).unwrap();
    for cell in [
        "tenant",
        "300/1s burst 600",
        "support@example.com",
        "2026-12-15",
        " 23 ",
        "Black-Friday import job",
    ] {
        assert!(globex.contains(cell), "{cell} missing from {globex}");
    }
    // An override that raises only a route class's limits says which.
    let initech = lines.iter().find(|l| l.contains("initech")).unwrap();
    assert!(initech.contains("exports 50/3600s"), "{initech}");
    let monitor = lines.iter().find(|l| l.contains("192.0.2.10/32")).unwrap();
    assert!(
        monitor.contains("exempt") && monitor.contains("sre@example.com"),
        "{monitor}"
    );
}

#[test]
fn review_json_flags_expired_duplicate_and_overlapping_entries() {
    let output = floodgate(&[
        "review",
        "--config",
        "rules/tests/warnings/expired-and-overlapping.toml",
        "--now",
        NOW,
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["evaluated_on"], "2026-11-22");
    let items = document["items"].as_array().unwrap();
    let flags = |i: usize| -> Vec<String> {
        items[i]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.to_string())
            .collect()
    };
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["subject"], "203.0.113.0/24");
    assert_eq!(items[0]["days_left"], -22);
    assert_eq!(
        flags(0),
        [r#"{"flag":"expired"}"#, r#"{"flag":"duplicate","line":24}"#]
    );
    assert_eq!(
        flags(1),
        [
            r#"{"flag":"duplicate","line":18}"#,
            r#"{"flag":"overlapping","line":31}"#
        ]
    );
    assert_eq!(flags(2), [r#"{"flag":"overlapping","line":24}"#]);
    assert_eq!(flags(3), Vec::<String>::new());
    assert_eq!(items[4]["kind"], "tenant-override");
    assert_eq!(items[4]["grants"], "plan pro");
    assert_eq!(flags(4), [r#"{"flag":"expired"}"#]);
    assert_eq!(document["warnings"].as_array().unwrap().len(), 6);
}

#[test]
fn review_json_gives_each_grant_as_fields_beside_its_prose() {
    let output = floodgate(&[
        "review",
        "--config",
        "examples/floodgate.toml",
        "--now",
        NOW,
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    let item = |subject: &str| -> (Value, Value) {
        let items = document["items"].as_array().unwrap();
        let item = items.iter().find(|i| i["subject"] == subject).unwrap();
        (item["grants"].clone(), item["grant"].clone())
    };
    let (prose, fields) = item("198.51.100.0/24");
    assert_eq!(prose, "requests >= 20000");
    assert_eq!(
        fields,
        serde_json::json!({"kind": "requests-at-least", "requests": 20000})
    );
    let (prose, fields) = item("192.0.2.10/32");
    assert_eq!(prose, "exempt");
    assert_eq!(fields, serde_json::json!({"kind": "exempt"}));
    let (prose, fields) = item("acme-corp");
    assert_eq!(prose, "plan enterprise");
    assert_eq!(
        fields,
        serde_json::json!({"kind": "override", "plan": "enterprise", "limits": [], "classes": []})
    );
    let (prose, fields) = item("globex");
    assert_eq!(prose, "300/1s burst 600");
    assert_eq!(
        fields,
        serde_json::json!({"kind": "override", "classes": [],
            "limits": [{"requests": 300, "per_seconds": 1, "burst": 600}]})
    );
    let (prose, fields) = item("initech");
    assert_eq!(prose, "exports 50/3600s");
    assert_eq!(
        fields,
        serde_json::json!({"kind": "override", "limits": [], "classes": [
            {"class": "exports", "limits": [{"requests": 50, "per_seconds": 3600, "burst": 50}]}
        ]})
    );
}

#[test]
fn review_of_an_invalid_policy_exits_1() {
    let output = floodgate(&["review", "--config", "rules/tests/broken/host-bits.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("did you mean \"10.0.0.0/8\"?"));
    assert_eq!(stdout(&output), "");
}

#[test]
fn review_with_logs_shows_traffic_per_exception_and_flags_unused_ones() {
    let output = floodgate(&[
        "review",
        "--config",
        EXAMPLE,
        "--now",
        NOW,
        "--logs",
        "examples/logs",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    let items = document["items"].as_array().unwrap();
    // The sample's NATed corporate range: 5 addresses, 8 requests a second
    // each, for 5 minutes.
    assert_eq!(items[0]["subject"], "198.51.100.0/24");
    assert_eq!(items[0]["requests"], 12000);
    assert_eq!(items[0]["flags"], serde_json::json!([]));
    for unused in &items[1..3] {
        assert_eq!(unused["requests"], 0, "{unused}");
        assert_eq!(
            unused["flags"],
            serde_json::json!([{"flag": "unused"}]),
            "{unused}"
        );
    }
    // WAF logs do not show tenants, so overrides carry no count.
    assert_eq!(items[3]["requests"], Value::Null);
}

#[test]
fn help_is_complete_and_bad_usage_exits_1_not_2() {
    for (args, expected) in [
        (
            &["--help"][..],
            &["check", "review", "Exit codes", "CloudFront", "Cloudflare"][..],
        ),
        // --now moves the windows as well as expiry, and says so.
        (&["run", "--help"][..], &["the tier windows end here"][..]),
        (&["backtest", "--help"][..], &["only the exceptions"][..]),
        (
            &["check", "--help"][..],
            &["--config", "--now", "FLOODGATE_CONFIG"][..],
        ),
        (
            &["review", "--help"][..],
            &["--config", "--logs", "--format", "table", "json"][..],
        ),
    ] {
        let output = floodgate(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        for word in expected {
            assert!(stdout(&output).contains(word), "{args:?} help lacks {word}");
        }
    }
    let bad_flag = floodgate(&["check", "--no-such-flag"]);
    assert_eq!(bad_flag.status.code(), Some(1));
    let bad_now = floodgate(&["check", "--config", EXAMPLE, "--now", "yesterday"]);
    assert_eq!(bad_now.status.code(), Some(1));
    assert!(
        stderr(&bad_now).contains("\"yesterday\" is not an RFC 3339 time"),
        "{}",
        stderr(&bad_now)
    );
}

#[test]
fn version_names_the_release_and_the_commit_it_was_built_from() {
    let output = floodgate(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(super::workspace_root())
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert_eq!(
        stdout(&output).trim(),
        format!(
            "floodgate {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            &head.trim()[..12]
        )
    );
}
