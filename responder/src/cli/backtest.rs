//! `floodgate backtest`: what would this policy have done over a period of
//! historical WAF logs? Writes a self-contained HTML report with SVG charts
//! (requests over time of the busiest addresses, block spans shaded) and
//! prints a summary. Writes nothing to any target or ledger.

use std::fmt::Write as _;
use std::path::Path;

use floodgate_rules::Policy;
use floodgate_rules::policy::LogFormat;

use super::{BacktestArgs, CliError, Format, Status, load_policy, write_stdout};
use crate::backtest::{self, Backtest, Record};
use crate::clock::{rfc3339_from_ms, unix_ms};
use crate::detect::{count_spec, key_text};
use crate::plan::Capacity;
use crate::source::LogsArgument;
use crate::waflog::Hit;

/// Charted keys.
const CHARTED: usize = 6;
/// Addresses listed per blocked prefix.
const LISTED: usize = 8;

/// Runs `floodgate backtest`.
pub(super) fn run(args: &BacktestArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let policy = &loaded.policy;
    let (from_ms, to_ms) = (unix_ms(args.from), unix_ms(args.to));
    if to_ms <= from_ms {
        return Err(CliError::Input("--to must come after --from".to_owned()));
    }
    let step_ms = i64::try_from(args.step.as_millis()).unwrap_or(i64::MAX);
    if (to_ms - from_ms) / step_ms > 1_000_000 {
        return Err(CliError::Input(
            "more than a million steps: use a longer --step or a shorter period".to_owned(),
        ));
    }
    let widest = policy
        .tiers
        .iter()
        .map(|t| i64::from(t.window_seconds.get()))
        .max();
    let earliest = from_ms - widest.unwrap_or(300) * 1000;
    let format = args.logs_from.resolve(policy);
    let records = read_records(policy, &args.logs, format, earliest, to_ms)?;
    // An empty period would replay as "0 requests, nothing blocked": a
    // success that tests nothing.
    if !records
        .iter()
        .any(|(ms, _, _)| (from_ms..=to_ms).contains(ms))
    {
        return Err(CliError::Input(format!(
            "no record between {} and {} in {}: the logs do not cover the period; \
             check --from, --to and --logs",
            rfc3339_from_ms(from_ms),
            rfc3339_from_ms(to_ms),
            args.logs.join(" ")
        )));
    }
    let result = backtest::run(
        policy,
        records,
        from_ms,
        to_ms,
        step_ms,
        Capacity::of(policy),
        CHARTED,
    )
    .map_err(|e| CliError::Input(format!("too many tier windows: {}", e.0)))?;
    std::fs::write(&args.out, html(&result, policy))
        .map_err(|e| CliError::Input(format!("{}: {e}", args.out.display())))?;
    let output = match args.format {
        Format::Json => crate::json_text::pretty(summary_json(&result)) + "\n",
        Format::Table => summary_text(&result, &args.out),
    };
    write_stdout(&output)?;
    Ok(Status::Success)
}

/// Every usable record between `from_ms` and `to_ms` in the files, with
/// the tier matches of `policy` it meets.
fn read_records(
    policy: &Policy,
    paths: &[String],
    format: LogFormat,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Record>, CliError> {
    let spec = count_spec(policy, to_ms, 1).map_err(crate::source::SourceError::from)?;
    let in_period = move |hit: &Hit| (from_ms..=to_ms).contains(&hit.timestamp_ms);
    let runtime = tokio::runtime::Runtime::new()?;
    let hits = match runtime.block_on(LogsArgument::new(paths, format))? {
        LogsArgument::Files(files) => files.hits_blocking(spec.scopes(), in_period)?,
        LogsArgument::S3(s3) => {
            let (hits, stats) =
                runtime.block_on(s3.hits(spec.scopes(), from_ms, to_ms, in_period))?;
            eprintln!("read {} objects under {}", stats.objects, s3.location());
            super::warn_skipped_objects(&stats);
            hits
        }
    };
    Ok(hits
        .into_iter()
        .map(|hit| (hit.timestamp_ms, hit.client_ip, hit.scopes))
        .collect())
}

/// What `backtest --format json` prints.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub(super) struct BacktestReport {
    /// [`crate::JSON_VERSION`].
    version: u32,
    /// The period's start, RFC 3339.
    from: String,
    /// The period's end.
    to: String,
    /// Requests in the period.
    requests: u64,
    /// Every address or range blocked at some point.
    blocked: Vec<BlockedReport>,
    /// Blocks still in force at `to`.
    still_blocked_at_end: usize,
    /// Requests the blocks would have stopped.
    requests_stopped: u64,
    /// Requests from allow-listed addresses.
    allow_listed_requests: u64,
    /// Allow-listed addresses whose traffic reached a tier.
    allow_listed_offenders: usize,
    /// Steps at which the circuit breaker held blocks back, RFC 3339.
    circuit_breaker_steps: Vec<String>,
}

