//! `floodgate why <address | range>`: whether it is blocked, by which block
//! (tier, requests, source, when seen, offences, escalation), where (each
//! target, in sync or not), until when, which allow-list entry covers it,
//! and the exact command that lifts it. Reads the ledger and the targets;
//! writes nothing.
//!
//! Exit codes: 0 answered, 2 some target could not be read (the rest of the
//! answer stands), 1 bad input.

use floodgate_rules::Policy;
use floodgate_rules::policy::AllowEntry;
use floodgate_rules::review::Granted;
use ipnet::IpNet;
use serde::Serialize;

use super::{CliError, Format, Status, WhyArgs, load_policy, write_stdout};
use crate::clock::{clock_at, rfc3339_from_ms, unix_ms};
use crate::ledger::{ConfiguredLedger, Ledger, LedgerEntry};
use crate::plan::{Capacity, plan};
use crate::sink::{WafTarget as _, read_all};

/// The answer, printed as JSON with `--format json`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct WhyReport {
    /// [`crate::JSON_VERSION`]: the shape of this document.
    version: u32,
    /// The address or range asked about, with its length.
    subject: String,
    /// When the answer holds (the real time, or `--now`), RFC 3339.
    at: String,
    /// The verdict.
    state: WhyState,
    /// The verdict in a sentence.
    summary: String,
    /// Ledger entries that contain the subject or lie inside it, blocks in
    /// force first: the blocks that hold it, and its history.
    blocks: Vec<WhyBlock>,
    /// Allow-list entries that contain the subject or lie inside it.
    allow: Vec<WhyException>,
    /// What each target's sets hold of the subject, against what they
    /// should hold.
    targets: Vec<WhyTarget>,
    /// The command that lifts the blocks in force, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    unblock: Option<String>,
}

/// Whether the subject is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum WhyState {
    /// Every address of it is in the block lists the targets should hold.
    Blocked,
    /// Some of its addresses are (a range holding blocked addresses or
    /// ranges).
    PartlyBlocked,
    /// A block in force in the ledger covers it, but the sets leave it out
    /// for lack of room (see `floodgate plan`).
    LeftOut,
    /// Not blocked, and an allow-list entry covers it, in whole or in part.
    AllowListed,
    /// Not blocked.
    NotBlocked,
}

/// A ledger entry that concerns the subject.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct WhyBlock {
    /// The address or range the entry blocks.
    net: String,
    /// Whether the block is in force.
    active: bool,
    /// The tier that blocked it last, or `manual`.
    tier: String,
    /// Why, in a sentence: requests and window, or the operator's words.
    reason: String,
    /// Requests in the tier's window when it was last seen.
    requests: u32,
    /// Distinct addresses seen in it.
    addresses: u32,
    /// Where it was seen: region and log group, or `manual`.
    source: String,
    /// When it was first seen offending, RFC 3339.
    first_seen: String,
    /// When it was last seen offending.
    last_seen: String,
    /// When its current (or last) block started.
    blocked_at: String,
    /// When its block ends (or ended).
    expires: String,
    /// Separate blocks it has earned.
    offences: u32,
    /// How long its next block would last, by the tier's escalation
    /// (`null` for a manual block, or a tier no longer in the policy).
    next_block_minutes: Option<u32>,
    /// After an operator's unblock: when detection may block it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed_until: Option<String>,
}

/// An allow-list entry that concerns the subject.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct WhyException {
    /// Its range.
    cidr: String,
    /// What it grants.
    grant: Granted,
    /// Who answers for it.
    owner: String,
    /// Why it exists.
    reason: String,
    /// Last day it applies.
    expires: String,
    /// Past its expiry: it no longer applies.
    expired: bool,
    /// Its line in the policy file.
    line: usize,
}

/// One target's sets, as far as they concern the subject.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct WhyTarget {
    /// The target's label.
    target: String,
    /// What its sets hold that contains the subject or lies inside it.
    holds: Vec<String>,
    /// What they should hold of it, by the ledger and the allow-list.
    expected: Vec<String>,
    /// Whether the two agree (`false` too when the sets could not be read).
    in_sync: bool,
    /// Why the sets could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `floodgate why`.
pub(super) fn run(args: &WhyArgs) -> Result<Status, CliError> {
    let subject = super::manual::parse_net(&args.subject)?;
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let now_ms = unix_ms(clock_at(args.policy.now).now());
    let config = args.policy.config.display().to_string();
    let report =
        tokio::runtime::Runtime::new()?.block_on(why(&loaded.policy, subject, now_ms, &config))?;
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&report).expect("reports serialize") + "\n",
        Format::Table => text(&report),
    };
    write_stdout(&output)?;
    Ok(if report.targets.iter().any(|t| t.error.is_some()) {
        Status::Partial
    } else {
        Status::Success
    })
}

