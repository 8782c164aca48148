//! Backtesting a policy: replay historical WAF records through detection and
//! planning with the clock stepping through a period, writing nothing, and
//! tell what the policy would have done: who it would have blocked and for
//! how long, the requests that blocking would have stopped, the allow-list's
//! part, and the circuit breaker.
//!
//! Per-window counts slide with the clock (each record is added once and
//! removed once per window), so a week at one-minute steps costs about as
//! much as reading the logs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use floodgate_rules::Policy;
use floodgate_rules::policy::AllowEntry;
use ipnet::IpNet;
use serde::Serialize;

use crate::detect::{aggregations, count_spec, detect};
use crate::ledger::LedgerState;
use crate::plan::{Capacity, plan};
use crate::traffic::{TooManyWindows, TrafficCounter};

/// One request: when, from whom, and which tier matches it meets (the
/// bits of [`crate::waflog::Hit::scopes`], for the policy's count spec).
pub type Record = (i64, IpAddr, u32);

/// What a sliding window counts by: an address, over all its requests
/// (`None`) or those of one tier match (its bit).
type SlidingKey = (IpAddr, Option<u32>);

/// The sliding keys a record counts under.
fn sliding_keys(&(_, ip, scopes): &Record) -> impl Iterator<Item = SlidingKey> {
    let bits = (0..32).filter(move |bit| scopes & (1 << bit) != 0);
    std::iter::once((ip, None)).chain(bits.map(move |bit| (ip, Some(bit))))
}

/// When an address was blocked: `[from_ms, to_ms)` spans.
pub type Spans = Vec<(i64, i64)>;

/// What the policy would have done.
#[derive(Debug, Serialize)]
pub struct Backtest {
    /// The period, ms since the epoch.
    pub from_ms: i64,
    /// The end of the period.
    pub to_ms: i64,
    /// The clock's step.
    pub step_ms: i64,
    /// Requests in the period.
    pub requests: u64,
    /// Every address or range blocked at some point, with its spans.
    pub blocked: BTreeMap<IpNet, Spans>,
    /// The tier that blocked each of them (the last one, when several did).
    pub tiers: BTreeMap<IpNet, String>,
    /// For each blocked range wider than one address, the addresses seen
    /// in it during the period, ascending.
    pub seen_in: BTreeMap<IpNet, Vec<IpAddr>>,
    /// Requests in the period from addresses while they were blocked.
    pub stopped: u64,
    /// Requests from allow-listed addresses.
    pub allow_listed_requests: u64,
    /// Allow-listed addresses whose traffic reached a tier's threshold: the
    /// exception is what kept them unblocked.
    pub allow_listed_offenders: usize,
    /// Steps at which the circuit breaker held blocks back.
    pub breaker_steps: Vec<i64>,
    /// Requests per step for the busiest keys (addresses, or prefixes by
    /// the policy-wide prefix lengths), for the charts.
    pub top: Vec<(IpNet, Vec<u32>)>,
    /// Per step: all requests, and those the blocks would have stopped.
    pub per_step: Vec<(u32, u32)>,
}

impl Backtest {
    /// Minutes an address or range spent blocked within the period.
    pub fn minutes_blocked(&self, net: &IpNet) -> f64 {
        let spans = self.blocked.get(net).map_or(&[][..], Vec::as_slice);
        spans.iter().map(|(a, b)| (b - a) as f64 / 60_000.0).sum()
    }
}

