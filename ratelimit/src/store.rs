//! Per-key state, sharded, with a hard cap and incremental eviction.
//!
//! governor's keyed store never evicts by itself and its `retain_recent`
//! walks the whole map at once. Here the map is split into shards of at most
//! [`SHARD_TARGET`] keys; a shard drops its idle keys (those whose every TAT
//! has passed, which are indistinguishable from a fresh key) once per four
//! checks per key it holds, and sooner when it is full. No pause ever covers
//! more than one shard.
//!
//! Past the cap, a new key is charged to one overflow state per limit set:
//! a key-spraying client shares a single tenant's budget and cannot grow
//! memory. Each tracked key costs one 48-byte bucket plus a control byte,
//! at a load factor between 7/16 and 7/8 (56 to 112 bytes; see BENCHMARKS.md).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use parking_lot::Mutex;

use crate::gcra::{self, Gcra, Tats, Verdict};

/// Keys per shard the shard count aims for: a sweep of one shard stays in
/// the tens of microseconds.
const SHARD_TARGET: usize = 4096;
/// The most shards; past 1024 × 4096 keys shards grow instead.
const MAX_SHARDS: usize = 1024;
/// A shard is swept once per this many checks per key it holds: the scan
/// costs about a quarter of a key visit per request.
const SWEEP_EVERY_CHECKS_PER_KEY: usize = 4;
/// A shard smaller than this is still swept only once per this many checks.
const MIN_SWEEP_INTERVAL: usize = 4096;

/// The state of one key: the limits it was last checked against, and a TAT
/// per limit.
#[derive(Debug, Clone, Copy)]
struct Entry {
    fingerprint: u64,
    tats: Tats,
}

impl Entry {
    fn fresh(fingerprint: u64) -> Entry {
        Entry {
            fingerprint,
            tats: Tats::default(),
        }
    }

    /// Checks against `limits`; a key whose limits changed starts afresh.
    #[inline]
    fn check(&mut self, fingerprint: u64, limits: &[Gcra], now: u64) -> (Verdict, Tats) {
        if self.fingerprint != fingerprint {
            *self = Entry::fresh(fingerprint);
        }
        // Returns the copy rather than re-reading the entry: loading the
        // TATs just stored one at a time would stall on store forwarding.
        let mut tats = self.tats;
        let verdict = gcra::check(limits, &mut tats, now);
        self.tats = tats;
        (verdict, tats)
    }

    fn is_idle(&self, now: u64) -> bool {
        self.tats.iter().all(|&tat| tat <= now)
    }
}

/// Keys are already uniformly distributed hashes; hashing them again is waste.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdentityHash;

/// The hasher of [`IdentityHash`].
#[derive(Debug, Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;

    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher::default()
    }
}

type KeyMap = HashMap<u64, Entry, IdentityHash>;

#[derive(Debug, Default)]
struct ShardState {
    keys: KeyMap,
    checks_since_sweep: usize,
}

impl ShardState {
    fn sweep(&mut self, now: u64) {
        self.keys.retain(|_, entry| !entry.is_idle(now));
        self.checks_since_sweep = 0;
        if self.keys.capacity() > 64 && self.keys.len() < self.keys.capacity() / 4 {
            self.keys.shrink_to_fit();
        }
    }
}

/// One shard on its own cache line, so two cores locking neighbours don't
/// fight over it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<ShardState>);

/// The outcome of one check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub verdict: Verdict,
    /// The key's TATs after the check, for the RateLimit header fields.
    pub tats: Tats,
    /// The key was past the cap and charged to the shared overflow state.
    pub overflow: bool,
}

/// Every tracked key's state.
#[derive(Debug)]
pub(crate) struct Store {
    shards: Box<[Shard]>,
    shard_mask: usize,
    shard_capacity: usize,
    overflow: Mutex<KeyMap>,
}

impl Store {
    /// A store for at most `max_keys` keys (rounded down to whole shards).
    pub fn new(max_keys: usize) -> Store {
        let shards = max_keys
            .div_ceil(SHARD_TARGET)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        Store {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_mask: shards - 1,
            shard_capacity: (max_keys / shards).max(1),
            overflow: Mutex::default(),
        }
    }

