//! `floodgate run --once` on the embedded default: the committed sample
//! logs in, JSON IP set files out, no AWS account.

use std::path::Path;
use std::process::Command;

use super::{floodgate_bin, local_policy as policy_in, stderr, stdout, workspace_root};
use serde_json::Value;

fn run_at(dir: &Path, policy: &Path, now: &str) -> std::process::Output {
    run_with(dir, policy, now, &["--format", "json"])
}

/// `floodgate run --once` in `dir`, at `now`, with `extra` arguments.
fn run_with(dir: &Path, policy: &Path, now: &str, extra: &[&str]) -> std::process::Output {
    floodgate_at(dir, policy, now, &[&["run", "--once"], extra].concat())
        .output()
        .unwrap()
}

/// `floodgate <args> --config <policy> --now <now>`, run in `dir`.
fn floodgate_at(dir: &Path, policy: &Path, now: &str, args: &[&str]) -> Command {
    let mut command = Command::new(floodgate_bin());
    command
        .args(args)
        .args(["--config", policy.to_str().unwrap(), "--now", now])
        .current_dir(dir)
        .env_remove("FLOODGATE_LOG");
    command
}

fn set_file(dir: &Path, name: &str) -> Vec<String> {
    let file: Value = serde_json::from_slice(
        &std::fs::read(dir.join("state/ip-sets").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    file["Addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn one_cycle_blocks_the_attackers_spares_the_allow_list_and_expires_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");

    let first = run_at(dir.path(), &policy, "2026-11-20T10:05:00Z");
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    // The single-IP flood, 16 distributed flooders, the IPv6 flood's /64,
    // the IPv6 rotation's /64 and the login flood (by its scoped tier); the
    // partner's five addresses are watched.
    assert_eq!(report["added"].as_array().unwrap().len(), 20, "{report}");
    assert_eq!(
        report["offenders_per_tier"],
        serde_json::json!([
            { "tier": "login-flood", "offenders": 1 },
            { "tier": "watch", "offenders": 5 },
            { "tier": "block", "offenders": 18 },
            { "tier": "block-24h", "offenders": 1 }
        ])
    );
    assert_eq!(report["targets"][0]["outcome"], "updated +5 −0");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["read", "detect", "ledger", "plan", "apply"]);
    assert!(
        report["bytes_read"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );
    assert!(
        report["insights_estimated_cost_usd"].is_null(),
        "files cost nothing"
    );
    // Aggregated exactly; the allow-listed corporate NAT is never there.
    assert_eq!(
        set_file(dir.path(), "floodgate-blocked-v4"),
        ["192.0.2.44/32", "203.0.113.66/32", "203.0.113.128/28"]
    );
    assert_eq!(
        set_file(dir.path(), "floodgate-blocked-v6"),
        ["2001:db8:64:64::/64", "2001:db8:bad::/64"]
    );
    let ledger: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/ledger.json")).unwrap())
            .unwrap();
    assert_eq!(ledger["entries"].as_object().unwrap().len(), 20);
    assert_eq!(
        ledger["entries"]["192.0.2.44/32"]["reason"], "1500 requests in 300 s (tier login-flood)",
        "the scoped tier's name is in the ledger's reason"
    );

    // A minute later: still attacking, nothing to write.
    let again = run_at(dir.path(), &policy, "2026-11-20T10:06:00Z");
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (
            report["added"].as_array().unwrap().len(),
            report["targets"][0]["outcome"].as_str()
        ),
        (0, Some("unchanged"))
    );

    // The next day every block has expired, the 24 h one included.
    let later = run_at(dir.path(), &policy, "2026-11-21T12:00:00Z");
    let report: Value = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(report["expired"].as_array().unwrap().len(), 20, "{report}");
    assert!(set_file(dir.path(), "floodgate-blocked-v4").is_empty());
}

#[test]
fn the_table_report_is_a_short_summary() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let output = run_with(dir.path(), &policy, "2026-11-20T10:05:00Z", &[]);
    let text = stdout(&output);
    for line in [
        "offenders per tier: login-flood 1, watch 5, block 18, block-24h 1",
        "blocks: 20 added, 0 extended, 0 expired",
        "file state/ip-sets: updated +5 −0",
        "IP set files in state/ip-sets",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn observe_mode_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(
        dir.path(),
        &workspace_root().join("examples/logs"),
        "\n[safety]\nmode = \"observe\"\n",
    );
    let output = run_at(dir.path(), &policy, "2026-11-20T10:05:00Z");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "observe");
    assert_eq!(report["added"].as_array().unwrap().len(), 20);
    assert!(!dir.path().join("state").exists());
}

