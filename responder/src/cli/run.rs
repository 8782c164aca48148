//! `floodgate run --once`: one responder cycle. Detect offenders in the
//! policy's log source, plan blocks against the ledger, apply them to every
//! target, save the ledger, report.
//!
//! Exit codes: 0 when every target converged, 1 when the input or
//! configuration is unusable (nothing is applied or saved), 2 when some
//! target failed (the others were written and the ledger saved; the next
//! cycle retries) or when some count was incomplete (Logs Insights' row
//! limit, past the query budget: what was found was still applied).

use std::sync::Arc;

use floodgate_rules::Policy;
use floodgate_rules::policy::Target;
use time::OffsetDateTime;

use super::{CliError, Format, RunArgs, Status, load_policy, write_stdout};
use crate::clock::{Clock, Stopwatch, clock_at, unix_ms};
use crate::cycle::{self, CycleReport, LeaseLine, Parts, Resident};
use crate::daemon::{CycleResult, Health, Schedule, schedule_loop};

/// Runs one cycle, or with no `--once` cycles on the policy's schedule.
pub(super) fn run(args: &RunArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let policy = with_overrides(loaded.policy, args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if args.once {
        let output = Output {
            format: args.format,
            one_line: false,
            emf_metrics: args.emf_metrics,
        };
        return runtime
            .block_on(async {
                let resident = Resident::from_policy(&policy).await;
                once(&policy, &resident, args.policy.now, output, None).await
            })
            .map(|ran| ran.status);
    }
    if args.policy.now.is_some() {
        return Err(CliError::Input(
            "--now places one cycle in time; use it with --once".to_owned(),
        ));
    }
    runtime.block_on(daemon(args, policy))
}

/// The policy with `--role` and `--holder-id` applied.
fn with_overrides(mut policy: Policy, args: &RunArgs) -> Result<Policy, CliError> {
    use floodgate_rules::policy::Role;
    match args.role.as_deref() {
        Some("standby") => policy.responder.role = Role::Standby,
        Some(_) => policy.responder.role = Role::Primary,
        None => {}
    }
    if let Some(id) = &args.holder_id {
        let Some(lease) = policy.responder.lease.as_mut() else {
            return Err(CliError::Input(
                "--holder-id names this responder in the lease, but the policy has no [responder] lease".to_owned(),
            ));
        };
        if !floodgate_rules::policy::is_holder_id(id) {
            return Err(CliError::Input(format!(
                "--holder-id \"{id}\": use 1 to 128 letters, digits, '_', '-', '.', ':' or '@'"
            )));
        }
        lease.holder_id = id.clone();
    }
    if policy.responder.role == Role::Standby && policy.responder.lease.is_none() {
        return Err(CliError::Input(
            "a standby needs [responder] lease: without one it cannot tell when the primary is down".to_owned(),
        ));
    }
    Ok(policy)
}

/// On a graceful stop, gives up the lease if this responder holds it, so
/// the other takes over at its next cycle instead of after `ttl + skew`.
async fn release_lease(policy: &Policy) {
    let ledger = crate::ledger::ConfiguredLedger::from_policy(policy).await;
    let Some(lease) = crate::lease::ConfiguredLease::from_policy(policy, &ledger) else {
        return;
    };
    match lease.release().await {
        Ok(true) => tracing::info!(holder = %lease.holder_id, "released the lease"),
        Ok(false) => {}
        Err(error) => {
            tracing::error!(%error, "could not release the lease; the other responder takes it once it lapses");
        }
    }
}

/// Cycles on `[responder] schedule` until SIGTERM or SIGINT; exit 0.
async fn daemon(args: &RunArgs, policy: Policy) -> Result<Status, CliError> {
    let responder = &policy.responder;
    let schedule =
        Schedule::new(&responder.schedule, responder.jitter_seconds).map_err(CliError::Input)?;
    let listener = tokio::net::TcpListener::bind(responder.listen)
        .await
        .map_err(|e| CliError::Input(format!("responder.listen {}: {e}", responder.listen)))?;
    tracing::info!(schedule = %responder.schedule, listen = %responder.listen, "responder daemon started");
    let clock: Arc<dyn crate::clock::Clock> = Arc::from(clock_at(None));
    let health = Arc::new(Health::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::daemon::serve(
        listener,
        Arc::clone(&health),
        Arc::clone(&clock),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        crate::daemon::signal().await;
        let _ = stop.send(true);
    });
    // Built once: each account's role is assumed once and its session
    // renewed before it expires, and each target looks its IP sets up
    // once, not every cycle.
    let resident = Arc::new(Resident::from_policy(&policy).await);
    let policy = Arc::new(policy);
    // One line per report, as log pipelines read them.
    let output = Output {
        format: args.format,
        one_line: true,
        emf_metrics: args.emf_metrics,
    };
    let cycle = || {
        let (policy, health, resident) = (
            Arc::clone(&policy),
            Arc::clone(&health),
            Arc::clone(&resident),
        );
        async move {
            match once(&policy, &resident, None, output, Some(&health)).await {
                Ok(Ran {
                    status: Status::Success,
                    stale: true,
                }) => CycleResult::Stale,
                Ok(Ran {
                    status: Status::Success,
                    ..
                }) => CycleResult::Success,
                Ok(_) => CycleResult::Partial,
                Err(error) => {
                    tracing::error!(%error, "cycle failed; nothing was applied");
                    CycleResult::Error
                }
            }
        }
    };
    let fast = policy.fast_tiers().next().is_some().then(|| {
        tokio::spawn(fast_loop(
            Arc::clone(&policy),
            Arc::clone(&resident),
            Arc::clone(&health),
            output,
            shutdown.clone(),
        ))
    });
    schedule_loop(&schedule, clock, Arc::clone(&health), shutdown, cycle).await;
    if let Some(fast) = fast
        && tokio::time::timeout(crate::daemon::SHUTDOWN_GRACE, fast)
            .await
            .is_err()
    {
        tracing::error!("the fast detector's pass did not finish within the grace period");
    }
    release_lease(&policy).await;
    server.abort();
    tracing::info!("responder daemon stopped");
    Ok(Status::Success)
}

/// The fast detector: a pass every `[responder] fast_interval_seconds`
/// until the shutdown signal; a running pass finishes first. Its reports
/// go to the metrics, and to the output when they blocked something or
/// met a failure.
async fn fast_loop(
    policy: Arc<Policy>,
    resident: Arc<Resident>,
    health: Arc<Health>,
    output: Output,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let interval =
        std::time::Duration::from_secs(u64::from(policy.responder.fast_interval_seconds.get()));
    let rules = crate::rate_rules::rate_rules(&resident.aws, &policy);
    tracing::info!(rules = rules.len(), ?interval, "fast detector started");
    // A rule that drifted from its tier lists by other limits: say so once
    // (`floodgate status` shows it too).
    for rule in &rules {
        let tier = policy.tier(rule.tier.as_str()).expect("a fast tier");
        match rule.drift(tier).await {
            Ok(None) => {}
            Ok(Some(drift)) => {
                tracing::warn!(rule = %rule.label(), %drift, "the deployed rate-based rule differs from its tier")
            }
            Err(error) => {
                tracing::warn!(rule = %rule.label(), %error, "cannot read the rate-based rule")
            }
        }
    }
    let detector = crate::fast::FastDetector::new(rules, interval);
    let clock: Arc<dyn Clock> = Arc::from(clock_at(None));
    let parts = match Parts::for_writing(&policy, &resident, Arc::clone(&clock), clock) {
        Ok(parts) => parts,
        Err(error) => {
            tracing::error!(%error, "the fast detector cannot run");
            return;
        }
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => break,
        }
        let report = match detector.pass(&parts).await {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "fast pass failed; nothing was applied");
                continue;
            }
        };
        health.record_fast(&report);
        if !report.worth_printing() {
            continue;
        }
        let text = match output.format {
            Format::Json => serde_json::to_string(&report).expect("reports serialize") + "\n",
            Format::Table => fast_summary(&report),
        };
        if let Err(error) = write_stdout(&text) {
            tracing::error!(%error, "cannot print the fast pass's report");
        }
    }
}