/// One address or range the backtest blocked.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub(super) struct BlockedReport {
    /// The address or range, with its length.
    net: String,
    /// The tier that blocked it (the last, when several did).
    tier: Option<String>,
    /// Minutes blocked within the period.
    minutes: f64,
    /// When its first block began.
    from: Option<String>,
    /// Distinct addresses seen in it.
    addresses_seen: usize,
    /// Still blocked at `to`: its minutes stop there, not at its expiry.
    in_force_at_end: bool,
}

fn summary_json(result: &Backtest) -> serde_json::Value {
    let blocked = result
        .blocked
        .iter()
        .map(|(net, spans)| BlockedReport {
            net: net.to_string(),
            tier: result.tiers.get(net).cloned(),
            minutes: result.minutes_blocked(net),
            from: spans.first().map(|&(start, _)| rfc3339_from_ms(start)),
            addresses_seen: result.seen_in.get(net).map_or(1, Vec::len),
            in_force_at_end: in_force_at_end(result, spans),
        })
        .collect();
    let report = BacktestReport {
        version: crate::JSON_VERSION,
        from: rfc3339_from_ms(result.from_ms),
        to: rfc3339_from_ms(result.to_ms),
        requests: result.requests,
        blocked,
        still_blocked_at_end: still_blocked(result),
        requests_stopped: result.stopped,
        allow_listed_requests: result.allow_listed_requests,
        allow_listed_offenders: result.allow_listed_offenders,
        circuit_breaker_steps: result
            .breaker_steps
            .iter()
            .map(|&t| rfc3339_from_ms(t))
            .collect(),
    };
    serde_json::to_value(report).expect("reports serialize")
}

fn summary_text(result: &Backtest, out: &Path) -> String {
    let mut text = format!(
        "{} to {}: {} requests; {}; {} requests ({:.1}%) would have been stopped\n",
        rfc3339_from_ms(result.from_ms),
        rfc3339_from_ms(result.to_ms),
        result.requests,
        blocked_count(result),
        result.stopped,
        percent(result.stopped, result.requests),
    );
    for net in result.blocked.keys() {
        let _ = writeln!(
            text,
            "  {:<43} blocked {} by {}{}",
            key_text(net),
            blocked_for(result, net),
            tier_of(result, net),
            seen_text(result, net)
        );
    }
    let clipped = still_blocked(result);
    if clipped > 0 {
        let _ = writeln!(
            text,
            "{clipped} blocks were still in force at {}: their minutes end there, not at their expiry",
            rfc3339_from_ms(result.to_ms)
        );
    }
    let _ = writeln!(
        text,
        "allow-list: {} requests, {} allow-listed addresses reached a tier; circuit breaker {}",
        result.allow_listed_requests,
        result.allow_listed_offenders,
        breaker(result.breaker_steps.len())
    );
    let _ = writeln!(text, "report: {}", out.display());
    text
}

/// The tier that blocked `net`.
fn tier_of<'r>(result: &'r Backtest, net: &ipnet::IpNet) -> &'r str {
    result.tiers.get(net).map_or("-", String::as_str)
}

/// `19 blocked (17 addresses, 2 prefixes)`.
fn blocked_count(result: &Backtest) -> String {
    let prefixes = result.seen_in.len();
    let addresses = result.blocked.len() - prefixes;
    let plural = |n: usize, noun: &str| format!("{n} {noun}{}", if n == 1 { "" } else { "es" });
    format!(
        "{} blocked ({}, {})",
        result.blocked.len(),
        plural(addresses, "address"),
        plural(prefixes, "prefix")
    )
}

/// How long `net` was blocked, for people: a block that starts at the last
/// step has no minutes inside the period yet.
fn blocked_for(result: &Backtest, net: &ipnet::IpNet) -> String {
    let minutes = result.minutes_blocked(net);
    if minutes > 0.0 {
        format!("{minutes:.0} min")
    } else {
        "from the last step".to_owned()
    }
}