#[test]
fn bad_input_exits_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("waf.log"), "not a WAF log\n{]\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (logs, expected) in [
        (&garbage, "all 2 lines are malformed"),
        (&empty, "no WAF log files"),
    ] {
        let policy = policy_in(dir.path(), logs, "");
        let output = run_at(dir.path(), &policy, "2026-11-20T10:05:00Z");
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert!(
            !dir.path().join("state").exists(),
            "nothing is written on bad input"
        );
    }
    std::fs::write(
        dir.path().join("broken.toml"),
        "[[tiers]]\nname = \"x\"\nrequests = 0\n",
    )
    .unwrap();
    let output = run_at(
        dir.path(),
        &dir.path().join("broken.toml"),
        "2026-11-20T10:05:00Z",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(!dir.path().join("state").exists());

    // A lease override on a policy without a lease, or a standby without
    // one, is refused before anything is read or written.
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    for (args, expected) in [
        (
            &["--holder-id", "standby-1"][..],
            "--holder-id names this responder in the lease, but the policy has no [responder] lease",
        ),
        (
            &["--role", "standby"][..],
            "a standby needs [responder] lease",
        ),
    ] {
        let output = run_with(dir.path(), &policy, "2026-11-20T10:05:00Z", args);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert!(!dir.path().join("state").exists());
    }
}

#[test]
fn the_circuit_breaker_is_logged_at_error_level_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(
        dir.path(),
        &workspace_root().join("examples/logs"),
        "\n[safety]\nmax_new_blocks_per_run = 2\n",
    );
    let output = run_with(
        dir.path(),
        &policy,
        "2026-11-20T10:05:00Z",
        &["--format", "json", "--log-format", "json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The worst two: the 24 h flooder, then the busiest block-tier one.
    assert_eq!(report["added"].as_array().unwrap().len(), 2);
    assert_eq!(report["held_back"].as_array().unwrap().len(), 18);
    let lines: Vec<Value> = stderr(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let breaker = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("circuit breaker"))
        })
        .expect("a breaker event");
    assert_eq!(breaker["level"], "ERROR");
    assert_eq!(breaker["fields"]["held_back"], 18);

    // Text log lines into a pipe carry no colour codes (issue 18).
    let fresh = tempfile::tempdir().unwrap();
    let text = run_with(fresh.path(), &policy, "2026-11-20T10:05:00Z", &[]);
    let log = stderr(&text);
    assert!(
        log.contains("ERROR") && log.contains("circuit breaker"),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in {log:?}");
}

/// `floodgate plan` in `dir`, at `now`, with `extra` arguments.
fn plan_at(dir: &Path, policy: &Path, now: &str, extra: &[&str]) -> std::process::Output {
    floodgate_at(dir, policy, now, &[&["plan"], extra].concat())
        .output()
        .unwrap()
}

