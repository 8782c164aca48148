//! `floodgate review`: the exceptions ops approve, with what needs
//! attention; with `--base`, a change to the policy as a review.

use std::path::Path;

use floodgate_rules::review::diff::{Change, ChangeType, Risk, Section, add_diff_usage, diff};
use floodgate_rules::review::{ItemKind, ReviewItem, add_usage, review};
use floodgate_rules::{LoadedPolicy, Policy};
use ipnet::IpNet;
use time::Date;

use super::{CliError, ReviewArgs, ReviewFormat, Status, load_policy, write_stdout};
use crate::ledger::{ConfiguredLedger, Ledger as _};
use crate::source::{LogSource, LogsArgument};
use floodgate_rules::policy::{LogFormat, Prefixes};

use crate::traffic::{CountSpec, Traffic};

/// Prints every allow entry and tenant override, as a table or JSON.
pub(super) fn run(args: &ReviewArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    if let Some(base) = &args.base {
        return review_change(args, base, &loaded);
    }
    let mut items = review(&loaded.policy);
    if !args.logs.is_empty() {
        let traffic = whole_log_traffic(&args.logs, args.logs_from.resolve(&loaded.policy))?;
        add_usage(&mut items, &loaded.policy, per_address(&traffic));
    }
    let output = match args.format {
        ReviewFormat::Table => table(&items),
        ReviewFormat::Markdown => markdown_items(&items),
        ReviewFormat::Json => {
            let document = ReviewReport {
                version: crate::JSON_VERSION,
                file: args.policy.config.display().to_string(),
                evaluated_on: loaded.policy.evaluated_on.to_string(),
                items,
                warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
            };
            let document = serde_json::to_value(document).expect("reports serialize");
            crate::json_text::pretty(document) + "\n"
        }
    };
    write_stdout(&output)?;
    Ok(Status::Success)
}

/// What `review --format json` prints.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub(super) struct ReviewReport {
    /// [`crate::JSON_VERSION`].
    version: u32,
    /// The policy file reviewed.
    file: String,
    /// The day expiry was evaluated on, `YYYY-MM-DD`.
    evaluated_on: String,
    /// Every allow entry, then every tenant override, in file order.
    items: Vec<ReviewItem>,
    /// The policy's warnings, as `floodgate check` prints them.
    warnings: Vec<String>,
}

/// Each client address once, with its requests over every record.
fn per_address(traffic: &Traffic) -> impl Iterator<Item = (std::net::IpAddr, u64)> + '_ {
    traffic.iter().map(|(_, net, counts)| {
        let requests = counts.requests(WHOLE_LOG).unwrap_or(0);
        (net.addr(), u64::from(requests))
    })
}

/// A window long enough to hold every record.
const WHOLE_LOG: u32 = u32::MAX;

/// Requests per client address over every record of the logs (every
/// object under an S3 prefix).
fn whole_log_traffic(logs: &[String], format: LogFormat) -> Result<Traffic, CliError> {
    let runtime = tokio::runtime::Runtime::new()?;
    let source = runtime.block_on(LogsArgument::new(logs, format))?;
    let newest = match &source {
        LogsArgument::Files(files) => files.newest_timestamp_blocking()?,
        LogsArgument::S3(s3) => runtime.block_on(s3.newest_timestamp())?,
    };
    // Per address, since an exception may be a single address in a /64.
    let spec = CountSpec::new(newest.unwrap_or(0), &[WHOLE_LOG])
        .map_err(crate::source::SourceError::from)?
        .with_keys(&[Prefixes::PER_ADDRESS.into()]);
    let (traffic, read_from) = match &source {
        LogsArgument::Files(files) => (
            files.count_blocking(&spec)?,
            format!("{} log files", files.files().len()),
        ),
        LogsArgument::S3(s3) => {
            let traffic = runtime.block_on(s3.count_everything(&spec))?;
            let objects = traffic.stats().objects;
            (
                traffic,
                format!("{objects} objects under {}", s3.location()),
            )
        }
    };
    let stats = traffic.stats();
    eprintln!(
        "read {} records ({} malformed) from {read_from}",
        stats.records, stats.malformed
    );
    super::warn_skipped_objects(stats);
    Ok(traffic)
}

