//! `floodgate review`: the exceptions ops approve, with what needs attention.

use floodgate_rules::review::{ItemKind, ReviewItem, add_usage, review};

use super::{CliError, Format, ReviewArgs, Status, load_policy, write_stdout};
use crate::source::{LogSource, LogsArgument};
use floodgate_rules::policy::{LogFormat, Prefixes};

use crate::traffic::{CountSpec, Traffic};

/// Prints every allow entry and tenant override, as a table or JSON.
pub(super) fn run(args: &ReviewArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let mut items = review(&loaded.policy);
    if !args.logs.is_empty() {
        let format = args.logs_from.resolve(&loaded.policy);
        let traffic = whole_log_traffic(&args.logs, format)?;
        let per_ip = traffic.iter().map(|(_, net, counts)| {
            let requests = counts.requests(WHOLE_LOG).unwrap_or(0);
            (net.addr(), u64::from(requests))
        });
        add_usage(&mut items, &loaded.policy, per_ip);
    }
    let output = match args.format {
        Format::Table => table(&items),
        Format::Json => {
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
