//! Puts the git commit into `floodgate --version`: from FLOODGATE_GIT_COMMIT
//! when set (a container build without .git passes it as a build argument),
//! else from `git`, else "unknown" (a source tarball).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FLOODGATE_GIT_COMMIT");
    let git_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    // A new commit moves the branch the HEAD file names, not HEAD itself.
    for watched in ["HEAD", "packed-refs"] {
        println!("cargo:rerun-if-changed={}", git_dir.join(watched).display());
    }
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
    }
    let commit = std::env::var("FLOODGATE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    let short: String = commit.trim().chars().take(12).collect();
    println!(
        "cargo:rustc-env=FLOODGATE_VERSION={} (commit {short})",
        env!("CARGO_PKG_VERSION")
    );
}

fn git_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
