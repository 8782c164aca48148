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
//! memory. A key on a plan of one or two limits (the usual) costs one 32-byte
//! slot of a shard's [`table`], at a load between 3/8 and 3/4 (43 to 85
//! bytes; about 70 measured, see BENCHMARKS.md). A plan of three or four
//! limits keeps its last two TATs in a second slot, and its keys count twice
//! against the cap. A key that sends requests of a route class its plan
//! limits keeps the class's TATs in one or two slots more, in the same
//! shard, so the plan's and the class's limits are charged under one lock.

use parking_lot::Mutex;

use floodgate_rules::policy::MAX_LIMITS_PER_PLAN;

use crate::gcra::{self, Gcra, MAX_LIMITS_PER_REQUEST, Tats, Verdict};
use crate::policy::{LimitSet, class_key};

mod table;

use table::KeyTable;

/// Keys per shard the shard count aims for. A sweep of one shard stays
/// around a tenth of a millisecond, and the shards stay few enough (64 at
/// the default cap, 4 KiB of locks) to sit in cache: with one per 4,096
/// keys, the shard's own cache miss cost a request at 1M keys 2–3%.
const SHARD_TARGET: usize = 16_384;
/// The most shards; past 1024 × 16,384 keys shards grow instead.
const MAX_SHARDS: usize = 1024;
/// The bits of a key's hash that pick its shard.
pub(crate) const SHARD_BITS: u64 = (MAX_SHARDS as u64 - 1) << 32;
/// A shard is swept once per this many checks per key it holds: the scan
/// costs about a quarter of a key visit per request.
const SWEEP_EVERY_CHECKS_PER_KEY: usize = 4;
/// A shard smaller than this is still swept only once per this many checks.
const MIN_SWEEP_INTERVAL: usize = 4096;

/// TATs one slot holds. Two keep a slot at 32 bytes, so a cache line holds
/// two keys and a key never spans two lines.
const TATS_PER_SLOT: usize = 2;
/// Turns a key into the key of its second slot: only low bits, so it shares
/// the key's shard (picked by the high bits) but not its slot.
const SECOND_SLOT: u64 = 0x5bd1_e995;

/// Part of one key's state: the limits it was last checked against, and the
/// TATs of up to two of them.
#[derive(Debug, Clone, Copy)]
struct Entry {
    fingerprint: u64,
    tats: [u64; TATS_PER_SLOT],
}

impl Entry {
    const fn fresh(fingerprint: u64) -> Entry {
        Entry {
            fingerprint,
            tats: [0; TATS_PER_SLOT],
        }
    }

    /// The TATs for limits `fingerprint`: fresh ones if the limits changed.
    #[inline]
    fn tats_for(&self, fingerprint: u64) -> [u64; TATS_PER_SLOT] {
        if self.fingerprint == fingerprint {
            self.tats
        } else {
            [0; TATS_PER_SLOT]
        }
    }

    #[inline]
    fn store(&mut self, fingerprint: u64, tats: [u64; TATS_PER_SLOT]) {
        *self = Entry { fingerprint, tats };
    }

    fn is_idle(&self, now: u64) -> bool {
        self.tats.iter().all(|&tat| tat <= now)
    }
}

/// One check: a key's first slot, the limits it is checked against and
/// their fingerprint, now, and the request's cost in units.
#[derive(Clone, Copy)]
struct Charge<'l> {
    key: u64,
    fingerprint: u64,
    limits: &'l [Gcra],
    now: u64,
    cost: u64,
}

/// The class half of a check against a class's limits, which follow the
/// plan's from `split` on and keep their state at `key`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassShare {
    pub key: u64,
    pub fingerprint: u64,
    pub split: usize,
}

/// The TATs of a plan's limits.
type PlanTats = [u64; MAX_LIMITS_PER_PLAN];

/// Checks `charge.key` of `map`, if its slots exist.
#[inline]
fn check_in(map: &mut KeyTable, charge: Charge<'_>) -> Option<(Verdict, PlanTats)> {
    if charge.limits.len() > TATS_PER_SLOT {
        return check_split(map, charge);
    }
    let entry = map.get_mut(charge.key)?;
    Some(check_slot(entry, charge))
}

