//! `floodgate block` and `floodgate unblock`: an operator's override,
//! recorded in the ledger (source `manual`) and written to every target at
//! once, exactly as a cycle writes them.
//!
//! An unblock ends the block now and keeps detection from blocking the
//! address again for `--suppress-minutes`, so the next cycle does not undo
//! it. Exit codes as for `run`: 0 converged, 1 bad input (nothing written),
//! 2 some target failed.

use floodgate_rules::Policy;
use ipnet::IpNet;

use std::sync::Arc;

use super::{BlockArgs, CliError, Status, UnblockArgs, load_policy, plural, write_stdout};
use crate::clock::{clock_at, rfc3339_from_ms, unix_ms};
use crate::cycle::{Resident, apply};
use crate::ledger::{ConfiguredLedger, Ledger, LedgerEntry, LedgerState, UpdateError};
use crate::plan::{Capacity, plan};
use crate::sink::{Outcome, Unguarded};

/// The longest manual block: a year. Longer belongs in the WAF's own rules.
const MAX_BLOCK_MINUTES: u32 = 525_600;

/// Runs `floodgate block`.
pub(super) fn block(args: &BlockArgs) -> Result<Status, CliError> {
    let net = parse_net(&args.net)?;
    if !(1..=MAX_BLOCK_MINUTES).contains(&args.minutes) {
        return Err(CliError::Input(format!(
            "--minutes {}: use 1 to {MAX_BLOCK_MINUTES} (a year)",
            args.minutes
        )));
    }
    let reason = reason(&args.reason)?;
    override_ledger(&args.policy, |ledger, policy, now_ms| {
        if let Some(entry) = covering_exception(policy, &net) {
            return Err(CliError::Input(format!(
                "{net} is inside allow-list entry {} ({}; owner {}): it would never be blocked; remove or narrow the exception first",
                entry.cidr, entry.reason, entry.owner
            )));
        }
        // Exceptions inside the range are cut out of it, as for any block.
        let cut_out: Vec<String> = exceptions_inside(policy, &net)
            .map(|e| format!("{} ({})", e.cidr, e.owner))
            .collect();
        let until = now_ms + i64::from(args.minutes) * 60_000;
        let entry = ledger.entries.entry(net).or_insert_with(|| LedgerEntry {
            net,
            tier: MANUAL.to_owned(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            blocked_at_ms: now_ms,
            expires_at_ms: now_ms,
            offences: 0,
            requests: 0,
            addresses: 1,
            source: MANUAL.to_owned(),
            reason: String::new(),
            suppressed_until_ms: None,
        });
        if !entry.is_active(now_ms) {
            entry.blocked_at_ms = now_ms;
            entry.offences += 1;
        }
        entry.tier = MANUAL.to_owned();
        entry.source = MANUAL.to_owned();
        entry.reason = reason.clone();
        entry.expires_at_ms = entry.expires_at_ms.max(until);
        entry.suppressed_until_ms = None;
        let mut done = format!(
            "blocked {net} until {}: {reason}",
            rfc3339_from_ms(entry.expires_at_ms)
        );
        if !cut_out.is_empty() {
            done.push_str(&format!(
                "\n  the allow-list's {} cut out of it",
                cut_out.join(", ")
            ));
        }
        Ok(done)
    })
}

/// Runs `floodgate unblock`.
pub(super) fn unblock(args: &UnblockArgs) -> Result<Status, CliError> {
    let net = parse_net(&args.net)?;
    let reason = reason(&args.reason)?;
    override_ledger(&args.policy, |ledger, _, now_ms| {
        let until = now_ms + i64::from(args.suppress_minutes) * 60_000;
        let mut ended = Vec::new();
        for entry in ledger.entries.values_mut() {
            if net.contains(&entry.net) && entry.is_active(now_ms) {
                entry.expires_at_ms = now_ms;
                entry.suppressed_until_ms = Some(until);
                entry.reason = format!("unblocked: {reason} (was: {})", entry.reason);
                ended.push(entry.net.to_string());
            }
        }
        if ended.is_empty() {
            return Err(CliError::Input(format!(
                "{net}: no block in force covers it; `floodgate status` lists them"
            )));
        }
        Ok(format!(
            "unblocked {}: {}; detection may block again after {}",
            plural(ended.len(), "block"),
            ended.join(", "),
            rfc3339_from_ms(until)
        ))
    })
}

/// The ledger's tier and source for operator overrides.
const MANUAL: &str = "manual";

/// Loads the ledger, lets `change` edit it, plans, writes every target and
/// saves. Nothing is written when `change` fails.
fn override_ledger(
    args: &super::PolicyArgs,
    change: impl Fn(&mut LedgerState, &Policy, i64) -> Result<String, CliError>,
) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(args)? else {
        return Ok(Status::Invalid);
    };
    let policy = &loaded.policy;
    if policy.targets.is_empty() {
        return Err(CliError::Input(
            "the policy has no [[targets]]: nowhere to write".to_owned(),
        ));
    }
    let now_ms = unix_ms(clock_at(args.now).now());
    tokio::runtime::Runtime::new()?.block_on(async {
        let ledger = ConfiguredLedger::from_policy(policy).await;
        let loaded = ledger.load().await?;
        // On a conflict the change is made again to the fresh ledger; the
        // message describes the change that was saved.
        let mut done = String::new();
        let mut replan = |state: &LedgerState| {
            let mut state = state.clone();
            done = change(&mut state, policy, now_ms)?;
            Ok(plan(
                &[],
                policy,
                &state,
                now_ms,
                MANUAL,
                Capacity::of(policy),
            ))
        };
        let planned = replan(&loaded)?;
        let targets = Resident::from_policy(policy).await.targets;
        // An operator's override is not a responder's cycle: it needs no lease.
        let guard = Arc::new(Unguarded);
        let (planned, reports) = match apply(
            policy,
            &ledger,
            loaded,
            targets,
            guard,
            planned,
            &mut replan,
        )
        .await
        {
            Ok(applied) => applied,
            Err(UpdateError::Attempt(error)) => return Err(error),
            Err(UpdateError::Save(error, _)) => return Err(error.into()),
        };
        let mut out = format!("{done}\n");
        if planned.observe_only {
            out.push_str("mode observe: nothing was written (set [safety] mode = \"enforce\")\n");
        }
        for report in &reports {
            out.push_str(&format!("  {}: {}\n", report.target, report.outcome));
            for left in &report.left_out {
                out.push_str(&format!("    left out {left}\n"));
            }
        }
        write_stdout(&out)?;
        let failed = reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)));
        Ok(if failed {
            Status::Partial
        } else {
            Status::Success
        })
    })
}

