//! Reading the policy file: the I/O half of loading a policy, in front of
//! the pure validation in `floodgate-rules`.
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::policy_file::{load, LoadError};
//! use time::macros::date;
//!
//! let err = load("no/such/floodgate.toml".as_ref(), date!(2026 - 11 - 22)).unwrap_err();
//! assert!(matches!(err, LoadError::Read { .. }));
//! assert!(err.to_string().starts_with("cannot read policy file no/such/floodgate.toml"));
//! ```

use std::path::{Path, PathBuf};

use floodgate_rules::{LoadedPolicy, Policy, PolicyError};
use time::Date;

/// Why a policy did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}{}", path.display(), hint(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid; every error is listed.
    #[error("{0}")]
    Invalid(#[from] PolicyError),
}

/// How to name a policy, when there was none where we looked.
fn hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            "; name the policy with --config FILE or FLOODGATE_CONFIG (examples/floodgate.toml is a start)"
        }
        _ => "",
    }
}

/// Reads and validates the policy at `path`, evaluating expiry on `today`.
pub fn load(path: &Path, today: Date) -> Result<LoadedPolicy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Policy::from_toml(
        &text,
        &path.display().to_string(),
        today,
    )?)
}