/// Aligned columns, reason last because it is the longest. The REQUESTS
/// column appears when logs were reviewed.
fn table(items: &[ReviewItem]) -> String {
    if items.is_empty() {
        return "no allow-list exceptions or tenant overrides\n".to_owned();
    }
    let with_requests = items.iter().any(|item| item.requests.is_some());
    let mut header = vec!["KIND", "SUBJECT", "GRANTS", "OWNER", "EXPIRES", "DAYS LEFT"];
    if with_requests {
        header.extend(["REQUESTS", "ADDRESSES"]);
    }
    header.extend(["FLAGS", "LINE", "REASON"]);
    let mut rows: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for item in items {
        let kind = match item.kind {
            ItemKind::Allow => "allow",
            ItemKind::TenantOverride => "tenant",
        };
        let days_left = if item.days_left < 0 {
            "EXPIRED".to_owned()
        } else {
            item.days_left.to_string()
        };
        let mut row = vec![
            kind.to_owned(),
            item.subject.clone(),
            item.grants.clone(),
            item.owner.clone(),
            item.expires.clone(),
            days_left,
        ];
        if with_requests {
            let or_dash = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
            row.push(or_dash(item.requests));
            row.push(or_dash(item.addresses));
        }
        let flags: Vec<String> = item.flags.iter().map(ToString::to_string).collect();
        row.push(if flags.is_empty() {
            "-".to_owned()
        } else {
            flags.join(",")
        });
        row.push(item.line.to_string());
        row.push(item.reason.clone());
        rows.push(row);
    }
    let mut widths = vec![0; rows[0].len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What `review --base --format json` prints.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub(super) struct DiffReport {
    /// [`crate::JSON_VERSION`].
    version: u32,
    /// The version reviewed against: a file, or `REV:./FILE`.
    base: String,
    /// The policy file under review.
    head: String,
    /// The review day: expiry and risks are judged as of it, `YYYY-MM-DD`.
    evaluated_on: String,
    /// Each change, exceptions first.
    changes: Vec<Change>,
    /// Whether some change needs a second reviewer (exit 2).
    needs_second_reviewer: bool,
    /// Why the ledger could not be read, if it could not: blocks a change
    /// would end are then not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_error: Option<String>,
}

/// `review --base`: the change from the base to the policy under review.
fn review_change(args: &ReviewArgs, base: &str, head: &LoadedPolicy) -> Result<Status, CliError> {
    let head_policy = &head.policy;
    let (base_label, base_policy) =
        base_policy(base, &args.policy.config, head_policy.evaluated_on)?;
    let mut changes = diff(&base_policy, head_policy);
    if !args.logs.is_empty() {
        let traffic = whole_log_traffic(&args.logs, args.logs_from.resolve(head_policy))?;
        add_diff_usage(&mut changes, per_address(&traffic));
    }
    let now_ms = crate::clock::unix_ms(args.policy.clock().now());
    let ledger_error = tokio::runtime::Runtime::new()?
        .block_on(add_unblocks(&mut changes, head_policy, now_ms))
        .err()
        .map(|error| error.to_string());
    if let Some(error) = &ledger_error {
        eprintln!(
            "warning: cannot read the ledger, so the blocks a change would end are unknown: {error}"
        );
    }
    let report = DiffReport {
        version: crate::JSON_VERSION,
        base: base_label,
        head: args.policy.config.display().to_string(),
        evaluated_on: head_policy.evaluated_on.to_string(),
        needs_second_reviewer: changes.iter().any(Change::is_risky),
        changes,
        ledger_error,
    };
    let output = match args.format {
        ReviewFormat::Table => diff_text(&report),
        ReviewFormat::Markdown => diff_markdown(&report),
        ReviewFormat::Json => {
            let document = serde_json::to_value(&report).expect("reports serialize");
            crate::json_text::pretty(document) + "\n"
        }
    };
    write_stdout(&output)?;
    Ok(if report.needs_second_reviewer {
        Status::NeedsReview
    } else {
        Status::Success
    })
}

/// The base policy: the file `base`, or the `--config` file as git revision
/// `base` holds it. Returns its label and the policy.
fn base_policy(base: &str, head_path: &Path, today: Date) -> Result<(String, Policy), CliError> {
    let invalid = |label: &str, error: floodgate_rules::PolicyError| {
        eprintln!("{error}");
        CliError::Input(format!(
            "the base policy {label} is invalid; review against a version that passes `floodgate check`"
        ))
    };
    if Path::new(base).is_file() {
        return match crate::policy_file::load(Path::new(base), today) {
            Ok(loaded) => Ok((base.to_owned(), loaded.policy)),
            Err(crate::policy_file::LoadError::Invalid(error)) => Err(invalid(base, error)),
            Err(error) => Err(error.into()),
        };
    }
    let folder = head_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = head_path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let label = format!("{base}:./{name}");
    let shown = std::process::Command::new("git")
        .arg("-C")
        .arg(folder)
        .args(["show", &label])
        .output()
        .map_err(|e| {
            CliError::Input(format!(
                "--base {base}: not a file, and git cannot run: {e}"
            ))
        })?;
    if !shown.status.success() {
        return Err(CliError::Input(format!(
            "--base {base}: not a file, nor a git revision that holds {}: {}",
            head_path.display(),
            String::from_utf8_lossy(&shown.stderr).trim()
        )));
    }
    let text = String::from_utf8(shown.stdout)
        .map_err(|_| CliError::Input(format!("--base {base}: {label} is not UTF-8 text")))?;
    match Policy::from_toml(&text, &label, today) {
        Ok(loaded) => Ok((label, loaded.policy)),
        Err(error) => Err(invalid(&label, error)),
    }
}

/// Fills in the blocks in force that each added or widened exception would
/// end (those its old range did not already hold), and flags them.
async fn add_unblocks(
    changes: &mut [Change],
    policy: &Policy,
    now_ms: i64,
) -> Result<(), CliError> {
    let ledger = ConfiguredLedger::from_policy(policy).await.load().await?;
    for change in changes
        .iter_mut()
        .filter(|c| c.section == Section::Allow)
        .filter(|c| matches!(c.change, ChangeType::Added | ChangeType::Widened))
    {
        let Ok(net) = change.subject.parse::<IpNet>() else {
            continue;
        };
        let before: Option<IpNet> = change
            .fields
            .iter()
            .find(|f| f.field == "cidr")
            .and_then(|f| f.before.as_deref()?.parse().ok());
        change.unblocks = ledger
            .active(now_ms)
            .filter(|e| net.contains(&e.net) || e.net.contains(&net))
            .filter(|e| !before.is_some_and(|b| b.contains(&e.net)))
            .map(|e| e.net.to_string())
            .collect();
        if !change.unblocks.is_empty() {
            change.flag(Risk::UnblocksNow);
        }
    }
    Ok(())
}

fn section_name(section: Section) -> &'static str {
    match section {
        Section::Allow => "allow",
        Section::TenantOverride => "tenant",
        Section::Tier => "tier",
        Section::Plan => "plan",
    }
}

fn change_name(change: ChangeType) -> &'static str {
    match change {
        ChangeType::Added => "added",
        ChangeType::Removed => "removed",
        ChangeType::Widened => "widened",
        ChangeType::Extended => "extended",
        ChangeType::Narrowed => "narrowed",
        ChangeType::Changed => "changed",
    }
}