/// A fast pass for people: one line per block, rule failure and failed
/// target.
fn fast_summary(report: &crate::fast::FastReport) -> String {
    let mut out = String::new();
    for block in &report.added {
        out.push_str(&format!(
            "fast: blocked {} (tier {}) everywhere {:.1} s after {} listed it\n",
            block.key, block.tier, block.latency_seconds, block.rule
        ));
    }
    if !report.held_back.is_empty() {
        out.push_str(&format!(
            "fast: the circuit breaker held back {}\n",
            report.held_back.join(", ")
        ));
    }
    for failure in &report.rule_failures {
        out.push_str(&format!(
            "fast: cannot read {} ({}): {}\n",
            failure.rule, failure.failure, failure.error
        ));
    }
    for target in report.targets.iter().filter(|t| t.failure.is_some()) {
        out.push_str(&format!("fast: {}: {}\n", target.target, target.outcome));
    }
    out
}

/// How a cycle's report is printed.
#[derive(Debug, Clone, Copy)]
struct Output {
    format: Format,
    /// JSON reports on one line each (the daemon), or indented (`--once`).
    one_line: bool,
    /// Also a CloudWatch embedded-metric-format line.
    emf_metrics: bool,
}

/// How a cycle that ran ended.
#[derive(Debug, Clone, Copy)]
struct Ran {
    /// What `run --once` exits with.
    status: Status,
    /// The source had no record in the window, and none newer.
    stale: bool,
}

