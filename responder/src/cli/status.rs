//! `floodgate status`: the blocks in force, from the ledger, and per target
//! whether its IP sets hold exactly those (drift). Reads; writes nothing.
//!
//! Exit codes: 0 when every target is in sync, 2 when some target drifted or
//! could not be read, 1 on bad input (a policy or ledger that can't be read).

use floodgate_rules::Policy;
use floodgate_rules::cidr::exclude;
use ipnet::IpNet;
use serde::Serialize;

use super::{CliError, Format, Status, StatusArgs, load_policy, plural, write_stdout};
use crate::clock::{clock_at, rfc3339_from_ms, unix_ms};
use crate::lease::{ConfiguredLease, LeaseStore as _};
use crate::ledger::{ConfiguredLedger, Ledger};
use crate::plan::{Capacity, plan, unknown_entries};
use crate::sink::{WafTarget as _, left_out_by_reason, read_all};

/// A block in force.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct Block {
    /// The address or range blocked, with its length.
    net: String,
    /// The tier that blocked it, or `manual`.
    tier: String,
    /// When the block ends, RFC 3339.
    expires: String,
    /// Separate blocks it has earned; escalation counts them.
    offences: u32,
    /// Requests in the tier's window when it was last seen.
    requests: u32,
    /// Distinct addresses seen in it (a prefix block may hold many).
    addresses: u32,
    /// Where it was seen: region and log group, or `manual`.
    source: String,
    /// Why it is blocked, in a sentence.
    reason: String,
}

/// One target against the ledger.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct TargetStatus {
    /// The target's label.
    target: String,
    /// In the sets but never blocked by the ledger: drift, which the next
    /// run removes.
    unexpected: Vec<String>,
    /// In the sets, blocks the ledger holds as ended: the next run removes
    /// them, as it does every cycle. Not drift.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expired: Vec<String>,
    /// Active blocks the sets lack: held back, no room, or a failed write.
    missing: Vec<String>,
    /// Blocks the target cannot hold, left out on purpose (one line per
    /// reason): in sync all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    left_out: Vec<String>,
    /// Why the sets could not be read, if they could not.
    error: Option<String>,
}

/// A fast tier's rate-based rule as deployed, against its tier.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct RateRuleStatus {
    /// The rule, its web ACL and scope.
    rule: String,
    /// The fast tier it stands for.
    tier: String,
    /// How the deployed rule differs from the tier (missing, another
    /// limit or window, another aggregation): drift, which the fast
    /// detector cannot trust. `null` when it matches.
    drift: Option<String>,
    /// Why the web ACL could not be read, if it could not.
    error: Option<String>,
}

/// The lease of a primary/standby pair.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct LeaseStatus {
    /// The holder, or empty when nobody holds it.
    holder: String,
    /// The holder's role: `primary` or `standby`.
    role: String,
    /// When the holder's lease ends.
    expires: String,
    /// Whether it has ended (by this host's clock).
    lapsed: bool,
    /// Raised on every take: a write fenced by an older one is refused.
    fence: u64,
    /// A primary that asked the standby holder for the lease back.
    handback_to: Option<String>,
}

/// The status, printed as JSON with `--format json`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct StatusReport {
    /// [`crate::JSON_VERSION`]: the shape of this document.
    version: u32,
    /// Where the ledger is kept.
    ledger: String,
    /// Where the policy's source reads logs: each log group as
    /// `region/name`, an S3 location as `s3://bucket/prefix`, after
    /// `account/` for one in an `[[accounts]]` account.
    reads: Vec<String>,
    /// With `[responder] lease`: who holds it; `null` if nobody ever has.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<Option<LeaseStatus>>,
    /// When the last cycle saved the ledger, RFC 3339.
    last_run: Option<String>,
    /// Every block in force.
    active: Vec<Block>,
    /// Each target against the ledger.
    targets: Vec<TargetStatus>,
    /// Each fast tier's rate-based rule in each web ACL, against the
    /// policy; empty without fast tiers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rate_rules: Vec<RateRuleStatus>,
}

