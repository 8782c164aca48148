//! Helpers for the workspace's end-to-end tests: they run the real
//! `floodgate` binary the way a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
}

/// Path to the `floodgate` binary, built once per test process with the
/// same cargo that runs the tests.
pub fn floodgate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "floodgate-responder",
                "--bin",
                "floodgate",
                "--message-format",
                "json",
            ])
            .current_dir(workspace_root())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building floodgate failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The last compiler-artifact message for the binary names its path.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|message| message.get("executable")?.as_str().map(PathBuf::from))
            .next_back()
            .expect("cargo reported the floodgate executable")
    })
}

/// Runs `floodgate` with `args` from the workspace root.
pub fn floodgate(args: &[&str]) -> Output {
    Command::new(floodgate_bin())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("floodgate runs")
}
