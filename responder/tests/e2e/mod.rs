//! End to end: the real `floodgate` binary, run the way a user runs it,
//! against moto, Redis, the Cloudflare fake and the committed samples.

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