/// Adds `charge.key` to `map`, where it is missing a slot, and checks it.
fn insert_and_check(map: &mut KeyTable, charge: Charge<'_>) -> (Verdict, PlanTats) {
    let fresh = Entry::fresh(charge.fingerprint);
    if charge.limits.len() <= TATS_PER_SLOT {
        let entry = map.get_or_insert(charge.key, fresh);
        return check_slot(entry, charge);
    }
    for slot in [charge.key, charge.key ^ SECOND_SLOT] {
        map.get_or_insert(slot, fresh);
    }
    check_split(map, charge).expect("both slots were just added")
}

/// Checks a key whose limits fit in its one slot. Works on a copy of the
/// TATs, written back whole and returned from registers: reading TATs back
/// right after storing them one at a time stalls on store forwarding.
#[inline]
fn check_slot(entry: &mut Entry, charge: Charge<'_>) -> (Verdict, PlanTats) {
    let mut tats = entry.tats_for(charge.fingerprint);
    let verdict = gcra::check(charge.limits, &mut tats, charge.now, charge.cost);
    entry.store(charge.fingerprint, tats);
    let [first, second] = tats;
    (verdict, [first, second, 0, 0])
}

/// [`check_in`] for a plan of three or four limits, whose TATs span two
/// slots. Out of line: the usual plans fit one.
#[inline(never)]
fn check_split(map: &mut KeyTable, charge: Charge<'_>) -> Option<(Verdict, PlanTats)> {
    let Charge {
        key,
        fingerprint,
        limits,
        now,
        cost,
    } = charge;
    let [low, high] = map.get_pair_mut(key, key ^ SECOND_SLOT)?;
    let ([a, b], [c, d]) = (low.tats_for(fingerprint), high.tats_for(fingerprint));
    let mut tats = [a, b, c, d];
    let verdict = gcra::check(limits, &mut tats, now, cost);
    low.store(fingerprint, [tats[0], tats[1]]);
    high.store(fingerprint, [tats[2], tats[3]]);
    Some((verdict, tats))
}

/// A slot of a check against a class's set: its key and fingerprint, and
/// which of the set's TATs it holds (`count` of them from `first`).
#[derive(Debug, Clone, Copy)]
struct SlotOf {
    key: u64,
    fingerprint: u64,
    first: usize,
    count: usize,
}

/// The slots of a key's plan state at `plan_key` and its class state at
/// `class.key`: one per two limits of each, at most four.
fn class_slots(plan_key: u64, fingerprint: u64, limits: usize, class: ClassShare) -> ClassSlots {
    let halves = [
        (plan_key, fingerprint, 0, class.split),
        (
            class.key,
            class.fingerprint,
            class.split,
            limits - class.split,
        ),
    ];
    let unused = SlotOf {
        key: 0,
        fingerprint: 0,
        first: 0,
        count: 0,
    };
    let mut slots = ClassSlots {
        slots: [unused; 2 * MAX_LIMITS_PER_PLAN / TATS_PER_SLOT],
        len: 0,
    };
    for (key, fingerprint, first, len) in halves {
        slots.slots[slots.len] = SlotOf {
            key,
            fingerprint,
            first,
            count: len.min(TATS_PER_SLOT),
        };
        slots.len += 1;
        if len > TATS_PER_SLOT {
            slots.slots[slots.len] = SlotOf {
                key: key ^ SECOND_SLOT,
                fingerprint,
                first: first + TATS_PER_SLOT,
                count: len - TATS_PER_SLOT,
            };
            slots.len += 1;
        }
    }
    slots
}

/// The slots [`class_slots`] found, without a heap allocation.
struct ClassSlots {
    slots: [SlotOf; 2 * MAX_LIMITS_PER_PLAN / TATS_PER_SLOT],
    len: usize,
}

impl std::ops::Deref for ClassSlots {
    type Target = [SlotOf];

    fn deref(&self) -> &[SlotOf] {
        &self.slots[..self.len]
    }
}