#[test]
fn plan_shows_what_run_would_change_and_why_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let at = "2026-11-20T10:05:00Z";

    let before = plan_at(dir.path(), &policy, at, &["--detailed-exitcode"]);
    assert_eq!(
        before.status.code(),
        Some(2),
        "changes to make: {}",
        stderr(&before)
    );
    let text = stdout(&before);
    assert!(text.contains("file state/ip-sets: +5 -0"), "{text}");
    assert!(
        text.contains("+ 192.0.2.44/32") && text.contains("tier login-flood, 1500 requests,"),
        "the login flood, by its scoped tier: {text}"
    );
    assert!(
        text.contains("+ 203.0.113.66/32") && text.contains("tier block-24h"),
        "{text}"
    );
    assert!(
        text.contains("+ 203.0.113.128/28") && text.contains("16 addresses: tier block,"),
        "an aggregated range explains every address in it: {text}"
    );
    assert!(
        text.contains("+ 2001:db8:64:64::/64")
            && text.contains("tier block, 2400 requests from 60 addresses,"),
        "a prefix block tells how many addresses were seen in it: {text}"
    );
    assert!(text.contains("Plan: 5 to add, 0 to remove"), "{text}");
    assert!(!dir.path().join("state").exists(), "a plan writes nothing");

    assert_eq!(run_at(dir.path(), &policy, at).status.code(), Some(0));
    let converged = plan_at(dir.path(), &policy, at, &["--detailed-exitcode"]);
    assert_eq!(converged.status.code(), Some(0), "{}", stdout(&converged));
    assert!(stdout(&converged).contains("Plan: 0 to add, 0 to remove"));

    let next_day = plan_at(
        dir.path(),
        &policy,
        "2026-11-21T12:00:00Z",
        &["--format", "json"],
    );
    assert_eq!(next_day.status.code(), Some(0), "no --detailed-exitcode: 0");
    let report: Value = serde_json::from_slice(&next_day.stdout).unwrap();
    assert_eq!(report["to_remove"], 5, "{report}");
    let why = report["targets"][0]["remove"][0]["why"].as_str().unwrap();
    assert!(why.starts_with("block expired at 2026-11-2"), "{why}");
    assert_eq!(
        set_file(dir.path(), "floodgate-blocked-v4"),
        ["192.0.2.44/32", "203.0.113.66/32", "203.0.113.128/28"],
        "still as the run left them"
    );
}

#[test]
fn status_lists_blocks_in_force_and_the_drift_of_each_target() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let at = "2026-11-20T10:05:00Z";
    let status = |now: &str, extra: &[&str]| {
        let args = [&["status"], extra].concat();
        floodgate_at(dir.path(), &policy, now, &args)
            .output()
            .unwrap()
    };
    assert_eq!(run_at(dir.path(), &policy, at).status.code(), Some(0));

    let in_sync = status(at, &[]);
    assert_eq!(in_sync.status.code(), Some(0), "{}", stderr(&in_sync));
    let text = stdout(&in_sync);
    assert!(text.starts_with("20 blocks in force"), "{text}");
    assert!(
        text.contains("203.0.113.66/32") && text.contains("block-24h"),
        "{text}"
    );
    assert!(text.contains("file state/ip-sets: in sync"), "{text}");

    // Someone edits a set by hand: an address the ledger never blocked.
    let path = dir.path().join("state/ip-sets/floodgate-blocked-v4.json");
    let edited = std::fs::read_to_string(&path).unwrap().replace(
        "\"203.0.113.66/32\"",
        "\"203.0.113.66/32\", \"192.0.2.1/32\"",
    );
    std::fs::write(&path, edited).unwrap();
    let drifted = status(at, &["--format", "json"]);
    assert_eq!(drifted.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&drifted.stdout).unwrap();
    assert_eq!(
        report["targets"][0]["unexpected"],
        serde_json::json!(["192.0.2.1/32"])
    );
    assert_eq!(report["active"].as_array().unwrap().len(), 20);

    // A day later every block has ended; the sets still hold them until the
    // next run. They are the ledger's, ended: not drift. The hand edit is.
    let later = status("2026-11-22T00:00:00Z", &["--format", "json"]);
    assert_eq!(later.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(report["active"].as_array().unwrap().len(), 0);
    assert_eq!(
        report["targets"][0]["unexpected"],
        serde_json::json!(["192.0.2.1/32"])
    );
    assert_eq!(
        report["targets"][0]["expired"].as_array().unwrap().len(),
        5,
        "{report}"
    );
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace(", \"192.0.2.1/32\"", ""),
    )
    .unwrap();
    let ended = status("2026-11-22T00:00:00Z", &[]);
    assert_eq!(ended.status.code(), Some(0), "ended blocks are not drift");
    let text = stdout(&ended);
    assert!(
        text.contains("file state/ip-sets: in sync; 5 ended, removed by the next run"),
        "{text}"
    );
}

