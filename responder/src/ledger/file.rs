//! The ledger as one JSON file under a state directory.
//!
//! Saving writes a temporary file in the same directory, syncs it, renames
//! it over the ledger and syncs the directory: a crash at any point leaves
//! either the old ledger or the new one, never a mix.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Ledger, LedgerError, LedgerState};

/// File name of the ledger inside the state directory.
pub const LEDGER_FILE: &str = "ledger.json";

/// A ledger kept in `<state_dir>/ledger.json`.
#[derive(Debug, Clone)]
pub struct FileLedger {
    dir: PathBuf,
}

impl FileLedger {
    /// A ledger under `state_dir` (created on first save).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        FileLedger {
            dir: state_dir.into(),
        }
    }

    /// The ledger file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LEDGER_FILE)
    }

    fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
        move |source| LedgerError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// [`Ledger::load`], synchronously.
    pub fn load_blocking(&self) -> Result<LedgerState, LedgerError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LedgerState::default()),
            Err(e) => return Err(Self::io_error(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| LedgerError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// [`Ledger::save`], synchronously. The version check guards against a
    /// concurrent `floodgate block` on the same host between a cycle's load
    /// and save; it is not a lock, which is what the DynamoDB ledger is for.
    pub fn save_blocking(&self, state: &LedgerState) -> Result<(), LedgerError> {
        let stored = self.load_blocking()?.version;
        let expected = state.version.saturating_sub(1);
        if stored != expected {
            return Err(LedgerError::Conflict {
                path: self.path().display().to_string(),
                stored,
                expected,
            });
        }
        let bytes = serde_json::to_vec_pretty(state).expect("the ledger serializes");
        crate::atomic_file::write_atomically(&self.dir, LEDGER_FILE, &bytes)
            .map_err(Self::io_error(&self.path()))
    }
}

impl Ledger for FileLedger {
    async fn load(&self) -> Result<LedgerState, LedgerError> {
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || ledger.load_blocking())
            .await
            .expect("ledger reader panicked")
    }

    async fn save(&self, state: &LedgerState) -> Result<(), LedgerError> {
        let (ledger, state) = (self.clone(), state.clone());
        tokio::task::spawn_blocking(move || ledger.save_blocking(&state))
            .await
            .expect("ledger writer panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerEntry;

    fn entry(net: &str, expires_at_ms: i64) -> LedgerEntry {
        LedgerEntry {
            net: net.parse().unwrap(),
            tier: "block".into(),
            first_seen_ms: 1,
            last_seen_ms: 2,
            blocked_at_ms: 3,
            expires_at_ms,
            offences: 2,
            requests: 2500,
            addresses: 1,
            source: "eu-west-1/aws-waf-logs-app".into(),
            reason: "test".into(),
            suppressed_until_ms: None,
        }
    }

    #[test]
    fn saves_and_loads_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().join("state"));
        assert_eq!(ledger.load_blocking().unwrap(), LedgerState::default());
        let mut state = LedgerState {
            version: 1,
            ..LedgerState::default()
        };
        for e in [entry("203.0.113.66/32", 10), entry("2001:db8:bad::/64", 20)] {
            state.entries.insert(e.net, e);
        }
        ledger.save_blocking(&state).unwrap();
        assert_eq!(ledger.load_blocking().unwrap(), state);
        // A save planned from the old version is refused.
        let err = ledger.save_blocking(&state).unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Conflict {
                    stored: 1,
                    expected: 0,
                    ..
                }
            ),
            "{err}"
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LEDGER_FILE]);
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path());
        let mut old = LedgerState {
            version: 1,
            ..LedgerState::default()
        };
        old.entries
            .insert("192.0.2.1/32".parse().unwrap(), entry("192.0.2.1/32", 5));
        ledger.save_blocking(&old).unwrap();
        // A writer that died mid-write leaves only its temporary file.
        fs::write(
            dir.path().join(".ledger.json.999.tmp"),
            b"{\"version\": 8, \"entr",
        )
        .unwrap();
        assert_eq!(ledger.load_blocking().unwrap(), old);
    }

    #[test]
    fn a_corrupt_ledger_is_an_error_not_an_empty_ledger() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LEDGER_FILE), b"{ not json").unwrap();
        let err = FileLedger::new(dir.path()).load_blocking().unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { .. }));
        assert!(err.to_string().contains("restore it from backup"), "{err}");
    }
}
