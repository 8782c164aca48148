//! End to end: the real `floodgate` binary, run the way a user runs it,
//! against moto, Redis, the Cloudflare fake and the committed samples.

mod accounts;
mod cli_daemon;
mod cli_policy;
mod cli_run;
mod cli_top;
mod cloudflare_e2e;
mod dashboards;
mod fast_e2e;
mod golden_reports;
mod ha_e2e;
mod infra;
mod json_schemas;
mod kubernetes;
mod moto_e2e;
mod readme;
mod s3_e2e;
mod why;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// A running daemon and the run reports it has printed so far.
pub struct Daemon {
    name: &'static str,
    child: Child,
    reports: Arc<Mutex<Vec<Value>>>,
}

impl Daemon {
    /// `floodgate run --format json --config <policy>` in `dir`, with
    /// moto's credentials and `env`; its stderr in `dir/<name>.stderr`.
    pub fn start(dir: &Path, policy: &Path, name: &'static str) -> Daemon {
        Daemon::start_with(dir, policy, name, &[])
    }

    /// [`Daemon::start`] with more environment variables.
    pub fn start_with(
        dir: &Path,
        policy: &Path,
        name: &'static str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut child = Command::new(floodgate_bin())
            .args(["run", "--format", "json", "--config"])
            .arg(policy)
            .current_dir(dir)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .env("FLOODGATE_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for report in stream.into_iter::<Value>() {
                match report {
                    Ok(report) => sink.lock().unwrap().push(report),
                    Err(_) => break,
                }
            }
        });
        Daemon {
            name,
            child,
            reports,
        }
    }

    pub fn reports(&self) -> Vec<Value> {
        self.reports.lock().unwrap().clone()
    }

    /// Waits until some report satisfies `done`; returns it.
    pub fn wait_for(&self, what: &str, seconds: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(report) = self.reports().into_iter().find(|r| done(r)) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {seconds} s; reports: {:#?}",
                self.name,
                self.reports()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status must be 0.
    pub fn stop(mut self) -> Vec<Value> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert!(
            self.child.wait().unwrap().success(),
            "{} exits 0",
            self.name
        );
        std::thread::sleep(Duration::from_millis(200));
        self.reports()
    }
}