fn risk_name(risk: Risk) -> &'static str {
    match risk {
        Risk::Broad => "wider than a /24 (IPv6: /48)",
        Risk::LongLived => "lasts over a year",
        Risk::OwnerChanged => "new owner",
        Risk::Loosened => "loosens a block tier",
        Risk::UnblocksNow => "ends blocks in force",
    }
}

/// `cidr 198.51.100.0/24 -> 198.51.0.0/16`, or for an added or removed
/// entry its values.
fn describe_fields(change: &Change) -> Vec<String> {
    change
        .fields
        .iter()
        .map(|f| match (&f.before, &f.after) {
            (Some(before), Some(after)) => format!("{} {before} -> {after}", f.field),
            (Some(value), None) | (None, Some(value)) => format!("{} {value}", f.field),
            (None, None) => f.field.clone(),
        })
        .collect()
}

/// The traffic and blocks of a changed exception, in words.
fn describe_impact(change: &Change) -> Vec<String> {
    let mut lines = Vec::new();
    if let (Some(requests), Some(addresses)) = (change.requests, change.addresses) {
        lines.push(format!(
            "{requests} requests from {} in the logs",
            super::plural(addresses as usize, "address")
        ));
    }
    if !change.unblocks.is_empty() {
        lines.push(format!(
            "would end blocks in force: {}",
            change.unblocks.join(", ")
        ));
    }
    lines
}