/// Runs one cycle at `now` (the real time without it) and prints its
/// report: the daemon's cycle (which hands the report to `health`'s
/// metrics), and `run --once`.
async fn once(
    policy: &Policy,
    resident: &Resident,
    now: Option<OffsetDateTime>,
    output: Output,
    health: Option<&Health>,
) -> Result<Ran, CliError> {
    let started = Stopwatch::start();
    let result = report_cycle(policy, resident, now, output).await;
    if let (Some(health), Ok(report)) = (health, &result) {
        health.record(report);
    }
    if output.emf_metrics {
        let name = policy
            .infra
            .as_ref()
            .map_or("floodgate", |i| i.name.as_str());
        let now_ms = unix_ms(clock_at(None).now());
        let line = emf_line(
            name,
            result.as_ref().ok(),
            started.elapsed().as_secs_f64(),
            now_ms,
        );
        write_stdout(&(line + "\n"))?;
    }
    let report = result?;
    Ok(Ran {
        status: if report.complete() {
            Status::Success
        } else {
            Status::Partial
        },
        stale: report.stale,
    })
}

/// Runs one cycle and prints its report.
async fn report_cycle(
    policy: &Policy,
    resident: &Resident,
    now: Option<OffsetDateTime>,
    output: Output,
) -> Result<CycleReport, CliError> {
    let real: Arc<dyn Clock> = Arc::from(clock_at(None));
    let parts = Parts::from_policy(policy, resident, Arc::from(clock_at(now)), real)?;
    let ledger = parts.ledger.label();
    let report = cycle::run(parts).await?;
    let json = serde_json::to_string(&report).expect("reports serialize");
    tracing::info!(report = %json, "run finished");
    let text = match output.format {
        Format::Json if output.one_line => json + "\n",
        Format::Json => serde_json::to_string_pretty(&report).expect("reports serialize") + "\n",
        Format::Table => summary(&report, policy, &ledger),
    };
    write_stdout(&text)?;
    Ok(report)
}

