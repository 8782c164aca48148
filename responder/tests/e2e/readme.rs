//! The README's commands, run as written (issue 35): every command line of
//! its `sh` blocks runs here with the built binary in place of `cargo run`
//! or the installed `floodgate`, from a directory laid out as the
//! repository is, or is named below with the test that covers it instead.
//! A command added to the README without either fails this test.

use std::path::Path;
use std::process::Command;

use super::{floodgate_bin, stderr, workspace_root};

/// Commands not run here, and why.
const NOT_RUN_HERE: &[(&str, &str)] = &[
    ("scripts/test.sh", "the test command itself"),
    (
        "cargo install --locked --path responder",
        "installs the binary these tests already built",
    ),
    (
        "floodgate run --config floodgate.toml",
        "a daemon on AWS: e2e::ha_e2e runs primary and standby against moto",
    ),
    (
        "floodgate run --config floodgate.toml --role standby --holder-id standby-us-west-2",
        "a daemon on AWS: e2e::ha_e2e runs primary and standby against moto",
    ),
];

/// How the README calls the binary.
const LAUNCHERS: &[&str] = &[
    "cargo run --release -p floodgate-responder --",
    "cargo run -p floodgate-responder --",
    "floodgate",
];

/// Every command line of the README's `sh` blocks, without comments.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        let command = line.split(" #").next().unwrap().trim();
        if in_block && !command.is_empty() && !command.starts_with('#') {
            commands.push(command.to_owned());
        }
    }
    commands
}

#[test]
fn every_readme_command_runs_as_written() {
    let commands = readme_commands();
    assert!(commands.len() >= 5, "{commands:?}");
    // The repository's layout: the examples beside the working directory.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    for command in &commands {
        if NOT_RUN_HERE.iter().any(|(skipped, _)| skipped == command) {
            continue;
        }
        let args = LAUNCHERS
            .iter()
            .find_map(|launcher| command.strip_prefix(launcher))
            .unwrap_or_else(|| {
                panic!("README command {command:?}: run it here or say why not in NOT_RUN_HERE")
            });
        assert!(
            !args.contains(['"', '\'', '$', '|']),
            "{command}: plain words only"
        );
        let output = Command::new(floodgate_bin())
            .args(args.split_whitespace())
            .current_dir(dir.path())
            .env_remove("FLOODGATE_CONFIG")
            .env_remove("FLOODGATE_LOG")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{command}: {}",
            stderr(&output)
        );
        assert!(!output.stdout.is_empty(), "{command} printed nothing");
    }
    // The quick start's cycle wrote its sets where the README says, under the
    // working directory (relative paths are the working directory's).
    let sets = dir.path().join("state/ip-sets/floodgate-blocked-v4.json");
    assert!(sets.exists(), "{}", sets.display());
    assert!(!Path::new(&workspace_root().join("examples/state")).exists());
}

#[test]
fn every_command_not_run_here_is_still_in_the_readme() {
    let commands = readme_commands();
    for (skipped, why) in NOT_RUN_HERE {
        assert!(
            commands.iter().any(|c| c == skipped),
            "{skipped} ({why}) is no longer in the README: drop it from NOT_RUN_HERE"
        );
    }
}