/// Where each of a check's slots is in its table, if there.
type Positions = [Option<usize>; 2 * MAX_LIMITS_PER_PLAN / TATS_PER_SLOT];

fn positions(map: &KeyTable, slots: &[SlotOf]) -> Positions {
    let mut found: Positions = Default::default();
    for (position, slot) in found.iter_mut().zip(slots) {
        *position = map.position(slot.key);
    }
    found
}

/// Adds the slots `map` lacks; returns where every slot is.
fn insert_slots(map: &mut KeyTable, slots: &[SlotOf]) -> Positions {
    for slot in slots {
        map.get_or_insert(slot.key, Entry::fresh(slot.fingerprint));
    }
    positions(map, slots)
}

/// Checks a request against a plan's and a class's limits spread over
/// `slots` of `map`, at `found`, and charges them all or none.
fn check_class_slots(
    map: &mut KeyTable,
    slots: &[SlotOf],
    found: &Positions,
    limits: &[Gcra],
    (now, cost): (u64, u64),
) -> (Verdict, Tats) {
    // Whole slots are copied, in order: a slot holding one TAT also copies
    // the next one's, which the following slot then overwrites. A slot's
    // first TAT is at most 6, so the pair always fits.
    let mut tats: Tats = [0; MAX_LIMITS_PER_REQUEST];
    for (slot, position) in slots.iter().zip(found) {
        let entry = map.at_mut(position.expect("every slot is in the table"));
        let pair = entry.tats_for(slot.fingerprint);
        tats[slot.first..slot.first + TATS_PER_SLOT].copy_from_slice(&pair);
    }
    let verdict = gcra::check(limits, &mut tats, now, cost);
    for (slot, position) in slots.iter().zip(found) {
        let second = if slot.count == TATS_PER_SLOT {
            tats[slot.first + 1]
        } else {
            0
        };
        let entry = map.at_mut(position.expect("every slot is in the table"));
        entry.store(slot.fingerprint, [tats[slot.first], second]);
    }
    // The TATs past the last limit are another slot's leftovers.
    tats[limits.len()..].fill(0);
    (verdict, tats)
}

/// Slots a key on `limits` takes.
fn slots_per_key(limits: &[Gcra]) -> usize {
    limits.len().div_ceil(TATS_PER_SLOT).max(1)
}

#[derive(Debug)]
struct ShardState {
    keys: KeyTable,
    checks_since_sweep: usize,
    /// Checks between sweeps for the keys held now, kept up to date as
    /// keys come and go rather than worked out per check.
    sweep_every: usize,
}

impl Default for ShardState {
    fn default() -> ShardState {
        ShardState {
            keys: KeyTable::default(),
            checks_since_sweep: 0,
            sweep_every: MIN_SWEEP_INTERVAL,
        }
    }
}

impl ShardState {
    fn sweep(&mut self, now: u64) {
        self.keys.retain(|entry| !entry.is_idle(now));
        self.checks_since_sweep = 0;
        self.keys_changed();
    }

    /// Counts a check, and sweeps when it is time.
    #[inline]
    fn count_check(&mut self, now: u64) {
        self.checks_since_sweep += 1;
        if self.checks_since_sweep >= self.sweep_every {
            self.sweep(now);
        }
    }

    fn keys_changed(&mut self) {
        let every = self.keys.len() * SWEEP_EVERY_CHECKS_PER_KEY;
        self.sweep_every = every.max(MIN_SWEEP_INTERVAL);
    }
}

/// One shard on its own cache line, so two cores locking neighbours don't
/// fight over it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<ShardState>);

/// The outcome of one check, with room for `N` TATs: a plan's limits
/// alone, or by default a plan's and a class's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked<const N: usize = MAX_LIMITS_PER_REQUEST> {
    pub verdict: Verdict,
    /// The key's TATs after the check, for the RateLimit header fields.
    pub tats: [u64; N],
    /// The key was past the cap and charged to the shared overflow state.
    pub overflow: bool,
}

