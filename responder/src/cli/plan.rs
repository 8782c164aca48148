//! `floodgate plan`: a dry run. Detects and plans exactly as `run` would,
//! then reads every target and shows what `run` would add and remove there,
//! and why. Writes nothing: not the targets, not the ledger.
//!
//! Exit codes: 0 when planned (with `--detailed-exitcode`: 0 when no target
//! would change, 2 when some would), 1 on bad input or a target that can't
//! be read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use floodgate_rules::Policy;
use ipnet::IpNet;
use serde::Serialize;

use super::{CliError, Format, PlanArgs, Status, load_policy, plural, write_stdout};
use crate::clock::{clock_at, rfc3339_from_ms};
use crate::cycle::{Parts, prepare};
use crate::ledger::LedgerEntry;
use crate::sink::WafTarget as _;

/// One address or range a target would gain or lose, and why.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
struct Change {
    /// The address or range, with its length.
    net: String,
    /// For scripts: `blocked` (an addition), or for a removal
    /// `allow_listed`, `expired`, `not_in_ledger` or `not_in_plan`.
    reason: &'static str,
    /// The tiers of the blocks inside it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tiers: Vec<String>,
    /// Their requests, summed.
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    /// Ledger entries it covers (an aggregated range covers several).
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<usize>,
    /// Distinct addresses those entries were seen from.
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<u64>,
    /// When the last of them ends (`blocked`), or ended (`expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    /// For people: the same in a sentence.
    why: String,
}

/// What one target would change.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct TargetPlan {
    /// The target's label.
    target: String,
    /// What `run` would write into its sets.
    add: Vec<Change>,
    /// What `run` would take out of them.
    remove: Vec<Change>,
}

/// The plan, printed as JSON with `--format json`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct PlanReport {
    /// [`crate::JSON_VERSION`]: the shape of this document.
    version: u32,
    /// `enforce`, or `observe` (`run` would write nothing).
    mode: &'static str,
    /// Where the policy's source reads logs: each log group as
    /// `region/name`, an S3 location as `s3://bucket/prefix`, after
    /// `account/` for one in an `[[accounts]]` account.
    reads: Vec<String>,
    /// Per target, what would change.
    targets: Vec<TargetPlan>,
    /// Additions over every target.
    to_add: usize,
    /// Removals over every target.
    to_remove: usize,
    /// New blocks the circuit breaker would hold back.
    held_back: Vec<String>,
    /// Blocks left out for lack of room in the sets.
    dropped: Vec<String>,
    /// Parts of the count Logs Insights' row limit left cut (see `run`'s
    /// report): empty when every count is exact.
    incomplete: Vec<crate::traffic::CutCount>,
}

/// Runs `floodgate plan`.
pub(super) fn run(args: &PlanArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let report = tokio::runtime::Runtime::new()?.block_on(dry_run(args, &loaded.policy))?;
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&report).expect("reports serialize") + "\n",
        Format::Table => table(&report),
    };
    write_stdout(&output)?;
    let changes = report.to_add + report.to_remove > 0;
    Ok(if args.detailed_exitcode && changes {
        Status::Changes
    } else {
        Status::Success
    })
}

async fn dry_run(args: &PlanArgs, policy: &Policy) -> Result<PlanReport, CliError> {
    let clock = Arc::from(args.policy.clock());
    let resident = crate::cycle::Resident::from_policy(policy).await;
    let parts = Parts::from_policy(policy, &resident, clock, Arc::from(clock_at(None)))?;
    let prepared = prepare(&parts).await?;
    let planned = &prepared.planned;
    let desired: BTreeSet<IpNet> = planned.nets().copied().collect();
    let expired: BTreeSet<IpNet> = planned.expired.iter().copied().collect();
    let allow_listed: BTreeSet<IpNet> = planned.allow_listed.iter().copied().collect();
    let mut targets = Vec::new();
    for target in &parts.targets {
        let label = target.label();
        let current: BTreeSet<IpNet> = target
            .read()
            .await
            .map_err(|e| CliError::Input(format!("{label}: cannot read its IP sets: {e}")))?
            .nets
            .into_iter()
            .collect();
        let add = desired
            .difference(&current)
            .map(|net| block_reason(net, &planned.ledger.entries))
            .collect();
        let remove = current
            .difference(&desired)
            .map(|net| removal_reason(net, &planned.ledger.entries, &expired, &allow_listed))
            .collect();
        targets.push(TargetPlan {
            target: label,
            add,
            remove,
        });
    }
    let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect();
    Ok(PlanReport {
        version: crate::JSON_VERSION,
        reads: super::source_locations(policy),
        mode: if planned.observe_only {
            "observe"
        } else {
            "enforce"
        },
        to_add: targets.iter().map(|t| t.add.len()).sum(),
        to_remove: targets.iter().map(|t| t.remove.len()).sum(),
        targets,
        held_back: text(&planned.held_back),
        dropped: text(&planned.dropped),
        incomplete: prepared.stats.incomplete.clone(),
    })
}

