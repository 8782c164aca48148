//! What ops see (issue 38): the daemon's /metrics after a real cycle over
//! an attack carries every new series with the values the cycle produced,
//! and every series the responder's Grafana dashboard
//! (infra/dashboards/responder.json) queries is one the daemon serves.

use std::collections::BTreeSet;

use super::{
    daemon_policy_reading, free_port, metrics_once, spawn_daemon, waf_record, wall_clock_ms,
    workspace_root,
};

/// Series only a Logs Insights or S3 source, a lease or a failed target
/// produces: the daemon's metrics unit test renders them from a report that
/// has them.
const NOT_IN_THIS_CYCLE: &[&str] = &[
    "floodgate_responder_target_failures_total",
    "floodgate_responder_insights_queries_total",
    "floodgate_responder_insights_estimated_cost_usd",
    "floodgate_responder_s3_objects_total",
    "floodgate_responder_lease_held",
    "floodgate_responder_lease_fence",
    "floodgate_responder_lease_holder",
];

/// Every `floodgate_…` series name a Grafana dashboard's panels query.
fn dashboard_series(path: &std::path::Path) -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("floodgate_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn the_daemon_serves_every_series_its_dashboard_queries_with_the_cycles_values() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Written now, as the daemon's window ends now: one flood over the
    // block tier, and the allow-listed partner over the watch tier.
    let now_ms = wall_clock_ms();
    let mut lines: Vec<String> = (0..2100)
        .map(|i| waf_record(now_ms - i, "203.0.113.7"))
        .collect();
    lines.extend((0..1500).map(|i| waf_record(now_ms - i, "198.51.100.7")));
    lines.extend((0..20).map(|i| waf_record(now_ms - i, "192.0.2.1")));
    std::fs::write(logs.join("waf.log"), lines.join("\n") + "\n").unwrap();
    let port = free_port();
    let policy = daemon_policy_reading(dir.path(), &logs, "* * * * * *", port);
    let mut daemon = spawn_daemon(dir.path(), &policy);
    let metrics = metrics_once(port, "successful cycle", |body| {
        body.contains("floodgate_responder_cycles_total{result=\"success\"} 1")
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let target = "target=\"file state/ip-sets\"";
    for series in [
        "floodgate_responder_blocks_in_force{tier=\"block\"} 1".to_owned(),
        format!("floodgate_responder_target_blocks{{{target},tier=\"block\"}} 1"),
        format!("floodgate_responder_target_writes_total{{{target},state=\"updated\"}} 1"),
        "floodgate_responder_offenders{tier=\"block\"} 1".to_owned(),
        "floodgate_responder_offenders{tier=\"watch\"} 1".to_owned(),
        "floodgate_responder_offenders{tier=\"login-flood\"} 0".to_owned(),
        "floodgate_responder_allow_listed_offenders 1".to_owned(),
        "floodgate_responder_allow_listed_requests 1500".to_owned(),
        "floodgate_responder_records_read_total{source=\"files\"} 3620".to_owned(),
        "floodgate_responder_records_in_window 3620".to_owned(),
        "floodgate_responder_malformed_lines_total{source=\"files\"} 0".to_owned(),
        "floodgate_responder_phase_duration_seconds_count{phase=\"read\"} 1".to_owned(),
    ] {
        assert!(
            metrics.contains(&format!("{series}\n")),
            "{series} in\n{metrics}"
        );
    }
    let served: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap())
        .collect();
    let queried = dashboard_series(&workspace_root().join("infra/dashboards/responder.json"));
    assert!(queried.len() >= 20, "{queried:?}");
    for name in &queried {
        assert!(
            served.contains(name.as_str()) || NOT_IN_THIS_CYCLE.contains(&name.as_str()),
            "the dashboard queries {name}, which the daemon does not serve"
        );
    }
    for name in NOT_IN_THIS_CYCLE {
        assert!(queried.contains(*name), "the dashboard leaves out {name}");
    }
}
