//! The ledger: every block the responder has made, with its tier, its
//! expiry and the offender's history, so blocks outlive the process and
//! repeat offenders escalate.
//!
//! - [`file`]: a JSON file under a state directory, written atomically;
//! - [`dynamodb`]: items in a DynamoDB table, shared by a primary and a
//!   standby responder and by operators.
//!
//! Saves are conditional on the version: [`Ledger::save`] refuses a state
//! planned from an older ledger than the stored one, and [`update`] re-reads
//! and plans again, so no writer's changes are lost.
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
//!     addresses: 1,
//!     source: "eu-west-1/aws-waf-logs-app".into(),
//!     reason: "2400 requests in 300 s".into(),
//!     suppressed_until_ms: None,
//! };
//! state.entries.insert(entry.net, entry);
//! assert_eq!(state.active(899_999).count(), 1);
//! assert_eq!(state.active(900_000).count(), 0);
//! ```

pub mod dynamodb;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};
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
    /// Distinct addresses seen in it when last seen (1 for an address, or
    /// for a block made by hand).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub addresses: u32,
    /// Where it was seen: region and log group, or `manual`.
    pub source: String,
    /// Why, for people: requests and window, or the operator's words.
    pub reason: String,
    /// After a manual unblock: detection may not block it again before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_until_ms: Option<i64>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
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
    /// Targets (by label) whose sets could not be read when the ledger was
    /// adopting what the sets held: a later cycle reads and adopts from
    /// them, and until then nothing is written to them, so no block they
    /// hold is removed as unknown.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unadopted: BTreeSet<String>,
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
    /// The store refused or failed the request.
    #[error("ledger {path}: {message}")]
    Store {
        /// The table.
        path: String,
        /// What it said.
        message: String,
    },
    /// Someone saved since this state was loaded.
    #[error(
        "ledger {path} changed since it was read (stored version {stored}, this save expects {expected}); read it again"
    )]
    Conflict {
        /// The file or table.
        path: String,
        /// The version stored now.
        stored: u64,
        /// The version the save was planned from.
        expected: u64,
    },
    /// The lease this save was fenced with is no longer ours.
    #[error(
        "ledger {path} not saved: the lease is no longer ours (fence {fence}); another responder has taken over"
    )]
    LeaseLost {
        /// The table.
        path: String,
        /// Our fencing token.
        fence: u64,
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
pub trait Ledger: Sync {
    /// The stored state; an empty one when nothing was ever saved.
    fn load(&self) -> impl Future<Output = Result<LedgerState, LedgerError>> + Send;
    /// Replaces the stored state, all or nothing, if the stored version is
    /// still the one `state` was planned from (`state.version - 1`; a plan
    /// bumps the version). Otherwise [`LedgerError::Conflict`].
    fn save(&self, state: &LedgerState) -> impl Future<Output = Result<(), LedgerError>> + Send;
}

/// How many times [`update`] plans against a fresh ledger before it gives
/// up: each conflict means another writer saved in the meantime.
pub const UPDATE_ATTEMPTS: u32 = 4;

/// Why [`update`] did not save.
#[derive(Debug)]
pub enum UpdateError<T, E> {
    /// The attempt itself failed; nothing was saved.
    Attempt(E),
    /// The attempt ran (its result is here) but its state was not saved:
    /// another error than a conflict, or conflicts [`UPDATE_ATTEMPTS`] times.
    Save(LedgerError, T),
}

/// Runs `attempt` on `state` (the ledger as loaded), saves the state it
/// returns and hands back its result. When the save conflicts, it loads the
/// ledger again and runs `attempt` on that, up to [`UPDATE_ATTEMPTS`] times.
/// `attempt` may have side effects (writing the targets); they must be safe
/// to repeat with the fresher ledger.
pub async fn update<L, T, E, Fut>(
    ledger: &L,
    mut state: LedgerState,
    mut attempt: impl FnMut(LedgerState) -> Fut,
) -> Result<T, UpdateError<T, E>>
where
    L: Ledger,
    Fut: Future<Output = Result<(LedgerState, T), E>>,
{
    let mut tries = 1;
    loop {
        let (next, result) = attempt(state).await.map_err(UpdateError::Attempt)?;
        match ledger.save(&next).await {
            Ok(()) => return Ok(result),
            Err(LedgerError::Conflict {
                stored, expected, ..
            }) if tries < UPDATE_ATTEMPTS => {
                tracing::warn!(
                    stored,
                    expected,
                    "the ledger changed while this cycle ran; planning again"
                );
                tries += 1;
                state = match ledger.load().await {
                    Ok(state) => state,
                    Err(error) => return Err(UpdateError::Save(error, result)),
                };
            }
            Err(error) => return Err(UpdateError::Save(error, result)),
        }
    }
}

/// The ledger the policy's `[responder] ledger` names.
#[derive(Debug, Clone)]
pub enum ConfiguredLedger {
    /// `backend = "file"` (the default): `<state_dir>/ledger.json`.
    File(file::FileLedger),
    /// `backend = "dynamodb"`.
    DynamoDb(dynamodb::DynamoDbLedger),
}

impl ConfiguredLedger {
    /// The policy's ledger, with an AWS client from the standard
    /// credential chain for a DynamoDB one.
    pub async fn from_policy(policy: &floodgate_rules::Policy) -> Self {
        use floodgate_rules::policy::LedgerStore;
        match &policy.responder.ledger {
            LedgerStore::File => {
                ConfiguredLedger::File(file::FileLedger::new(&policy.responder.state_dir))
            }
            LedgerStore::DynamoDb(table) => {
                let client = crate::aws::dynamodb_client(
                    table.region.as_str(),
                    table.endpoint_url.as_deref(),
                )
                .await;
                ConfiguredLedger::DynamoDb(dynamodb::DynamoDbLedger::new(client, &table.table))
            }
        }
    }

    /// Where it is, for people: a file path or `dynamodb://<table>`.
    pub fn label(&self) -> String {
        match self {
            ConfiguredLedger::File(ledger) => ledger.path().display().to_string(),
            ConfiguredLedger::DynamoDb(ledger) => ledger.label(),
        }
    }

    /// Saves only while `fence` holds the lease (a DynamoDB ledger; the
    /// policy allows a lease with no other).
    pub fn fenced_by(self, fence: dynamodb::Fence) -> Self {
        match self {
            ConfiguredLedger::DynamoDb(ledger) => {
                ConfiguredLedger::DynamoDb(ledger.fenced_by(fence))
            }
            file => file,
        }
    }
}

impl Ledger for ConfiguredLedger {
    async fn load(&self) -> Result<LedgerState, LedgerError> {
        match self {
            ConfiguredLedger::File(ledger) => ledger.load().await,
            ConfiguredLedger::DynamoDb(ledger) => ledger.load().await,
        }
    }

    async fn save(&self, state: &LedgerState) -> Result<(), LedgerError> {
        match self {
            ConfiguredLedger::File(ledger) => ledger.save(state).await,
            ConfiguredLedger::DynamoDb(ledger) => ledger.save(state).await,
        }
    }
}
