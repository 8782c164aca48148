//! `floodgate run` as a daemon: cycles on a one-second schedule against the
//! embedded default, serves /healthz and /metrics, stops cleanly on SIGTERM;
//! and `floodgate healthcheck` asking it.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    daemon_get as get, daemon_policy_reading as policy_reading, floodgate_bin, free_port,
    metrics_once, spawn_daemon, workspace_root,
};

/// examples/local.toml in `dir`, on `schedule`, listening on `port`,
/// reading a log written now (the daemon's window ends now).
fn daemon_policy(dir: &std::path::Path, schedule: &str, port: u16) -> std::path::PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let record = format!(
        r#"{{"timestamp":{now_ms},"action":"ALLOW","httpRequest":{{"clientIp":"203.0.113.7","uri":"/","httpMethod":"GET"}}}}"#
    );
    std::fs::write(logs.join("waf.log"), record + "\n").unwrap();
    policy_reading(dir, &logs, schedule, port)
}

/// `floodgate healthcheck` with `args`: exit code, stdout, stderr.
fn healthcheck(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(floodgate_bin())
        .arg("healthcheck")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until `port` accepts connections.
fn wait_for_listener(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_cycles_on_schedule_reports_health_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = daemon_policy(dir.path(), "* * * * * *", port);
    let daemon = Command::new(floodgate_bin())
        .args(["run", "--config", policy.to_str().unwrap()])
        .current_dir(dir.path())
        .env("FLOODGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for the first scheduled cycle to finish.
    let metrics = metrics_once(port, "successful cycle", |body| {
        !body.contains("floodgate_responder_cycles_total{result=\"success\"} 0")
    });
    assert!(
        metrics.contains("# TYPE floodgate_responder_cycles_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("floodgate_responder_last_success_timestamp_seconds"),
        "{metrics}"
    );
    let (status, body) = get(port, "/healthz").unwrap();
    assert!(status.contains("200"), "{status}: {body}");
    assert!(body.starts_with("ok: last cycle succeeded"), "{body}");
    assert!(
        dir.path().join("state/ledger.json").exists(),
        "a cycle saved the ledger"
    );
    let (status, _) = get(port, "/nothing").unwrap();
    assert!(status.contains("404"));

    // The health check the container and Kubernetes probes run: the URL
    // from the policy's listen, or given.
    let (code, out, err) = healthcheck(&["--config", policy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ok: last cycle succeeded"), "{out}");
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(healthcheck(&["--url", &url]).0, Some(0));

    let terminated = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let output = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(
        log.contains("responder daemon started") && log.contains("responder daemon stopped"),
        "{log}"
    );

    let (code, _, err) = healthcheck(&["--url", &url, "--timeout-seconds", "2"]);
    assert_eq!(code, Some(1), "nothing listens any more");
    assert!(
        err.contains(&url) && err.contains("Connection refused"),
        "{err}"
    );
}

#[test]
fn healthcheck_fails_until_a_cycle_has_succeeded_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A yearly schedule: no cycle runs during the test.
    let policy = daemon_policy(dir.path(), "0 0 0 1 1 *", port);
    let mut daemon = Command::new(floodgate_bin())
        .args(["run", "--config", policy.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_listener(port);
    let (code, out, err) = healthcheck(&["--config", policy.to_str().unwrap()]);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("answered 503") && err.contains("unhealthy: no cycle has finished yet"),
        "{err}"
    );

    let (code, _, err) = healthcheck(&["--url", "https://127.0.0.1:1/healthz"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("use an http:// URL"), "{err}");
}

#[test]
fn a_stalled_log_feed_makes_the_daemon_unhealthy_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The sample logs end on 2026-11-20: every window since is empty.
    let policy = policy_reading(
        dir.path(),
        &workspace_root().join("examples/logs"),
        "* * * * * *",
        port,
    );
    let mut daemon = spawn_daemon(dir.path(), &policy);
    let metrics = metrics_once(port, "stale cycle", |body| {
        body.contains("floodgate_responder_cycles_total{result=\"stale\"}")
            && !body.contains("floodgate_responder_cycles_total{result=\"stale\"} 0")
    });
    let health = get(port, "/healthz");
    let (code, _, err) = healthcheck(&["--config", policy.to_str().unwrap()]);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        metrics.contains("floodgate_responder_source_stale 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("floodgate_responder_cycles_total{result=\"success\"} 0"),
        "{metrics}"
    );
    let (status, body) = health.unwrap();
    assert!(status.contains("503"), "{status}: {body}");
    assert!(body.contains("is the log feed stalled?"), "{body}");
    assert_eq!(code, Some(1));
    assert!(err.contains("log feed stalled"), "{err}");
}
