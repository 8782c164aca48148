//! The block plan: from this run's offenders, the policy and the ledger, the
//! next ledger and the exact addresses every IP set should hold. Pure: no
//! I/O, no clock (the caller passes `now`).
//!
//! - Expiry is exact to the run: a block whose `expires_at` has passed is
//!   left out of the sets by the first plan after it.
//! - An offender still active while blocked has its block extended; one
//!   that returns after its block ended is blocked again for longer, by the
//!   tier's escalation.
//! - Circuit breaker: at most `max_new_blocks_per_run` new blocks, the most
//!   severe and most active first; the rest are held back and reported, and
//!   are considered again next run.
//! - The allow-list is applied last, to the sets themselves: no address a
//!   full exception covers is ever in a set, whatever the ledger says.
//!   Exceptions with a raised `requests` threshold are decided by detection
//!   for the keys they contain; one strictly inside a blocked prefix (a
//!   partner's /128 in an IPv6 /64) was never held to its own threshold, so
//!   it is cut out of that block too.
//! - Sets hold at most `per_set` addresses (10,000 in WAF). Past that the
//!   entries spill into the further sets a target declares; past all of
//!   them, the most severe and most active entries are kept and every
//!   dropped one is reported. The update never fails as a whole.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use floodgate_rules::Policy;
use floodgate_rules::cidr::{aggregate, exclude};
use floodgate_rules::policy::{BlockRule, Target, Tier, TierAction};
use ipnet::IpNet;

use crate::detect::Offender;
use crate::ledger::{HISTORY_DAYS, LedgerEntry, LedgerState};
use crate::sink::BlockNote;

/// Addresses one WAF IP set holds at most.
pub const WAF_IP_SET_CAPACITY: usize = 10_000;

/// How many sets each address family has, and their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// IPv4 sets (the first is filled first).
    pub ipv4_sets: usize,
    /// IPv6 sets.
    pub ipv6_sets: usize,
    /// Addresses per set.
    pub per_set: usize,
}

impl Capacity {
    /// Room in the policy's targets: the fewest sets any WAFv2 target
    /// declares, per family (one each without a WAFv2 target).
    pub fn of(policy: &Policy) -> Capacity {
        let sets = |family: fn(&floodgate_rules::policy::Wafv2Target) -> usize| {
            policy
                .targets
                .iter()
                .filter_map(|t| match t {
                    Target::Wafv2(w) => Some(family(w)),
                    Target::Cloudflare(_) | Target::File { .. } => None,
                })
                .min()
                .unwrap_or(1)
        };
        Capacity {
            ipv4_sets: sets(|w| w.ipv4_sets.len()),
            ipv6_sets: sets(|w| w.ipv6_sets.len()),
            per_set: WAF_IP_SET_CAPACITY,
        }
    }
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockPlan {
    /// The ledger after this run.
    pub ledger: LedgerState,
    /// What each IPv4 set should hold, in set order.
    pub ipv4: Vec<Vec<IpNet>>,
    /// What each IPv6 set should hold, in set order.
    pub ipv6: Vec<Vec<IpNet>>,
    /// Why each address of the sets is blocked.
    pub notes: BTreeMap<IpNet, BlockNote>,
    /// New blocks.
    pub added: Vec<IpNet>,
    /// Blocks extended because the offender is still active.
    pub extended: Vec<IpNet>,
    /// Blocks that ended since the last run.
    pub expired: Vec<IpNet>,
    /// New blocks the circuit breaker held back.
    pub held_back: Vec<IpNet>,
    /// Active blocks left out for lack of room in the sets.
    pub dropped: Vec<IpNet>,
    /// Active blocks that the allow-list now covers, in whole or in part.
    pub allow_listed: Vec<IpNet>,
    /// Offenders not blocked because an operator unblocked them recently.
    pub suppressed: Vec<IpNet>,
    /// `[safety] mode = "observe"`: report this plan, write nothing (neither
    /// the targets nor the ledger).
    pub observe_only: bool,
}

impl BlockPlan {
    /// What the targets' sets should hold.
    pub fn desired(&self) -> crate::sink::DesiredSets {
        crate::sink::DesiredSets {
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
            notes: self.notes.clone(),
        }
    }

    /// Every address and range of the sets, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.ipv4.iter().chain(&self.ipv6).flatten()
    }

    /// Whether the circuit breaker tripped.
    pub fn breaker_tripped(&self) -> bool {
        !self.held_back.is_empty()
    }
}