/// For a blocked prefix, the addresses seen in it: `; 60 addresses seen:
/// 2001:db8::1, ... (52 more)`; nothing for an address.
fn seen_text(result: &Backtest, net: &ipnet::IpNet) -> String {
    let Some(seen) = result.seen_in.get(net) else {
        return String::new();
    };
    let listed: Vec<String> = seen.iter().take(LISTED).map(ToString::to_string).collect();
    let more = match seen.len().saturating_sub(LISTED) {
        0 => String::new(),
        n => format!(", … ({n} more)"),
    };
    let noun = if seen.len() == 1 {
        "address"
    } else {
        "addresses"
    };
    format!("; {} {noun} seen: {}{more}", seen.len(), listed.join(", "))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained report: a summary, the blocks, and one chart per
/// busy address with its block spans shaded.
fn html(result: &Backtest, policy: &Policy) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Floodgate backtest</title>\n<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}figure{margin:1.5em 0}figcaption{font-weight:600}.legend{font-size:.85em;color:#444;margin:.2em 0 0}td.spans,td.tier{white-space:nowrap}</style></head><body>\n",
    );
    let _ = writeln!(
        page,
        "<h1>Floodgate backtest</h1>\n<p>{} to {}, one step every {} s, {} tiers. {} requests; <strong>{}</strong>; <strong>{} requests ({:.1}%) would have been stopped</strong>. Allow-list: {} requests, {} allow-listed addresses reached a tier. Circuit breaker: {}.</p>",
        rfc3339_from_ms(result.from_ms),
        rfc3339_from_ms(result.to_ms),
        result.step_ms / 1000,
        policy.tiers.len(),
        result.requests,
        blocked_count(result),
        result.stopped,
        percent(result.stopped, result.requests),
        result.allow_listed_requests,
        result.allow_listed_offenders,
        breaker(result.breaker_steps.len())
    );
    let clipped = still_blocked(result);
    if clipped > 0 {
        let _ = writeln!(
            page,
            "<p>{clipped} blocks were still in force at the period's end: their spans and minutes end at {}, not at their expiry.</p>",
            rfc3339_from_ms(result.to_ms)
        );
    }
    page.push_str(&overview_chart(result));
    page.push_str(
        "<h2>Blocks</h2>\n<table><tr><th>address or prefix</th><th>tier</th><th>blocked</th><th>spans</th><th>addresses seen</th></tr>\n",
    );
    for (net, spans) in &result.blocked {
        let spans: Vec<String> = spans
            .iter()
            .map(|&(a, b)| format!("{} – {}", rfc3339_from_ms(a), rfc3339_from_ms(b)))
            .collect();
        let seen = seen_text(result, net);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"tier\">{}</td><td>{}</td><td class=\"spans\">{}</td><td>{}</td></tr>",
            escape(&key_text(net)),
            escape(tier_of(result, net)),
            blocked_for(result, net),
            spans
                .iter()
                .map(|s| escape(s))
                .collect::<Vec<_>>()
                .join("<br>"),
            escape(seen.trim_start_matches("; "))
        );
    }
    page.push_str("</table>\n<h2>Busiest clients</h2>\n");
    for (net, series) in &result.top {
        page.push_str(&key_chart(result, policy, *net, series));
    }
    page.push_str("</body></html>\n");
    page
}

/// One line of a chart.
struct Line<'a> {
    label: &'a str,
    color: &'a str,
    values: Vec<u32>,
}

/// A horizontal dashed line: a tier's threshold as requests per step.
struct Threshold {
    label: String,
    per_step: f64,
}

/// The overview: all requests per step, and those the blocks stopped.
fn overview_chart(result: &Backtest) -> String {
    let lines = [
        Line {
            label: "all requests",
            color: "#1a73e8",
            values: result.per_step.iter().map(|s| s.0).collect(),
        },
        Line {
            label: "stopped by the blocks",
            color: "#d93025",
            values: result.per_step.iter().map(|s| s.1).collect(),
        },
    ];
    svg_chart(result, "Overview: requests per step", &lines, &[], &[])
}

/// One key's chart: its requests per step, its block spans shaded, and the
/// thresholds of the tiers that count all its requests by its prefixes.
fn key_chart(result: &Backtest, policy: &Policy, net: ipnet::IpNet, series: &[u32]) -> String {
    let thresholds: Vec<Threshold> = policy
        .tiers
        .iter()
        .filter(|t| t.prefixes == policy.prefixes && t.scope.is_none())
        .map(|t| {
            let window_ms = f64::from(t.window_seconds.get()) * 1000.0;
            Threshold {
                label: format!("{}: {} per {} s", t.name, t.requests, t.window_seconds),
                per_step: f64::from(t.requests.get()) * result.step_ms as f64 / window_ms,
            }
        })
        .collect();
    let line = Line {
        label: "requests",
        color: "#1a73e8",
        values: series.to_vec(),
    };
    let spans = result.blocked.get(&net).map_or(&[][..], Vec::as_slice);
    // An exception is why a busy client went unblocked: say whose.
    let title = match policy.allow.find_containing(net) {
        Some(i) => {
            let entry = &policy.allow.entries()[i];
            format!(
                "{} (allow-listed by {}: {}, owner {})",
                key_text(&net),
                entry.cidr,
                entry.reason,
                entry.owner
            )
        }
        None => key_text(&net),
    };
    svg_chart(result, &title, &[line], spans, &thresholds)
}

