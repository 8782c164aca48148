//! The responder's reports, byte for byte: a sequence of commands on the
//! embedded default (the committed sample logs, file targets) whose output
//! must not change when the code behind it is reorganised.
//!
//! Timings are the only part that differs between runs; they are written
//! as 0 before comparing. Regenerate the golden file after an intended
//! change with `FLOODGATE_BLESS=1 cargo test -p floodgate-responder --test
//! integration e2e::golden_reports`, and review its diff.

use std::path::Path;
use std::process::Command;

use super::{floodgate_bin, local_policy, stderr, workspace_root};

const GOLDEN: &str = "reports.txt";

/// examples/local.toml reading the committed sample, with `extra` appended.
fn policy_in(dir: &Path, extra: &str) -> std::path::PathBuf {
    local_policy(dir, &workspace_root().join("examples/logs"), extra)
}

/// `floodgate <args> --config <policy> --now <now>` in `dir`: its exit code
/// and standard output, with the timings zeroed.
fn floodgate(dir: &Path, policy: &Path, now: &str, args: &[&str]) -> String {
    let output = Command::new(floodgate_bin())
        .args(args)
        .args(["--config", policy.to_str().unwrap(), "--now", now])
        .current_dir(dir)
        .env_remove("FLOODGATE_LOG")
        .output()
        .unwrap();
    let code = output.status.code().unwrap_or(-1);
    assert!(code != 1, "{args:?} failed: {}", stderr(&output));
    // Paths differ between machines and runs.
    let text = String::from_utf8(output.stdout)
        .unwrap()
        .replace(workspace_root().to_str().unwrap(), "<root>");
    let command = args
        .join(" ")
        .replace(dir.to_str().unwrap(), "<dir>")
        .replace(workspace_root().to_str().unwrap(), "<root>");
    format!(
        "$ floodgate {command} --now {now}\n(exit {code})\n{}",
        zero_timings(&text)
    )
}

/// Replaces each measured duration with 0: JSON `"seconds": 0.0123` and
/// the table's `0.01 s`.
fn zero_timings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(at) = line.find("\"seconds\": ") {
            let end = line.ends_with(',');
            out.push_str(&line[..at]);
            out.push_str("\"seconds\": 0");
            out.push_str(if end { ",\n" } else { "\n" });
            continue;
        }
        let words: Vec<String> = line
            .split(' ')
            .collect::<Vec<_>>()
            .windows(2)
            .map(|pair| {
                let is_duration = pair[1].starts_with('s')
                    && pair[0].contains('.')
                    && pair[0].chars().all(|c| c.is_ascii_digit() || c == '.');
                if is_duration { "0" } else { pair[0] }.to_owned()
            })
            .collect();
        let last = line.rsplit(' ').next().unwrap_or_default();
        if words.is_empty() {
            out.push_str(last);
        } else {
            out.push_str(&words.join(" "));
            out.push(' ');
            out.push_str(last);
        }
        out.push('\n');
    }
    out
}

#[test]
fn zero_timings_rewrites_durations_only() {
    assert_eq!(
        zero_timings("  \"seconds\": 0.1234,\nread 5 records in 1.25 s; mode x\nv 1.2.3\n"),
        "  \"seconds\": 0,\nread 5 records in 0 s; mode x\nv 1.2.3\n"
    );
}

/// Every report the cycle's steps feed: runs (adoption, adds, extension,
/// suppression, the circuit breaker, expiry), plan, block/unblock, status
/// and backtest.
fn reports() -> String {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let policy = policy_in(dir, "");
    let mut out = Vec::new();
    let at = "2026-11-20T10:05:00Z";

    // A set that already holds an address while the ledger is empty: adopted.
    std::fs::create_dir_all(dir.join("state/ip-sets")).unwrap();
    std::fs::write(
        dir.join("state/ip-sets/floodgate-blocked-v4.json"),
        r#"{"Name":"floodgate-blocked-v4","Scope":"REGIONAL","IPAddressVersion":"IPV4","Addresses":["192.0.2.77/32"]}"#,
    )
    .unwrap();
    out.push(floodgate(dir, &policy, at, &["plan", "--format", "json"]));
    out.push(floodgate(dir, &policy, at, &["plan"]));
    out.push(floodgate(
        dir,
        &policy,
        at,
        &["run", "--once", "--format", "json"],
    ));
    out.push(floodgate(
        dir,
        &policy,
        at,
        &[
            "block",
            "192.0.2.200",
            "--minutes",
            "30",
            "--reason",
            "OPS-1",
        ],
    ));
    out.push(floodgate(
        dir,
        &policy,
        at,
        &["unblock", "203.0.113.66", "--reason", "customer"],
    ));
    let later = "2026-11-20T10:06:00Z";
    out.push(floodgate(
        dir,
        &policy,
        later,
        &["run", "--once", "--format", "json"],
    ));
    out.push(floodgate(dir, &policy, later, &["run", "--once"]));
    out.push(floodgate(
        dir,
        &policy,
        later,
        &["status", "--format", "json"],
    ));
    let next_day = "2026-11-21T12:00:00Z";
    out.push(floodgate(dir, &policy, next_day, &["plan"]));
    out.push(floodgate(
        dir,
        &policy,
        next_day,
        &["run", "--once", "--format", "json"],
    ));

    // The circuit breaker, in a fresh state directory.
    let breaker = tempfile::tempdir().unwrap();
    let limited = policy_in(breaker.path(), "\n[safety]\nmax_new_blocks_per_run = 4\n");
    out.push(floodgate(
        breaker.path(),
        &limited,
        at,
        &["run", "--once", "--format", "json"],
    ));

    let html = dir.join("backtest.html");
    out.push(floodgate(
        dir,
        &policy,
        at,
        &[
            "backtest",
            "--logs",
            workspace_root().join("examples/logs").to_str().unwrap(),
            "--from",
            "2026-11-20T10:00:00Z",
            "--to",
            "2026-11-20T10:05:00Z",
            "--step",
            "1m",
            "--out",
            html.to_str().unwrap(),
            "--format",
            "json",
        ],
    ));
    out.join("\n")
}

