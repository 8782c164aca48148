//! The lease: which responder of a primary/standby pair may write to the
//! targets and the ledger.
//!
//! The lease is one record in a shared store ([`dynamodb`]). Every change
//! is a compare-and-swap on its `revision`, so two responders that read the
//! same record cannot both change it. A cycle calls [`acquire`] before it
//! applies:
//!
//! - nobody holds it, or the holder's lease has lapsed: take it, with a new
//!   `fence` (the fencing token the ledger's writes are checked against);
//! - we hold it: renew it for another `ttl`;
//! - a standby holds it and a primary is back: the primary asks for it
//!   (`handback_to`); the standby releases it at its next cycle instead of
//!   renewing, and keeps away from it while the request is fresh;
//! - nobody has ever held it: a primary takes it; a standby reserves it
//!   for a primary ([`AWAITING_PRIMARY`]) and takes it only if none has
//!   come a lease period later, so a fresh pair has one writer from the
//!   start;
//! - otherwise wait, and only plan.
//!
//! A holder that stops gracefully [`release`]s the lease, so the other
//! takes over at its next cycle rather than after `ttl + skew`.
//!
//! Each clock is off from the true time by at most `skew`. A holder
//! believes it holds the lease only until `expires_at - skew` by its own
//! clock, and a taker waits until `expires_at + skew` by its own, so their
//! beliefs never overlap (the `lease_model` property test plays arbitrary
//! interleavings of this, and fails if either margin is dropped).
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::lease::{Contender, next_record};
//! use floodgate_rules::policy::Role;
//!
//! let primary = Contender { holder_id: "primary", role: Role::Primary, ttl_ms: 180_000, skew_ms: 5_000 };
//! // Nobody holds the lease: the primary takes it, with the first fence.
//! let taken = next_record(None, &primary, 1_000).unwrap();
//! assert_eq!((taken.holder.as_str(), taken.fence, taken.expires_at_ms), ("primary", 1, 181_000));
//! assert!(primary.holds(&taken, 1, 175_999));
//! assert!(!primary.holds(&taken, 1, 176_000), "it stops `skew` early");
//! ```

pub mod dynamodb;

use std::future::Future;

use floodgate_rules::policy::Role;

use crate::clock::{Clock, unix_ms};
use crate::sink::WriteGuard;

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds (or last held) it; empty once released.
    pub holder: String,
    /// The holder's role.
    pub role: Role,
    /// Bumped on every take: writes made under an older fence are refused.
    pub fence: u64,
    /// When the lease ends, by the holder's clock, ms since the epoch.
    pub expires_at_ms: i64,
    /// A primary that asked a standby holder to hand the lease back.
    pub handback_to: Option<String>,
    /// When it asked, by its clock.
    pub handback_at_ms: i64,
    /// Bumped on every write; each write is conditional on it.
    pub revision: u64,
}

/// One responder competing for the lease.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    /// Its name in the lease.
    pub holder_id: &'a str,
    /// Primary or standby.
    pub role: Role,
    /// How long a take or renewal holds, in ms.
    pub ttl_ms: i64,
    /// How far any responder's clock may be from the true time, in ms.
    pub skew_ms: i64,
}

impl Contender<'_> {
    /// Whether, at `now_ms` by our clock, `record` is ours under `fence` with
    /// time left to write: a holder stops `skew` before the lease ends.
    pub fn holds(&self, record: &LeaseRecord, fence: u64, now_ms: i64) -> bool {
        record.holder == self.holder_id
            && record.fence == fence
            && now_ms.saturating_add(self.skew_ms) < record.expires_at_ms
    }

    /// Whether a lease held by someone else has certainly ended at `now_ms`
    /// by our clock, wherever between the clocks' bounds the holder is.
    fn has_lapsed(&self, record: &LeaseRecord, now_ms: i64) -> bool {
        record.holder.is_empty() || now_ms > record.expires_at_ms.saturating_add(self.skew_ms)
    }

    /// Whether a primary's handback request still keeps a standby away.
    fn reserved_for_primary(&self, record: &LeaseRecord, now_ms: i64) -> bool {
        self.role == Role::Standby
            && record
                .handback_to
                .as_deref()
                .is_some_and(|primary| primary != self.holder_id)
            && now_ms <= record.handback_at_ms + self.ttl_ms + self.skew_ms
    }
}

/// `handback_to` of a lease nobody has held yet, reserved by a standby for
/// whichever primary comes: the standby takes it only once a lease period
/// has passed without one.
pub const AWAITING_PRIMARY: &str = "a primary";