/// Runs `floodgate status`.
pub(super) fn run(args: &StatusArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let now_ms = unix_ms(clock_at(args.policy.now).now());
    let report = tokio::runtime::Runtime::new()?.block_on(status(&loaded.policy, now_ms))?;
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&report).expect("reports serialize") + "\n",
        Format::Table => table(&report),
    };
    write_stdout(&output)?;
    let drifted = report
        .targets
        .iter()
        .any(|t| t.error.is_some() || !t.unexpected.is_empty() || !t.missing.is_empty())
        || report
            .rate_rules
            .iter()
            .any(|r| r.error.is_some() || r.drift.is_some());
    Ok(if drifted {
        Status::Partial
    } else {
        Status::Success
    })
}

async fn status(policy: &Policy, now_ms: i64) -> Result<StatusReport, CliError> {
    let store = ConfiguredLedger::from_policy(policy).await;
    let ledger = store.load().await?;
    // The lease is judged on the real clock, whatever `--now` says.
    let real_now_ms = unix_ms(clock_at(None).now());
    let lease = match ConfiguredLease::from_policy(policy, &store) {
        Some(lease) => Some(lease.store.read().await?.map(|r| LeaseStatus {
            lapsed: r.holder.is_empty() || real_now_ms >= r.expires_at_ms,
            holder: r.holder,
            role: r.role.as_str().to_owned(),
            expires: rfc3339_from_ms(r.expires_at_ms),
            fence: r.fence,
            handback_to: r.handback_to,
        })),
        None => None,
    };
    let active: Vec<_> = ledger.active(now_ms).collect();
    // What a cycle with no new traffic would write now: the active blocks,
    // aggregated, with the allow-list cut out and within each set's room.
    let desired = plan(&[], policy, &ledger, now_ms, "status", Capacity::of(policy)).desired();
    let mut targets = Vec::new();
    let resident = crate::cycle::Resident::from_policy(policy).await;
    let rate_rules = rate_rules(policy, &resident.aws).await;
    for (target, contents) in read_all(
        resident.targets,
        policy.responder.concurrency.get() as usize,
    )
    .await
    {
        let label = target.label();
        let (held, left_out) = target.expected(&desired);
        let (unexpected, expired, missing, error) = match contents {
            // Sets hold aggregated ranges: compare what they cover.
            Ok(found) => {
                let extra = exclude(&found.nets, &held);
                let unknown = unknown_entries(&ledger, &extra);
                let ended: Vec<IpNet> =
                    extra.into_iter().filter(|n| !unknown.contains(n)).collect();
                (
                    text(&unknown),
                    text(&ended),
                    text(&exclude(&held, &found.nets)),
                    None,
                )
            }
            Err(error) => (Vec::new(), Vec::new(), Vec::new(), Some(error.to_string())),
        };
        targets.push(TargetStatus {
            target: label,
            unexpected,
            expired,
            missing,
            left_out: left_out_by_reason(&left_out),
            error,
        });
    }
    Ok(StatusReport {
        version: crate::JSON_VERSION,
        ledger: store.label(),
        reads: super::source_locations(policy),
        lease,
        last_run: ledger.last_run_ms.map(rfc3339_from_ms),
        active: active
            .iter()
            .map(|e| Block {
                net: e.net.to_string(),
                tier: e.tier.clone(),
                expires: rfc3339_from_ms(e.expires_at_ms),
                offences: e.offences,
                requests: e.requests,
                addresses: e.addresses,
                source: e.source.clone(),
                reason: e.reason.clone(),
            })
            .collect(),
        targets,
        rate_rules,
    })
}