/// One CloudWatch embedded-metric-format record of a cycle: whether it
/// succeeded and how long it took, and, when it ran, what its report
/// counts (the same as the daemon's `/metrics`, summed over tiers and
/// targets).
fn emf_line(responder: &str, report: Option<&CycleReport>, seconds: f64, now_ms: i64) -> String {
    let succeeded = report.is_some_and(CycleReport::complete);
    let mut record = serde_json::json!({
        "Responder": responder,
        "SuccessfulCycles": u8::from(succeeded),
        "CycleSeconds": seconds,
    });
    let mut metrics = vec![
        serde_json::json!({ "Name": "SuccessfulCycles", "Unit": "Count" }),
        serde_json::json!({ "Name": "CycleSeconds", "Unit": "Seconds" }),
    ];
    if let Some(report) = report {
        let failed = report
            .targets
            .iter()
            .filter(|t| t.failure.is_some())
            .count();
        let counts = [
            (
                "BlocksInForce",
                report
                    .blocks_in_force
                    .iter()
                    .map(|t| t.blocks)
                    .sum::<usize>() as f64,
                "Count",
            ),
            (
                "Offenders",
                report
                    .offenders_per_tier
                    .iter()
                    .map(|t| t.offenders)
                    .sum::<usize>() as f64,
                "Count",
            ),
            ("FailedTargets", failed as f64, "Count"),
            (
                "AllowListedRequests",
                report.allow_listed.requests as f64,
                "Count",
            ),
            ("RecordsRead", report.records as f64, "Count"),
            ("RecordsInWindow", report.records_in_window as f64, "Count"),
            ("MalformedLines", report.malformed as f64, "Count"),
            ("BytesRead", report.bytes_read as f64, "Bytes"),
            ("SourceStale", f64::from(u8::from(report.stale)), "Count"),
        ];
        for (name, value, unit) in counts {
            record[name] = serde_json::json!(value);
            metrics.push(serde_json::json!({ "Name": name, "Unit": unit }));
        }
        if let Some(cost) = report.insights_estimated_cost_usd {
            record["InsightsCostUSD"] = serde_json::json!(cost);
            metrics.push(serde_json::json!({ "Name": "InsightsCostUSD", "Unit": "None" }));
        }
        if let Some(objects) = report.s3_objects {
            record["S3ObjectsSkipped"] = serde_json::json!(objects.skipped);
            metrics.push(serde_json::json!({ "Name": "S3ObjectsSkipped", "Unit": "Count" }));
        }
    }
    record["_aws"] = serde_json::json!({
        "Timestamp": now_ms,
        "CloudWatchMetrics": [{
            "Namespace": crate::infra::EMF_NAMESPACE,
            "Dimensions": [["Responder"]],
            "Metrics": metrics,
        }],
    });
    crate::json_text::line(record)
}

/// Where a cycle stood with the lease, for people.
fn describe(lease: &LeaseLine) -> String {
    let until = lease.expires.as_deref().unwrap_or("-");
    match (lease.state, lease.fence) {
        ("held", Some(fence)) => format!("{} holds it (fence {fence}) until {until}", lease.holder),
        ("waiting", _) if lease.holder == crate::lease::AWAITING_PRIMARY => {
            "waiting: nobody has held it yet; kept for a primary for one lease period".to_owned()
        }
        ("waiting", _) if lease.holder.is_empty() => "waiting: nobody holds it".to_owned(),
        ("waiting", _) if lease.expires.is_none() => {
            format!(
                "waiting: released, kept for {}; planning only",
                lease.holder
            )
        }
        ("waiting", _) => format!(
            "waiting: held by {} until {until}; planning only",
            lease.holder
        ),
        _ => format!(
            "lost mid-cycle: {}",
            lease.error.as_deref().unwrap_or_default()
        ),
    }
}

