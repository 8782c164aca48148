//! GCRA over several limits at once, checked without consuming.
//!
//! governor keeps one quota per limiter and charges a limiter as soon as it
//! admits (governor #15, #193), so a request refused by a plan's daily budget
//! would still have spent its per-second burst. Here all of a plan's limits
//! are tested against one state, and the state advances only when every limit
//! admits. The arithmetic is governor's: each limit is a [`Quota`], and its
//! theoretical arrival time (TAT) may run at most `burst × interval` ahead of
//! now.

use std::num::NonZeroU32;
use std::time::Duration;

use floodgate_rules::policy::{Limit, MAX_LIMITS_PER_PLAN};

/// The most limits one request is checked against: its plan's, and its
/// route class's.
pub(crate) const MAX_LIMITS_PER_REQUEST: usize = 2 * MAX_LIMITS_PER_PLAN;
use governor::Quota;

/// Nanoseconds per second.
pub(crate) const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The governor quota of a policy limit: `requests` per `per_seconds`,
/// bursts of `burst`.
///
/// # Examples
///
/// ```
/// use floodgate_ratelimit::quota;
/// use floodgate_rules::policy::Limit;
/// use std::num::NonZeroU32;
///
/// let n = |v| NonZeroU32::new(v).unwrap();
/// let q = quota(&Limit { requests: n(10), per_seconds: n(1), burst: n(20) });
/// assert_eq!(q.replenish_interval(), std::time::Duration::from_millis(100));
/// assert_eq!(q.burst_size().get(), 20);
/// ```
pub fn quota(limit: &Limit) -> Quota {
    let period = u128::from(limit.per_seconds.get()) * u128::from(NANOS_PER_SECOND);
    // At least one nanosecond: a limit can't replenish faster than the clock ticks.
    let interval = (period / u128::from(limit.requests.get())).max(1);
    let interval = Duration::from_nanos(u64::try_from(interval).unwrap_or(u64::MAX));
    Quota::with_period(interval)
        .expect("the interval is at least 1 ns")
        .allow_burst(limit.burst)
}

/// One limit in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Gcra {
    /// One request per `interval` on average.
    pub interval: u64,
    /// How far the TAT may run ahead of now: `burst × interval`.
    pub tolerance: u64,
}

impl Gcra {
    pub fn new(limit: &Limit) -> Gcra {
        let quota = quota(limit);
        let interval = u64::try_from(quota.replenish_interval().as_nanos()).unwrap_or(u64::MAX);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(quota.burst_size().get())),
        }
    }

    /// The burst, as a count of requests.
    pub fn burst(&self) -> NonZeroU32 {
        let burst = (self.tolerance / self.interval).clamp(1, u64::from(u32::MAX));
        NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN)
    }

    /// This limit's share for one of `instances`: the rate divided by
    /// `instances`, the burst too (rounded up).
    #[cfg(feature = "redis")]
    pub fn shared_by(&self, instances: u64) -> Gcra {
        let burst = (self.tolerance / self.interval).div_ceil(instances).max(1);
        let interval = self.interval.saturating_mul(instances);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst),
        }
    }

    /// Units that would be admitted right now against `tat`.
    pub fn remaining(&self, tat: u64, now: u64) -> u64 {
        let used = tat.saturating_sub(now).min(self.tolerance);
        (self.tolerance - used) / self.interval
    }
}

/// The TATs of one request's limits, its plan's then its class's; 0 is a
/// fresh key.
pub(crate) type Tats = [u64; MAX_LIMITS_PER_REQUEST];

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every limit had room; the TATs were advanced.
    Admit,
    /// Limit `limit` (the one that frees up last) refused; nothing was charged.
    /// The request would be admitted `wait` nanoseconds from now.
    Refuse { wait: u64, limit: usize },
}

/// Admits a request of `cost` units at `now` only if every limit has room
/// for all of them, and only then advances `tats` by `cost` intervals.
#[inline]
pub(crate) fn check<const N: usize>(
    limits: &[Gcra],
    tats: &mut [u64; N],
    now: u64,
    cost: u64,
) -> Verdict {
    debug_assert!(limits.len() <= N, "a TAT per limit");
    let mut refused: Option<(u64, usize)> = None;
    // Worked out on a copy and stored whole: a fixed trip count keeps the
    // copy in registers, and the caller that reads the TATs back right away
    // then doesn't stall on forwarding one store per limit.
    let mut next = *tats;
    for (i, tat) in next.iter_mut().enumerate() {
        let Some(limit) = limits.get(i) else { break };
        let increment = limit.interval.saturating_mul(cost);
        let ahead = (*tat).max(now).saturating_add(increment) - now;
        if ahead > limit.tolerance {
            let wait = ahead - limit.tolerance;
            if refused.is_none_or(|(longest, _)| wait > longest) {
                refused = Some((wait, i));
            }
        }
        *tat = now.saturating_add(ahead);
    }
    if let Some((wait, limit)) = refused {
        return Verdict::Refuse { wait, limit };
    }
    // Every limit admits: only now charge them all.
    *tats = next;
    Verdict::Admit
}

