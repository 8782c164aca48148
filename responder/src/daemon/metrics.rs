//! The daemon's `/metrics`: the schedule's own series, and what each
//! cycle's report says. Every name is listed in [`SERIES`], which the
//! dashboards' test holds them to.

use std::collections::HashSet;

use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use parking_lot::Mutex;

use crate::cycle::CycleReport;

/// Every series the daemon exports, with its help text: the dashboards
/// under infra/dashboards/ may query these and no others.
pub const SERIES: &[(&str, &str)] = &[
    (
        "floodgate_responder_cycles_total",
        "Responder cycles by result.",
    ),
    (
        "floodgate_responder_skipped_ticks_total",
        "Ticks skipped because a cycle was still running.",
    ),
    ("floodgate_responder_cycle_running", "1 while a cycle runs."),
    (
        "floodgate_responder_source_stale",
        "1 when the last cycle found no record in its window, and none newer.",
    ),
    (
        "floodgate_responder_last_cycle_duration_seconds",
        "How long the last cycle took.",
    ),
    (LAST_SUCCESS, "When the last successful cycle ended."),
    (
        PHASE_SECONDS,
        "How long each phase of a cycle took (read, detect, ledger, plan, lease, apply).",
    ),
    (
        "floodgate_responder_blocks_in_force",
        "Blocks in force in the ledger after the last cycle, by tier.",
    ),
    (
        "floodgate_responder_target_blocks",
        "Addresses and ranges a target's sets hold after its last write, by tier.",
    ),
    (
        "floodgate_responder_target_writes_total",
        "Target writes by target and state (unchanged, created, updated, failed).",
    ),
    (
        "floodgate_responder_target_failures_total",
        "Failed target writes by target and kind (throttled, unavailable, denied, not_found, invalid, conflict, fenced).",
    ),
    (
        "floodgate_responder_offenders",
        "Offenders the last cycle found, by the most severe tier each reached.",
    ),
    (
        "floodgate_responder_allow_listed_offenders",
        "Clients inside an allow-list entry that reached a tier and were not blocked, in the last cycle.",
    ),
    (
        "floodgate_responder_allow_listed_requests",
        "Requests of those clients in the last cycle's report window.",
    ),
    (
        "floodgate_responder_records_read_total",
        "Log records read, by source (files, s3, insights: rows, events).",
    ),
    (
        "floodgate_responder_malformed_lines_total",
        "Lines that were not log records, by source.",
    ),
    (
        "floodgate_responder_bytes_read_total",
        "Bytes read, or scanned by Logs Insights, by source.",
    ),
    (
        "floodgate_responder_records_in_window",
        "Records inside the widest tier window in the last cycle.",
    ),
    (
        "floodgate_responder_insights_queries_total",
        "Logs Insights queries run (every pass and split).",
    ),
    (
        "floodgate_responder_insights_estimated_cost_usd",
        "What the last cycle's Logs Insights scans cost, in US dollars.",
    ),
    (
        "floodgate_responder_s3_objects_total",
        "S3 log objects by result (read, skipped).",
    ),
    (
        "floodgate_responder_api_calls_total",
        "API calls the targets made (reads to adopt, and writes).",
    ),
    (
        "floodgate_responder_lease_held",
        "1 while this responder holds the lease, 0 while it waits (with a lease).",
    ),
    (
        "floodgate_responder_lease_fence",
        "The fence of the lease this responder last held.",
    ),
    (
        "floodgate_responder_lease_holder",
        "1 for the lease's holder as this responder last saw it, by holder.",
    ),
    (
        "floodgate_responder_fast_polls_total",
        "Fast detector polls of the fast tiers' rate-based rules.",
    ),
    (
        "floodgate_responder_managed_keys_calls_total",
        "ListWebACLs and GetRateBasedStatementManagedKeys calls the fast detector made.",
    ),
    (
        "floodgate_responder_rate_rule_failures_total",
        "Rate-based rules the fast detector could not read, by kind (throttled, unavailable, denied, not_found, invalid).",
    ),
    (
        "floodgate_responder_fast_blocks_total",
        "Blocks the fast detector wrote, by tier.",
    ),
    (
        FAST_LATENCY,
        "From the poll that first listed an address to the last target written with its block.",
    ),
];