#[test]
fn block_and_unblock_override_every_target_and_an_unblock_holds_against_detection() {
    let dir = tempfile::tempdir().unwrap();
    let monitoring = "\n[[allow]]\ncidr = \"192.0.2.0/28\"\nreason = \"uptime probes\"\nowner = \"sre@example.com\"\nexpires = 2027-01-01\n";
    let policy = policy_in(
        dir.path(),
        &workspace_root().join("examples/logs"),
        monitoring,
    );
    let at = "2026-11-20T10:05:00Z";
    let floodgate = |args: &[&str]| {
        floodgate_at(dir.path(), &policy, at, args)
            .output()
            .unwrap()
    };
    assert_eq!(run_at(dir.path(), &policy, at).status.code(), Some(0));

    let blocked = floodgate(&[
        "block",
        "198.51.100.99",
        "--minutes",
        "30",
        "--reason",
        "scraper, OPS-99",
    ]);
    assert_eq!(blocked.status.code(), Some(0), "{}", stderr(&blocked));
    assert!(
        stdout(&blocked).starts_with("blocked 198.51.100.99/32 until 2026-11-20T10:35:00Z"),
        "{}",
        stdout(&blocked)
    );
    assert!(set_file(dir.path(), "floodgate-blocked-v4").contains(&"198.51.100.99/32".to_owned()));

    let unblocked = floodgate(&["unblock", "203.0.113.66", "--reason", "customer's office"]);
    assert_eq!(unblocked.status.code(), Some(0), "{}", stderr(&unblocked));
    assert!(!set_file(dir.path(), "floodgate-blocked-v4").contains(&"203.0.113.66/32".to_owned()));

    // The same logs again: detection would block 203.0.113.66, the unblock holds.
    let rerun = run_at(dir.path(), &policy, "2026-11-20T10:06:00Z");
    let report: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(
        report["suppressed"],
        serde_json::json!(["203.0.113.66/32"]),
        "{report}"
    );
    let v4 = set_file(dir.path(), "floodgate-blocked-v4");
    assert!(!v4.contains(&"203.0.113.66/32".to_owned()), "{v4:?}");
    assert!(
        v4.contains(&"198.51.100.99/32".to_owned()),
        "the manual block stays"
    );

    // Bad overrides write nothing and say why.
    let allowed = floodgate(&["block", "192.0.2.5", "--minutes", "5", "--reason", "x"]);
    assert_eq!(allowed.status.code(), Some(1));
    assert!(
        stderr(&allowed).contains("192.0.2.5/32 is inside allow-list entry 192.0.2.0/28"),
        "{}",
        stderr(&allowed)
    );
    // A range that holds an exception is blocked, the exception cut out.
    let wider = floodgate(&["block", "192.0.2.0/24", "--minutes", "5", "--reason", "x"]);
    assert_eq!(wider.status.code(), Some(0), "{}", stderr(&wider));
    assert!(
        stdout(&wider).contains("the allow-list's 192.0.2.0/28"),
        "{}",
        stdout(&wider)
    );
    let v4 = set_file(dir.path(), "floodgate-blocked-v4");
    assert!(v4.contains(&"192.0.2.16/28".to_owned()), "{v4:?}");
    assert!(!v4.iter().any(|n| n.starts_with("192.0.2.0/")), "{v4:?}");
    let host_bits = floodgate(&["block", "10.0.0.1/8", "--minutes", "5", "--reason", "x"]);
    assert!(
        stderr(&host_bits).contains("did you mean 10.0.0.0/8?"),
        "{}",
        stderr(&host_bits)
    );
    let nothing = floodgate(&["unblock", "192.0.2.200", "--reason", "x"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(stderr(&nothing).contains("no block in force covers it"));
}

/// A webhook receiver on loopback: every request body it got.
fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let received = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            received
                .lock()
                .unwrap()
                .push(String::from_utf8(body).unwrap());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

#[test]
fn alerts_post_to_the_webhook_once_per_repeat_window() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = "\n[alerts]\nwebhook_url_env = \"FLOODGATE_TEST_WEBHOOK\"\nrepeat_minutes = 60\n";
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), alerts);
    let (url, bodies) = webhook();
    let run = |now: &str| {
        floodgate_at(dir.path(), &policy, now, &["run", "--once"])
            .env("FLOODGATE_TEST_WEBHOOK", &url)
            .output()
            .unwrap()
    };
    let first = run("2026-11-20T10:05:00Z");
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let sent = bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one POST per cycle");
    let payload: Value = serde_json::from_str(&sent[0]).unwrap();
    assert!(
        payload["text"].as_str().unwrap().starts_with("Floodgate: "),
        "{payload}"
    );
    let kinds: Vec<&str> = payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    // The five watch-tier addresses are the allow-listed partner's: their
    // 2,400 requests would have reached the block tier without it. (The
    // login flood is blocked by its scoped tier, so not merely watched.)
    assert_eq!(kinds, ["allow_listed_over_block_tier"; 5]);
    let allow_listed = payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "allow_listed_over_block_tier")
        .unwrap();
    assert_eq!(allow_listed["exception"], "198.51.100.0/24");
    assert_eq!(
        allow_listed["tier"], "block",
        "2,400 requests reach block, not block-24h"
    );

    // The attack goes on a minute later: nothing new to say.
    let again = run("2026-11-20T10:06:00Z");
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let sent = bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "deduplicated within the hour: {sent:?}");
}