/// Whether two ranges share an address: one contains the other.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

async fn why(
    policy: &Policy,
    subject: IpNet,
    now_ms: i64,
    config: &str,
) -> Result<WhyReport, CliError> {
    let ledger = ConfiguredLedger::from_policy(policy).await.load().await?;
    // What the sets should hold now: the blocks in force, aggregated, with
    // the allow-list cut out and within each set's room.
    let desired = plan(&[], policy, &ledger, now_ms, "why", Capacity::of(policy)).desired();
    let should_hold: Vec<IpNet> = desired.nets().copied().collect();
    let mut entries: Vec<&LedgerEntry> = ledger
        .entries
        .values()
        .filter(|e| overlaps(&e.net, &subject))
        .collect();
    entries.sort_by_key(|e| (!e.is_active(now_ms), std::cmp::Reverse(e.expires_at_ms)));
    let exceptions: Vec<&AllowEntry> = policy
        .allow
        .entries()
        .iter()
        .filter(|e| overlaps(&e.cidr, &subject))
        .collect();
    let mut targets = Vec::new();
    let configured = crate::cycle::Resident::from_policy(policy).await.targets;
    for (target, contents) in
        read_all(configured, policy.responder.concurrency.get() as usize).await
    {
        let (held, _) = target.expected(&desired);
        let expected = concerning(&held, &subject);
        let (holds, error) = match contents {
            Ok(found) => (concerning(&found.nets, &subject), None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        targets.push(WhyTarget {
            target: target.label(),
            in_sync: error.is_none() && holds == expected,
            holds,
            expected,
            error,
        });
    }
    let active: Vec<&LedgerEntry> = entries
        .iter()
        .copied()
        .filter(|e| e.is_active(now_ms))
        .collect();
    let allow_listed = exceptions
        .iter()
        .any(|e| !e.is_expired(policy.evaluated_on));
    let state = if should_hold.iter().any(|n| n.contains(&subject)) {
        WhyState::Blocked
    } else if should_hold.iter().any(|n| subject.contains(n)) {
        WhyState::PartlyBlocked
    } else if allow_listed {
        WhyState::AllowListed
    } else if active.iter().any(|e| e.net.contains(&subject)) {
        WhyState::LeftOut
    } else {
        WhyState::NotBlocked
    };
    Ok(WhyReport {
        version: crate::JSON_VERSION,
        subject: subject.to_string(),
        at: rfc3339_from_ms(now_ms),
        summary: summary(state, subject, &active, &exceptions),
        state,
        unblock: unblock_command(subject, &active, config),
        blocks: entries
            .iter()
            .map(|e| why_block(policy, e, now_ms))
            .collect(),
        allow: exceptions
            .iter()
            .map(|e| WhyException {
                cidr: e.cidr.to_string(),
                grant: e
                    .requests
                    .map_or(Granted::Exempt, |r| Granted::RequestsAtLeast {
                        requests: r.get(),
                    }),
                owner: e.owner.clone(),
                reason: e.reason.clone(),
                expires: e.expires.to_string(),
                expired: e.is_expired(policy.evaluated_on),
                line: e.line,
            })
            .collect(),
        targets,
    })
}

/// The nets of `nets` that contain `subject` or lie inside it, sorted.
fn concerning(nets: &[IpNet], subject: &IpNet) -> Vec<String> {
    let mut found: Vec<IpNet> = nets
        .iter()
        .copied()
        .filter(|n| overlaps(n, subject))
        .collect();
    found.sort_unstable();
    found.dedup();
    found.iter().map(ToString::to_string).collect()
}

fn why_block(policy: &Policy, entry: &LedgerEntry, now_ms: i64) -> WhyBlock {
    let rule = policy
        .tiers
        .iter()
        .find(|t| t.name.as_str() == entry.tier)
        .and_then(|t| match &t.action {
            floodgate_rules::policy::TierAction::Block(rule) => Some(*rule),
            floodgate_rules::policy::TierAction::Observe => None,
        });
    WhyBlock {
        net: entry.net.to_string(),
        active: entry.is_active(now_ms),
        tier: entry.tier.clone(),
        reason: entry.reason.clone(),
        requests: entry.requests,
        addresses: entry.addresses,
        source: entry.source.clone(),
        first_seen: rfc3339_from_ms(entry.first_seen_ms),
        last_seen: rfc3339_from_ms(entry.last_seen_ms),
        blocked_at: rfc3339_from_ms(entry.blocked_at_ms),
        expires: rfc3339_from_ms(entry.expires_at_ms),
        offences: entry.offences,
        next_block_minutes: rule.map(|r| r.minutes_for_offence(entry.offences + 1)),
        suppressed_until: entry
            .suppressed_until_ms
            .filter(|&until| until > now_ms)
            .map(rfc3339_from_ms),
    }
}

/// `floodgate unblock NET --reason "…" --config FILE`: NET the widest block
/// in force that holds the subject (unblocking the subject alone would not
/// end a block of a range around it), else the subject, which ends every
/// block inside it.
fn unblock_command(subject: IpNet, active: &[&LedgerEntry], config: &str) -> Option<String> {
    if active.is_empty() {
        return None;
    }
    let net = active
        .iter()
        .map(|e| e.net)
        .filter(|n| n.contains(&subject))
        .min_by_key(IpNet::prefix_len)
        .unwrap_or(subject);
    Some(format!(
        "floodgate unblock {net} --reason \"<why, for the ledger>\" --config {config}"
    ))
}

fn summary(
    state: WhyState,
    subject: IpNet,
    active: &[&LedgerEntry],
    exceptions: &[&AllowEntry],
) -> String {
    let by = |e: &LedgerEntry| {
        format!(
            "{} (tier {}, until {})",
            e.net,
            e.tier,
            rfc3339_from_ms(e.expires_at_ms)
        )
    };
    let blocks = if active.len() <= 3 {
        active.iter().map(|e| by(e)).collect::<Vec<_>>().join(", ")
    } else {
        let mut tiers: Vec<&str> = active.iter().map(|e| e.tier.as_str()).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let last = active
            .iter()
            .map(|e| e.expires_at_ms)
            .max()
            .unwrap_or_default();
        format!(
            "{} blocks in force (tiers {}, the last until {})",
            active.len(),
            tiers.join(", "),
            rfc3339_from_ms(last)
        )
    };
    let covering = exceptions
        .iter()
        .map(|e| format!("{} (owner {})", e.cidr, e.owner))
        .collect::<Vec<_>>()
        .join(", ");
    match state {
        WhyState::Blocked => format!("{subject} is blocked by {blocks}"),
        WhyState::PartlyBlocked => format!("{subject} is partly blocked, by {blocks}"),
        WhyState::LeftOut => format!(
            "{subject} is blocked in the ledger by {blocks}, but left out of the sets for lack of room; `floodgate plan` says which blocks fit"
        ),
        WhyState::AllowListed if active.is_empty() => {
            format!("{subject} is not blocked; the allow-list covers it: {covering}")
        }
        WhyState::AllowListed => {
            format!("{subject} is not blocked: the allow-list's {covering} is cut out of {blocks}")
        }
        WhyState::NotBlocked if active.is_empty() => format!("{subject} is not blocked"),
        WhyState::NotBlocked => format!("{subject} is not blocked; {blocks} lie inside it"),
    }
}

/// The answer for people.
fn text(report: &WhyReport) -> String {
    let mut out = format!("{} (as of {})\n", report.summary, report.at);
    for block in &report.blocks {
        let state = if block.active {
            format!("in force until {}", block.expires)
        } else if let Some(until) = &block.suppressed_until {
            format!("unblocked by an operator; detection may block it again after {until}")
        } else {
            format!("ended {}", block.expires)
        };
        out.push_str(&format!("block {}: {state}\n", block.net));
        out.push_str(&format!("  why: {}\n", block.reason));
        out.push_str(&format!(
            "  seen {} to {} at {}; blocked since {}\n",
            block.first_seen, block.last_seen, block.source, block.blocked_at
        ));
        let next = block.next_block_minutes.map_or(String::new(), |m| {
            format!("; a next block would last {m} min")
        });
        out.push_str(&format!("  offences {}{next}\n", block.offences));
    }
    for entry in &report.allow {
        let grant = match &entry.grant {
            Granted::RequestsAtLeast { requests } => format!("blocked only at {requests} requests"),
            _ => "never blocked".to_owned(),
        };
        let expired = if entry.expired { " (EXPIRED)" } else { "" };
        out.push_str(&format!(
            "allow-list {} (line {}): {grant}; owner {}; {}; until {}{expired}\n",
            entry.cidr, entry.line, entry.owner, entry.reason, entry.expires
        ));
    }
    for target in &report.targets {
        let holds = if target.holds.is_empty() {
            "holds none of it".to_owned()
        } else {
            format!("holds {}", target.holds.join(", "))
        };
        let state = match &target.error {
            Some(error) => format!("cannot read its sets: {error}"),
            None if target.in_sync => format!("{holds} (in sync)"),
            None => format!(
                "{holds}; should hold {} (drift; the next run repairs it)",
                if target.expected.is_empty() {
                    "none".to_owned()
                } else {
                    target.expected.join(", ")
                }
            ),
        };
        out.push_str(&format!("{}: {state}\n", target.target));
    }
    if let Some(command) = &report.unblock {
        out.push_str(&format!("to lift it: {command}\n"));
    }
    out
}
