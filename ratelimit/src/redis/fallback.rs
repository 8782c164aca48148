//! Checks answered without Redis: why, how many, and a warning that an
//! outage cannot turn into a flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Counter;

use super::FALLBACK_TOTAL;

/// Why a check was decided locally: the `reason` label of [`FALLBACK_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Not connected yet, or reconnecting after a failure whose kind is
    /// one of the others.
    Connecting,
    /// No answer within the check's budget.
    Timeout,
    /// The connection was refused, reset or closed.
    Refused,
    /// A standalone client was answered `MOVED`/`ASK`: the server is a
    /// cluster node.
    Moved,
    /// A cluster client met a server that is not in cluster mode.
    NotCluster,
    /// The cluster has no primary for the key's slot (a failover under way).
    ClusterDown,
    /// The TLS handshake failed: a certificate, a CA or a host name.
    Tls,
    /// The server refused the credentials or the command (`WRONGPASS`,
    /// `NOAUTH`, `NOPERM`).
    Auth,
    /// The key's node failed a moment ago; it is asked again shortly.
    NodeBackoff,
    /// Any other error.
    Error,
}

impl Reason {
    const ALL: [Reason; 10] = [
        Reason::Connecting,
        Reason::Timeout,
        Reason::Refused,
        Reason::Moved,
        Reason::NotCluster,
        Reason::ClusterDown,
        Reason::Tls,
        Reason::Auth,
        Reason::NodeBackoff,
        Reason::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Connecting => "connecting",
            Reason::Timeout => "timeout",
            Reason::Refused => "refused",
            Reason::Moved => "moved",
            Reason::NotCluster => "not_cluster",
            Reason::ClusterDown => "cluster_down",
            Reason::Tls => "tls",
            Reason::Auth => "auth",
            Reason::NodeBackoff => "node_backoff",
            Reason::Error => "error",
        }
    }

    /// Its place in [`Reason::ALL`], which lists the variants in order.
    fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: u8) -> Reason {
        Reason::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or(Reason::Error)
    }

    pub fn to_index(self) -> u8 {
        self.index() as u8
    }
}

/// One counter and one warning clock per reason.
pub(crate) struct Fallbacks {
    counters: [Counter; Reason::ALL.len()],
    /// Per reason: checks since the last warning, and when it was logged
    /// (milliseconds since `started`, 0 for never).
    unreported: [AtomicU64; Reason::ALL.len()],
    warned_at: [AtomicU64; Reason::ALL.len()],
    started: Instant,
}

/// At most one warning per reason in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Fallbacks {
    pub fn new() -> Fallbacks {
        Fallbacks {
            counters: Reason::ALL.map(|r| metrics::counter!(FALLBACK_TOTAL, "reason" => r.name())),
            unreported: Default::default(),
            warned_at: Default::default(),
            started: Instant::now(),
        }
    }

    /// Counts one check decided locally, and warns at most once per
    /// [`WARN_EVERY`] per reason, with how many were decided since.
    pub fn count(&self, reason: Reason, endpoint: &str) {
        let index = reason.index();
        self.counters[index].increment(1);
        self.unreported[index].fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned_at[index].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self.warned_at[index]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let checks = self.unreported[index].swap(0, Ordering::Relaxed);
            tracing::warn!(
                reason = reason.name(),
                endpoint,
                checks,
                "rate-limit checks decided locally at quota / expected_instances, without Redis"
            );
        }
    }
}

/// The number of Redis Cluster slots.
pub(crate) const SLOTS: usize = 16_384;

/// How long a slot whose node failed is decided locally before Redis is
/// asked again: a dead node then costs one check's budget per slot per
/// interval, not one per request.
pub(crate) const NODE_BACKOFF: Duration = Duration::from_millis(100);

/// Per cluster slot, until when checks skip Redis (the layer's clock, in
/// nanoseconds): a failing node falls back alone, the others stay shared.
pub(crate) struct SlotBackoff {
    until: Box<[AtomicU64]>,
}

impl SlotBackoff {
    pub fn new() -> SlotBackoff {
        SlotBackoff {
            until: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `slot` is backing off at `now`.
    pub fn active(&self, slot: u16, now: u64) -> bool {
        self.until[usize::from(slot) % SLOTS].load(Ordering::Relaxed) > now
    }

    /// `slot`'s node failed at `now`.
    pub fn failed(&self, slot: u16, now: u64) {
        let until = now.saturating_add(NODE_BACKOFF.as_nanos() as u64);
        self.until[usize::from(slot) % SLOTS].store(until, Ordering::Relaxed);
    }

    /// `slot`'s node answered.
    pub fn answered(&self, slot: u16) {
        let entry = &self.until[usize::from(slot) % SLOTS];
        if entry.load(Ordering::Relaxed) != 0 {
            entry.store(0, Ordering::Relaxed);
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // `CLUSTER KEYSLOT` on Redis 7 for the same keys.
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("floodgate:{t:acme}"), slot("t:acme"));
        assert_eq!(slot("floodgate:{t:acme}:exports"), slot("t:acme"));
    }

    #[test]
    fn a_slot_backs_off_for_a_moment_then_asks_again() {
        let backoff = SlotBackoff::new();
        assert!(!backoff.active(7, 0));
        backoff.failed(7, 1_000);
        assert!(backoff.active(7, 1_001) && !backoff.active(8, 1_001));
        let after = 1_000 + NODE_BACKOFF.as_nanos() as u64;
        assert!(!backoff.active(7, after));
        backoff.failed(7, 1_000);
        backoff.answered(7);
        assert!(!backoff.active(7, 1_001));
    }

    #[test]
    fn reasons_round_trip_through_their_index() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_index(reason.to_index()), reason);
        }
    }
}
