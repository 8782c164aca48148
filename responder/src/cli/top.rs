//! `floodgate top`: who is hammering us right now.

use std::collections::BTreeMap;
use std::path::Path;

use floodgate_rules::Policy;
use serde::Serialize;

use super::{CliError, Format, Status, TopArgs, load_policy, write_stdout};
use crate::clock::{Stopwatch, clock_at, rfc3339_from_ms, unix_ms};
use crate::detect::{count_spec, rank};
use crate::source::{ConfiguredSource, LogSource, LogsArgument};
use crate::traffic::Traffic;

/// The JSON document `top --format json` prints.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct TopReport {
    /// [`crate::JSON_VERSION`]: the shape of this document.
    version: u32,
    /// The window counted.
    window: WindowReport,
    /// Records read.
    records: u64,
    /// Lines that were not log records.
    malformed: u64,
    /// Distinct client keys in the window.
    distinct_keys: usize,
    /// The busiest keys, most requests first (`--limit` of them).
    offenders: Vec<OffenderReport>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
struct WindowReport {
    /// Its start (exclusive), RFC 3339.
    start: String,
    /// Its end (inclusive).
    end: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
struct OffenderReport {
    /// An address or a prefix, always with its length (`192.0.2.7/32`,
    /// `2001:db8::/64`), as every other report writes it.
    key: String,
    /// Distinct addresses seen in the key.
    addresses: u32,
    /// Present and true when `addresses` is a lower bound (Logs Insights
    /// counted the prefix in a region whose addresses did not fit a query).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    addresses_at_least: bool,
    /// Requests in the window.
    requests: u32,
    /// The most severe tier it reached, if any.
    tier: Option<String>,
    /// Whether an allow-list exception covers it.
    allow_listed: bool,
    /// Its requests by the action WAF took (`ALLOW`, `BLOCK`, `COUNT`, …).
    actions: BTreeMap<&'static str, u32>,
}

/// Counts the logs, ranks the client IPs, prints the top ones.
pub(super) fn run(args: &TopArgs) -> Result<Status, CliError> {
    // The rule of every command, except that no policy is no error here.
    let default = Path::new("floodgate.toml");
    let config = args
        .config
        .clone()
        .or_else(|| default.exists().then(|| default.to_owned()));
    let policy = match &config {
        Some(config) => {
            let policy_args = super::PolicyArgs {
                config: config.clone(),
                now: args.now,
            };
            match load_policy(&policy_args)? {
                Some(loaded) => loaded.policy,
                None => return Ok(Status::Invalid),
            }
        }
        // Without a policy, rank only: no tiers, no allow-list.
        None => {
            Policy::from_toml("", "(none)", clock_at(args.now).today())
                .expect("an empty policy is valid")
                .policy
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(top(args, &policy))
}

async fn top(args: &TopArgs, policy: &Policy) -> Result<Status, CliError> {
    let format = args.logs_from.resolve(policy);
    let source = match (&args.logs[..], &policy.source) {
        ([], None) => {
            return Err(CliError::Input(
                "give --logs PATH, or --config with a [source] section".to_owned(),
            ));
        }
        ([], Some(config)) => {
            ConfiguredSource::from_config(&crate::aws::Aws::from_policy(policy).await, config)?
        }
        (logs, _) => LogsArgument::new(logs, format).await?.into_source(),
    };
    let started = Stopwatch::start();
    let end_ms = match args.now {
        Some(now) => unix_ms(now),
        None => match source.newest_timestamp().await? {
            Some(newest) => newest,
            None => unix_ms(clock_at(args.now).now()),
        },
    };
    let window = args.window.as_secs() as u32;
    let spec = count_spec(policy, end_ms, window).map_err(crate::source::SourceError::from)?;
    let traffic = source.count(&spec).await?;
    report_read(&traffic, started);
    let stats = traffic.stats();
    if stats.records == 0 && stats.malformed > 0 {
        return Err(CliError::Input(crate::source::all_malformed(
            format,
            stats.malformed,
        )));
    }
    let mut ranked = rank(&traffic, policy, window);
    ranked.retain(|o| o.requests > 0);
    ranked.truncate(args.limit);
    let report = TopReport {
        version: crate::JSON_VERSION,
        window: WindowReport {
            start: rfc3339_from_ms(spec.end_ms() - i64::from(window) * 1000),
            end: rfc3339_from_ms(spec.end_ms()),
        },
        records: stats.records,
        malformed: stats.malformed,
        distinct_keys: traffic.distinct_keys(),
        offenders: ranked
            .into_iter()
            .map(|o| OffenderReport {
                key: o.net.to_string(),
                addresses: o.addresses,
                addresses_at_least: o.addresses_at_least,
                requests: o.requests,
                tier: o.tier.map(|t| t.to_string()),
                allow_listed: o.allow_entry.is_some(),
                actions: o.actions.iter().map(|&(a, n)| (a.as_str(), n)).collect(),
            })
            .collect(),
    };
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
        Format::Table => table(&report),
    };
    write_stdout(&output)?;
    Ok(Status::Success)
}

/// One line on stderr about what was read, so stdout stays clean for tools.
fn report_read(traffic: &Traffic, started: Stopwatch) {
    let stats = traffic.stats();
    let mut line = format!(
        "read {} records ({} malformed), {:.1} MiB in {:.2} s",
        stats.records,
        stats.malformed,
        stats.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    if !stats.incomplete.is_empty() {
        line.push_str(&format!(
            "; INCOMPLETE: {} (raise [source] max_queries_per_cycle)",
            super::incomplete_parts(&stats.incomplete)
        ));
    }
    eprintln!("{line}");
    super::warn_skipped_objects(stats);
}

fn table(report: &TopReport) -> String {
    let mut out = format!("window {} .. {}\n", report.window.start, report.window.end);
    out.push_str(&format!(
        "{:<43} {:>9} {:>10}  {:<12} {:<6} {}\n",
        "CLIENT", "ADDRESSES", "REQUESTS", "TIER", "ALLOW", "ACTIONS"
    ));
    for o in &report.offenders {
        let actions: Vec<String> = o.actions.iter().map(|(a, n)| format!("{a}={n}")).collect();
        out.push_str(&format!(
            "{:<43} {:>9} {:>10}  {:<12} {:<6} {}\n",
            // People read a lone address without its /32.
            o.key
                .parse()
                .map_or_else(|_| o.key.clone(), |net| crate::detect::key_text(&net)),
            if o.addresses_at_least {
                format!("≥{}", o.addresses)
            } else {
                o.addresses.to_string()
            },
            o.requests,
            o.tier.as_deref().unwrap_or("-"),
            if o.allow_listed { "yes" } else { "no" },
            actions.join(" ")
        ));
    }
    out
}