/// What `me` writes next, having read `current` at `now_ms`: a take, a
/// renewal, a release or a handback request; `None` to leave it and wait.
pub fn next_record(
    current: Option<&LeaseRecord>,
    me: &Contender<'_>,
    now_ms: i64,
) -> Option<LeaseRecord> {
    let take = |fence: u64, revision: u64| LeaseRecord {
        holder: me.holder_id.to_owned(),
        role: me.role,
        fence,
        expires_at_ms: now_ms + me.ttl_ms,
        handback_to: None,
        handback_at_ms: 0,
        revision,
    };
    let Some(current) = current else {
        if me.role == Role::Standby {
            // Never held: reserve it for a primary for one lease period, so
            // a fresh pair has one writer from the start.
            return Some(LeaseRecord {
                holder: String::new(),
                role: me.role,
                fence: 0,
                expires_at_ms: 0,
                handback_to: Some(AWAITING_PRIMARY.to_owned()),
                handback_at_ms: now_ms,
                revision: 1,
            });
        }
        return Some(take(1, 1));
    };
    let revision = current.revision + 1;
    if current.holder == me.holder_id {
        if me.role == Role::Standby && current.handback_to.is_some() {
            // Release, and leave the request so we keep away from it.
            return Some(LeaseRecord {
                holder: String::new(),
                expires_at_ms: 0,
                revision,
                ..current.clone()
            });
        }
        // Renew: the fence stays, so our writes stay valid. The role is
        // ours now, should we have restarted as the other one.
        return Some(LeaseRecord {
            role: me.role,
            expires_at_ms: now_ms + me.ttl_ms,
            handback_to: None,
            handback_at_ms: 0,
            revision,
            ..current.clone()
        });
    }
    if me.has_lapsed(current, now_ms) {
        if me.reserved_for_primary(current, now_ms) {
            return None;
        }
        return Some(take(current.fence + 1, revision));
    }
    if me.role == Role::Primary && current.role == Role::Standby {
        // Ask again every cycle, so the request stays fresh while we live.
        return Some(LeaseRecord {
            handback_to: Some(me.holder_id.to_owned()),
            handback_at_ms: now_ms,
            revision,
            ..current.clone()
        });
    }
    None
}

/// Why the lease could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("lease {table}: {message}")]
pub struct LeaseError {
    /// The table.
    pub table: String,
    /// What went wrong.
    pub message: String,
}

/// Where the lease record lives.
pub trait LeaseStore: Send + Sync {
    /// The record, read consistently; `None` when nobody ever took it.
    fn read(&self) -> impl Future<Output = Result<Option<LeaseRecord>, LeaseError>> + Send;
    /// Writes `next` if the stored record is still `expected` (by revision);
    /// `false` when someone else wrote first.
    fn replace(
        &self,
        expected: Option<&LeaseRecord>,
        next: &LeaseRecord,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send;
}

/// Where a cycle stands with the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// We hold it: apply, with writes fenced by `fence`.
    Holding {
        /// Our fencing token.
        fence: u64,
        /// When it ends, by our clock.
        expires_at_ms: i64,
    },
    /// Someone else holds it (or a primary has it reserved): only plan.
    Waiting {
        /// The holder, or the primary it is reserved for; empty if nobody.
        holder: String,
        /// When the holder's lease ends.
        expires_at_ms: i64,
    },
}

/// Tries this many read-and-swap rounds before waiting for the next cycle.
const ACQUIRE_ROUNDS: u32 = 3;

/// Takes, renews, releases or asks for the lease, as [`next_record`]
/// says, and tells where that leaves us.
pub async fn acquire(
    store: &impl LeaseStore,
    me: &Contender<'_>,
    now_ms: i64,
) -> Result<Standing, LeaseError> {
    let mut current = store.read().await?;
    for _ in 0..ACQUIRE_ROUNDS {
        let Some(next) = next_record(current.as_ref(), me, now_ms) else {
            break;
        };
        if store.replace(current.as_ref(), &next).await? {
            current = Some(next);
            break;
        }
        // Someone wrote between our read and our swap: look again.
        current = store.read().await?;
    }
    Ok(standing(current.as_ref(), me, now_ms))
}

/// Where `record` leaves `me` at `now_ms`.
fn standing(record: Option<&LeaseRecord>, me: &Contender<'_>, now_ms: i64) -> Standing {
    match record {
        Some(r) if me.holds(r, r.fence, now_ms) => Standing::Holding {
            fence: r.fence,
            expires_at_ms: r.expires_at_ms,
        },
        Some(r) => Standing::Waiting {
            holder: if r.holder.is_empty() {
                r.handback_to.clone().unwrap_or_default()
            } else {
                r.holder.clone()
            },
            expires_at_ms: r.expires_at_ms,
        },
        None => Standing::Waiting {
            holder: String::new(),
            expires_at_ms: 0,
        },
    }
}