/// Replays `records` (any order) from `from_ms` to `to_ms` in steps of
/// `step_ms`; charts the `top` busiest addresses.
pub fn run(
    policy: &Policy,
    mut records: Vec<Record>,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    capacity: Capacity,
    top: usize,
) -> Result<Backtest, TooManyWindows> {
    records.sort_unstable();
    let mut windows: Vec<u32> = policy
        .tiers
        .iter()
        .map(|t| t.window_seconds.get())
        .collect();
    windows.sort_unstable();
    windows.dedup();
    let widest = windows.last().copied().unwrap_or(300);
    // Per window: the counts, and where its head and tail stand in `records`.
    let mut sliding: Vec<(u32, HashMap<SlidingKey, u32>, usize, usize)> =
        windows.iter().map(|&w| (w, HashMap::new(), 0, 0)).collect();
    let mut ledger = LedgerState::default();
    let mut blocked: BTreeMap<IpNet, Spans> = BTreeMap::new();
    let mut tiers: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut breaker_steps = Vec::new();
    let mut allow_listed: std::collections::BTreeSet<IpNet> = Default::default();
    let mut now = from_ms;
    while now <= to_ms {
        let spec = count_spec(policy, now, widest)?;
        let mut counter = TrafficCounter::new(spec);
        for (window, counts, head, tail) in &mut sliding {
            while *head < records.len() && records[*head].0 <= now {
                for key in sliding_keys(&records[*head]) {
                    *counts.entry(key).or_default() += 1;
                }
                *head += 1;
            }
            let start = now - i64::from(*window) * 1000;
            while *tail < *head && records[*tail].0 <= start {
                for key in sliding_keys(&records[*tail]) {
                    if let Some(count) = counts.get_mut(&key) {
                        *count -= 1;
                        if *count == 0 {
                            counts.remove(&key);
                        }
                    }
                }
                *tail += 1;
            }
            // The lowest threshold of a tier on this window: an allow-listed
            // address at or above it would have been caught without its exception.
            let lowest = policy
                .tiers
                .iter()
                .filter(|t| t.window_seconds.get() == *window)
                .map(|t| t.requests.get())
                .min()
                .unwrap_or(u32::MAX);
            for (&(ip, scope), &count) in counts.iter() {
                counter.add_requests(ip, *window, count, scope);
                if scope.is_none() && count >= lowest && policy.allow.find(ip).is_some() {
                    allow_listed.insert(ip.into());
                }
            }
        }
        let offenders = detect(&counter.finish(), policy, widest);
        allow_listed.extend(
            offenders
                .iter()
                .filter(|o| o.allow_entry.is_some())
                .map(|o| o.net),
        );
        let planned = plan(&offenders, policy, &ledger, now, "backtest", capacity);
        if planned.breaker_tripped() {
            breaker_steps.push(now);
        }
        // Blocked from now until the next step, or until the block ends.
        let exempt = |net: &IpNet| planned.allow_listed.contains(net);
        for entry in planned.ledger.active(now).filter(|e| !exempt(&e.net)) {
            let end = entry.expires_at_ms.min(now + step_ms).min(to_ms);
            tiers.insert(entry.net, entry.tier.clone());
            let spans = blocked.entry(entry.net).or_default();
            match spans.last_mut() {
                Some(last) if last.1 >= now => last.1 = last.1.max(end),
                _ => spans.push((now, end)),
            }
        }
        ledger = planned.ledger;
        now += step_ms;
    }

    let in_period = |ts: i64| ts > from_ms - step_ms && ts <= to_ms;
    let period: Vec<&Record> = records.iter().filter(|(ts, ..)| in_period(*ts)).collect();
    // Detection blocks keys, so a lookup of each of an address's keys finds
    // its blocks; a full exception is cut out of every block.
    let keys = aggregations(policy);
    let blocked_at = |ip: IpAddr, ts: i64, exception: Option<&AllowEntry>| {
        let fully_excepted = exception.is_some_and(|e| e.requests.is_none());
        !fully_excepted
            && keys.iter().any(|key| {
                blocked
                    .get(&key.prefixes.key(ip))
                    .is_some_and(|spans| spans.iter().any(|&(a, b)| a <= ts && ts < b))
            })
    };
    let mut seen_in: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for net in blocked
        .keys()
        .filter(|n| n.prefix_len() < n.max_prefix_len())
    {
        let mut inside: Vec<IpAddr> = period
            .iter()
            .map(|(_, ip, _)| *ip)
            .filter(|ip| net.contains(ip))
            .collect();
        inside.sort_unstable();
        inside.dedup();
        seen_in.insert(*net, inside);
    }
    let mut per_step = vec![(0u32, 0u32); steps(from_ms, to_ms, step_ms)];
    let (mut stopped, mut allow_listed_requests) = (0, 0);
    for (ts, ip, _) in &period {
        let exception = policy.allow.find(*ip);
        allow_listed_requests += u64::from(exception.is_some());
        let blocked = blocked_at(*ip, *ts, exception);
        stopped += u64::from(blocked);
        if let Some(step) = per_step.get_mut(step_of(*ts, from_ms, step_ms)) {
            step.0 += 1;
            step.1 += u32::from(blocked);
        }
    }
    Ok(Backtest {
        from_ms,
        to_ms,
        step_ms,
        requests: period.len() as u64,
        top: busiest(&period, policy, from_ms, step_ms, to_ms, top),
        per_step,
        blocked,
        tiers,
        seen_in,
        stopped,
        allow_listed_requests,
        allow_listed_offenders: allow_listed.len(),
        breaker_steps,
    })
}

