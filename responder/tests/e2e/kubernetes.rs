//! infra/kubernetes/: valid against the Kubernetes schemas (offline, with
//! kubernetes-validate's bundled schemas), and shaped as the responder needs:
//! one pod at a time, probes on `floodgate healthcheck`, uid 10001, a policy
//! that `floodgate check` accepts.

use std::process::Command;

use super::{floodgate, stderr, venv_bin, workspace_root};
use serde_json::Value;

const MANIFEST: &str = "infra/kubernetes/floodgate.yaml";

fn validate(path: &str) -> std::process::Output {
    Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", path])
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

/// The manifest's documents, read by the venv's YAML parser.
fn documents() -> Vec<Value> {
    let output = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            MANIFEST,
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn kind<'d>(documents: &'d [Value], kind: &str) -> &'d Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {MANIFEST}"))
}

#[test]
fn the_manifest_passes_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let output = validate(MANIFEST);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let broken = validate("responder/tests/fixtures/kubernetes/broken.yaml");
    assert_ne!(broken.status.code(), Some(0));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&broken.stdout),
        stderr(&broken)
    );
    assert!(report.contains("replicas"), "{report}");
}

#[test]
fn one_non_root_pod_probed_by_floodgate_healthcheck_with_irsa() {
    let documents = documents();
    let deployment = kind(&documents, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(pod["serviceAccountName"], "floodgate");
    let container = &pod["containers"][0];
    for probe in ["startupProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["exec"]["command"],
            serde_json::json!(["floodgate", "healthcheck"]),
            "{probe}"
        );
    }
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let account = kind(&documents, "ServiceAccount");
    assert!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
}

#[test]
fn the_config_map_holds_a_policy_floodgate_check_accepts() {
    let documents = documents();
    let policy = kind(&documents, "ConfigMap")["data"]["floodgate.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floodgate.toml");
    std::fs::write(&path, &policy).unwrap();
    let output = floodgate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "no warnings either");
    // The probes ask the daemon where the policy says it listens.
    assert!(policy.contains("listen = \"0.0.0.0:9464\""));
}