/// Compares `actual` with the golden file `name` under
/// responder/tests/fixtures/golden/ (rewritten first with FLOODGATE_BLESS).
fn assert_golden(name: &str, actual: &str) {
    let path = workspace_root()
        .join("responder/tests/fixtures/golden")
        .join(name);
    if std::env::var_os("FLOODGATE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with FLOODGATE_BLESS=1", path.display()));
    if actual != expected {
        let first = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or(actual.lines().count().min(expected.lines().count()));
        panic!(
            "output differs from {name} from line {}:\n  actual:   {:?}\n  expected: {:?}\n(FLOODGATE_BLESS=1 regenerates it)",
            first + 1,
            actual.lines().nth(first),
            expected.lines().nth(first)
        );
    }
}

#[test]
fn reports_match_the_golden_file() {
    assert_golden(GOLDEN, &reports());
}

/// `review --base` on a fixture pair (responder/tests/fixtures/review/), in
/// every format, after the base's cycle blocked the sample's attackers; and
/// against a git revision. The JSON is also checked against its schema.
#[test]
fn policy_changes_are_reviewed_as_the_golden_file_says() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    let fixtures = workspace_root().join("responder/tests/fixtures/review");
    for name in ["base.toml", "head.toml"] {
        std::fs::copy(fixtures.join(name), dir.path().join(name)).unwrap();
    }
    let (base, head) = (dir.path().join("base.toml"), dir.path().join("head.toml"));
    floodgate(
        dir.path(),
        &base,
        "2026-11-20T10:05:00Z",
        &["run", "--once"],
    );
    let now = "2026-11-20T10:06:00Z";
    let review = |policy: &Path, args: &[&str]| {
        floodgate(dir.path(), policy, now, &[&["review"], args].concat())
    };
    let logs = ["--logs", "examples/logs"];
    let mut out = vec![review(
        &head,
        &[&["--base", "base.toml"][..], &logs].concat(),
    )];
    out.push(review(
        &head,
        &["--base", "base.toml", "--format", "markdown"],
    ));
    // Without --base, the plain review as a Markdown table.
    out.push(review(&head, &["--format", "markdown"]));
    let json = review(
        &head,
        &[&["--base", "base.toml", "--format", "json"][..], &logs].concat(),
    );
    // After the command line and its exit code.
    let printed = json.splitn(3, '\n').nth(2).unwrap();
    let document: serde_json::Value = serde_json::from_str(printed).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("docs/schemas/review-diff.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let errors: Vec<String> = jsonschema::validator_for(&schema)
        .unwrap()
        .iter_errors(&document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    out.push(json);
    out.push(review(&base, &["--base", "base.toml"]));

    // Against the last commit of the file, as a CI job reviews a branch.
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(["-c", "user.name=ci", "-c", "user.email=ci@example.com"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}: {}", stderr(&status));
    };
    git(&["init", "-q"]);
    std::fs::copy(&base, dir.path().join("floodgate.toml")).unwrap();
    git(&["add", "floodgate.toml"]);
    git(&["commit", "-q", "-m", "the policy in production"]);
    std::fs::copy(&head, dir.path().join("floodgate.toml")).unwrap();
    out.push(review(
        &dir.path().join("floodgate.toml"),
        &["--base", "HEAD"],
    ));
    let out = out
        .join("\n")
        .replace(dir.path().to_str().unwrap(), "<dir>");
    assert_golden("review-diff.txt", &out);
}