    /// Checks the key whose hash is `hash` against `limits` at `now`, and
    /// charges it if every limit admits.
    #[inline]
    pub fn check(&self, hash: u64, fingerprint: u64, limits: &[Gcra], now: u64) -> Checked {
        // The low bits pick the bucket inside a shard; use others for the shard.
        let shard = &self.shards[(hash >> 32) as usize & self.shard_mask];
        let mut state = shard.0.lock();
        state.checks_since_sweep += 1;
        let interval = state.keys.len() * SWEEP_EVERY_CHECKS_PER_KEY;
        if state.checks_since_sweep >= interval.max(MIN_SWEEP_INTERVAL) {
            state.sweep(now);
        }
        if let Some(entry) = state.keys.get_mut(&hash) {
            let (verdict, tats) = entry.check(fingerprint, limits, now);
            return Checked {
                verdict,
                tats,
                overflow: false,
            };
        }
        // Full: sweep early, but at most once per an eighth of the shard's
        // checks, so a spray of new keys can't make every check a full sweep.
        let full = state.keys.len() >= self.shard_capacity;
        if full && state.checks_since_sweep >= self.shard_capacity / 8 {
            state.sweep(now);
        }
        if state.keys.len() < self.shard_capacity {
            let entry = state.keys.entry(hash).or_insert(Entry::fresh(fingerprint));
            let (verdict, tats) = entry.check(fingerprint, limits, now);
            return Checked {
                verdict,
                tats,
                overflow: false,
            };
        }
        drop(state);
        let mut overflow = self.overflow.lock();
        let entry = overflow
            .entry(fingerprint)
            .or_insert(Entry::fresh(fingerprint));
        let (verdict, tats) = entry.check(fingerprint, limits, now);
        Checked {
            verdict,
            tats,
            overflow: true,
        }
    }

    /// How many keys have state now.
    pub fn tracked_keys(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().keys.len()).sum()
    }

    /// The most keys the store tracks.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }

    /// How many shards the keys are split into.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Drops idle keys from every shard, one shard at a time.
    pub fn evict_idle(&self, now: u64) {
        for shard in self.shards.iter() {
            shard.0.lock().sweep(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_rules::policy::Limit;
    use std::num::NonZeroU32;

    fn one_per_second() -> Vec<Gcra> {
        let n = |v| NonZeroU32::new(v).unwrap();
        vec![Gcra::new(&Limit {
            requests: n(1),
            per_seconds: n(1),
            burst: n(1),
        })]
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn keys_past_the_cap_share_one_overflow_state() {
        let store = Store::new(100);
        let limits = one_per_second();
        let mut admitted_overflow = 0;
        for key in 0..10_000u64 {
            let hash = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let checked = store.check(hash, 7, &limits, 0);
            if checked.overflow && checked.verdict == Verdict::Admit {
                admitted_overflow += 1;
            }
        }
        assert!(store.tracked_keys() <= store.capacity());
        assert!(store.capacity() < 200, "{}", store.capacity());
        assert_eq!(
            admitted_overflow, 1,
            "the overflow state is one key's budget"
        );
    }

    #[test]
    fn idle_keys_are_evicted_and_busy_ones_kept() {
        let store = Store::new(10_000);
        let limits = one_per_second();
        for key in 0..1000u64 {
            store.check(key << 32 | key, 7, &limits, 0);
        }
        assert_eq!(store.tracked_keys(), 1000);
        store.check(5 << 32 | 5, 7, &limits, SECOND);
        store.evict_idle(SECOND);
        assert_eq!(store.tracked_keys(), 1, "only the key used at 1 s is busy");
    }

    #[test]
    fn a_full_shard_makes_room_by_evicting_idle_keys() {
        let store = Store::new(64);
        let limits = one_per_second();
        for key in 0..64u64 {
            store.check(key, 7, &limits, 0);
        }
        let later = store.check(1_000, 7, &limits, 10 * SECOND);
        assert!(!later.overflow, "idle keys made room");
    }

    #[test]
    fn changed_limits_restart_a_key() {
        let store = Store::new(16);
        let limits = one_per_second();
        assert_eq!(store.check(1, 7, &limits, 0).verdict, Verdict::Admit);
        assert!(matches!(
            store.check(1, 7, &limits, 0).verdict,
            Verdict::Refuse { .. }
        ));
        assert_eq!(store.check(1, 8, &limits, 0).verdict, Verdict::Admit);
    }
}