/// `records in the windows: 60 s 120, 300 s 540; newest record
/// 2026-11-22T08:59:58Z (2 s before the cycle's time)`, as far as the
/// source could tell.
fn window_line(report: &CycleReport) -> Option<String> {
    let windows: Vec<String> = report
        .records_per_window
        .iter()
        .map(|w| format!("{} s {}", w.window_seconds, w.records))
        .collect();
    let mut parts = Vec::new();
    if !windows.is_empty() {
        parts.push(format!("records in the windows: {}", windows.join(", ")));
    }
    if let (Some(newest), Some(age)) = (&report.newest_record, report.newest_record_age_seconds) {
        parts.push(format!(
            "newest record {newest} ({age} s before the cycle's time)"
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; ") + "\n")
}

/// A short summary for people.
fn summary(report: &CycleReport, policy: &Policy, ledger: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "read {} records ({} malformed) in {:.2} s; mode {}\n",
        report.records, report.malformed, report.seconds, report.mode
    ));
    if let Some(line) = window_line(report) {
        out.push_str(&line);
    }
    if report.stale {
        let newest = report.newest_record.as_deref().unwrap_or("none at all");
        out.push_str(&format!(
            "STALE: no record in the window; the newest is {newest}: is the log feed stalled, or --now wrong?\n"
        ));
    }
    if !report.incomplete.is_empty() {
        out.push_str(&format!(
            "INCOMPLETE: the row limit cut {}; raise [source] max_queries_per_cycle\n",
            super::incomplete_parts(&report.incomplete)
        ));
    }
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| format!("{} {:.2} s", p.phase, p.seconds))
        .collect();
    out.push_str(&format!("phases: {}\n", phases.join(", ")));
    if let Some(cost) = report.insights_estimated_cost_usd {
        out.push_str(&format!(
            "Logs Insights scanned {} bytes: about ${cost:.4}\n",
            report.bytes_read
        ));
    }
    if let Some(second) = report.insights_second_pass.filter(|s| s.queries > 0) {
        out.push_str(&format!(
            "  of which the exact second pass: {} queries, {} rows, {} bytes\n",
            second.queries, second.rows, second.bytes
        ));
    }
    if let Some(objects) = report.s3_objects {
        out.push_str(&format!(
            "S3: read {} objects ({} bytes)",
            objects.read, report.bytes_read
        ));
        if objects.skipped > 0 {
            out.push_str(&format!(
                "; SKIPPED {} that could not be fetched or decoded (see the log)",
                objects.skipped
            ));
        }
        out.push('\n');
    }
    let tiers: Vec<String> = report
        .offenders_per_tier
        .iter()
        .map(|t| format!("{} {}", t.tier, t.offenders))
        .collect();
    out.push_str(&format!("offenders per tier: {}\n", tiers.join(", ")));
    out.push_str(&format!(
        "blocks: {} added, {} extended, {} expired, {} held back by the circuit breaker, {} dropped for room, {} suppressed by an unblock, {} adopted\n",
        report.added.len(),
        report.extended.len(),
        report.expired.len(),
        report.held_back.len(),
        report.dropped.len(),
        report.suppressed.len(),
        report.adopted.len()
    ));
    // Grouped by account (the responder's own first) when targets span
    // several, so one account's failed role reads as one block.
    let mut targets: Vec<_> = report.targets.iter().collect();
    targets.sort_by_key(|t| t.account.as_deref());
    let grouped = targets.iter().any(|t| t.account.is_some());
    let mut heading = None;
    for target in targets {
        if grouped && heading != Some(target.account.as_deref()) {
            heading = Some(target.account.as_deref());
            out.push_str(&match target.account.as_deref() {
                Some(name) => format!(" account {name}:\n"),
                None => " own account:\n".to_owned(),
            });
        }
        out.push_str(&format!("  {}: {}\n", target.target, target.outcome));
        for left in &target.left_out {
            out.push_str(&format!("    left out {left}\n"));
        }
        if !target.strangers_removed.is_empty() {
            out.push_str(&format!(
                "    removed {} not in the ledger: {}\n",
                target.strangers_removed.len(),
                target.strangers_removed.join(", ")
            ));
        }
    }
    for target in &policy.targets {
        if let Target::File { dir } = target {
            out.push_str(&format!("IP set files in {}\n", dir.display()));
        }
    }
    if let Some(lease) = &report.lease {
        out.push_str(&format!("lease: {}\n", describe(lease)));
    }
    out.push_str(&format!("ledger: {ledger}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emf_line_carries_every_metric_its_directive_names() {
        let report = crate::cycle::test_report::report("primary", 2);
        let line: serde_json::Value =
            serde_json::from_str(&emf_line("edge", Some(&report), 1.5, 0)).unwrap();
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(line[name].is_number(), "{name} missing in {line}");
        }
        for name in [
            "InsightsCostUSD",
            "S3ObjectsSkipped",
            "BlocksInForce",
            "FailedTargets",
        ] {
            assert!(names.contains(&name), "{name} not in {names:?}");
        }
        assert_eq!(line["BlocksInForce"], 2.0);
        assert_eq!(line["FailedTargets"], 1.0);
        assert_eq!(line["SuccessfulCycles"], 0, "a target failed");
        let failed: serde_json::Value =
            serde_json::from_str(&emf_line("edge", None, 1.5, 0)).unwrap();
        assert_eq!(failed["SuccessfulCycles"], 0);
        assert!(failed.get("BlocksInForce").is_none());
    }
}