#[test]
fn backtest_replays_the_sample_and_writes_an_html_report_with_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let report = dir.path().join("report.html");
    let output = Command::new(floodgate_bin())
        .args(["backtest", "--config", policy.to_str().unwrap(), "--logs"])
        .arg(workspace_root().join("examples/logs"))
        .args([
            "--from",
            "2026-11-20T10:00:00Z",
            "--to",
            "2026-11-20T10:30:00Z",
        ])
        .args([
            "--step",
            "1m",
            "--format",
            "json",
            "--out",
            report.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let blocked: Vec<&str> = summary["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["net"].as_str().unwrap())
        .collect();
    assert_eq!(blocked.len(), 20, "{summary}");
    assert!(blocked.contains(&"203.0.113.66/32") && blocked.contains(&"2001:db8:bad::/64"));
    assert!(
        !blocked.iter().any(|b| b.starts_with("198.51.100.")),
        "never the allow-listed NAT"
    );
    assert!(summary["requests_stopped"].as_u64().unwrap() > 0);
    assert_eq!(summary["allow_listed_offenders"], 5);
    // Most blocks (15 minutes from about 10:02) end before 10:30; the
    // longer ones are cut at --to, and the report says which.
    let in_force = summary["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["in_force_at_end"] == true)
        .count();
    assert!(in_force > 0 && in_force < 20, "{summary}");
    assert_eq!(summary["still_blocked_at_end"], in_force);

    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg"),
        "self-contained with charts"
    );
    assert!(html.contains("<figcaption>203.0.113.66</figcaption>"));
    assert!(
        html.contains(&format!(
            "<p>{in_force} blocks were still in force at the period's end: their spans and minutes end at 2026-11-20T10:30:00Z"
        )),
        "clipped blocks are named"
    );
    // A busy allow-listed client's chart says which exception kept it
    // unblocked, and whose it is.
    assert!(
        html.contains("<figcaption>198.51.100.1 (allow-listed by 198.51.100.0/24: ")
            && html.contains("owner partnerships@example.com)</figcaption>"),
        "allow-listed charts are marked"
    );
    assert!(html.contains("class=\"blocked\""), "block spans are shaded");
    let breaker = summary["circuit_breaker_steps"].as_array().unwrap().len();
    let said = match breaker {
        0 => "Circuit breaker: never tripped.".to_owned(),
        1 => "Circuit breaker: tripped at 1 step.".to_owned(),
        n => format!("Circuit breaker: tripped at {n} steps."),
    };
    assert!(
        html.contains(&said) && !html.contains("at 0 steps"),
        "{said}"
    );
    // It opens with the overview, and each chart draws its tiers' thresholds.
    let overview = html.find("<figcaption>Overview: requests per step</figcaption>");
    assert!(overview.is_some_and(|at| at < html.find("<h2>Blocks</h2>").unwrap()));
    assert!(html.contains("<title>stopped by the blocks</title>"));
    assert!(
        html.contains(">block: 2000 per 300 s</text>"),
        "thresholds drawn"
    );
    // A prefix block lists the addresses seen in it (issue 18).
    let rotation = summary["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["net"] == "2001:db8:64:64::/64")
        .expect("the /64 rotation is blocked");
    assert_eq!(rotation["addresses_seen"], 60);
    // The login flood, blocked by the tier scoped to POST /login.
    let login = summary["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["net"] == "192.0.2.44/32")
        .expect("the login flood is blocked");
    assert_eq!(login["tier"], "login-flood");
    assert!(
        html.contains("<td>60 addresses seen: 2001:db8:64:64::1, 2001:db8:64:64::2,"),
        "the addresses seen in a blocked prefix are listed"
    );
    assert!(
        !dir.path().join("state").exists(),
        "a backtest writes no target and no ledger"
    );
}

#[test]
fn a_backtest_over_a_period_the_logs_do_not_cover_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let report = dir.path().join("report.html");
    // The sample holds 2026-11-20 09:05 to 10:05 only.
    let output = Command::new(floodgate_bin())
        .args(["backtest", "--config", policy.to_str().unwrap(), "--logs"])
        .arg(workspace_root().join("examples/logs"))
        .args(["--from", "2026-12-01", "--to", "2026-12-02"])
        .args(["--out", report.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("no record between 2026-12-01T00:00:00Z and 2026-12-02T00:00:00Z")
            && err.contains("check --from, --to and --logs"),
        "{err}"
    );
    assert!(!report.exists(), "no report of an empty period");
}

#[test]
fn emf_metrics_add_one_cloudwatch_embedded_metric_line_after_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let output = run_with(
        dir.path(),
        &policy,
        "2026-11-20T10:05:00Z",
        &["--format", "json", "--emf-metrics"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let (report, emf) = text.trim_end().rsplit_once('\n').unwrap();
    let report: Value = serde_json::from_str(report).unwrap();
    assert_eq!(report["added"].as_array().unwrap().len(), 20);
    let emf: Value = serde_json::from_str(emf).unwrap();
    let directive = &emf["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Floodgate");
    assert_eq!(directive["Dimensions"], serde_json::json!([["Responder"]]));
    // Every metric and dimension the directive names is a member of the
    // record, as the embedded metric format requires.
    for metric in directive["Metrics"].as_array().unwrap() {
        let name = metric["Name"].as_str().unwrap();
        assert!(emf[name].is_number(), "{name} missing in {emf}");
    }
    assert_eq!(emf["Responder"], "floodgate");
    assert_eq!(emf["SuccessfulCycles"], 1);
    assert!(emf["_aws"]["Timestamp"].as_i64().unwrap() > 1_700_000_000_000);
}

#[test]
fn a_block_that_starts_at_the_last_step_is_not_called_0_minutes_issue_18() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let backtest = |format: &str| {
        Command::new(floodgate_bin())
            .args(["backtest", "--config", policy.to_str().unwrap(), "--logs"])
            .arg(workspace_root().join("examples/logs"))
            .args([
                "--from",
                "2026-11-20T10:00:00Z",
                "--to",
                "2026-11-20T10:05:00Z",
            ])
            .args(["--format", format, "--out"])
            .arg(dir.path().join("report.html"))
            .output()
            .unwrap()
    };
    let text = stdout(&backtest("table"));
    // The distributed flood fills its 5-minute window at the last step.
    assert!(
        text.contains(
            "203.0.113.128                               blocked from the last step by block"
        ),
        "{text}"
    );
    assert!(!text.contains("blocked 0 min"), "{text}");
    assert!(
        text.contains("203.0.113.66                                blocked 3 min by block-24h"),
        "{text}"
    );
    let summary: Value = serde_json::from_slice(&backtest("json").stdout).unwrap();
    let late = summary["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["net"] == "203.0.113.128/32")
        .unwrap();
    assert_eq!(late["from"], "2026-11-20T10:05:00Z");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<td>from the last step</td>"));
}

/// Each tier window's records, and the newest record, against a count of
/// the sample's timestamps made here (issue 35).
#[test]
fn the_report_says_how_many_records_fell_in_each_window() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let minute_tier = "\n[[tiers]]\nname = \"minute\"\nrequests = 1200\nwindow_seconds = 60\naction = \"block\"\nblock_minutes = 5\n";
    let policy = policy_in(
        dir.path(),
        &workspace_root().join("examples/logs"),
        minute_tier,
    );
    let now_ms: i64 = 1_795_169_100_000; // 2026-11-20T10:05:00Z
    let sample =
        std::fs::File::open(workspace_root().join("examples/logs/sample.jsonl.gz")).unwrap();
    let timestamps: Vec<i64> = std::io::BufReader::new(flate2::read::GzDecoder::new(sample))
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(&line.unwrap()).unwrap()["timestamp"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let within = |seconds: i64| {
        let inside = |ts: &&i64| now_ms - seconds * 1000 < **ts && **ts <= now_ms;
        timestamps.iter().filter(inside).count()
    };
    let newest = *timestamps.iter().max().unwrap();

    let output = run_at(dir.path(), &policy, "2026-11-20T10:05:00Z");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["records_per_window"],
        serde_json::json!([
            {"window_seconds": 60, "records": within(60)},
            {"window_seconds": 300, "records": within(300)},
        ]),
        "{report}"
    );
    assert!(within(60) > 0 && within(60) < within(300));
    assert_eq!(report["records_in_window"], within(300));
    assert_eq!(
        report["newest_record_age_seconds"],
        (now_ms - newest) / 1000
    );

    let text = stdout(&run_with(
        dir.path(),
        &policy,
        "2026-11-20T10:05:00Z",
        &["--format", "table"],
    ));
    let expected = format!(
        "records in the windows: 60 s {}, 300 s {}; newest record ",
        within(60),
        within(300)
    );
    assert!(text.contains(&expected), "{text}");
}

/// A window with no record says so, with the newest record's time: a log
/// feed that stopped must not look like a quiet day (issue 35).
#[test]
fn a_window_without_records_is_reported_stale() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_in(dir.path(), &workspace_root().join("examples/logs"), "");
    let fresh = run_at(dir.path(), &policy, "2026-11-20T10:05:00Z");
    let report: Value = serde_json::from_slice(&fresh.stdout).unwrap();
    assert_eq!(report["stale"], false, "{report}");
    assert_eq!(report["records_in_window"], 68500, "{report}");

    let later = run_with(dir.path(), &policy, "2026-12-06T10:05:00Z", &[]);
    assert_eq!(later.status.code(), Some(0), "{}", stderr(&later));
    let text = stdout(&later);
    assert!(
        text.contains("STALE: no record in the window; the newest is 2026-11-20T10:04:59.999Z"),
        "{text}"
    );
    assert!(
        stderr(&later).contains("is the log feed stalled"),
        "{}",
        stderr(&later)
    );

    // A site quiet for longer than its windows says how long is too long.
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("[responder]\n", "[responder]\nstale_after_minutes = 60\n");
    std::fs::write(&policy, text).unwrap();
    let stale = |now: &str| {
        let output = run_at(dir.path(), &policy, now);
        serde_json::from_slice::<Value>(&output.stdout).unwrap()["stale"].clone()
    };
    // The newest record is at 10:05; every five-minute window after 10:10
    // is empty, which the default would call stale.
    assert_eq!(stale("2026-11-20T10:35:00Z"), false);
    assert_eq!(stale("2026-11-20T11:06:00Z"), true);
}
