//! The fast detector: between scheduled cycles, the daemon asks every fast
//! tier's AWS WAF rate-based rule, in every web ACL it manages, which
//! addresses it is limiting right now, and blocks those everywhere.
//!
//! AWS WAF checks rates about every 10 s, and a rate-based rule limits only
//! in its own web ACL, only while the rate lasts. A pass turns what the
//! rules list into the responder's own blocks: the same plan as a cycle's
//! offenders (the allow-list, an operator's unblock, the circuit breaker,
//! escalation from the ledger's history, the tier's block duration),
//! written to every target at once under the same lease, and recorded in
//! the ledger with `source = "rate-rule"`. A pass writes only when a rule
//! lists an address the ledger does not block; it extends nothing and
//! shortens nothing: the log cycle keeps exact counts, spread attacks and
//! expiry.
//!
//! Passes and cycles take turns ([`crate::cycle::Writes`]): a target has
//! one writer at a time, and the ledger's compare-and-swap still guards
//! a second responder.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_rules::Policy;
use floodgate_rules::policy::TierName;
use ipnet::IpNet;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::clock::{Stopwatch, rfc3339_from_ms, unix_ms};
use crate::cycle::{
    CycleError, LeaseLine, Origin, Parts, Phases, Prepared, TargetLine, apply_as, take_lease,
    target_lines,
};
use crate::detect::Offender;
use crate::lease::Standing;
use crate::ledger::Ledger;
use crate::rate_rules::RateRule;
use crate::sink::TargetError;

/// The `source` of a ledger entry a fast pass recorded.
pub const RATE_RULE: &str = "rate-rule";

/// The fast tiers' rules, and when each address they list was first seen.
#[derive(Debug)]
pub struct FastDetector {
    rules: Vec<Arc<RateRule>>,
    interval: Duration,
    /// Addresses listed and not yet blocked, with the poll that first
    /// listed them: a block's latency runs from there.
    first_seen: Mutex<HashMap<IpNet, Instant>>,
}

/// An address a rule listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The address.
    pub address: IpNet,
    /// The rule's tier.
    pub tier: TierName,
    /// The rule, as reports name it.
    pub rule: String,
}

/// What one poll of every rule found.
#[derive(Debug, Default)]
pub struct Poll {
    /// Every address listed, with the rule that listed it.
    pub sightings: Vec<Sighting>,
    /// The rules asked (those paused after throttling are not).
    pub rules_polled: usize,
    /// `ListWebACLs` and `GetRateBasedStatementManagedKeys` calls.
    pub calls: u32,
    /// Rules that could not be read.
    pub failures: Vec<RuleFailure>,
}

/// A rule that could not be read.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RuleFailure {
    /// The rule.
    pub rule: String,
    /// The kind of failure: `throttled`, `unavailable`, `denied`,
    /// `not_found`, `invalid`.
    pub failure: &'static str,
    /// What happened, and the fix where one is known.
    pub error: String,
}

impl RuleFailure {
    fn new(rule: &RateRule, error: &TargetError) -> RuleFailure {
        RuleFailure {
            rule: rule.label(),
            failure: error.kind.name(),
            error: error.detail.clone(),
        }
    }
}

/// A new block from a fast pass.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FastBlock {
    /// The address or prefix blocked, with its length.
    pub key: String,
    /// The tier whose rule listed it.
    pub tier: String,
    /// The rule that listed it.
    pub rule: String,
    /// From the poll that first listed it to the last target written.
    pub latency_seconds: f64,
}

/// What a fast pass did: one JSON line in the daemon's output when it
/// blocked something or a rule could not be read.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FastReport {
    /// [`crate::JSON_VERSION`].
    pub version: u32,
    /// Always `fast`, to tell it from a cycle's report in the same stream.
    pub report: &'static str,
    /// `enforce`, `observe` (nothing written), `standby` (not holding the
    /// lease; nothing written), or `waiting` (no cycle has written the
    /// ledger yet, so nothing is written before it adopts what the sets
    /// hold).
    pub mode: &'static str,
    /// When the poll started, RFC 3339.
    pub started: String,
    /// Rules asked.
    pub rules_polled: usize,
    /// API calls the poll made.
    pub managed_keys_calls: u32,
    /// What that rate of calls comes to per hour, at the poll interval.
    pub managed_keys_calls_per_hour: u64,
    /// Distinct keys the rules listed.
    pub listed: usize,
    /// Of those, keys the ledger already blocks.
    pub already_blocked: usize,
    /// Listed keys inside an allow-list exception: never blocked.
    pub allow_listed: Vec<String>,
    /// New blocks.
    pub added: Vec<FastBlock>,
    /// New blocks the circuit breaker held back.
    pub held_back: Vec<String>,
    /// Keys an operator's unblock keeps unblocked.
    pub suppressed: Vec<String>,
    /// Blocks whose time was up when the pass wrote: the sets it wrote, as
    /// every write does, hold the ledger's blocks in force.
    pub expired: Vec<String>,
    /// Rules that could not be read.
    pub rule_failures: Vec<RuleFailure>,
    /// With a lease: where the pass stood with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseLine>,
    /// Each target's outcome, when the pass wrote.
    pub targets: Vec<TargetLine>,
    /// How long the pass took, poll included.
    pub seconds: f64,
}