/// The ledger, by address or range.
type Entries = BTreeMap<IpNet, LedgerEntry>;

/// The ledger entries inside `net`: a range lookup, as the ledger is sorted.
fn within<'e>(net: &IpNet, entries: &'e Entries) -> impl Iterator<Item = &'e LedgerEntry> {
    let first = IpNet::new(net.network(), 0).expect("prefix 0 is valid");
    let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a host prefix is valid");
    entries
        .range(first..=last)
        .map(|(_, entry)| entry)
        .filter(move |entry| net.contains(&entry.net))
}

/// Why a set entry is blocked: its tier, how busy it was, until when. An
/// entry may be a range that aggregates several blocked addresses.
fn block_reason(net: &IpNet, entries: &Entries) -> Change {
    let mut change = Change {
        net: net.to_string(),
        reason: "blocked",
        why: "in the plan".to_owned(),
        ..Change::default()
    };
    let inside: Vec<&LedgerEntry> = within(net, entries).collect();
    let Some(until) = inside.iter().map(|e| e.expires_at_ms).max() else {
        return change;
    };
    let tiers: BTreeSet<&str> = inside.iter().map(|e| e.tier.as_str()).collect();
    change.tiers = tiers.iter().map(|t| (*t).to_owned()).collect();
    let tiers = change.tiers.join(", ");
    let requests: u64 = inside.iter().map(|e| u64::from(e.requests)).sum();
    let until = rfc3339_from_ms(until);
    change.why = match inside.len() {
        1 if inside[0].addresses > 1 => format!(
            "tier {tiers}, {requests} requests from {} addresses, until {until}",
            inside[0].addresses
        ),
        1 => format!("tier {tiers}, {requests} requests, until {until}"),
        n => format!("{n} addresses: tier {tiers}, {requests} requests, until {until}"),
    };
    change.requests = Some(requests);
    change.entries = Some(inside.len());
    change.addresses = Some(inside.iter().map(|e| u64::from(e.addresses)).sum());
    change.until = Some(until);
    change
}

/// Why a set entry (an address or an aggregated range) would leave a set.
fn removal_reason(
    net: &IpNet,
    entries: &Entries,
    expired: &BTreeSet<IpNet>,
    allow_listed: &BTreeSet<IpNet>,
) -> Change {
    let change = |reason, why: String| Change {
        net: net.to_string(),
        reason,
        why,
        ..Change::default()
    };
    if allow_listed
        .iter()
        .any(|a| net.contains(a) || a.contains(net))
    {
        return change("allow_listed", "allow-listed".to_owned());
    }
    let inside: Vec<&LedgerEntry> = within(net, entries).collect();
    match inside.iter().map(|e| e.expires_at_ms).max() {
        None => change(
            "not_in_ledger",
            "not in the ledger: not ours, or from a lost ledger".to_owned(),
        ),
        Some(until) if inside.iter().all(|e| expired.contains(&e.net)) => {
            let until = rfc3339_from_ms(until);
            Change {
                until: Some(until.clone()),
                ..change("expired", format!("block expired at {until}"))
            }
        }
        Some(_) => change(
            "not_in_plan",
            "no longer in the plan (no room, or held back)".to_owned(),
        ),
    }
}

/// The plan for people, in the spirit of `terraform plan`.
fn table(report: &PlanReport) -> String {
    let mut out = String::new();
    if report.mode == "observe" {
        out.push_str("mode observe: `run` would write nothing; this is what enforce would do\n");
    }
    if !report.incomplete.is_empty() {
        out.push_str(&format!(
            "INCOMPLETE: the row limit cut {}; raise [source] max_queries_per_cycle\n",
            super::incomplete_parts(&report.incomplete)
        ));
    }
    out.push_str(&format!("reads: {}\n", report.reads.join(", ")));
    for target in &report.targets {
        if target.add.is_empty() && target.remove.is_empty() {
            out.push_str(&format!("{}: no changes\n", target.target));
            continue;
        }
        out.push_str(&format!(
            "{}: +{} -{}\n",
            target.target,
            target.add.len(),
            target.remove.len()
        ));
        for change in &target.add {
            out.push_str(&format!("  + {:<43} {}\n", change.net, change.why));
        }
        for change in &target.remove {
            out.push_str(&format!("  - {:<43} {}\n", change.net, change.why));
        }
    }
    if !report.held_back.is_empty() {
        out.push_str(&format!(
            "circuit breaker: {} held back\n",
            plural(report.held_back.len(), "new block")
        ));
    }
    if !report.dropped.is_empty() {
        out.push_str(&format!(
            "no room in the sets: {} left out\n",
            plural(report.dropped.len(), "active block")
        ));
    }
    out.push_str(&format!(
        "Plan: {} to add, {} to remove across {}.\n",
        report.to_add,
        report.to_remove,
        plural(report.targets.len(), "target")
    ));
    out
}