/// A check against a plan's limits alone: kept small, as the request path
/// moves it several times.
pub(crate) type PlanChecked = Checked<MAX_LIMITS_PER_PLAN>;

impl PlanChecked {
    /// The same outcome with room for a class's TATs.
    fn widen(self) -> Checked {
        let mut tats: Tats = [0; MAX_LIMITS_PER_REQUEST];
        tats[..MAX_LIMITS_PER_PLAN].copy_from_slice(&self.tats);
        Checked {
            verdict: self.verdict,
            tats,
            overflow: self.overflow,
        }
    }
}

/// Every tracked key's state.
#[derive(Debug)]
pub(crate) struct Store {
    shards: Box<[Shard]>,
    shard_mask: usize,
    shard_capacity: usize,
    overflow: Mutex<KeyTable>,
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

    /// The shard of the key whose hash is `hash`: the low bits pick the slot
    /// inside a shard, so the shard comes from others.
    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize & self.shard_mask]
    }

    /// Whether `state` has room for the slots `missing` counts. A full shard
    /// is swept early, but at most once per an eighth of its checks, so a
    /// spray of new keys can't make every check a full sweep.
    fn has_room(
        &self,
        state: &mut ShardState,
        now: u64,
        missing: impl Fn(&KeyTable) -> usize,
    ) -> bool {
        let full = state.keys.len() + missing(&state.keys) > self.shard_capacity;
        if full && state.checks_since_sweep >= self.shard_capacity / 8 {
            state.sweep(now);
        }
        state.keys.len() + missing(&state.keys) <= self.shard_capacity
    }

    /// Checks the key whose hash is `hash` against `limits` at `now`, and
    /// charges it `cost` units if every limit admits.
    #[inline]
    pub fn check(
        &self,
        hash: u64,
        fingerprint: u64,
        limits: &[Gcra],
        now: u64,
        cost: u64,
    ) -> PlanChecked {
        let mut state = self.shard(hash).0.lock();
        state.count_check(now);
        let charge = Charge {
            key: hash,
            fingerprint,
            limits,
            now,
            cost,
        };
        if let Some((verdict, tats)) = check_in(&mut state.keys, charge) {
            return Checked {
                verdict,
                tats,
                overflow: false,
            };
        }
        // A new key.
        if self.has_room(&mut state, now, |_| slots_per_key(limits)) {
            let (verdict, tats) = insert_and_check(&mut state.keys, charge);
            state.keys_changed();
            return Checked {
                verdict,
                tats,
                overflow: false,
            };
        }
        drop(state);
        let mut overflow = self.overflow.lock();
        // One overflow state per set of limits, keyed by their fingerprint.
        let charge = Charge {
            key: fingerprint,
            ..charge
        };
        let (verdict, tats) = insert_and_check(&mut overflow, charge);
        Checked {
            verdict,
            tats,
            overflow: true,
        }
    }

    /// Checks a request of `cost` units against `set` (its plan's limits, and
    /// its class's if it is a class's set), measured by `limits`: the set's
    /// own, or their share for one instance when Redis is out.
    #[inline]
    pub fn check_set(
        &self,
        hash: u64,
        set: &LimitSet,
        limits: &[Gcra],
        now: u64,
        cost: u64,
    ) -> Checked {
        match &set.class {
            None => self.check(hash, set.fingerprint, limits, now, cost).widen(),
            Some(class) => {
                let share = ClassShare {
                    key: class_key(hash, class),
                    fingerprint: class.fingerprint,
                    split: class.split,
                };
                self.check_class(hash, set.fingerprint, limits, share, (now, cost))
            }
        }
    }

    /// [`Store::check`] for a request of a route class its plan limits:
    /// `limits` are the plan's then the class's, whose state is at
    /// `class.key` in the same shard. Charges all of them or none.
    #[inline(never)]
    pub fn check_class(
        &self,
        hash: u64,
        fingerprint: u64,
        limits: &[Gcra],
        class: ClassShare,
        (now, cost): (u64, u64),
    ) -> Checked {
        let slots = class_slots(hash, fingerprint, limits.len(), class);
        let mut state = self.shard(hash).0.lock();
        state.count_check(now);
        let mut found = positions(&state.keys, &slots);
        let missing =
            |found: &Positions| found[..slots.len()].iter().filter(|p| p.is_none()).count();
        if missing(&found) > 0
            && self.has_room(&mut state, now, |keys| missing(&positions(keys, &slots)))
        {
            found = insert_slots(&mut state.keys, &slots);
            state.keys_changed();
        }
        if missing(&found) == 0 {
            let (verdict, tats) =
                check_class_slots(&mut state.keys, &slots, &found, limits, (now, cost));
            return Checked {
                verdict,
                tats,
                overflow: false,
            };
        }
        drop(state);
        // Past the cap: the plan's and the class's overflow states, keyed by
        // their fingerprints as for a request without a class.
        let mut overflow = self.overflow.lock();
        let slots = class_slots(
            fingerprint,
            fingerprint,
            limits.len(),
            ClassShare {
                key: class.fingerprint,
                ..class
            },
        );
        let found = insert_slots(&mut overflow, &slots);
        let (verdict, tats) = check_class_slots(&mut overflow, &slots, &found, limits, (now, cost));
        Checked {
            verdict,
            tats,
            overflow: true,
        }
    }

    /// How many slots hold state now: one per key, two for a key on a plan
    /// of more than two limits, and as many again per class it used.
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
            let checked = store.check(hash, 7, &limits, 0, 1);
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
            store.check(key << 32 | key, 7, &limits, 0, 1);
        }
        assert_eq!(store.tracked_keys(), 1000);
        store.check(5 << 32 | 5, 7, &limits, SECOND, 1);
        store.evict_idle(SECOND);
        assert_eq!(store.tracked_keys(), 1, "only the key used at 1 s is busy");
    }

    #[test]
    fn a_full_shard_makes_room_by_evicting_idle_keys() {
        let store = Store::new(64);
        let limits = one_per_second();
        for key in 0..64u64 {
            store.check(key, 7, &limits, 0, 1);
        }
        let later = store.check(1_000, 7, &limits, 10 * SECOND, 1);
        assert!(!later.overflow, "idle keys made room");
    }

    #[test]
    fn a_plan_of_four_limits_spans_two_slots_and_enforces_all_four() {
        let store = Store::new(100);
        let n = |v| NonZeroU32::new(v).unwrap();
        let limit = |requests, per_seconds| {
            Gcra::new(&Limit {
                requests: n(requests),
                per_seconds: n(per_seconds),
                burst: n(requests),
            })
        };
        // The fourth limit, one a minute, is the tightest.
        let limits = [limit(10, 1), limit(10, 1), limit(10, 1), limit(1, 60)];
        assert_eq!(store.check(1, 7, &limits, 0, 1).verdict, Verdict::Admit);
        assert_eq!(store.tracked_keys(), 2, "one key, two slots");
        let Verdict::Refuse { limit, .. } = store.check(1, 7, &limits, 0, 1).verdict else {
            panic!("the fourth limit is spent");
        };
        assert_eq!(limit, 3);
        // The first slot is idle after a second and may be swept; the key
        // is still held by the fourth limit in its second slot.
        store.evict_idle(SECOND);
        assert_eq!(store.tracked_keys(), 1);
        assert!(matches!(
            store.check(1, 7, &limits, SECOND, 1).verdict,
            Verdict::Refuse { limit: 3, .. }
        ));
        assert_eq!(
            store.check(1, 7, &limits, 60 * SECOND, 1).verdict,
            Verdict::Admit
        );
    }

    #[test]
    fn changed_limits_restart_a_key() {
        let store = Store::new(16);
        let limits = one_per_second();
        assert_eq!(store.check(1, 7, &limits, 0, 1).verdict, Verdict::Admit);
        assert!(matches!(
            store.check(1, 7, &limits, 0, 1).verdict,
            Verdict::Refuse { .. }
        ));
        assert_eq!(store.check(1, 8, &limits, 0, 1).verdict, Verdict::Admit);
    }
}
