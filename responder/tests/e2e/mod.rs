//! End to end: the real `floodgate` binary, run the way a user runs it,
//! against moto, Redis, the Cloudflare fake and the committed samples.

mod accounts;
mod cli_daemon;
mod cli_policy;
mod cli_run;
mod cli_top;
mod cloudflare_e2e;
mod dashboards;
mod golden_reports;
mod ha_e2e;
mod infra;
mod json_schemas;
mod kubernetes;
mod moto_e2e;
mod readme;
mod s3_e2e;
mod why;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use floodgate_tests::*;

/// The `floodgate` binary cargo built for these tests.
///
/// It has the features of this package's dev-dependencies too (the SDKs'
/// `test-util` turns on serde_json's `preserve_order`); the responder
/// writes its JSON with sorted keys whatever the features (`json_text`), so
/// its output is the one users get.
pub fn floodgate_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_floodgate"))
}

/// examples/local.toml (the embedded default) with its log paths pointing
/// at `logs` and `extra` appended, written to `dir/local.toml`.
pub fn local_policy(dir: &Path, logs: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples/local.toml"))
        .expect("examples/local.toml is readable");
    let text = text.replace(
        "paths = [\"examples/logs\"]",
        &format!("paths = [\"{}\"]", logs.display()),
    ) + extra;
    let path = dir.join("local.toml");
    std::fs::write(&path, text).expect("the policy is written");
    path
}

/// Runs `floodgate` with `args` from the workspace root.
pub fn floodgate(args: &[&str]) -> Output {
    Command::new(floodgate_bin())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("floodgate runs")
}

/// A command's standard output, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// GET `path` on a daemon on loopback: the status line and the body.
pub fn daemon_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// examples/local.toml in `dir`, reading `logs`, on `schedule`, listening
/// on `port`.
pub fn daemon_policy_reading(
    dir: &std::path::Path,
    logs: &std::path::Path,
    schedule: &str,
    port: u16,
) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples/local.toml"))
        .unwrap()
        .replace(
            "paths = [\"examples/logs\"]",
            &format!("paths = [\"{}\"]", logs.display()),
        )
        .replace(
            "[responder]\n",
            &format!("[responder]\nschedule = \"{schedule}\"\nlisten = \"127.0.0.1:{port}\"\n"),
        );
    let policy = dir.join("local.toml");
    std::fs::write(&policy, text).unwrap();
    policy
}

/// `floodgate run --config <policy>` as a daemon in `dir`, its output
/// discarded.
pub fn spawn_daemon(dir: &Path, policy: &Path) -> std::process::Child {
    Command::new(floodgate_bin())
        .args(["run", "--config", policy.to_str().unwrap()])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls a daemon's `/metrics` until `ready` accepts them (a minute at
/// most, else the test fails saying it saw no `what`).
pub fn metrics_once(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((status, body)) = daemon_get(port, "/metrics")
            && status.contains("200")
            && ready(&body)
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
