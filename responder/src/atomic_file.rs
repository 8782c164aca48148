//! Writing a state file so a crash leaves either the old file or the new
//! one, never a mix: a temporary file in the same directory, synced, renamed
//! over the old one, then the directory synced.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Replaces `dir/name` with `bytes`, creating `dir` if needed.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(name))?;
        // The rename is durable once the directory is synced.
        File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}