/// Whether a block with these spans is still in force at the period's end.
fn in_force_at_end(result: &Backtest, spans: &[(i64, i64)]) -> bool {
    spans.last().is_some_and(|&(_, end)| end >= result.to_ms)
}

/// Blocks still in force at the period's end: their spans and minutes stop
/// at `--to`.
fn still_blocked(result: &Backtest) -> usize {
    result
        .blocked
        .values()
        .filter(|spans| in_force_at_end(result, spans))
        .count()
}

/// An SVG chart over the period: `lines` per step, `spans` shaded red,
/// `thresholds` dashed, with a legend.
fn svg_chart(
    result: &Backtest,
    title: &str,
    lines: &[Line],
    spans: &[(i64, i64)],
    thresholds: &[Threshold],
) -> String {
    let (width, height, left, bottom) = (800.0, 200.0, 50.0, 20.0);
    let span_ms = (result.to_ms - result.from_ms).max(1) as f64;
    let x = |ms: i64| left + (ms - result.from_ms) as f64 / span_ms * (width - left - 10.0);
    let highest_line = lines.iter().flat_map(|l| l.values.iter().copied()).max();
    let highest_threshold = thresholds.iter().map(|t| t.per_step).fold(0.0, f64::max);
    let peak = f64::from(highest_line.unwrap_or(0).max(1)).max(highest_threshold);
    let y = |v: f64| (height - bottom) - v / peak * (height - bottom - 10.0);
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"requests per step: {}\">\n",
        escape(title),
        escape(title)
    );
    for &(a, b) in spans {
        let _ = writeln!(
            svg,
            "<rect class=\"blocked\" x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4c7c3\"><title>blocked {} – {}</title></rect>",
            x(a),
            (x(b) - x(a)).max(1.0),
            height - bottom,
            rfc3339_from_ms(a),
            rfc3339_from_ms(b)
        );
    }
    for threshold in thresholds {
        let at = y(threshold.per_step);
        let _ = writeln!(
            svg,
            "<line class=\"threshold\" x1=\"{left}\" y1=\"{at:.1}\" x2=\"{0}\" y2=\"{at:.1}\" stroke=\"#e37400\" stroke-dasharray=\"6 4\"/><text x=\"{0}\" y=\"{1:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#e37400\">{2}</text>",
            width - 10.0,
            at - 3.0,
            escape(&threshold.label)
        );
    }
    for line in lines {
        let points: Vec<String> = line
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let at = result.from_ms + i as i64 * result.step_ms;
                format!("{:.1},{:.1}", x(at), y(f64::from(v)))
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            line.color,
            points.join(" "),
            escape(line.label)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#444\"/><text x=\"4\" y=\"14\" font-size=\"11\">{peak:.0} req/step</text><text x=\"{left}\" y=\"{height}\" font-size=\"11\">{2}</text><text x=\"{3}\" y=\"{height}\" font-size=\"11\" text-anchor=\"end\">{4}</text>",
        height - bottom,
        width - 10.0,
        rfc3339_from_ms(result.from_ms),
        width - 10.0,
        rfc3339_from_ms(result.to_ms)
    );
    svg.push_str("</svg>");
    let legend: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "<span style=\"color:{}\">━</span> {}",
                l.color,
                escape(l.label)
            )
        })
        .chain(
            (!spans.is_empty())
                .then(|| "<span style=\"color:#f4c7c3\">█</span> blocked".to_owned()),
        )
        .chain((!thresholds.is_empty()).then(|| {
            "<span style=\"color:#e37400\">┅</span> tier thresholds, as requests per step"
                .to_owned()
        }))
        .collect();
    let _ = writeln!(
        svg,
        "<p class=\"legend\">{}</p></figure>",
        legend.join(" &nbsp; ")
    );
    svg
}

/// What the circuit breaker did over the backtest, for people.
fn breaker(steps: usize) -> String {
    match steps {
        0 => "never tripped".to_owned(),
        1 => "tripped at 1 step".to_owned(),
        n => format!("tripped at {n} steps"),
    }
}