/// Requests per step of the `top` busiest keys of the policy-wide prefixes.
fn busiest(
    period: &[&Record],
    policy: &Policy,
    from_ms: i64,
    step_ms: i64,
    to_ms: i64,
    top: usize,
) -> Vec<(IpNet, Vec<u32>)> {
    let key = |ip: IpAddr| policy.prefixes.key(ip);
    let mut totals: HashMap<IpNet, u64> = HashMap::new();
    for (_, ip, _) in period {
        *totals.entry(key(*ip)).or_default() += 1;
    }
    let mut ranked: Vec<(IpNet, u64)> = totals.into_iter().collect();
    ranked.sort_by_key(|&(net, n)| (std::cmp::Reverse(n), net));
    ranked.truncate(top);
    ranked
        .into_iter()
        .map(|(net, _)| {
            let mut series = vec![0u32; steps(from_ms, to_ms, step_ms)];
            for (ts, ..) in period.iter().filter(|(_, ip, _)| key(*ip) == net) {
                if let Some(slot) = series.get_mut(step_of(*ts, from_ms, step_ms)) {
                    *slot += 1;
                }
            }
            (net, series)
        })
        .collect()
}

/// How many steps the period has.
fn steps(from_ms: i64, to_ms: i64, step_ms: i64) -> usize {
    ((to_ms - from_ms) / step_ms + 1) as usize
}

/// The step a record at `ts` belongs to: the one that ends at or after it.
fn step_of(ts: i64, from_ms: i64, step_ms: i64) -> usize {
    (((ts - from_ms).max(0) + step_ms - 1) / step_ms) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[tiers]]
name = "block"
requests = 300
window_seconds = 300
action = "block"
block_minutes = 10

[[allow]]
cidr = "198.51.100.0/24"
reason = "partner"
owner = "ops"
expires = 2099-01-01
"#;

    const MINUTE: i64 = 60_000;

    /// `per_minute` requests a minute from `ip` for `minutes` minutes from 0.
    fn steady(ip: &str, per_minute: i64, minutes: i64) -> Vec<Record> {
        let ip: IpAddr = ip.parse().unwrap();
        (0..per_minute * minutes)
            .map(|i| (1 + i * MINUTE / per_minute, ip, 0))
            .collect()
    }

    #[test]
    fn a_steady_attacker_is_blocked_once_its_window_fills_and_the_partner_never() {
        let policy = Policy::from_toml(POLICY, "p.toml", time::macros::date!(2026 - 11 - 22))
            .unwrap()
            .policy;
        let mut records = steady("203.0.113.9", 100, 30);
        records.extend(steady("198.51.100.7", 200, 30));
        records.extend(steady("192.0.2.1", 10, 30));
        let capacity = Capacity {
            ipv4_sets: 1,
            ipv6_sets: 1,
            per_set: 10_000,
        };
        let result = run(&policy, records, 0, 30 * MINUTE, MINUTE, capacity, 2).unwrap();
        let attacker: IpNet = "203.0.113.9/32".parse().unwrap();
        assert_eq!(result.blocked.keys().collect::<Vec<_>>(), [&attacker]);
        // 300 requests are in the window at 3 min; blocked from then on,
        // block after block, to the end.
        assert_eq!(result.blocked[&attacker], [(3 * MINUTE, 30 * MINUTE)]);
        assert_eq!(result.minutes_blocked(&attacker), 27.0);
        assert_eq!(result.tiers[&attacker], "block");
        assert_eq!(result.stopped, 27 * 100, "every request after 3 min");
        assert_eq!(result.allow_listed_offenders, 1);
        assert_eq!(result.allow_listed_requests, 200 * 30);
        assert_eq!(result.top[0].0, "198.51.100.7/32".parse::<IpNet>().unwrap());
        assert_eq!(result.top[0].1[1], 200, "requests per one-minute step");
        // All three clients' minute at 5 min; the attacker's 100 stopped.
        assert_eq!(result.per_step[5], (310, 100));
        assert_eq!(result.per_step[2], (310, 0), "not blocked yet");
    }
}