/// Gives the lease up if `me` holds it (a graceful stop): the other
/// responder takes it at its next cycle instead of waiting for it to lapse.
/// Writes made under our fence stay refused after.
pub async fn release(store: &impl LeaseStore, me: &Contender<'_>) -> Result<bool, LeaseError> {
    let Some(current) = store.read().await? else {
        return Ok(false);
    };
    if current.holder != me.holder_id {
        return Ok(false);
    }
    store.replace(Some(&current), &released(&current)).await
}

/// `current` given up by its holder: free for the next taker at once, its
/// fence kept so the next take bumps it.
pub fn released(current: &LeaseRecord) -> LeaseRecord {
    LeaseRecord {
        holder: String::new(),
        expires_at_ms: 0,
        handback_to: None,
        handback_at_ms: 0,
        revision: current.revision + 1,
        ..current.clone()
    }
}

/// Asks, before each target write, whether the lease is still ours: read
/// afresh, same holder and fence, and time left by our clock.
pub struct LeaseGuard<S> {
    store: S,
    holder_id: String,
    role: Role,
    ttl_ms: i64,
    skew_ms: i64,
    fence: u64,
    clock: Box<dyn Clock>,
}

impl<S: LeaseStore> LeaseGuard<S> {
    /// A guard for `me`, holding the lease in `store` under `fence`.
    pub fn new(store: S, me: &Contender<'_>, fence: u64, clock: Box<dyn Clock>) -> Self {
        LeaseGuard {
            store,
            holder_id: me.holder_id.to_owned(),
            role: me.role,
            ttl_ms: me.ttl_ms,
            skew_ms: me.skew_ms,
            fence,
            clock,
        }
    }
}

impl<S: LeaseStore + 'static> WriteGuard for LeaseGuard<S> {
    async fn may_write(&self) -> Result<(), String> {
        let me = Contender {
            holder_id: &self.holder_id,
            role: self.role,
            ttl_ms: self.ttl_ms,
            skew_ms: self.skew_ms,
        };
        let record = self.store.read().await.map_err(|e| e.to_string())?;
        let now_ms = unix_ms(self.clock.now());
        match record {
            Some(record) if me.holds(&record, self.fence, now_ms) => Ok(()),
            Some(record) if record.holder == self.holder_id && record.fence == self.fence => Err(
                format!("the lease (fence {}) ends too soon to write", self.fence),
            ),
            _ => Err(format!(
                "the lease is no longer ours (fence {}); another responder has taken over",
                self.fence
            )),
        }
    }
}

/// The lease the policy's `[responder] lease` names, in the ledger's
/// DynamoDB region.
#[derive(Debug, Clone)]
pub struct ConfiguredLease {
    /// The lease item's table.
    pub store: dynamodb::DynamoDbLease,
    /// Our name in it.
    pub holder_id: String,
    /// Primary or standby.
    pub role: Role,
    /// Take and renewal length, ms.
    pub ttl_ms: i64,
    /// Clock skew bound, ms.
    pub skew_ms: i64,
}

impl ConfiguredLease {
    /// The policy's lease, or `None` when it has none (a lone responder).
    /// It lives in the region of the policy's DynamoDB `ledger`, and uses
    /// its client.
    pub fn from_policy(
        policy: &floodgate_rules::Policy,
        ledger: &crate::ledger::ConfiguredLedger,
    ) -> Option<Self> {
        let lease = policy.responder.lease.as_ref()?;
        // `floodgate check` refuses a lease without a DynamoDB ledger.
        let crate::ledger::ConfiguredLedger::DynamoDb(ledger) = ledger else {
            return None;
        };
        Some(ConfiguredLease {
            store: dynamodb::DynamoDbLease::new(ledger.client().clone(), &lease.table),
            holder_id: lease.holder_id.clone(),
            role: policy.responder.role,
            ttl_ms: i64::from(lease.ttl_seconds.get()) * 1000,
            skew_ms: i64::from(lease.max_clock_skew_seconds) * 1000,
        })
    }

