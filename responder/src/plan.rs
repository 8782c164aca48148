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
//!   full exception covers is ever in a set, whatever the ledger says
//!   (exceptions with a raised `requests` threshold are decided by detection).
//! - Sets hold at most `per_set` addresses (10,000 in WAF). Past that the
//!   entries spill into the further sets a target declares; past all of
//!   them, the most severe and most active entries are kept and every
//!   dropped one is reported. The update never fails as a whole.

use std::cmp::Reverse;

use floodgate_rules::Policy;
use floodgate_rules::cidr::{aggregate, exclude};
use floodgate_rules::policy::TierAction;
use ipnet::IpNet;

use crate::detect::Offender;
use crate::ledger::{HISTORY_DAYS, LedgerEntry, LedgerState};

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

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    /// The ledger after this run.
    pub ledger: LedgerState,
    /// What each IPv4 set should hold, in set order.
    pub ipv4: Vec<Vec<IpNet>>,
    /// What each IPv6 set should hold, in set order.
    pub ipv6: Vec<Vec<IpNet>>,
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
    pub fn desired(&self) -> crate::target::DesiredSets {
        crate::target::DesiredSets {
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
        }
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

    // Offenders in a block tier, the most severe and most active first.
    let severity = |tier: &str| {
        policy
            .tiers
            .iter()
            .position(|t| t.name.as_str() == tier)
            .unwrap_or(usize::MAX)
    };
    let mut blocking: Vec<(&Offender, usize)> = offenders
        .iter()
        .filter_map(|o| {
            let tier = policy.tier(o.tier.as_ref()?.as_str())?;
            let full_exception = o
                .allow_entry
                .is_some_and(|i| policy.allow.entries()[i].requests.is_none());
            (tier.blocks() && !full_exception).then(|| (o, severity(tier.name.as_str())))
        })
        .collect();
    blocking.sort_by_key(|&(o, severity)| (Reverse(severity), Reverse(o.requests), o.ip));

    let (mut added, mut extended, mut held_back) = (Vec::new(), Vec::new(), Vec::new());
    let mut suppressed = Vec::new();
    let max_new = policy.safety.max_new_blocks_per_run.get() as usize;
    for (offender, _) in blocking {
        let tier = policy
            .tier(offender.tier.as_ref().expect("filtered above").as_str())
            .expect("filtered above");
        let TierAction::Block(rule) = &tier.action else {
            continue;
        };
        let net = IpNet::from(offender.ip);
        if next
            .entries
            .get(&net)
            .is_some_and(|e| e.is_suppressed(now_ms))
        {
            suppressed.push(net);
            continue;
        }
        let minutes = |offences: u32| i64::from(rule.minutes_for_offence(offences)) * 60_000;
        match next.entries.get_mut(&net) {
            Some(entry) if entry.is_active(now_ms) => {
                entry.last_seen_ms = now_ms;
                entry.requests = offender.requests;
                entry.expires_at_ms = entry.expires_at_ms.max(now_ms + minutes(entry.offences));
                if severity(tier.name.as_str()) >= severity(&entry.tier) {
                    entry.tier = tier.name.to_string();
                }
                extended.push(net);
            }
            _ if added.len() >= max_new => held_back.push(net),
            history => {
                let (first_seen_ms, offences) =
                    history.map_or((now_ms, 1), |e| (e.first_seen_ms, e.offences + 1));
                next.entries.insert(
                    net,
                    LedgerEntry {
                        net,
                        tier: tier.name.to_string(),
                        first_seen_ms,
                        last_seen_ms: now_ms,
                        blocked_at_ms: now_ms,
                        expires_at_ms: now_ms + minutes(offences),
                        offences,
                        requests: offender.requests,
                        source: source.to_owned(),
                        reason: format!(
                            "{} requests in {} s (tier {})",
                            offender.requests, tier.window_seconds, tier.name
                        ),
                        suppressed_until_ms: None,
                    },
                );
                added.push(net);
            }
        }
    }
    if !held_back.is_empty() {
        tracing::error!(
            held_back = held_back.len(),
            max_new,
            "circuit breaker: more new blocks than max_new_blocks_per_run; applying the worst {max_new} only"
        );
    }

    // The sets: active blocks, most severe and most active first, minus the
    // full exceptions of the allow-list.
    let exceptions: Vec<IpNet> = policy
        .allow
        .entries()
        .iter()
        .filter(|e| !e.is_expired(policy.evaluated_on) && e.requests.is_none())
        .map(|e| e.cidr)
        .collect();
    let mut active: Vec<&LedgerEntry> = next.active(now_ms).collect();
    active.sort_by_key(|e| (Reverse(severity(&e.tier)), Reverse(e.requests), e.net));
    let allow_listed: Vec<IpNet> = active
        .iter()
        .filter(|e| {
            exceptions
                .iter()
                .any(|x| x.contains(&e.net) || e.net.contains(x))
        })
        .map(|e| e.net)
        .collect();
    let mut dropped = Vec::new();
    let mut fill = |v4: bool, sets: usize| -> Vec<Vec<IpNet>> {
        let family: Vec<IpNet> = active
            .iter()
            .map(|e| e.net)
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .collect();
        let room = sets * capacity.per_set;
        let fits = |k: usize| exclude(&family[..k], &exceptions).len() <= room;
        // A long prefix of the ranking that fits, by bisection. Aggregation
        // can merge a newcomer with its sibling, so the count is not quite
        // monotone: this finds a prefix that fits, near the longest.
        let (mut low, mut high) = (0, family.len());
        while low < high {
            let mid = (low + high).div_ceil(2);
            if fits(mid) { low = mid } else { high = mid - 1 }
        }
        dropped.extend_from_slice(&family[low..]);
        let addresses = aggregate(&exclude(&family[..low], &exceptions));
        let mut chunks: Vec<Vec<IpNet>> = addresses
            .chunks(capacity.per_set.max(1))
            .map(<[IpNet]>::to_vec)
            .collect();
        chunks.resize(sets, Vec::new());
        chunks
    };
    let ipv4 = fill(true, capacity.ipv4_sets);
    let ipv6 = fill(false, capacity.ipv6_sets);
    BlockPlan {
        ledger: next,
        ipv4,
        ipv6,
        added,
        extended,
        expired,
        held_back,
        dropped,
        allow_listed,
        suppressed,
        observe_only: policy.safety.mode == floodgate_rules::policy::Mode::Observe,
    }
}

/// Takes in what the targets already hold when the ledger knows nothing
/// (first run, or a lost state file): each address found is recorded as
/// blocked by the lowest block tier for its duration, so no active attacker
/// is unblocked by a lost ledger. Returns what was adopted; with a ledger
/// that has entries, adopts nothing (see [`unknown_entries`]).
pub fn adopt(
    ledger: &mut LedgerState,
    found: &[IpNet],
    policy: &Policy,
    now_ms: i64,
) -> Vec<IpNet> {
    let lowest_block = policy.tiers.iter().find_map(|t| match &t.action {
        TierAction::Block(rule) => Some((t.name.to_string(), rule.block_minutes.get())),
        TierAction::Observe => None,
    });
    let Some((tier, minutes)) = lowest_block.filter(|_| ledger.entries.is_empty()) else {
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
                source: "adopted".to_owned(),
                reason: "found in an IP set while the ledger was empty".to_owned(),
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