impl FastReport {
    /// Whether the daemon prints it: something was blocked or held, or
    /// something failed.
    pub fn worth_printing(&self) -> bool {
        !self.added.is_empty()
            || !self.held_back.is_empty()
            || !self.rule_failures.is_empty()
            || self.targets.iter().any(|t| t.failure.is_some())
    }
}

impl FastDetector {
    /// A detector over `rules`, polled every `interval`.
    pub fn new(rules: Vec<RateRule>, interval: Duration) -> FastDetector {
        FastDetector {
            rules: rules.into_iter().map(Arc::new).collect(),
            interval,
            first_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Asks every rule, concurrently, what it is limiting now.
    pub async fn poll(&self) -> Poll {
        let mut tasks = JoinSet::new();
        let mut poll = Poll::default();
        for rule in &self.rules {
            if rule.paused() {
                continue;
            }
            poll.rules_polled += 1;
            let (rule, interval) = (Arc::clone(rule), self.interval);
            tasks.spawn(async move {
                let listed = rule.managed_keys(interval).await;
                (rule, listed)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (rule, listed) = done.expect("a poll task panicked");
            match listed {
                Ok(listed) => {
                    poll.calls += listed.calls;
                    poll.sightings
                        .extend(listed.addresses.into_iter().map(|address| Sighting {
                            address,
                            tier: rule.tier.clone(),
                            rule: rule.label(),
                        }));
                }
                Err(error) => {
                    poll.calls += 1;
                    tracing::warn!(rule = %rule.label(), %error, "cannot read the rate-based rule's managed keys");
                    poll.failures.push(RuleFailure::new(&rule, &error));
                }
            }
        }
        poll.failures.sort_by(|a, b| a.rule.cmp(&b.rule));
        poll
    }

    /// Polls the rules and blocks what they list that the ledger does not
    /// already block. `parts.source` is unused.
    pub async fn pass(&self, parts: &Parts<'_, ()>) -> Result<FastReport, CycleError> {
        let started = Stopwatch::start();
        let done = |mut report: FastReport| {
            report.seconds = started.elapsed().as_secs_f64();
            report
        };
        let now_ms = unix_ms(parts.clock.now());
        let polled_at = Instant::now();
        let poll = self.poll().await;
        let policy = parts.policy;
        let mut report = FastReport {
            version: crate::JSON_VERSION,
            report: "fast",
            mode: "enforce",
            started: rfc3339_from_ms(now_ms),
            rules_polled: poll.rules_polled,
            managed_keys_calls: poll.calls,
            managed_keys_calls_per_hour: u64::from(poll.calls) * 3600
                / self.interval.as_secs().max(1),
            listed: 0,
            already_blocked: 0,
            allow_listed: Vec::new(),
            added: Vec::new(),
            held_back: Vec::new(),
            suppressed: Vec::new(),
            expired: Vec::new(),
            rule_failures: poll.failures,
            lease: None,
            targets: Vec::new(),
            seconds: 0.0,
        };
        let listed = most_severe_per_key(policy, &poll.sightings);
        report.listed = listed.len();
        self.remember(&listed, polled_at);
        if listed.is_empty() {
            return Ok(done(report));
        }
        let turn = Arc::clone(&parts.writes).lock_owned().await;
        let loaded = parts.ledger.load().await?;
        if loaded.last_run_ms.is_none() {
            report.mode = "waiting";
            return Ok(done(report));
        }
        let Candidates {
            offenders,
            seen_by,
            already_blocked,
            allow_listed,
        } = candidates(policy, &listed, &loaded, now_ms);
        report.already_blocked = already_blocked;
        report.allow_listed = text(&allow_listed);
        if offenders.is_empty() {
            return Ok(done(report));
        }
        let origin = Origin::RateRules(seen_by);
        let planned = crate::cycle::plan_against(&offenders, policy, &loaded, now_ms, &origin);
        let mut prepared = Prepared {
            now_ms,
            phases: Phases::start(),
            stats: Default::default(),
            freshness: Default::default(),
            offenders,
            adopted: Vec::new(),
            unread: Vec::new(),
            read_calls: Default::default(),
            loaded,
            planned,
            origin,
            turn: Some(turn),
        };
        report.suppressed = text(&prepared.planned.suppressed);
        report.held_back = text(&prepared.planned.held_back);
        if prepared.planned.added.is_empty() {
            return Ok(done(report));
        }
        let standing = take_lease(parts, &mut prepared.phases).await?;
        let me = parts.lease.as_ref().map_or("", |l| l.holder_id.as_str());
        let waiting = matches!(standing, Some(Standing::Waiting { .. }));
        let written = apply_as(parts, standing.as_ref(), &mut prepared).await?;
        let wrote_at = Instant::now();
        report.mode = match () {
            _ if waiting => "standby",
            _ if written.planned.observe_only => "observe",
            _ => "enforce",
        };
        report.lease = standing
            .as_ref()
            .map(|s| LeaseLine::new(s, me, written.lease_lost.as_ref()));
        let wrote_nothing = waiting || written.planned.observe_only;
        report.targets = target_lines(policy, &written.planned, &written.reports, wrote_nothing);
        if !wrote_nothing && written.lease_lost.is_none() {
            report.added = self.blocked(&written.planned.added, &listed, wrote_at);
            report.expired = text(&written.planned.expired);
        }
        Ok(done(report))
    }

    /// Notes when each listed key was first seen; forgets keys no longer
    /// listed.
    fn remember(&self, listed: &BTreeMap<IpNet, &Sighting>, at: Instant) {
        let mut first_seen = self.first_seen.lock().expect("first seen");
        first_seen.retain(|key, _| listed.contains_key(key));
        for key in listed.keys() {
            first_seen.entry(*key).or_insert(at);
        }
    }

    /// The fast blocks among `added`, each with its latency; they are
    /// forgotten, as blocked.
    fn blocked(
        &self,
        added: &[IpNet],
        listed: &BTreeMap<IpNet, &Sighting>,
        wrote_at: Instant,
    ) -> Vec<FastBlock> {
        let mut first_seen = self.first_seen.lock().expect("first seen");
        added
            .iter()
            .filter_map(|key| {
                let sighting = listed.get(key)?;
                let seen = first_seen.remove(key).unwrap_or(wrote_at);
                Some(FastBlock {
                    key: key.to_string(),
                    tier: sighting.tier.to_string(),
                    rule: sighting.rule.clone(),
                    latency_seconds: wrote_at.duration_since(seen).as_secs_f64(),
                })
            })
            .collect()
    }
}

/// What a poll's listed keys come to against the ledger and the policy.
#[derive(Debug, Default)]
struct Candidates {
    /// Keys to plan, as offenders of their tier.
    offenders: Vec<Offender>,
    /// The reason each one's block gives.
    seen_by: BTreeMap<IpNet, String>,
    /// Keys an active block already covers.
    already_blocked: usize,
    /// Keys left alone for an allow-list exception.
    allow_listed: Vec<IpNet>,
}

/// The listed keys to plan: not blocked already (as themselves or inside a
/// wider block), and neither the key nor the listed address inside an
/// allow-list exception (a partner's address inside an IPv6 key never
/// blocks its neighbours). Each is an offender of its tier at the tier's
/// threshold, which the rule's limit is.
fn candidates(
    policy: &Policy,
    listed: &BTreeMap<IpNet, &Sighting>,
    ledger: &crate::ledger::LedgerState,
    now_ms: i64,
) -> Candidates {
    let active: Vec<IpNet> = ledger.active(now_ms).map(|e| e.net).collect();
    let mut found = Candidates::default();
    for (key, sighting) in listed {
        if active.iter().any(|net| net.contains(key)) {
            found.already_blocked += 1;
            continue;
        }
        let excepted = [*key, sighting.address]
            .into_iter()
            .any(|net| policy.allow.find_containing(net).is_some());
        if excepted {
            found.allow_listed.push(*key);
            continue;
        }
        let tier = policy.tier(sighting.tier.as_str()).expect("a fast tier");
        found.seen_by.insert(*key, rule_reason(sighting, tier));
        found.offenders.push(Offender {
            net: *key,
            addresses: 1,
            addresses_at_least: true,
            requests: tier.requests.get(),
            tier: Some(tier.name.clone()),
            actions: Vec::new(),
            allow_entry: None,
        });
    }
    found
}

/// Each listed address cut to its tier's key, with the most severe tier's
/// sighting when several rules list it.
fn most_severe_per_key<'s>(
    policy: &Policy,
    sightings: &'s [Sighting],
) -> BTreeMap<IpNet, &'s Sighting> {
    let mut keys: BTreeMap<IpNet, &Sighting> = BTreeMap::new();
    for sighting in sightings {
        let Some(tier) = policy.tier(sighting.tier.as_str()) else {
            continue;
        };
        let key = tier.prefixes.key(sighting.address.addr());
        let worse = |held: &&Sighting| {
            policy.severity(sighting.tier.as_str()) > policy.severity(held.tier.as_str())
        };
        match keys.get(&key) {
            Some(held) if !worse(held) => {}
            _ => {
                keys.insert(key, sighting);
            }
        }
    }
    keys
}

/// The ledger's reason for a fast block.
fn rule_reason(sighting: &Sighting, tier: &floodgate_rules::policy::Tier) -> String {
    format!(
        "listed by the rate-based rule {}: over {} requests in {} s (tier {})",
        sighting.rule, tier.requests, tier.window_seconds, tier.name
    )
}

/// Keys as every JSON output writes them: with their length.
fn text(nets: &[IpNet]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// A policy with one fast tier and these allow-list ranges.
    fn policy(allowed: &[IpNet]) -> Policy {
        let mut text = "[[tiers]]\nname = \"block\"\nrequests = 100\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\nfast = true\n\n\
                        [[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"v4\"]\nipv6_sets = [\"v6\"]\n"
            .to_owned();
        for net in allowed {
            text.push_str(&format!(
                "\n[[allow]]\ncidr = \"{net}\"\nowner = \"o@example.com\"\nreason = \"r\"\nexpires = \"2099-01-01\"\n"
            ));
        }
        Policy::from_toml(&text, "p.toml", time::macros::date!(2026 - 12 - 07))
            .unwrap()
            .policy
    }

    /// Addresses in a small space, so that allow entries, keys and listed
    /// addresses meet: 10.0.0.0/22 and 2001:db8::/62.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..1024).prop_map(|n| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))),
            (0u128..4, 0u128..4).prop_map(|(net, host)| IpAddr::from(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | (net << 64) | host
            ))),
        ]
    }

    fn allowed() -> impl Strategy<Value = IpNet> {
        (address(), any::<bool>()).prop_map(|(ip, wide)| {
            let len = match (ip, wide) {
                (IpAddr::V4(_), true) => 24,
                (IpAddr::V4(_), false) => 32,
                (IpAddr::V6(_), true) => 64,
                (IpAddr::V6(_), false) => 128,
            };
            IpNet::new(ip, len).unwrap().trunc()
        })
    }

    proptest! {
        /// Whatever the rules list, no allow-listed address is in the sets
        /// a fast pass writes, and every listed address no exception
        /// touches is.
        #[test]
        fn a_fast_pass_never_blocks_an_allow_listed_address(
            allowed in prop::collection::vec(allowed(), 0..4),
            listed in prop::collection::vec(address(), 1..12),
        ) {
            let policy = policy(&allowed);
            let tier = policy.tiers[0].name.clone();
            let sightings: Vec<Sighting> = listed
                .iter()
                .map(|ip| Sighting {
                    address: IpNet::from(*ip),
                    tier: tier.clone(),
                    rule: "floodgate-tier-block in web ACL floodgate, regional/eu-west-1".to_owned(),
                })
                .collect();
            let keys = most_severe_per_key(&policy, &sightings);
            let ledger = crate::ledger::LedgerState {
                last_run_ms: Some(0),
                ..Default::default()
            };
            let now_ms = 1_000;
            let found = candidates(&policy, &keys, &ledger, now_ms);
            let origin = Origin::RateRules(found.seen_by);
            let planned = crate::cycle::plan_against(&found.offenders, &policy, &ledger, now_ms, &origin);
            let blocked = |ip: &IpAddr| planned.nets().any(|n| n.contains(ip));
            for ip in &listed {
                let excepted = allowed.iter().any(|a| a.contains(ip));
                if excepted {
                    prop_assert!(!blocked(ip), "{ip} is allow-listed by {allowed:?}");
                }
                let key = policy.tiers[0].prefixes.key(*ip);
                let untouched = !allowed.iter().any(|a| a.contains(&key) || key.contains(a));
                if untouched {
                    prop_assert!(blocked(ip), "{ip} was listed and no exception touches {key}");
                }
            }
            for key in planned.added.iter() {
                prop_assert_eq!(&planned.ledger.entries[key].source, RATE_RULE);
            }
        }
    }
}