fn summary_line(report: &DiffReport) -> String {
    let risky = report.changes.iter().filter(|c| c.is_risky()).count();
    format!(
        "{}; {} a second reviewer",
        super::plural(report.changes.len(), "change"),
        match risky {
            0 => "none needs".to_owned(),
            1 => "1 needs".to_owned(),
            n => format!("{n} need"),
        }
    )
}

/// The change for people.
fn diff_text(report: &DiffReport) -> String {
    let mut out = format!(
        "{} against {} (review day {})\n",
        report.head, report.base, report.evaluated_on
    );
    for change in &report.changes {
        let file = if change.change == ChangeType::Removed {
            "base line"
        } else {
            "line"
        };
        let line = change
            .line
            .map_or(String::new(), |l| format!(" ({file} {l})"));
        out.push_str(&format!(
            "{} {} {}{line}\n",
            section_name(change.section),
            change.subject,
            change_name(change.change).to_uppercase()
        ));
        for text in describe_fields(change) {
            out.push_str(&format!("  {text}\n"));
        }
        let listed = matches!(change.change, ChangeType::Added | ChangeType::Removed);
        if let (Some(owner), Some(expires), Some(reason), false) =
            (&change.owner, &change.expires, &change.reason, listed)
        {
            out.push_str(&format!("  owner {owner}, until {expires}: {reason}\n"));
        }
        for text in describe_impact(change) {
            out.push_str(&format!("  {text}\n"));
        }
        if change.is_risky() {
            let risks: Vec<&str> = change.risks.iter().map(|r| risk_name(*r)).collect();
            out.push_str(&format!(
                "  NEEDS A SECOND REVIEWER: {}\n",
                risks.join("; ")
            ));
        }
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    out
}

/// A Markdown table cell: pipes escaped, lines joined.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The change as a pull-request comment.
fn diff_markdown(report: &DiffReport) -> String {
    let mut out = format!(
        "### Floodgate policy review\n\n`{}` against `{}`, as of {}.\n\n",
        report.head, report.base, report.evaluated_on
    );
    if report.changes.is_empty() {
        out.push_str("No change to exceptions, overrides, tiers or plans.\n");
        return out;
    }
    out.push_str("| entry | change | details | owner | expires | impact | second reviewer |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for change in &report.changes {
        let risks: Vec<String> = change
            .risks
            .iter()
            .map(|r| format!("**{}**", risk_name(*r)))
            .collect();
        out.push_str(&format!(
            "| {} `{}` | {} | {} | {} | {} | {} | {} |\n",
            section_name(change.section),
            cell(&change.subject),
            change_name(change.change),
            cell(&describe_fields(change).join("<br>")),
            cell(change.owner.as_deref().unwrap_or("")),
            change.expires.as_deref().unwrap_or(""),
            cell(&describe_impact(change).join("<br>")),
            if risks.is_empty() {
                "-".to_owned()
            } else {
                risks.join(", ")
            }
        ));
    }
    out.push_str(&format!("\n{}.\n", summary_line(report)));
    out
}

/// The exceptions as a Markdown table.
fn markdown_items(items: &[ReviewItem]) -> String {
    let mut out = "| kind | subject | grants | owner | expires | days left | requests | flags | line | reason |\n".to_owned();
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for item in items {
        let kind = match item.kind {
            ItemKind::Allow => "allow",
            ItemKind::TenantOverride => "tenant",
        };
        let flags: Vec<String> = item.flags.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "| {kind} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&item.subject),
            cell(&item.grants),
            cell(&item.owner),
            item.expires,
            item.days_left,
            item.requests.map_or("-".to_owned(), |r| r.to_string()),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags.join(", ")
            },
            item.line,
            cell(&item.reason)
        ));
    }
    out
}
