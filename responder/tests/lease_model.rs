//! A model test of the lease: three responders (a primary and two
//! standbys) whose clocks are each off by up to the skew bound play arbitrary
//! interleavings of take, renew, release, handback, stale reads, crashes,
//! graceful stops and time passing against a compare-and-swap store like DynamoDB's. At no true
//! instant may two of them believe they hold the lease.

use floodgate_responder::lease::{Contender, LeaseRecord, next_record, released};
use floodgate_rules::policy::Role;
use proptest::prelude::*;

const TTL_MS: i64 = 60_000;
const SKEW_MS: i64 = 5_000;
const NAMES: [&str; 3] = ["primary", "standby-1", "standby-2"];

#[derive(Debug, Clone)]
enum Op {
    /// True time moves on.
    Advance(i64),
    /// Responder reads the lease (and keeps what it saw).
    Read(usize),
    /// Responder decides on what it last read, by its clock, and swaps.
    Swap(usize),
    /// Responder restarts: it forgets what it read and what it held.
    Crash(usize),
    /// Responder stops gracefully: it releases the lease if the store says
    /// it holds it (a conditional write), and stops.
    Stop(usize),
}

struct Responder {
    contender: Contender<'static>,
    /// Its clock minus the true time.
    offset_ms: i64,
    seen: Option<LeaseRecord>,
    /// The lease as it last wrote it while holding it.
    holding: Option<LeaseRecord>,
}

struct World {
    now_ms: i64,
    store: Option<LeaseRecord>,
    responders: Vec<Responder>,
}

impl World {
    fn new(offsets_ms: [i64; 3]) -> World {
        let roles = [Role::Primary, Role::Standby, Role::Standby];
        World {
            now_ms: 1_790_000_000_000,
            store: None,
            responders: (0..3)
                .map(|i| Responder {
                    contender: Contender {
                        holder_id: NAMES[i],
                        role: roles[i],
                        ttl_ms: TTL_MS,
                        skew_ms: SKEW_MS,
                    },
                    offset_ms: offsets_ms[i],
                    seen: None,
                    holding: None,
                })
                .collect(),
        }
    }

    fn local(&self, i: usize) -> i64 {
        self.now_ms + self.responders[i].offset_ms
    }

    fn play(&mut self, op: &Op) {
        match *op {
            Op::Advance(ms) => self.now_ms += ms,
            Op::Read(i) => self.responders[i].seen = self.store.clone(),
            Op::Swap(i) => {
                let now = self.local(i);
                let responder = &self.responders[i];
                let Some(next) = next_record(responder.seen.as_ref(), &responder.contender, now)
                else {
                    return;
                };
                // DynamoDB's conditional put: on the revision read.
                let expected = responder.seen.as_ref().map(|r| r.revision);
                if self.store.as_ref().map(|r| r.revision) != expected {
                    return;
                }
                if let Some(old) = &self.store {
                    assert!(next.fence >= old.fence, "fences never go back");
                }
                let responder = &mut self.responders[i];
                responder.holding =
                    (next.holder == responder.contender.holder_id).then(|| next.clone());
                responder.seen = Some(next.clone());
                self.store = Some(next);
            }
            Op::Crash(i) => {
                self.responders[i].seen = None;
                self.responders[i].holding = None;
            }
            Op::Stop(i) => {
                if let Some(current) = &self.store
                    && current.holder == NAMES[i]
                {
                    self.store = Some(released(current));
                }
                self.responders[i].seen = None;
                self.responders[i].holding = None;
            }
        }
    }

    /// The responders that, by their own clocks, believe they may write now.
    fn believers(&self) -> Vec<&'static str> {
        (0..self.responders.len())
            .filter(|&i| {
                let r = &self.responders[i];
                r.holding
                    .as_ref()
                    .is_some_and(|lease| r.contender.holds(lease, lease.fence, self.local(i)))
            })
            .map(|i| NAMES[i])
            .collect()
    }
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly small steps, so time walks through the narrow windows around a
    // lease's end where the clock margins matter.
    prop_oneof![
        1 => (0..=TTL_MS).prop_map(Op::Advance),
        4 => (0..=2_000i64).prop_map(Op::Advance),
        3 => (0..3usize).prop_map(Op::Read),
        3 => (0..3usize).prop_map(Op::Swap),
        1 => (0..3usize).prop_map(Op::Crash),
        1 => (0..3usize).prop_map(Op::Stop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn two_responders_never_hold_the_lease_at_once(
        // Every clock within SKEW of the true time, as the policy's
        // max_clock_skew_seconds promises: any two within 2 × SKEW.
        offsets in prop::array::uniform3(-SKEW_MS..=SKEW_MS),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut world = World::new(offsets);
        for op in &ops {
            world.play(op);
            let believers = world.believers();
            prop_assert!(believers.len() <= 1, "after {:?}: {:?} all hold it", op, believers);
        }
    }
}

/// The checker can fail: with clocks further apart than the bound, a taker
/// running ahead takes the lease while the holder, running behind, still
/// believes it holds it.
#[test]
fn clocks_further_apart_than_the_bound_do_overlap() {
    let mut world = World::new([-SKEW_MS - 1_000, SKEW_MS + 1_000, 0]);
    for op in [Op::Read(0), Op::Swap(0), Op::Advance(TTL_MS - 6_500)] {
        world.play(&op);
    }
    world.play(&Op::Read(1));
    world.play(&Op::Swap(1));
    assert_eq!(world.believers(), ["primary", "standby-1"]);
}

/// The whole handback, step by step: the standby serves while the primary
/// is down, then the primary asks, the standby releases, the primary takes.
#[test]
fn a_handback_passes_the_lease_without_a_gap_in_belief_overlap() {
    let mut world = World::new([0, 0, 0]);
    let cycle = |world: &mut World, i: usize| {
        world.play(&Op::Read(i));
        world.play(&Op::Swap(i));
    };
    cycle(&mut world, 1); // a standby first: it keeps the lease for a primary
    assert!(world.believers().is_empty());
    world.play(&Op::Advance(TTL_MS + SKEW_MS + 1));
    cycle(&mut world, 1); // none came: it takes the lease
    assert_eq!(world.believers(), ["standby-1"]);
    cycle(&mut world, 0); // the primary asks
    assert_eq!(world.believers(), ["standby-1"]);
    world.play(&Op::Advance(1_000));
    cycle(&mut world, 1); // the standby releases
    assert!(world.believers().is_empty());
    cycle(&mut world, 2); // the other standby keeps away
    assert!(world.believers().is_empty());
    cycle(&mut world, 0); // the primary takes it
    assert_eq!(world.believers(), ["primary"]);
    assert_eq!(world.store.as_ref().unwrap().fence, 2);
}