/// Plans the run at `now_ms` for offenders seen in `source`.
pub fn plan(
    offenders: &[Offender],
    policy: &Policy,
    ledger: &LedgerState,
    now_ms: i64,
    source: &str,
    capacity: Capacity,
) -> BlockPlan {
    let (mut next, expired) = expire(ledger, now_ms);
    let ranked = rank_offenders(offenders, policy);
    let blocks = block_offenders(&ranked, policy, &mut next, now_ms, source);
    let exceptions = Exceptions::of(policy);
    let active = rank_active(&next, policy, now_ms);
    let allow_listed = allow_listed(&active, &exceptions);
    let (ipv4, dropped_v4) = pack(&active, &exceptions, true, capacity);
    let (ipv6, dropped_v6) = pack(&active, &exceptions, false, capacity);
    let notes = notes(&active, ipv4.iter().chain(&ipv6).flatten());
    BlockPlan {
        ledger: next,
        ipv4,
        ipv6,
        notes,
        added: blocks.added,
        extended: blocks.extended,
        expired,
        held_back: blocks.held_back,
        dropped: [dropped_v4, dropped_v6].concat(),
        allow_listed,
        suppressed: blocks.suppressed,
        observe_only: policy.safety.mode == floodgate_rules::policy::Mode::Observe,
    }
}

/// The next ledger, its version bumped and its history trimmed to
/// [`HISTORY_DAYS`], and the blocks that ended since the last run.
fn expire(ledger: &LedgerState, now_ms: i64) -> (LedgerState, Vec<IpNet>) {
    let mut next = ledger.clone();
    next.version += 1;
    let since = ledger.last_run_ms.unwrap_or(i64::MIN);
    let expired: Vec<IpNet> = ledger
        .entries
        .values()
        .filter(|e| e.expires_at_ms > since && !e.is_active(now_ms))
        .map(|e| e.net)
        .collect();
    next.last_run_ms = Some(now_ms);
    let history_ms = HISTORY_DAYS * 86_400_000;
    next.entries
        .retain(|_, e| e.expires_at_ms + history_ms > now_ms);
    (next, expired)
}

/// An offender in a block tier, with that tier and its block rule.
struct Offence<'a> {
    offender: &'a Offender,
    tier: &'a Tier,
    rule: &'a BlockRule,
}

/// Offenders in a block tier and not fully excepted, the most severe and
/// most active first.
fn rank_offenders<'a>(offenders: &'a [Offender], policy: &'a Policy) -> Vec<Offence<'a>> {
    let mut ranked: Vec<Offence> = offenders
        .iter()
        .filter_map(|offender| {
            let tier = policy.tier(offender.tier.as_ref()?.as_str())?;
            let TierAction::Block(rule) = &tier.action else {
                return None;
            };
            let full_exception = offender
                .allow_entry
                .is_some_and(|i| policy.allow.entries()[i].requests.is_none());
            (!full_exception).then_some(Offence {
                offender,
                tier,
                rule,
            })
        })
        .collect();
    ranked.sort_by_key(|o| {
        let severity = policy.severity(o.tier.name.as_str());
        (
            Reverse(severity),
            Reverse(o.offender.requests),
            o.offender.net,
        )
    });
    ranked
}

/// What detection did to the ledger this run.
#[derive(Default)]
struct Blocks {
    added: Vec<IpNet>,
    extended: Vec<IpNet>,
    held_back: Vec<IpNet>,
    suppressed: Vec<IpNet>,
}

/// Records the ranked offences in `next`: an active block is extended, a
/// new or returning offender is blocked (for longer, by escalation), until
/// the circuit breaker's `max_new_blocks_per_run`; an offender an operator
/// unblocked is left alone while the unblock holds.
fn block_offenders(
    ranked: &[Offence],
    policy: &Policy,
    next: &mut LedgerState,
    now_ms: i64,
    source: &str,
) -> Blocks {
    let mut blocks = Blocks::default();
    let max_new = policy.safety.max_new_blocks_per_run.get() as usize;
    for offence in ranked {
        let net = offence.offender.net;
        match next.entries.get_mut(&net) {
            Some(entry) if entry.is_suppressed(now_ms) => blocks.suppressed.push(net),
            Some(entry) if entry.is_active(now_ms) => {
                extend(entry, offence, policy, now_ms);
                blocks.extended.push(net);
            }
            _ if blocks.added.len() >= max_new => blocks.held_back.push(net),
            history => {
                let entry = new_block(net, history.as_deref(), offence, now_ms, source);
                next.entries.insert(net, entry);
                blocks.added.push(net);
            }
        }
    }
    if !blocks.held_back.is_empty() {
        tracing::error!(
            held_back = blocks.held_back.len(),
            max_new,
            "circuit breaker: more new blocks than max_new_blocks_per_run; applying the worst {max_new} only"
        );
    }
    blocks
}

