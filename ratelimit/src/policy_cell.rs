//! The compiled policy every request reads, swapped whole on reload.
//!
//! Reading a shared `Arc` costs atomic read-modify-writes (a reference count,
//! or `arc-swap`'s debt slot: two locked instructions per request, as many
//! as the shard lock itself). So each thread keeps the `Arc` it read last,
//! tagged with the policy's version, and a request only loads the cell's
//! version (a plain load on x86) to see whether it is still current. Versions
//! come from one process-wide counter, so a cached version names exactly one
//! policy of one cell. A reload bumps the version; each thread re-reads the
//! policy on its next request, under a mutex, once.
//!
//! A thread that stops serving requests keeps its last policy alive until it
//! exits or its slot is reused: at most [`SLOTS`] policies per thread.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use floodgate_rules::policy::Quotas;
use parking_lot::Mutex;
use time::OffsetDateTime;

use crate::policy::{CompiledAt, CompiledPolicy, KeyHasher};

/// Policies cached per thread; a thread serving more layers than this shares
/// slots between them, and a layer that finds its slot taken reads the cell.
const SLOTS: usize = 4;

/// The next version of any cell's policy, and the next cell's id.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// One thread's last read of one cell.
struct Cached {
    version: u64,
    policy: Arc<CompiledPolicy>,
}

thread_local! {
    static CACHE: RefCell<[Option<Cached>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// The current policy of one layer, with the key hasher and the clock it is
/// compiled against; shared with [`crate::RateLimitHandle`] for reloads.
pub(crate) struct PolicyCell {
    /// Picks this cell's slot in each thread's cache.
    slot: usize,
    /// The version of `current`; written under its lock.
    version: AtomicU64,
    current: Mutex<Arc<CompiledPolicy>>,
    pub hasher: KeyHasher,
    /// Reads the limiter's clock in nanoseconds since the layer was built.
    pub nanos: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl PolicyCell {
    pub fn new(
        policy: CompiledPolicy,
        hasher: KeyHasher,
        nanos: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> PolicyCell {
        PolicyCell {
            slot: next_number() as usize % SLOTS,
            version: AtomicU64::new(next_number()),
            current: Mutex::new(Arc::new(policy)),
            hasher,
            nanos,
        }
    }

    /// Compiles `quotas` as of `wall` (the real wall clock when `None`) and
    /// swaps it in. Keys whose limits are unchanged keep their state.
    pub fn reload(&self, quotas: &Quotas, wall: Option<OffsetDateTime>) {
        let at = CompiledAt {
            wall: wall.unwrap_or_else(crate::clock::wall_now),
            nanos: (self.nanos)(),
        };
        let compiled = Arc::new(CompiledPolicy::compile(quotas, &self.hasher, at));
        let mut current = self.current.lock();
        *current = compiled;
        self.version.store(next_number(), Ordering::Release);
    }

    /// Runs `f` on the current policy, read from this thread's cache when
    /// it is still current.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&Arc<CompiledPolicy>) -> R) -> R {
        let version = self.version.load(Ordering::Acquire);
        let mut f = Some(f);
        let cached = CACHE.try_with(|cache| {
            // Busy only if `f` re-entered a layer on this thread (from a
            // tracing subscriber, say); that call reads the cell instead.
            let mut cache = cache.try_borrow_mut().ok()?;
            let slot = &mut cache[self.slot];
            let policy = match slot {
                Some(cached) if cached.version == version => &cached.policy,
                _ => {
                    let (version, policy) = self.read();
                    &slot.insert(Cached { version, policy }).policy
                }
            };
            f.take().map(|f| f(policy))
        });
        match (cached, f) {
            (Ok(Some(result)), _) => result,
            // The thread is exiting, or its cache is in use.
            (_, Some(f)) => f(&self.read().1),
            (_, None) => unreachable!("f ran and returned its result"),
        }
    }

    /// The current policy and its version, from the source.
    fn read(&self) -> (u64, Arc<CompiledPolicy>) {
        let current = self.current.lock();
        (self.version.load(Ordering::Relaxed), Arc::clone(&current))
    }
}

fn next_number() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_rules::Policy;
    use time::macros::{date, datetime};

    fn quotas(plan: &str) -> Quotas {
        let text = format!(
            "[quotas]\ndefault_plan = \"{plan}\"\nplans = [{{ name = \"{plan}\", limits = [{{ requests = 1, per_seconds = 1 }}] }}]\n"
        );
        let policy = Policy::from_toml(&text, "q.toml", date!(2026 - 11 - 22)).unwrap();
        policy.policy.quotas.unwrap()
    }

    fn cell(plan: &str) -> PolicyCell {
        let hasher = KeyHasher::default();
        let at = CompiledAt {
            wall: datetime!(2026-11-22 00:00 UTC),
            nanos: 0,
        };
        let policy = CompiledPolicy::compile(&quotas(plan), &hasher, at);
        PolicyCell::new(policy, hasher, Box::new(|| 0))
    }

    fn default_plan(cell: &PolicyCell) -> String {
        cell.with(|policy| policy.default_label().to_owned())
    }

    #[test]
    fn a_reload_is_seen_by_the_next_read_on_every_thread() {
        let cell = Arc::new(cell("old"));
        assert_eq!(default_plan(&cell), "old");
        let other = Arc::clone(&cell);
        let before = std::thread::spawn(move || default_plan(&other)).join();
        assert_eq!(before.unwrap(), "old");
        cell.reload(&quotas("new"), None);
        assert_eq!(default_plan(&cell), "new", "this thread's cache was stale");
        let other = Arc::clone(&cell);
        let after = std::thread::spawn(move || default_plan(&other)).join();
        assert_eq!(after.unwrap(), "new");
    }

    #[test]
    fn cells_sharing_a_slot_each_read_their_own_policy() {
        let cells: Vec<PolicyCell> = (0..2 * SLOTS).map(|i| cell(&format!("p{i}"))).collect();
        for _ in 0..2 {
            for (i, cell) in cells.iter().enumerate() {
                assert_eq!(default_plan(cell), format!("p{i}"));
            }
        }
    }

    #[test]
    fn a_nested_read_on_the_same_thread_does_not_panic() {
        let outer = cell("outer");
        let inner = cell("inner");
        let both = outer.with(|o| (o.default_label().to_owned(), default_plan(&inner)));
        assert_eq!(both, ("outer".to_owned(), "inner".to_owned()));
    }
}
