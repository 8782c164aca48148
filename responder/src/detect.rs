//! Offender detection: which clients crossed which tier.
//!
//! Each tier counts requests per aggregation key (a client address cut to
//! the tier's prefixes: by default an IPv4 address, or an IPv6 /64) over
//! its own window, all ending at the same instant; a key qualifies with
//! `requests >= threshold` and is classed into the highest tier of its
//! prefixes that it reaches. A key inside an allow-list exception never
//! qualifies for a block tier, except past the raised `requests` of its
//! exception; it is still reported, with its counts, for review. (An
//! exception inside a key is cut out of the key's block by the plan.)
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::detect::{count_spec, detect};
//! use floodgate_responder::traffic::TrafficCounter;
//! use floodgate_rules::Policy;
//! use time::macros::date;
//!
//! let text = "[[tiers]]\nname = \"block\"\nrequests = 3\nwindow_seconds = 60\naction = \"block\"\nblock_minutes = 15\n";
//! let policy = Policy::from_toml(text, "p.toml", date!(2026 - 11 - 22)).unwrap().policy;
//! let spec = count_spec(&policy, 60_000, 60).unwrap();
//! let mut counter = TrafficCounter::new(spec);
//! let ip = "192.0.2.1".parse().unwrap();
//! counter.add_requests(ip, 60, 5, None);
//! let offenders = detect(&counter.finish(), &policy, 60);
//! assert_eq!(offenders[0].tier.as_ref().unwrap().as_str(), "block");
//! assert_eq!(offenders[0].net.to_string(), "192.0.2.1/32");
//! ```

use std::cmp::Reverse;
use std::collections::HashMap;

use floodgate_rules::Policy;
use floodgate_rules::policy::{Aggregation, Tier, TierName};
use ipnet::IpNet;

use crate::traffic::{CountSpec, IpCounts, NOT_READ, TooManyWindows, Traffic};
use crate::waflog::Action;

/// One client key (an address or a prefix), with what it did and what the
/// policy makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    /// The key: an address (/32 or /128) or a prefix such as an IPv6 /64.
    pub net: IpNet,
    /// Distinct addresses seen in it (1 for an address).
    pub addresses: u32,
    /// Whether `addresses` is a lower bound (Logs Insights counted the
    /// prefix, not its addresses).
    pub addresses_at_least: bool,
    /// Requests in the report window.
    pub requests: u32,
    /// The highest tier it reached, if any.
    pub tier: Option<TierName>,
    /// Requests per action over the widest counted window.
    pub actions: Vec<(Action, u32)>,
    /// The allow-list entry (index into the policy's entries) containing it.
    pub allow_entry: Option<usize>,
}

impl Offender {
    /// The key as people read it: an address alone, a prefix with its length.
    pub fn key_text(&self) -> String {
        key_text(&self.net)
    }
}

/// An address alone (`192.0.2.7`), a prefix with its length (`2001:db8::/64`).
pub fn key_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The ways `policy`'s tiers count, the policy-wide prefixes over every
/// request first.
pub fn aggregations(policy: &Policy) -> Vec<Aggregation> {
    let mut keys = vec![Aggregation::from(policy.prefixes)];
    for tier in &policy.tiers {
        let aggregation = tier.aggregation();
        if !keys.contains(&aggregation) {
            keys.push(aggregation);
        }
    }
    keys
}

/// What to count for `policy`'s tiers plus a report window, all ending at
/// `end_ms`, by every key the tiers use. A tier window's floor is its
/// lowest threshold, so server-side sources may leave out keys that cannot
/// reach any tier; the report window keeps every key of the policy-wide
/// prefixes.
pub fn count_spec(
    policy: &Policy,
    end_ms: i64,
    report_window_seconds: u32,
) -> Result<CountSpec, TooManyWindows> {
    let mut windows: Vec<u32> = policy
        .tiers
        .iter()
        .map(|t| t.window_seconds.get())
        .collect();
    windows.push(report_window_seconds);
    let keys = aggregations(policy);
    let mut spec = CountSpec::new(end_ms, &windows)?.with_keys(&keys);
    for (index, key) in keys.iter().enumerate() {
        for &window in &windows {
            let lowest = policy
                .tiers
                .iter()
                .filter(|t| t.aggregation() == *key && t.window_seconds.get() == window)
                .map(|t| t.requests.get())
                .min();
            let reported = index == 0 && window == report_window_seconds;
            let floor = match lowest {
                _ if reported => 1,
                Some(lowest) => lowest,
                None => NOT_READ,
            };
            spec = spec.with_floor(key, window, floor);
        }
    }
    Ok(spec)
}