    /// Us, as a contender.
    pub fn contender(&self) -> Contender<'_> {
        Contender {
            holder_id: &self.holder_id,
            role: self.role,
            ttl_ms: self.ttl_ms,
            skew_ms: self.skew_ms,
        }
    }

    /// [`acquire`] with our store and name.
    pub async fn acquire(&self, now_ms: i64) -> Result<Standing, LeaseError> {
        acquire(&self.store, &self.contender(), now_ms).await
    }

    /// Gives the lease up if we hold it; `true` when we did.
    pub async fn release(&self) -> Result<bool, LeaseError> {
        release(&self.store, &self.contender()).await
    }

    /// A guard that lets target writes through while `fence` is ours.
    pub fn guard(&self, fence: u64, clock: Box<dyn Clock>) -> LeaseGuard<dynamodb::DynamoDbLease> {
        LeaseGuard::new(self.store.clone(), &self.contender(), fence, clock)
    }

    /// The fence the ledger's saves are checked against.
    pub fn fence(&self, fence: u64) -> crate::ledger::dynamodb::Fence {
        crate::ledger::dynamodb::Fence {
            table: self.store.table().to_owned(),
            holder: self.holder_id.clone(),
            fence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 60_000;
    const SKEW: i64 = 5_000;

    fn contender(holder_id: &str, role: Role) -> Contender<'_> {
        Contender {
            holder_id,
            role,
            ttl_ms: TTL,
            skew_ms: SKEW,
        }
    }

    #[test]
    fn a_live_lease_is_renewed_by_its_holder_and_left_alone_by_a_standby() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        let held = next_record(None, &primary, 0).unwrap();
        assert_eq!(next_record(Some(&held), &standby, TTL), None);
        let renewed = next_record(Some(&held), &primary, 30_000).unwrap();
        assert_eq!(
            (renewed.fence, renewed.expires_at_ms, renewed.revision),
            (1, 90_000, 2)
        );
    }

    #[test]
    fn a_lease_never_held_waits_a_period_for_a_primary() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        // The standby comes first: it reserves the lease, holding nothing.
        let reserved = next_record(None, &standby, 0).unwrap();
        assert!(reserved.holder.is_empty());
        assert_eq!(reserved.handback_to.as_deref(), Some(AWAITING_PRIMARY));
        assert_eq!(next_record(Some(&reserved), &standby, TTL + SKEW), None);
        // A primary that comes within the period takes it, fence 1.
        let taken = next_record(Some(&reserved), &primary, TTL).unwrap();
        assert_eq!((taken.holder.as_str(), taken.fence), ("p", 1));
        // Without one, the standby takes it after the period.
        let taken = next_record(Some(&reserved), &standby, TTL + SKEW + 1).unwrap();
        assert_eq!((taken.holder.as_str(), taken.fence), ("s", 1));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        let held = next_record(None, &primary, 0).unwrap();
        let released = LeaseRecord {
            holder: String::new(),
            expires_at_ms: 0,
            revision: held.revision + 1,
            ..held.clone()
        };
        let taken = next_record(Some(&released), &standby, 1_000).unwrap();
        assert_eq!((taken.holder.as_str(), taken.fence), ("s", 2));
        assert!(standby.holds(&taken, 2, 1_000));
    }

    #[test]
    fn a_standby_takes_a_lapsed_lease_only_after_the_skew_margin() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        let held = next_record(None, &primary, 0).unwrap();
        assert_eq!(next_record(Some(&held), &standby, TTL + SKEW), None);
        let taken = next_record(Some(&held), &standby, TTL + SKEW + 1).unwrap();
        assert_eq!((taken.holder.as_str(), taken.fence), ("s", 2));
    }

    /// The standby of a pair whose primary never came: it took the lease
    /// a period after reserving it, at `T0` (fence 1).
    const T0: i64 = TTL + SKEW + 1;

    fn standby_took(standby: &Contender<'_>) -> LeaseRecord {
        let reserved = next_record(None, standby, 0).unwrap();
        next_record(Some(&reserved), standby, T0).unwrap()
    }

    #[test]
    fn a_returning_primary_gets_the_lease_back_without_an_overlap() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        let standby_holds = standby_took(&standby);
        // The primary asks; the standby still holds until its next cycle.
        let asked = next_record(Some(&standby_holds), &primary, T0 + 10_000).unwrap();
        assert_eq!(asked.handback_to.as_deref(), Some("p"));
        assert!(standby.holds(&asked, 1, T0 + 20_000));
        // The standby releases instead of renewing, and keeps away.
        let released = next_record(Some(&asked), &standby, T0 + 20_000).unwrap();
        assert!(!standby.holds(&released, 1, T0 + 20_000));
        assert_eq!(next_record(Some(&released), &standby, T0 + 30_000), None);
        // The primary takes it with a new fence.
        let taken = next_record(Some(&released), &primary, T0 + 30_000).unwrap();
        assert_eq!((taken.holder.as_str(), taken.fence), ("p", 2));
        assert_eq!(taken.handback_to, None);
    }

    #[test]
    fn a_stale_handback_request_no_longer_keeps_the_standby_away() {
        let primary = contender("p", Role::Primary);
        let standby = contender("s", Role::Standby);
        let standby_holds = standby_took(&standby);
        let asked = next_record(Some(&standby_holds), &primary, T0 + 10_000).unwrap();
        let released = next_record(Some(&asked), &standby, T0 + 20_000).unwrap();
        // The primary died again before taking it.
        let late = T0 + 10_000 + TTL + SKEW + 1;
        let retaken = next_record(Some(&released), &standby, late).unwrap();
        assert_eq!((retaken.holder.as_str(), retaken.fence), ("s", 2));
    }
}
