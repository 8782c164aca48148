//! Offender detection: which client IPs crossed which tier.
//!
//! For each tier, an IP's requests are counted over the tier's own window
//! ending at the same instant; it qualifies with `requests >= threshold` and
//! is classed into the highest tier it reaches. An allow-listed address
//! never qualifies for a block tier, except past the raised `requests` of its
//! exception; it is still reported, with its counts, for review.
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
//! counter.add_requests(ip, 60, 5);
//! let offenders = detect(&counter.finish(), &policy, 60);
//! assert_eq!(offenders[0].tier.as_ref().unwrap().as_str(), "block");
//! ```

use std::cmp::Reverse;
use std::net::IpAddr;

use floodgate_rules::Policy;
use floodgate_rules::policy::{Tier, TierName};

use crate::traffic::{CountSpec, IpCounts, TooManyWindows, Traffic};
use crate::waflog::Action;

/// One client IP, with what it did and what the policy makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    /// The client.
    pub ip: IpAddr,
    /// Requests in the report window.
    pub requests: u32,
    /// The highest tier it reached, if any.
    pub tier: Option<TierName>,
    /// Requests per action over the widest counted window.
    pub actions: Vec<(Action, u32)>,
    /// The allow-list entry (index into the policy's entries) covering it.
    pub allow_entry: Option<usize>,
}

/// What to count for `policy`'s tiers plus a report window, all ending at
/// `end_ms`. A tier window's floor is its lowest threshold, so server-side
/// sources may leave out IPs that cannot reach any tier; the report window
/// keeps every IP.
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
    let mut spec = CountSpec::new(end_ms, &windows)?;
    for &window in &windows {
        let lowest = policy
            .tiers
            .iter()
            .filter(|t| t.window_seconds.get() == window)
            .map(|t| t.requests.get())
            .min();
        if let (Some(lowest), false) = (lowest, window == report_window_seconds) {
            spec = spec.with_floor(window, lowest);
        }
    }
    Ok(spec)
}

/// The highest tier `counts` reaches under `policy`, honouring `ip`'s
/// allow-list exception.
pub fn classify<'p>(
    policy: &'p Policy,
    counts: &IpCounts<'_>,
    allow_entry: Option<usize>,
) -> Option<&'p Tier> {
    let exception = allow_entry.map(|i| &policy.allow.entries()[i]);
    policy.tiers.iter().rev().find(|tier| {
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

/// Every IP in `traffic`, classified, sorted by requests in the report
/// window (descending), ties by IP (IPv4 before IPv6). `traffic` must have
/// counted the windows of [`count_spec`].
pub fn rank(traffic: &Traffic, policy: &Policy, report_window_seconds: u32) -> Vec<Offender> {
    let mut ranked: Vec<Offender> = traffic
        .iter()
        .map(|(ip, counts)| {
            let allow_entry = policy.allow.find_index(ip);
            Offender {
                ip,
                requests: counts.requests(report_window_seconds).unwrap_or(0),
                tier: classify(policy, &counts, allow_entry).map(|t| t.name.clone()),
                actions: counts.actions().collect(),
                allow_entry,
            }
        })
        .collect();
    ranked.sort_unstable_by_key(|o| (Reverse(o.requests), o.ip));
    ranked
}

/// The IPs that reached a tier, ranked as by [`rank`].
pub fn detect(traffic: &Traffic, policy: &Policy, report_window_seconds: u32) -> Vec<Offender> {
    let mut offenders = rank(traffic, policy, report_window_seconds);
    offenders.retain(|o| o.tier.is_some());
    offenders
}