const FAST_LATENCY: &str = "floodgate_responder_fast_block_latency_seconds";

/// Buckets of the fast blocks' latency: a poll interval (10 s by default)
/// and the writes after it.
const FAST_LATENCY_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0];

const LAST_SUCCESS: &str = "floodgate_responder_last_success_timestamp_seconds";
const PHASE_SECONDS: &str = "floodgate_responder_phase_duration_seconds";

/// Buckets of the phase histogram: a local read takes milliseconds, a
/// Logs Insights count up to minutes.
const PHASE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Counts a target's write, and its failure.
fn count_write(target: &crate::cycle::TargetLine) {
    let name = target.target.clone();
    counter!("floodgate_responder_target_writes_total", "target" => name.clone(), "state" => target.state)
        .increment(1);
    if let Some(kind) = target.failure {
        counter!("floodgate_responder_target_failures_total", "target" => name, "kind" => kind)
            .increment(1);
    }
}

/// A gauge with labels: its name, and each label's key and value.
type Series = (&'static str, Vec<(&'static str, String)>);

/// The daemon's metrics, in a Prometheus registry of its own (so two
/// daemons in one test process do not share counts).
pub(super) struct Metrics {
    recorder: PrometheusRecorder,
    pub(super) cycles: [Counter; 4],
    pub(super) skipped: Counter,
    pub(super) running: Gauge,
    pub(super) source_stale: Gauge,
    pub(super) last_duration: Gauge,
    /// Registered at the first success, so the series is absent until then.
    last_success: std::sync::OnceLock<Gauge>,
    /// Gauges with labels set by the last report, so a label that a later
    /// report lacks (a tier with no block left) falls to 0 instead of
    /// keeping its old value.
    labelled: Mutex<HashSet<Series>>,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(PHASE_SECONDS.to_owned()), PHASE_BUCKETS)
            .expect("the buckets are not empty")
            .set_buckets_for_metric(Matcher::Full(FAST_LATENCY.to_owned()), FAST_LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let (cycles, skipped, running, source_stale, last_duration) =
            metrics::with_local_recorder(&recorder, || {
                for &(name, help) in SERIES {
                    if name.ends_with("_total") {
                        describe_counter!(name, help);
                    } else if name == PHASE_SECONDS || name == FAST_LATENCY {
                        describe_histogram!(name, Unit::Seconds, help);
                    } else {
                        describe_gauge!(name, help);
                    }
                }
                let cycles = ["success", "stale", "partial", "error"].map(|result| {
                    let counter = counter!("floodgate_responder_cycles_total", "result" => result);
                    counter.absolute(0);
                    counter
                });
                let skipped = counter!("floodgate_responder_skipped_ticks_total");
                skipped.absolute(0);
                let running = gauge!("floodgate_responder_cycle_running");
                running.set(0.0);
                let source_stale = gauge!("floodgate_responder_source_stale");
                source_stale.set(0.0);
                let last_duration = gauge!("floodgate_responder_last_cycle_duration_seconds");
                last_duration.set(0.0);
                (cycles, skipped, running, source_stale, last_duration)
            });
        Metrics {
            recorder,
            cycles,
            skipped,
            running,
            source_stale,
            last_duration,
            last_success: std::sync::OnceLock::new(),
            labelled: Mutex::default(),
        }
    }

    pub(super) fn last_success(&self) -> &Gauge {
        self.last_success
            .get_or_init(|| metrics::with_local_recorder(&self.recorder, || gauge!(LAST_SUCCESS)))
    }

    pub(super) fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// Records a cycle's report.
    pub(super) fn record(&self, report: &CycleReport) {
        metrics::with_local_recorder(&self.recorder, || {
            let mut gauges: Vec<(Series, f64)> = Vec::new();
            for tier in &report.blocks_in_force {
                let labels = vec![("tier", tier.tier.clone())];
                gauges.push((
                    ("floodgate_responder_blocks_in_force", labels),
                    tier.blocks as f64,
                ));
            }
            for tier in &report.offenders_per_tier {
                let labels = vec![("tier", tier.tier.clone())];
                gauges.push((
                    ("floodgate_responder_offenders", labels),
                    tier.offenders as f64,
                ));
            }
            for target in &report.targets {
                let name = target.target.clone();
                count_write(target);
                for tier in target.held.iter().flatten() {
                    let labels = vec![("target", name.clone()), ("tier", tier.tier.clone())];
                    gauges.push((
                        ("floodgate_responder_target_blocks", labels),
                        tier.blocks as f64,
                    ));
                }
            }
            if let Some(lease) = &report.lease {
                // The holder as a label: one series at 1, the last one seen.
                let labels = vec![("holder", lease.holder.clone())];
                gauges.push((("floodgate_responder_lease_holder", labels), 1.0));
            }
            self.set_labelled(gauges, &report.targets);
            gauge!("floodgate_responder_allow_listed_offenders")
                .set(report.allow_listed.offenders as f64);
            gauge!("floodgate_responder_allow_listed_requests")
                .set(report.allow_listed.requests as f64);
            let source = report.source;
            counter!("floodgate_responder_records_read_total", "source" => source)
                .increment(report.records);
            counter!("floodgate_responder_malformed_lines_total", "source" => source)
                .increment(report.malformed);
            counter!("floodgate_responder_bytes_read_total", "source" => source)
                .increment(report.bytes_read);
            gauge!("floodgate_responder_records_in_window").set(report.records_in_window as f64);
            if let Some(queries) = report.insights_queries {
                counter!("floodgate_responder_insights_queries_total").increment(queries);
            }
            if let Some(cost) = report.insights_estimated_cost_usd {
                gauge!("floodgate_responder_insights_estimated_cost_usd").set(cost);
            }
            if let Some(objects) = report.s3_objects {
                counter!("floodgate_responder_s3_objects_total", "result" => "read")
                    .increment(objects.read);
                counter!("floodgate_responder_s3_objects_total", "result" => "skipped")
                    .increment(objects.skipped);
            }
            counter!("floodgate_responder_api_calls_total").increment(u64::from(report.api_calls));
            if let Some(lease) = &report.lease {
                gauge!("floodgate_responder_lease_held").set(if lease.state == "held" {
                    1.0
                } else {
                    0.0
                });
                if let Some(fence) = lease.fence {
                    gauge!("floodgate_responder_lease_fence").set(fence as f64);
                }
            }
            for phase in &report.phases {
                histogram!(PHASE_SECONDS, "phase" => phase.phase).record(phase.seconds);
            }
        });
    }

    /// Records a fast pass's report.
    pub(super) fn record_fast(&self, report: &crate::fast::FastReport) {
        metrics::with_local_recorder(&self.recorder, || {
            counter!("floodgate_responder_fast_polls_total").increment(1);
            counter!("floodgate_responder_managed_keys_calls_total")
                .increment(u64::from(report.managed_keys_calls));
            for failure in &report.rule_failures {
                counter!("floodgate_responder_rate_rule_failures_total", "kind" => failure.failure)
                    .increment(1);
            }
            for block in &report.added {
                counter!("floodgate_responder_fast_blocks_total", "tier" => block.tier.clone())
                    .increment(1);
                histogram!(FAST_LATENCY).record(block.latency_seconds);
            }
            report.targets.iter().for_each(count_write);
        });
    }

    /// Sets `gauges`, and sets to 0 every gauge of the same names that an
    /// earlier report set and this one did not, except a failed target's
    /// (its sets are as they were).
    fn set_labelled(&self, gauges: Vec<(Series, f64)>, targets: &[crate::cycle::TargetLine]) {
        let unknown: HashSet<&str> = targets
            .iter()
            .filter(|t| t.held.is_none())
            .map(|t| t.target.as_str())
            .collect();
        let mut seen = self.labelled.lock();
        let now: HashSet<&Series> = gauges.iter().map(|(series, _)| series).collect();
        for (name, labels) in seen.iter().filter(|series| !now.contains(series)) {
            let kept = labels
                .iter()
                .any(|(key, value)| *key == "target" && unknown.contains(value.as_str()));
            if !kept {
                gauge!(*name, as_labels(labels)).set(0.0);
            }
        }
        for ((name, labels), value) in gauges {
            gauge!(name, as_labels(&labels)).set(value);
            seen.insert((name, labels));
        }
    }
}

