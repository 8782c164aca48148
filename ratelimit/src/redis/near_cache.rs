//! Tenants Redis refused, refused again locally without a round trip until
//! the time Redis said they may retry. Nothing can free their quota sooner,
//! so this admits nothing Redis would not.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::gcra::Verdict;
use crate::policy::{IdentityHash, LimitSet, class_key};
use crate::store::Checked;

/// The near-cache's key and fingerprint for a request against `set`: a
/// class's refusals are kept apart from its plan's.
pub(crate) fn near_cache_key(hash: u64, set: &LimitSet) -> (u64, u64) {
    match &set.class {
        None => (hash, set.fingerprint),
        Some(class) => (class_key(hash, class), set.fingerprint ^ class.fingerprint),
    }
}

/// A refusal Redis gave: until when, for what cost, under which limits,
/// and its answer.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    until: u64,
    cost: u64,
    fingerprint: u64,
    checked: Checked,
}

/// Refusals by key hash.
type Refusals = HashMap<u64, Refusal, IdentityHash>;

/// Tenants Redis refused, until the time it said they may retry.
pub(crate) struct NearCache {
    shards: Vec<Mutex<Refusals>>,
    shard_capacity: usize,
}

impl NearCache {
    const SHARDS: usize = 16;

    pub fn new(max_keys: usize) -> NearCache {
        NearCache {
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
            shard_capacity: (max_keys / Self::SHARDS).max(1),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<Refusals> {
        &self.shards[(hash >> 32) as usize % Self::SHARDS]
    }

    pub fn get(&self, hash: u64, fingerprint: u64, now: u64, cost: u64) -> Option<Checked> {
        let mut shard = self.shard(hash).lock();
        let refusal = *shard.get(&hash)?;
        // Expired, or the limits changed (a reload): Redis decides again.
        if refusal.until <= now || refusal.fingerprint != fingerprint {
            shard.remove(&hash);
            return None;
        }
        // A cheaper request may fit sooner.
        if cost < refusal.cost {
            return None;
        }
        let Verdict::Refuse { limit, .. } = refusal.checked.verdict else {
            return None;
        };
        Some(Checked {
            verdict: Verdict::Refuse {
                wait: refusal.until - now,
                limit,
            },
            ..refusal.checked
        })
    }

    /// Remembers a refusal; a full shard first forgets expired ones, and
    /// skips the entry if that frees nothing (the cache is an optimisation).
    pub fn insert(&self, hash: u64, (until, cost): (u64, u64), fingerprint: u64, checked: Checked) {
        let Verdict::Refuse { wait, .. } = checked.verdict else {
            return;
        };
        let mut shard = self.shard(hash).lock();
        if shard.len() >= self.shard_capacity {
            let now = until.saturating_sub(wait);
            shard.retain(|_, refusal| refusal.until > now);
            if shard.len() >= self.shard_capacity {
                return;
            }
        }
        let refusal = Refusal {
            until,
            cost,
            fingerprint,
            checked,
        };
        shard.insert(hash, refusal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::backend::parse_reply;

    #[test]
    fn the_near_cache_answers_until_the_retry_time_only() {
        let cache = NearCache::new(1_000);
        let refused = parse_reply(&[0, 2, 0, 5], 1, 0).unwrap();
        cache.insert(7, (2_000, 1), 42, refused);
        assert!(
            cache.get(7, 43, 500, 1).is_none(),
            "other limits: ask Redis"
        );
        cache.insert(7, (2_000, 3), 42, refused);
        assert!(
            cache.get(7, 42, 500, 2).is_none(),
            "a cheaper request: ask Redis"
        );
        assert_eq!(
            cache.get(7, 42, 500, 3).unwrap().verdict,
            Verdict::Refuse {
                wait: 1_500,
                limit: 0
            }
        );
        assert!(cache.get(7, 42, 2_000, 3).is_none());
        assert!(
            cache.get(7, 42, 500, 3).is_none(),
            "expired entries are dropped"
        );
    }
}