/// Extends an active block by its offence's duration; a worse tier
/// replaces the entry's tier.
fn extend(entry: &mut LedgerEntry, offence: &Offence, policy: &Policy, now_ms: i64) {
    let minutes = i64::from(offence.rule.minutes_for_offence(entry.offences)) * 60_000;
    entry.last_seen_ms = now_ms;
    entry.requests = offence.offender.requests;
    entry.addresses = offence.offender.addresses;
    entry.expires_at_ms = entry.expires_at_ms.max(now_ms + minutes);
    let tier = offence.tier.name.as_str();
    if policy.severity(tier) >= policy.severity(&entry.tier) {
        entry.tier = tier.to_owned();
    }
}

/// A new block; an offender with an ended block in `history` is blocked
/// again for its next offence's (escalated) duration.
fn new_block(
    net: IpNet,
    history: Option<&LedgerEntry>,
    offence: &Offence,
    now_ms: i64,
    source: &str,
) -> LedgerEntry {
    let (first_seen_ms, offences) =
        history.map_or((now_ms, 1), |e| (e.first_seen_ms, e.offences + 1));
    let (requests, tier) = (offence.offender.requests, offence.tier);
    let at_least = if offence.offender.addresses_at_least {
        "at least "
    } else {
        ""
    };
    let from = match offence.offender.addresses {
        1 if net.prefix_len() == net.max_prefix_len() => String::new(),
        1 => format!(" from {at_least}1 address"),
        n => format!(" from {at_least}{n} addresses"),
    };
    LedgerEntry {
        net,
        tier: tier.name.to_string(),
        first_seen_ms,
        last_seen_ms: now_ms,
        blocked_at_ms: now_ms,
        expires_at_ms: now_ms + i64::from(offence.rule.minutes_for_offence(offences)) * 60_000,
        offences,
        requests,
        addresses: offence.offender.addresses,
        source: source.to_owned(),
        reason: format!(
            "{requests} requests{from} in {} s (tier {})",
            tier.window_seconds, tier.name
        ),
        suppressed_until_ms: None,
    }
}

/// The allow-list exceptions in force.
struct Exceptions {
    /// Full exceptions: never in a set.
    full: Vec<IpNet>,
    /// Exceptions with a raised threshold: cut out of the blocks of wider
    /// keys.
    raised: Vec<IpNet>,
}

impl Exceptions {
    fn of(policy: &Policy) -> Exceptions {
        let (raised, full): (Vec<_>, Vec<_>) = policy
            .allow
            .entries()
            .iter()
            .filter(|e| !e.is_expired(policy.evaluated_on))
            .partition(|e| e.requests.is_some());
        Exceptions {
            full: full.iter().map(|e| e.cidr).collect(),
            raised: raised.iter().map(|e| e.cidr).collect(),
        }
    }

    /// What a block of `net` must leave out.
    fn cut_from(&self, net: &IpNet) -> Vec<IpNet> {
        let nested = self
            .raised
            .iter()
            .filter(|r| net.contains(*r) && r.prefix_len() > net.prefix_len());
        self.full.iter().chain(nested).copied().collect()
    }
}

/// The active blocks, most severe and most active first.
fn rank_active<'a>(next: &'a LedgerState, policy: &Policy, now_ms: i64) -> Vec<&'a LedgerEntry> {
    let mut active: Vec<&LedgerEntry> = next.active(now_ms).collect();
    active.sort_by_key(|e| {
        (
            Reverse(policy.severity(&e.tier)),
            Reverse(e.requests),
            e.net,
        )
    });
    active
}

/// The note of each address in the sets: the most severe active block
/// it is, is part of, or (merged with its siblings) holds. Each lookup is
/// a few map probes, not a scan of every block.
fn notes<'n>(
    active: &[&LedgerEntry],
    nets: impl Iterator<Item = &'n IpNet>,
) -> BTreeMap<IpNet, BlockNote> {
    // Ledger nets are truncated, so a range of addresses is a range of keys.
    let ranks: BTreeMap<IpNet, usize> = active
        .iter()
        .enumerate()
        .map(|(rank, e)| (e.net, rank))
        .collect();
    let most_severe = |net: &IpNet| {
        // The block itself, or a block it was cut from.
        let containing = std::iter::successors(Some(*net), IpNet::supernet)
            .filter_map(|n| ranks.get(&n).copied());
        // Blocks merged into it.
        let first = IpNet::new(net.network(), 0).expect("a prefix of 0 is valid");
        let contained = ranks
            .range(first..)
            .take_while(|(n, _)| n.network() <= net.broadcast())
            .filter(|(n, _)| net.contains(*n))
            .map(|(_, &rank)| rank);
        containing.chain(contained).min()
    };
    nets.filter_map(|net| {
        let rank = most_severe(net)?;
        let entry = active[rank];
        Some((
            *net,
            BlockNote {
                tier: entry.tier.clone(),
                expires_at_ms: entry.expires_at_ms,
                rank,
                adopted: entry.source == ADOPTED && entry.requests == 0,
            },
        ))
    })
    .collect()
}