/// Each fast tier's deployed rule against its tier.
async fn rate_rules(policy: &Policy, aws: &crate::aws::Aws) -> Vec<RateRuleStatus> {
    let mut statuses = Vec::new();
    for rule in crate::rate_rules::rate_rules(aws, policy) {
        let tier = policy.tier(rule.tier.as_str()).expect("a fast tier");
        let (drift, error) = match rule.drift(tier).await {
            Ok(drift) => (drift, None),
            Err(error) => (None, Some(error.to_string())),
        };
        statuses.push(RateRuleStatus {
            rule: rule.label(),
            tier: rule.tier.to_string(),
            drift,
            error,
        });
    }
    statuses
}

fn text(nets: &[IpNet]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

/// The status for people.
fn table(report: &StatusReport) -> String {
    let mut out = format!(
        "{} in force (ledger {}, last run {})\n",
        plural(report.active.len(), "block"),
        report.ledger,
        report.last_run.as_deref().unwrap_or("never")
    );
    out.push_str(&format!("reads: {}\n", report.reads.join(", ")));
    match &report.lease {
        Some(Some(lease)) if !lease.holder.is_empty() => {
            let state = if lease.lapsed { "lapsed" } else { "until" };
            out.push_str(&format!(
                "lease: held by {} ({}, fence {}) {state} {}\n",
                lease.holder, lease.role, lease.fence, lease.expires
            ));
            if let Some(primary) = &lease.handback_to {
                out.push_str(&format!("  {primary} has asked for it back\n"));
            }
        }
        Some(Some(lease)) if lease.fence == 0 => out
            .push_str("lease: never held; a standby keeps it for a primary for one lease period\n"),
        Some(Some(lease)) => out.push_str(&format!(
            "lease: released (fence {}), waiting for {}\n",
            lease.fence,
            lease.handback_to.as_deref().unwrap_or("any responder")
        )),
        Some(None) => out.push_str("lease: never taken\n"),
        None => {}
    }
    if !report.active.is_empty() {
        out.push_str(&format!(
            "  {:<43} {:<12} {:<20} {:>8} {:>9} {:>9}  {}\n",
            "NET", "TIER", "EXPIRES", "OFFENCES", "REQUESTS", "ADDRESSES", "SOURCE"
        ));
    }
    for block in &report.active {
        out.push_str(&format!(
            "  {:<43} {:<12} {:<20} {:>8} {:>9} {:>9}  {}\n",
            block.net,
            block.tier,
            block.expires,
            block.offences,
            block.requests,
            block.addresses,
            block.source
        ));
    }
    for target in &report.targets {
        let line = match &target.error {
            Some(error) => format!("cannot read its sets: {error}"),
            None if target.unexpected.is_empty() && target.missing.is_empty() => {
                let mut line = "in sync".to_owned();
                if !target.expired.is_empty() {
                    line.push_str(&format!(
                        "; {} ended, removed by the next run ({})",
                        target.expired.len(),
                        target.expired.join(", ")
                    ));
                }
                for left in &target.left_out {
                    line.push_str(&format!("; left out on purpose: {left}"));
                }
                line
            }
            None => {
                let mut parts = Vec::new();
                if !target.unexpected.is_empty() {
                    parts.push(format!(
                        "{} not in the ledger ({})",
                        target.unexpected.len(),
                        target.unexpected.join(", ")
                    ));
                }
                if !target.missing.is_empty() {
                    parts.push(format!(
                        "{} active blocks missing ({})",
                        target.missing.len(),
                        target.missing.join(", ")
                    ));
                }
                if !target.expired.is_empty() {
                    parts.push(format!(
                        "{} ended, removed by the next run ({})",
                        target.expired.len(),
                        target.expired.join(", ")
                    ));
                }
                format!("drift: {}", parts.join("; "))
            }
        };
        out.push_str(&format!("{}: {line}\n", target.target));
    }
    for rule in &report.rate_rules {
        let line = match (&rule.error, &rule.drift) {
            (Some(error), _) => format!("cannot read it: {error}"),
            (None, Some(drift)) => format!("drift: {drift}"),
            (None, None) => format!("in step with tier {}", rule.tier),
        };
        out.push_str(&format!("rate rule {}: {line}\n", rule.rule));
    }
    out
}
