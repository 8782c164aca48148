//! The ledger: every block the responder has made, with its tier, its
//! expiry and the offender's history, so blocks outlive the process and
//! repeat offenders escalate.
//!
//! - [`file`]: a JSON file under a state directory, written atomically.
//!
//! A block is active while `now < expires_at`; the first run after
//! `expires_at` removes it from the IP sets. Inactive entries stay as
//! history for [`HISTORY_DAYS`], so an offender who returns is blocked for
//! longer (the tier's escalation).
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::ledger::{LedgerEntry, LedgerState};
//!
//! let mut state = LedgerState::default();
//! let entry = LedgerEntry {
//!     net: "203.0.113.66/32".parse().unwrap(),
//!     tier: "block".into(),
//!     first_seen_ms: 0,
//!     last_seen_ms: 0,
//!     blocked_at_ms: 0,
//!     expires_at_ms: 900_000,
//!     offences: 1,
//!     requests: 2400,
//!     source: "eu-west-1/aws-waf-logs-app".into(),
//!     reason: "2400 requests in 300 s".into(),
//!     suppressed_until_ms: None,
//! };
//! state.entries.insert(entry.net, entry);
//! assert_eq!(state.active(899_999).count(), 1);
//! assert_eq!(state.active(900_000).count(), 0);
//! ```

pub mod file;

use std::collections::BTreeMap;
use std::future::Future;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// How long an expired block is remembered, for escalation.
pub const HISTORY_DAYS: i64 = 30;

/// One blocked (or formerly blocked) address or range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The address (as a /32 or /128) or range.
    pub net: IpNet,
    /// The tier that blocked it last.
    pub tier: String,
    /// When it was first seen offending, ms since the epoch.
    pub first_seen_ms: i64,
    /// When it was last seen offending.
    pub last_seen_ms: i64,
    /// When its current (or last) block started.
    pub blocked_at_ms: i64,
    /// When its block ends; active while now is before it.
    pub expires_at_ms: i64,
    /// How many separate blocks it has earned; drives escalation.
    pub offences: u32,
    /// Requests in the tier's window when last seen: how active it is.
    pub requests: u32,
    /// Where it was seen: region and log group, or `manual`.
    pub source: String,
    /// Why, for people: requests and window, or the operator's words.
    pub reason: String,
    /// After a manual unblock: detection may not block it again before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_until_ms: Option<i64>,
}

impl LedgerEntry {
    /// Whether the block is in force at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// Whether an operator's unblock still keeps detection from blocking it.
    pub fn is_suppressed(&self, now_ms: i64) -> bool {
        self.suppressed_until_ms.is_some_and(|until| now_ms < until)
    }
}

/// Everything the ledger holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Bumped on every save; a shared backend uses it to refuse stale writes.
    pub version: u64,
    /// Entries by address or range.
    pub entries: BTreeMap<IpNet, LedgerEntry>,
    /// When the last plan was made, ms since the epoch: blocks that ended
    /// since are reported as expired.
    pub last_run_ms: Option<i64>,
}

impl LedgerState {
    /// The blocks in force at `now_ms`.
    pub fn active(&self, now_ms: i64) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.values().filter(move |e| e.is_active(now_ms))
    }
}

/// Why the ledger could not be read or written. A ledger that cannot be
/// read is an error, never an empty ledger: starting empty would unblock
/// every active attacker.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing failed.
    #[error("ledger {path}: {source}")]
    Io {
        /// The file or table.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored ledger is not one this version understands.
    #[error(
        "ledger {path} is corrupt ({message}); restore it from backup or move it aside to start empty"
    )]
    Corrupt {
        /// The file or table.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the ledger is kept.
pub trait Ledger {
    /// The stored state; an empty one when nothing was ever saved.
    fn load(&self) -> impl Future<Output = Result<LedgerState, LedgerError>> + Send;
    /// Replaces the stored state, all or nothing.
    fn save(&self, state: &LedgerState) -> impl Future<Output = Result<(), LedgerError>> + Send;
}