/// The highest tier counting by `aggregation` that a key's `counts`
/// reach under `policy`, honouring the key's allow-list exception.
pub fn classify<'p>(
    policy: &'p Policy,
    aggregation: &Aggregation,
    counts: &IpCounts<'_>,
    allow_entry: Option<usize>,
) -> Option<&'p Tier> {
    let exception = allow_entry.map(|i| &policy.allow.entries()[i]);
    let tiers = policy
        .tiers
        .iter()
        .filter(|t| t.prefixes == aggregation.prefixes && t.scope == aggregation.scope);
    tiers.rev().find(|tier| {
        let mut threshold = tier.requests.get();
        if let (true, Some(exception)) = (tier.blocks(), exception) {
            match exception.requests {
                Some(raised) => threshold = threshold.max(raised.get()),
                None => return false,
            }
        }
        counts
            .requests(tier.window_seconds.get())
            .is_some_and(|n| n >= threshold)
    })
}

/// Every key of the policy-wide prefixes in `traffic`, and every key of a
/// tier's own prefixes or match that reached a tier, classified, sorted by
/// requests in the report window (descending), ties by key (IPv4 before
/// IPv6). A key that several ways of counting classify (an address over a
/// scoped tier and a global one) is one offender, in the most severe tier
/// it reached: a block tier before an observe tier, then the latest in the
/// policy. `traffic` must have counted the windows and keys of
/// [`count_spec`].
pub fn rank(traffic: &Traffic, policy: &Policy, report_window_seconds: u32) -> Vec<Offender> {
    let keys = traffic.spec().keys();
    let offender = |key: usize, net: IpNet, counts: IpCounts<'_>| {
        let allow_entry = policy.allow.find_containing(net);
        let tier = classify(policy, &keys[key], &counts, allow_entry);
        (key == 0 || tier.is_some()).then(|| Offender {
            net,
            addresses: counts.addresses(),
            addresses_at_least: counts.addresses_at_least(),
            requests: counts.requests(report_window_seconds).unwrap_or(0),
            tier: tier.map(|t| t.name.clone()),
            actions: counts.actions().collect(),
            allow_entry,
        })
    };
    let mut ranked = Vec::new();
    // The keys of tiers with their own prefixes or match that reached a
    // tier (usually few), the most severe per key.
    let mut others: HashMap<IpNet, Offender> = HashMap::new();
    for (key, net, counts) in traffic.iter() {
        let Some(found) = offender(key, net, counts) else {
            continue;
        };
        if key == 0 {
            ranked.push(found);
        } else if others
            .get(&net)
            .is_none_or(|known| severity(policy, &found) > severity(policy, known))
        {
            others.insert(net, found);
        }
    }
    if !others.is_empty() {
        for known in &mut ranked {
            if let Some(other) = others.remove(&known.net)
                && severity(policy, &other) > severity(policy, known)
            {
                known.tier = other.tier;
            }
        }
        ranked.extend(others.into_values());
    }
    ranked.sort_unstable_by_key(|o| (Reverse(o.requests), o.net));
    ranked
}

/// How severe an offender's tier is ([`Policy::severity`]); `None` for none.
fn severity(policy: &Policy, offender: &Offender) -> Option<(bool, usize)> {
    policy.severity(offender.tier.as_ref()?.as_str())
}

/// The IPs that reached a tier, ranked as by [`rank`].
pub fn detect(traffic: &Traffic, policy: &Policy, report_window_seconds: u32) -> Vec<Offender> {
    let mut offenders = rank(traffic, policy, report_window_seconds);
    offenders.retain(|o| o.tier.is_some());
    offenders
}