/// Active blocks that an exception covers, in whole or in part.
fn allow_listed(active: &[&LedgerEntry], exceptions: &Exceptions) -> Vec<IpNet> {
    active
        .iter()
        .filter(|e| {
            exceptions
                .cut_from(&e.net)
                .iter()
                .any(|x| x.contains(&e.net) || e.net.contains(x))
        })
        .map(|e| e.net)
        .collect()
}

/// One family's sets (IPv4 with `v4`, else IPv6): the longest prefix of
/// the ranking that fits the target's sets once the exceptions are cut
/// out and the rest aggregated, in set order (the first filled first); and
/// the blocks that did not fit.
fn pack(
    active: &[&LedgerEntry],
    exceptions: &Exceptions,
    v4: bool,
    capacity: Capacity,
) -> (Vec<Vec<IpNet>>, Vec<IpNet>) {
    let family: Vec<IpNet> = active
        .iter()
        .map(|e| e.net)
        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
        .collect();
    let sets = if v4 {
        capacity.ipv4_sets
    } else {
        capacity.ipv6_sets
    };
    let room = sets * capacity.per_set;
    // Each block with its exceptions cut out.
    let cut: Vec<Vec<IpNet>> = family
        .iter()
        .map(|net| exclude(&[*net], &exceptions.cut_from(net)))
        .collect();
    let fits = |k: usize| aggregate(&cut[..k].concat()).len() <= room;
    // Aggregation can merge a newcomer with its sibling, so the count is
    // not quite monotone: bisection finds a prefix that fits, near the
    // longest.
    let (mut low, mut high) = (0, family.len());
    while low < high {
        let mid = (low + high).div_ceil(2);
        if fits(mid) { low = mid } else { high = mid - 1 }
    }
    let addresses = aggregate(&cut[..low].concat());
    let mut chunks: Vec<Vec<IpNet>> = addresses
        .chunks(capacity.per_set.max(1))
        .map(<[IpNet]>::to_vec)
        .collect();
    chunks.resize(sets, Vec::new());
    (chunks, family[low..].to_vec())
}

/// The `source` of a ledger entry taken in from a target.
pub const ADOPTED: &str = "adopted";

/// Takes in what the targets hold that the ledger has no entry for: the
/// cycle calls it when the ledger knows nothing (first run, or a lost state
/// file), and for a target it could not read then. Each address is recorded
/// as blocked by the lowest block tier for its duration, so no active
/// attacker is unblocked by a lost ledger; `reason` says why it was taken
/// in. Returns what was adopted.
/// Otherwise the cycle adopts nothing: strangers are reported and removed
/// (see [`unknown_entries`]).
pub fn adopt(
    ledger: &mut LedgerState,
    found: &[IpNet],
    policy: &Policy,
    now_ms: i64,
    reason: &str,
) -> Vec<IpNet> {
    let lowest_block = policy.tiers.iter().find_map(|t| match &t.action {
        TierAction::Block(rule) => Some((t.name.to_string(), rule.block_minutes.get())),
        TierAction::Observe => None,
    });
    let Some((tier, minutes)) = lowest_block else {
        return Vec::new();
    };
    let mut adopted = Vec::new();
    for &net in found {
        if ledger.entries.contains_key(&net) {
            continue;
        }
        ledger.entries.insert(
            net,
            LedgerEntry {
                net,
                tier: tier.clone(),
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                blocked_at_ms: now_ms,
                expires_at_ms: now_ms + i64::from(minutes) * 60_000,
                offences: 1,
                requests: 0,
                addresses: 1,
                source: ADOPTED.to_owned(),
                reason: reason.to_owned(),
                suppressed_until_ms: None,
            },
        );
        adopted.push(net);
    }
    adopted
}

/// Addresses the targets hold that the ledger never recorded (neither an
/// active block nor one that has ended): they are reported, and the next
/// apply removes them. Nothing is silently kept.
pub fn unknown_entries(ledger: &LedgerState, found: &[IpNet]) -> Vec<IpNet> {
    let known: Vec<IpNet> = ledger.entries.keys().copied().collect();
    // Sets hold aggregated prefixes: a found /28 is known when ledger
    // entries cover all of it, not only when one entry contains it.
    found
        .iter()
        .copied()
        .filter(|net| !exclude(&[*net], &known).is_empty())
        .collect()
}