fn as_labels(labels: &[(&'static str, String)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::test_report::report;

    #[test]
    fn every_series_is_served_once_a_report_has_every_part() {
        let metrics = Metrics::new();
        metrics.record(&report("primary", 2));
        metrics.record_fast(&crate::fast::FastReport {
            version: 1,
            report: "fast",
            mode: "enforce",
            started: String::new(),
            rules_polled: 4,
            managed_keys_calls: 4,
            managed_keys_calls_per_hour: 1440,
            listed: 1,
            already_blocked: 0,
            allow_listed: Vec::new(),
            added: vec![crate::fast::FastBlock {
                key: "203.0.113.9".to_owned(),
                tier: "block".to_owned(),
                rule: "floodgate-tier-block".to_owned(),
                latency_seconds: 0.4,
            }],
            held_back: Vec::new(),
            suppressed: Vec::new(),
            expired: Vec::new(),
            rule_failures: vec![crate::fast::RuleFailure {
                rule: "floodgate-tier-block".to_owned(),
                failure: "throttled",
                error: "slow down".to_owned(),
            }],
            lease: None,
            targets: Vec::new(),
            seconds: 0.5,
        });
        // The schedule sets it when a cycle succeeds.
        metrics.last_success().set(1.0);
        let text = metrics.render();
        for (name, _) in SERIES {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing:\n{text}"
            );
        }
        for line in [
            "floodgate_responder_insights_queries_total 12",
            "floodgate_responder_insights_estimated_cost_usd 0.25",
            "floodgate_responder_s3_objects_total{result=\"skipped\"} 1",
            "floodgate_responder_lease_held 1",
            "floodgate_responder_lease_fence 7",
            "floodgate_responder_lease_holder{holder=\"primary\"} 1",
            "floodgate_responder_target_failures_total{target=\"us\",kind=\"throttled\"} 1",
            "floodgate_responder_target_blocks{target=\"eu\",tier=\"block\"} 2",
            "floodgate_responder_fast_polls_total 1",
            "floodgate_responder_managed_keys_calls_total 4",
            "floodgate_responder_rate_rule_failures_total{kind=\"throttled\"} 1",
            "floodgate_responder_fast_blocks_total{tier=\"block\"} 1",
            "floodgate_responder_fast_block_latency_seconds_count 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
    }

    #[test]
    fn a_label_the_next_report_lacks_falls_to_zero() {
        let metrics = Metrics::new();
        metrics.record(&report("primary", 2));
        metrics.record(&report("standby", 0));
        let text = metrics.render();
        for line in [
            "floodgate_responder_blocks_in_force{tier=\"block\"} 0",
            "floodgate_responder_target_blocks{target=\"eu\",tier=\"block\"} 0",
            "floodgate_responder_lease_holder{holder=\"primary\"} 0",
            "floodgate_responder_lease_holder{holder=\"standby\"} 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
    }
}