/// An address (a /32 or /128) or a range without host bits.
pub(super) fn parse_net(text: &str) -> Result<IpNet, CliError> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| {
                CliError::Input(format!(
                    "\"{text}\" is not an address or CIDR, such as 203.0.113.7 or 203.0.113.0/24"
                ))
            })?,
    };
    if net.trunc() != net {
        return Err(CliError::Input(format!(
            "\"{text}\" has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() == 0 {
        return Err(CliError::Input(format!(
            "\"{text}\" would block every address"
        )));
    }
    Ok(net)
}

fn reason(text: &str) -> Result<String, CliError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CliError::Input(
            "--reason must say why, for the next reader of the ledger".to_owned(),
        ));
    }
    Ok(text.to_owned())
}

/// The full allow-list exception that covers all of `net`, if any.
fn covering_exception<'p>(
    policy: &'p Policy,
    net: &IpNet,
) -> Option<&'p floodgate_rules::policy::AllowEntry> {
    full_exceptions(policy).find(|e| e.cidr.contains(net))
}

/// The full exceptions strictly inside `net`: cut out of a block of it.
fn exceptions_inside<'p>(
    policy: &'p Policy,
    net: &'p IpNet,
) -> impl Iterator<Item = &'p floodgate_rules::policy::AllowEntry> {
    full_exceptions(policy).filter(move |e| net.contains(&e.cidr) && e.cidr != *net)
}

/// Unexpired exceptions without a request budget: never blocked at all.
fn full_exceptions(policy: &Policy) -> impl Iterator<Item = &floodgate_rules::policy::AllowEntry> {
    policy
        .allow
        .entries()
        .iter()
        .filter(|e| !e.is_expired(policy.evaluated_on) && e.requests.is_none())
}
