//! Every JSON output has a documented, versioned shape (issue 35): the JSON
//! Schemas under docs/schemas/ are the ones the report types describe, and
//! the real output of each command, on the sample, is valid against them.
//! `FLOODGATE_BLESS=1` rewrites docs/schemas/ after an intended change
//! (raise `JSON_VERSION` and say so in CHANGELOG.md when it breaks a reader).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{floodgate_bin, local_policy, stderr, workspace_root};

fn schema_path(command: &str) -> std::path::PathBuf {
    workspace_root().join(format!("docs/schemas/{command}.schema.json"))
}

#[test]
fn the_documented_schemas_are_the_report_types() {
    for (command, schema) in floodgate_responder::cli::json_schemas() {
        let path = schema_path(command);
        if std::env::var_os("FLOODGATE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut sorted = schema.clone();
            sorted.sort_all_objects();
            let text = serde_json::to_string_pretty(&sorted).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; create it with FLOODGATE_BLESS=1", path.display())
        });
        let documented: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            documented,
            schema,
            "{} differs from the report type (FLOODGATE_BLESS=1 regenerates it)",
            path.display()
        );
    }
}

/// `floodgate <args>` in `dir`: its JSON output.
fn json_of(dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(floodgate_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOODGATE_LOG")
        .env_remove("FLOODGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        matches!(output.status.code(), Some(0 | 2)),
        "{args:?}: {}",
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn every_json_output_is_valid_against_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let logs = workspace_root().join("examples/logs");
    let policy = local_policy(dir.path(), &logs, "");
    let (policy, logs) = (policy.to_str().unwrap(), logs.to_str().unwrap());
    let now = "2026-11-20T10:05:00Z";
    let outputs = [
        (
            "plan",
            json_of(
                dir.path(),
                &["plan", "--config", policy, "--now", now, "--format", "json"],
            ),
        ),
        (
            "run",
            json_of(
                dir.path(),
                &[
                    "run", "--once", "--config", policy, "--now", now, "--format", "json",
                ],
            ),
        ),
        (
            "why",
            json_of(
                dir.path(),
                &[
                    "why",
                    "203.0.113.0/24",
                    "--config",
                    policy,
                    "--now",
                    now,
                    "--format",
                    "json",
                ],
            ),
        ),
        (
            "status",
            json_of(
                dir.path(),
                &[
                    "status", "--config", policy, "--now", now, "--format", "json",
                ],
            ),
        ),
        (
            "top",
            json_of(
                dir.path(),
                &[
                    "top", "--config", policy, "--logs", logs, "--format", "json",
                ],
            ),
        ),
        (
            "review",
            json_of(
                dir.path(),
                &[
                    "review", "--config", policy, "--logs", logs, "--format", "json",
                ],
            ),
        ),
        (
            "backtest",
            json_of(
                dir.path(),
                &[
                    "backtest",
                    "--config",
                    policy,
                    "--logs",
                    logs,
                    "--from",
                    "2026-11-20T10:00:00Z",
                    "--to",
                    "2026-11-20T10:30:00Z",
                    "--format",
                    "json",
                    "--out",
                    "report.html",
                ],
            ),
        ),
    ];
    for (command, output) in outputs {
        assert_eq!(
            output["version"],
            floodgate_responder::JSON_VERSION,
            "{command}"
        );
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(schema_path(command)).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&output)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{command}: {errors:#?}\n{output:#}");
    }
}

/// What a script reads is structured: counts are numbers, reasons are
/// fields, and a key is written one way (with its length) everywhere.
#[test]
fn machine_output_is_structured() {
    let dir = tempfile::tempdir().unwrap();
    let logs = workspace_root().join("examples/logs");
    let policy = local_policy(dir.path(), &logs, "");
    let policy = policy.to_str().unwrap();
    let now = "2026-11-20T10:05:00Z";
    let plan = json_of(
        dir.path(),
        &["plan", "--config", policy, "--now", now, "--format", "json"],
    );
    let add = &plan["targets"][0]["add"][0];
    assert_eq!(add["reason"], "blocked", "{add}");
    assert!(add["requests"].is_u64() && add["until"].is_string() && add["tiers"].is_array());
    let run = json_of(
        dir.path(),
        &[
            "run", "--once", "--config", policy, "--now", now, "--format", "json",
        ],
    );
    let target = &run["targets"][0];
    assert_eq!(target["state"], "updated", "{target}");
    assert_eq!(target["added"], 5, "{target}");
    assert_eq!(target["removed"], 0, "{target}");
    assert!(run["extended"].is_array(), "{run}");
    let tiers = run["offenders_per_tier"].as_array().unwrap();
    assert!(
        tiers
            .iter()
            .any(|t| t["tier"] == "block" && t["offenders"] == 18),
        "{tiers:?}"
    );
    let top = json_of(
        dir.path(),
        &[
            "top",
            "--config",
            policy,
            "--logs",
            workspace_root().join("examples/logs").to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert_eq!(top["offenders"][0]["key"], "203.0.113.66/32", "{top}");
    assert!(
        run["added"]
            .as_array()
            .unwrap()
            .contains(&Value::from("203.0.113.66/32"))
    );
}
