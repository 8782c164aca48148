//! The table each shard keeps its keys in: open addressing with linear
//! probing over 32-byte slots, keyed by an already random 64-bit hash.
//!
//! hashbrown keeps its control bytes apart from its slots, so finding a key
//! reads two cache lines, and with many tenants both miss. Here the key is
//! in its slot and slots are aligned to 32 bytes: at a load of at most 3/4,
//! most lookups read the one line that holds the key's home slot.
//!
//! Keys leave only by [`KeyTable::retain`], which rebuilds the table, so
//! there are no tombstones.

use super::Entry;

/// Marks a free slot. A key of 0 is stored as 1 (see [`slot_key`]).
const EMPTY: u64 = 0;
/// The fewest slots a table that holds anything has.
const MIN_SLOTS: usize = 8;

/// One key and its state, 32 bytes on a 32-byte boundary, so a slot never
/// spans two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    key: u64,
    entry: Entry,
}

const FREE: Slot = Slot {
    key: EMPTY,
    entry: Entry::fresh(0),
};

/// Keys and their entries; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    slots: Vec<Slot>,
    len: usize,
}

/// The key as stored: 0 marks a free slot, so key 0 shares key 1's slot (the
/// odds that two live keys are 0 and 1 are 2⁻⁶³).
#[inline]
fn slot_key(key: u64) -> u64 {
    key.max(1)
}

/// Slots for `keys` keys at a load of at most 3/4.
fn slots_for(keys: usize) -> usize {
    if keys == 0 {
        return 0;
    }
    (keys * 4).div_ceil(3).next_power_of_two().max(MIN_SLOTS)
}

impl KeyTable {
    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// How many slots the table has.
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot holding `key`, if any.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let key = slot_key(key);
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.slots[i].key {
                k if k == key => return Some(i),
                EMPTY => return None,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Where `key` is, if the table holds it: valid until the next insert
    /// or retain.
    pub fn position(&self, key: u64) -> Option<usize> {
        self.find(key)
    }

    /// The entry at `position`, from [`KeyTable::position`].
    pub fn at_mut(&mut self, position: usize) -> &mut Entry {
        &mut self.slots[position].entry
    }

    /// The entry of `key`, if the table holds it.
    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        let i = self.find(key)?;
        Some(&mut self.slots[i].entry)
    }

    /// The entries of two different keys, if the table holds both.
    pub fn get_pair_mut(&mut self, a: u64, b: u64) -> Option<[&mut Entry; 2]> {
        let (i, j) = (self.find(a)?, self.find(b)?);
        let [first, second] = self.slots.get_disjoint_mut([i, j]).ok()?;
        Some([&mut first.entry, &mut second.entry])
    }

    /// The entry of `key`, added as `fresh` if the table lacks it.
    pub fn get_or_insert(&mut self, key: u64, fresh: Entry) -> &mut Entry {
        if let Some(i) = self.find(key) {
            return &mut self.slots[i].entry;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize(slots_for(self.len + 1).max(self.slots.len() * 2));
        }
        let i = self.place(slot_key(key), fresh);
        self.len += 1;
        &mut self.slots[i].entry
    }

    /// Keeps the entries `keep` accepts. The table keeps room for as many
    /// keys as it held before: those that left are likely back soon, and
    /// shrinking to what is left would free memory only to grow it again.
    /// After a spray, the memory comes back at the next call. `keep` may see
    /// an entry twice: once to count, once to move.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let kept = self
            .slots
            .iter()
            .filter(|slot| slot.key != EMPTY && keep(&slot.entry))
            .count();
        let slots = slots_for(self.len);
        if kept == self.len && slots == self.slots.len() {
            return;
        }
        self.rebuild(slots, keep);
    }

    /// Moves every key into a table of `slots` slots.
    fn resize(&mut self, slots: usize) {
        self.rebuild(slots, |_| true);
    }

    /// Moves the keys whose entries `keep` accepts into a new table of
    /// `slots` slots.
    fn rebuild(&mut self, slots: usize, mut keep: impl FnMut(&Entry) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![FREE; slots]);
        self.len = 0;
        for slot in old {
            if slot.key != EMPTY && keep(&slot.entry) {
                self.place(slot.key, slot.entry);
                self.len += 1;
            }
        }
    }

    /// Puts `key`, which the table lacks and has room for, in its slot.
    fn place(&mut self, key: u64, entry: Entry) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        while self.slots[i].key != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { key, entry };
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(tat: u64) -> Entry {
        Entry {
            fingerprint: 7,
            tats: [tat, 0],
        }
    }

    #[test]
    fn a_slot_is_32_bytes_on_a_32_byte_boundary() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::align_of::<Slot>(), 32);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Get(u64),
        Pair(u64, u64),
        /// Keep entries whose TAT is at least this.
        Retain(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, so operations meet; 0 and 1 included.
        let key = prop_oneof![0u64..64, any::<u64>()];
        prop_oneof![
            4 => (key.clone(), 0u64..100).prop_map(|(k, t)| Op::Insert(k, t)),
            2 => key.clone().prop_map(Op::Get),
            1 => (key.clone(), key).prop_map(|(a, b)| Op::Pair(a, b)),
            1 => (0u64..100).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The table holds exactly what a `HashMap` does, whatever the
        /// operations, and never fills beyond 3/4.
        #[test]
        fn the_table_behaves_like_a_hash_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut table = KeyTable::default();
            let mut model: HashMap<u64, Entry> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(key, tat) => {
                        let key = slot_key(key);
                        let got = *table.get_or_insert(key, entry(tat));
                        let want = *model.entry(key).or_insert(entry(tat));
                        prop_assert_eq!(got.tats, want.tats);
                    }
                    Op::Get(key) => {
                        let key = slot_key(key);
                        let got = table.get_mut(key).map(|e| e.tats);
                        prop_assert_eq!(got, model.get(&key).map(|e| e.tats));
                    }
                    Op::Pair(a, b) => {
                        let (a, b) = (slot_key(a), slot_key(b));
                        let got = table.get_pair_mut(a, b).map(|[x, y]| (x.tats, y.tats));
                        let want = match (model.get(&a), model.get(&b)) {
                            (Some(x), Some(y)) if a != b => Some((x.tats, y.tats)),
                            _ => None,
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Retain(min_tat) => {
                        let held = table.len();
                        table.retain(|e| e.tats[0] >= min_tat);
                        model.retain(|_, e| e.tats[0] >= min_tat);
                        prop_assert!(table.slots() >= slots_for(held));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.len() * 4 <= table.slots() * 3);
            }
        }
    }

    #[test]
    fn retain_frees_the_room_of_keys_that_left_and_will_not_return() {
        let mut table = KeyTable::default();
        // From 2: keys 0 and 1 share a slot.
        for key in 2..1002 {
            table.get_or_insert(key, entry(key - 2));
        }
        let full = table.slots();
        table.retain(|e| e.tats[0] < 10);
        assert_eq!(table.len(), 10);
        assert_eq!(table.slots(), full, "room kept for the keys just seen");
        table.retain(|_| true);
        assert_eq!(table.slots(), slots_for(10));
    }
}