/// Whole seconds, rounded up: a client told "0" would retry at once.
pub(crate) fn ceil_seconds(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per_seconds: u32, burst: u32) -> Gcra {
        let n = |v| NonZeroU32::new(v).unwrap();
        Gcra::new(&Limit {
            requests: n(requests),
            per_seconds: n(per_seconds),
            burst: n(burst),
        })
    }

    #[test]
    fn a_burst_is_admitted_then_one_request_per_interval() {
        let limits = [limit(10, 1, 3)];
        let mut tats = [0; MAX_LIMITS_PER_PLAN];
        for _ in 0..3 {
            assert_eq!(check(&limits, &mut tats, 1_000, 1), Verdict::Admit);
        }
        let refused = check(&limits, &mut tats, 1_000, 1);
        assert_eq!(
            refused,
            Verdict::Refuse {
                wait: 100_000_000,
                limit: 0
            }
        );
        assert_eq!(
            check(&limits, &mut tats, 1_000 + 100_000_000, 1),
            Verdict::Admit
        );
    }

    #[test]
    fn a_refusal_by_one_limit_charges_none_of_them() {
        // A burst of 5 per second, but only 2 per hour.
        let limits = [limit(5, 1, 5), limit(2, 3600, 2)];
        let mut tats = [0; MAX_LIMITS_PER_PLAN];
        assert_eq!(check(&limits, &mut tats, 0, 1), Verdict::Admit);
        assert_eq!(check(&limits, &mut tats, 0, 1), Verdict::Admit);
        let before = tats;
        let Verdict::Refuse { limit, wait } = check(&limits, &mut tats, 0, 1) else {
            panic!("the hourly budget is spent");
        };
        assert_eq!(limit, 1);
        assert_eq!(wait, 1800 * NANOS_PER_SECOND);
        assert_eq!(tats, before, "nothing was charged");
        assert_eq!(limits[0].remaining(tats[0], 0), 3);
    }

    #[test]
    fn retry_after_is_the_longest_wait_among_refusing_limits() {
        let limits = [limit(1, 1, 1), limit(1, 60, 1)];
        let mut tats = [0; MAX_LIMITS_PER_PLAN];
        assert_eq!(check(&limits, &mut tats, 0, 1), Verdict::Admit);
        assert_eq!(
            check(&limits, &mut tats, 0, 1),
            Verdict::Refuse {
                wait: 60 * NANOS_PER_SECOND,
                limit: 1
            }
        );
    }

    #[test]
    fn a_request_of_cost_n_spends_n_units_of_every_limit() {
        // Bursts of 10 per second, and 20 per minute.
        let limits = [limit(10, 1, 10), limit(20, 60, 20)];
        let mut tats = [0; MAX_LIMITS_PER_PLAN];
        assert_eq!(check(&limits, &mut tats, 0, 4), Verdict::Admit);
        assert_eq!(limits[0].remaining(tats[0], 0), 6);
        assert_eq!(limits[1].remaining(tats[1], 0), 16);
        assert_eq!(check(&limits, &mut tats, 0, 6), Verdict::Admit);
        // Nothing left of the burst: 7 more units free up in 0.7 s.
        let before = tats;
        assert_eq!(
            check(&limits, &mut tats, 0, 7),
            Verdict::Refuse {
                wait: 700_000_000,
                limit: 0
            }
        );
        assert_eq!(tats, before, "nothing was charged");
        assert_eq!(check(&limits, &mut tats, 700_000_000, 7), Verdict::Admit);
        // A cost above a limit's burst is never admitted.
        let mut fresh = [0; MAX_LIMITS_PER_PLAN];
        assert!(matches!(
            check(&limits, &mut fresh, 0, 11),
            Verdict::Refuse { limit: 0, .. }
        ));
    }

    #[test]
    fn seconds_round_up_and_never_reach_zero_for_a_wait() {
        assert_eq!(ceil_seconds(1), 1);
        assert_eq!(ceil_seconds(NANOS_PER_SECOND), 1);
        assert_eq!(ceil_seconds(NANOS_PER_SECOND + 1), 2);
    }
}
