//! The CloudFormation under infra/: generated from the example policy,
//! accepted by cfn-lint, shaped as the design says, and deployable by
//! infra/deploy.sh.

use std::process::Command;

use super::{floodgate, venv_bin, workspace_root};
use serde_json::{Value, json};

/// The day the committed templates were rendered for (expiry decides which
/// allow entries are in the WAF allow-list).
const NOW: &str = "2026-11-22";

fn template(name: &str) -> Value {
    let text =
        std::fs::read_to_string(workspace_root().join("infra/cloudformation").join(name)).unwrap();
    // A YAML comment line, then JSON (which is YAML).
    let body = text.split_once('\n').unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// `floodgate render-infra` of `policy` into `out`.
fn render_infra(policy: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    floodgate(&[
        "render-infra",
        "--config",
        policy.to_str().unwrap(),
        "--now",
        NOW,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// The example policy in the scheduled mode, with the file ledger (no
/// lease): rendered into a temporary directory.
fn scheduled_mode() -> (tempfile::TempDir, Value) {
    let example =
        std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap();
    let policy = example
        .replace(
            "ledger = { backend = \"dynamodb\", table = \"floodgate-ledger\", region = \"eu-west-1\" }\n",
            "",
        )
        .replace(
            "lease = { holder_id = \"primary-eu-west-1\", ttl_seconds = 180, max_clock_skew_seconds = 5 }\n",
            "",
        )
        .replace("mode = \"service\"", "mode = \"scheduled\"\nschedule_expression = \"rate(2 minutes)\"");
    let (dir, out) = rendered(&policy);
    (dir, read_template(&out, "responder.yaml"))
}

/// `policy` written to a temporary directory and rendered into its `out/`.
fn rendered(policy: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let out = dir.path().join("out");
    let output = render_infra(&path, &out);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (dir, out)
}

/// A rendered template: a YAML comment line, then JSON.
fn read_template(out: &std::path::Path, name: &str) -> Value {
    let text = std::fs::read_to_string(out.join(name)).unwrap();
    serde_json::from_str(text.split_once('\n').unwrap().1).unwrap()
}

fn cfn_lint(paths: &[&str]) -> std::process::Output {
    Command::new(venv_bin("cfn-lint"))
        .args(paths)
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

#[test]
fn committed_infra_matches_the_example_policy() {
    let output = floodgate(&[
        "render-infra",
        "--config",
        "examples/floodgate.toml",
        "--now",
        NOW,
        "--check",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "infra/ disagrees with examples/floodgate.toml; run `floodgate render-infra --config examples/floodgate.toml --now {NOW}`\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn render_infra_check_notices_a_changed_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(workspace_root().join("examples/floodgate.toml"))
        .unwrap()
        .replace("requests = 5000", "requests = 6000");
    let path = dir.path().join("changed.toml");
    std::fs::write(&path, policy).unwrap();
    let output = floodgate(&[
        "render-infra",
        "--config",
        path.to_str().unwrap(),
        "--now",
        NOW,
        "--check",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("waf.yaml"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cfn_lint_passes_every_template_with_no_warnings() {
    let output = cfn_lint(&[
        "infra/cloudformation/waf.yaml",
        "infra/cloudformation/responder.yaml",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
}

#[test]
fn cfn_lint_passes_the_scheduled_mode_with_no_warnings() {
    let (dir, _) = scheduled_mode();
    let path = dir.path().join("out/responder.yaml");
    let output = cfn_lint(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
}

#[test]
fn cfn_lint_rejects_a_broken_template() {
    // So the check above cannot pass by checking nothing.
    let output = cfn_lint(&["responder/tests/fixtures/infra/broken-waf.yaml"]);
    assert_ne!(output.status.code(), Some(0));
    let report = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "5 is less than the minimum of 10",
        "200 is not one of [60, 120, 300, 600]",
        "10 is not one of [1, 3, 5",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

#[test]
fn web_acl_rules_come_in_the_designed_order() {
    let waf = template("waf.yaml");
    let rules = waf["Resources"]["WebACL"]["Properties"]["Rules"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "floodgate-allow-list",
            "AWS-AWSManagedRulesAmazonIpReputationList",
            "floodgate-dynamic-block",
            "AWS-AWSManagedRulesKnownBadInputsRuleSet",
            "floodgate-tier-login-flood",
            "floodgate-tier-watch",
            "floodgate-tier-block",
            "floodgate-tier-block-24h",
            "floodgate-emergency-block",
        ]
    );
    let priorities: Vec<u64> = rules
        .iter()
        .map(|r| r["Priority"].as_u64().unwrap())
        .collect();
    assert!(priorities.windows(2).all(|w| w[0] < w[1]), "{priorities:?}");
    // The allow-list labels, never allows outright.
    assert!(rules[0]["Action"].get("Count").is_some());
    assert_eq!(rules[0]["RuleLabels"][0]["Name"], "floodgate:allow-listed");
    // Rate rules: the tiers' thresholds (600 scoped to POST /login, 1000 /
    // 2000 / 5000 per 5 min) as COUNT with a label, then the emergency
    // BLOCK; all skip the allow-list.
    let skips_the_allow_list = |scope_down: &serde_json::Value| {
        scope_down["NotStatement"]["Statement"]["LabelMatchStatement"]["Key"]
            == "floodgate:allow-listed"
    };
    let rate: Vec<(u64, u64, &str)> = rules
        .iter()
        .filter_map(|r| {
            let s = r["Statement"].get("RateBasedStatement")?;
            let scope_down = &s["ScopeDownStatement"];
            match scope_down["AndStatement"]["Statements"].as_array() {
                // The scoped tier: the allow-list, then its match.
                Some(all) => {
                    assert!(skips_the_allow_list(&all[0]));
                    let byte_match = |i: usize, field: &str| {
                        let m = &all[i]["ByteMatchStatement"];
                        assert_eq!(m["PositionalConstraint"], "EXACTLY");
                        assert!(m["FieldToMatch"].get(field).is_some(), "{m}");
                        m["SearchString"].as_str().unwrap().to_owned()
                    };
                    assert_eq!(byte_match(1, "UriPath"), "/login");
                    assert_eq!(byte_match(2, "Method"), "POST");
                }
                None => assert!(skips_the_allow_list(scope_down)),
            }
            let action = if r["Action"].get("Block").is_some() {
                "Block"
            } else {
                "Count"
            };
            Some((
                s["Limit"].as_u64().unwrap(),
                s["EvaluationWindowSec"].as_u64().unwrap(),
                action,
            ))
        })
        .collect();
    assert_eq!(
        rate,
        [
            (600, 300, "Count"),
            (1000, 300, "Count"),
            (2000, 300, "Count"),
            (5000, 300, "Count"),
            (20000, 300, "Block")
        ]
    );
    assert!(
        rate.iter()
            .all(|&(limit, window, _)| limit >= 10 && [60, 120, 300, 600].contains(&window))
    );
}

#[test]
fn both_address_families_are_blocked_and_allowed() {
    let waf = template("waf.yaml");
    let resources = &waf["Resources"];
    let rules = resources["WebACL"]["Properties"]["Rules"]
        .as_array()
        .unwrap();
    let referenced = |rule: &Value| -> Vec<String> {
        rule["Statement"]["OrStatement"]["Statements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["IPSetReferenceStatement"]["Arn"]["Fn::GetAtt"][0]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let versions = |ids: Vec<String>| -> Vec<String> {
        ids.iter()
            .map(|id| {
                resources[id]["Properties"]["IPAddressVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let blocked = versions(referenced(&rules[2]));
    assert!(
        blocked.contains(&"IPV4".to_owned()) && blocked.contains(&"IPV6".to_owned()),
        "{blocked:?}"
    );
    assert_eq!(versions(referenced(&rules[0])), ["IPV4", "IPV6"]);
    // The responder's sets start empty; the allow-list holds the policy's ranges.
    assert_eq!(
        resources["BlockedIPv4Set0"]["Properties"]["Addresses"],
        serde_json::json!([])
    );
    assert_eq!(
        resources["AllowListIPv4Set"]["Properties"]["Addresses"],
        serde_json::json!(["192.0.2.10/32", "198.51.100.0/24"])
    );
    // Logging redacts credentials-bearing headers.
    let redacted = &resources["WebACLLogging"]["Properties"]["RedactedFields"];
    assert_eq!(
        redacted,
        &serde_json::json!([{"SingleHeader": {"Name": "authorization"}}, {"SingleHeader": {"Name": "cookie"}}])
    );
}

#[test]
fn cloudfront_is_only_allowed_in_us_east_1() {
    let waf = template("waf.yaml");
    let rule = &waf["Rules"]["CloudFrontOnlyInUsEast1"];
    assert_eq!(
        rule["RuleCondition"],
        serde_json::json!({"Fn::Equals": [{"Ref": "Scope"}, "CLOUDFRONT"]})
    );
    assert_eq!(
        rule["Assertions"][0]["Assert"],
        serde_json::json!({"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]})
    );
}

/// Every IAM statement of a template's roles, by role.
fn iam_statements(template: &Value) -> Vec<(String, Value)> {
    let mut statements = Vec::new();
    for (id, resource) in template["Resources"].as_object().unwrap() {
        if resource["Type"] != "AWS::IAM::Role" {
            continue;
        }
        for policy in resource["Properties"]["Policies"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                statements.push((id.clone(), statement.clone()));
            }
        }
    }
    statements
}

#[test]
fn iam_policies_name_their_actions_and_resources() {
    let responder = template("responder.yaml");
    let (_dir, scheduled) = scheduled_mode();
    let service = iam_statements(&responder);
    let scheduled = iam_statements(&scheduled);
    for (id, statement) in service.iter().chain(&scheduled) {
        for action in statement["Action"].as_array().unwrap() {
            assert!(
                !action.as_str().unwrap().contains('*'),
                "{id}: wildcard action {action}"
            );
        }
        assert_ne!(
            statement["Resource"], "*",
            "{id}: statement on every resource"
        );
    }
    let sids = |statements: &[(String, Value)]| -> Vec<String> {
        statements
            .iter()
            .map(|(id, s)| format!("{id}/{}", s["Sid"].as_str().unwrap_or("-")))
            .collect()
    };
    // The service keeps its ledger in DynamoDB and needs no volume and no
    // scheduler; the scheduled task has the file ledger on EFS. Both read
    // the alert webhook's URL from its secret.
    assert_eq!(
        sids(&service),
        [
            "ExecutionRole/ResponderSecrets",
            "ResponderRole/ResponderIpSets",
            "ResponderRole/WafLogGroups",
            "ResponderRole/LedgerTable"
        ]
    );
    assert_eq!(
        sids(&scheduled),
        [
            "ExecutionRole/ResponderSecrets",
            "ResponderRole/ResponderIpSets",
            "ResponderRole/WafLogGroups",
            "ResponderRole/LedgerVolume",
            "SchedulerRole/-",
            "SchedulerRole/-"
        ]
    );
    // The responder may touch exactly its IP sets in every target region and
    // CloudFront (global, in us-east-1).
    let role = &responder["Resources"]["ResponderRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        ["Statement"][0];
    let arns: Vec<&str> = role["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["Fn::Sub"].as_str().unwrap())
        .collect();
    assert!(arns.contains(&"arn:${AWS::Partition}:wafv2:eu-west-1:${AWS::AccountId}:regional/ipset/floodgate-blocked-v4/*"));
    assert!(arns.contains(&"arn:${AWS::Partition}:wafv2:us-east-1:${AWS::AccountId}:global/ipset/floodgate-blocked-v6/*"));
    assert_eq!(arns.len(), 4 * 3, "4 targets x 3 IP sets");
}

#[test]
fn the_shared_ledger_table_is_retained_and_the_role_reaches_only_it() {
    let responder = template("responder.yaml");
    let table = &responder["Resources"]["LedgerTable"];
    assert_eq!(table["Type"], "AWS::DynamoDB::Table");
    assert_eq!(table["Condition"], "CreatesLedgerTable");
    assert_eq!(table["DeletionPolicy"], "Retain");
    let properties = &table["Properties"];
    assert_eq!(properties["TableName"], "floodgate-ledger");
    assert_eq!(
        properties["KeySchema"],
        serde_json::json!([{ "AttributeName": "pk", "KeyType": "HASH" }])
    );
    assert_eq!(
        properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    // The table is created only in its own region, by the stack told to.
    assert_eq!(
        responder["Conditions"]["CreatesLedgerTable"]["Fn::And"][1]["Fn::Equals"][1],
        "eu-west-1"
    );
    let statements = responder["Resources"]["ResponderRole"]["Properties"]["Policies"][0]
        ["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap();
    let ledger = statements
        .iter()
        .find(|s| s["Sid"] == "LedgerTable")
        .expect("a statement for the ledger table");
    assert_eq!(
        ledger["Action"],
        serde_json::json!([
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:ConditionCheckItem"
        ])
    );
    assert_eq!(
        ledger["Resource"],
        serde_json::json!([{ "Fn::Sub": "arn:${AWS::Partition}:dynamodb:eu-west-1:${AWS::AccountId}:table/floodgate-ledger" }])
    );
    // Each stack runs as the role and holder id it is deployed with.
    let command = responder["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
        ["Command"]
        .as_array()
        .unwrap();
    let tail: Vec<&serde_json::Value> = command.iter().rev().take(4).rev().collect();
    assert_eq!(
        tail,
        [
            &serde_json::json!("--role"),
            &serde_json::json!({ "Ref": "LeaseRole" }),
            &serde_json::json!("--holder-id"),
            &serde_json::json!({ "Ref": "HolderId" }),
        ]
    );
    assert_eq!(
        responder["Parameters"]["HolderId"]["Default"],
        "primary-eu-west-1"
    );
}

#[test]
fn deploy_dry_run_prints_every_stack_and_runs_nothing() {
    // Called from the repository root as infra/README.md does.
    let output = Command::new("infra/deploy.sh")
        .arg("--dry-run")
        .current_dir(workspace_root())
        .env("PATH", "/usr/bin:/bin") // whatever is installed, a dry run calls no aws
        .env_remove("FLOODGATE_IMAGE")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for region in ["us-east-1", "eu-west-1", "ap-southeast-2"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!(
                "--region {region} --template-file infra/cloudformation/waf.yaml"
            )) && l.ends_with("Scope=REGIONAL")),
            "{region}"
        );
    }
    assert!(
        lines[3].contains("--stack-name floodgate-waf-cloudfront --region us-east-1")
            && lines[3].ends_with("Scope=CLOUDFRONT")
    );
    // The primary in the ledger's region, the standby in the other one.
    assert!(
        lines[4].contains("--stack-name floodgate-responder --region eu-west-1")
            && lines[4].contains("--template-file infra/cloudformation/responder.yaml")
            && lines[4].contains("ContainerImage=<FLOODGATE_IMAGE>"),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].contains("--stack-name floodgate-responder-standby --region us-east-1")
            && lines[5].contains("VpcId=<FLOODGATE_STANDBY_VPC>")
            && lines[5]
                .ends_with("CreateLedgerTable=false LeaseRole=standby HolderId=standby-us-east-1"),
        "{}",
        lines[5]
    );
}

/// The `FLOODGATE_*` settings the example's stacks take.
fn deploy_settings() -> std::collections::BTreeSet<String> {
    let list =
        std::fs::read_to_string(workspace_root().join("infra/cloudformation/deployments.tsv"))
            .unwrap();
    let settings: std::collections::BTreeSet<String> = list
        .split('$')
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(settings.contains("FLOODGATE_STANDBY_VPC"), "{settings:?}");
    settings
}

/// An `aws` in `dir` that appends its arguments to the file returned.
fn fake_aws(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let calls = dir.join("calls");
    let aws = dir.join("aws");
    std::fs::write(
        &aws,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o755)).unwrap();
    calls
}

/// A real `infra/deploy.sh` run from the repository root, with the fake
/// `aws` of `dir` first on the PATH and no deploy setting set.
fn deploy_command(dir: &std::path::Path) -> Command {
    let mut command = Command::new("infra/deploy.sh");
    command
        .current_dir(workspace_root())
        .env("PATH", format!("{}:/usr/bin:/bin", dir.display()));
    for setting in deploy_settings() {
        command.env_remove(setting);
    }
    command
}

#[test]
fn a_real_deploy_names_every_missing_setting_at_once_and_deploys_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let calls = fake_aws(dir.path());
    let mut command = deploy_command(dir.path());
    command.env("FLOODGATE_IMAGE", "floodgate:test");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for setting in deploy_settings() {
        assert_eq!(
            stderr.contains(&setting),
            setting != "FLOODGATE_IMAGE",
            "{setting}: {stderr}"
        );
    }
    assert!(!calls.exists(), "aws was called"); // nothing deployed halfway
}

#[test]
fn the_readme_deploy_recipe_sets_every_setting_and_deploys_every_stack() {
    let readme = std::fs::read_to_string(workspace_root().join("infra/README.md")).unwrap();
    let recipe = readme
        .split("```sh")
        .find(|block| block.contains("infra/deploy.sh\n"))
        .and_then(|block| block.split("```").next())
        .expect("infra/README.md has the deploy recipe");
    let dir = tempfile::tempdir().unwrap();
    let calls = fake_aws(dir.path());
    // The recipe's assignments, as the shell would take them.
    let assignments: Vec<(String, String)> = recipe
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| name.starts_with("FLOODGATE_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let mut command = deploy_command(dir.path());
    command.envs(assignments);
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls = std::fs::read_to_string(calls).unwrap();
    assert_eq!(calls.lines().count(), 6, "{calls}");
    assert!(!calls.contains("<FLOODGATE_"), "{calls}");
}

#[test]
fn the_cost_table_matches_the_rendered_web_acl() {
    let waf = template("waf.yaml");
    let resources = waf["Resources"].as_object().unwrap();
    let of_type = |kind: &'static str| resources.values().filter(move |r| r["Type"] == kind);
    let acl = of_type("AWS::WAFv2::WebACL").next().unwrap();
    let rules: Vec<&str> = acl["Properties"]["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["Name"].as_str().unwrap())
        .collect();
    let tier_rules = rules
        .iter()
        .filter(|n| n.starts_with("floodgate-tier-"))
        .count();
    let alarms = of_type("AWS::CloudWatch::Alarm").count();
    // $5 a web ACL, $1 a rule, $0.10 an alarm (the README's list prices).
    let cents = 500 + 100 * rules.len() + 10 * alarms;
    let readme = std::fs::read_to_string(workspace_root().join("infra/README.md")).unwrap();
    for line in [
        format!("| each tier rule ({tier_rules} in the example) | $1.00 each |"),
        format!("standard alarm; {alarms} in the example) | $0.10 each |"),
        format!(
            "costs about ${}.{:02} per web ACL",
            cents / 100,
            cents % 100
        ),
    ] {
        assert!(readme.contains(&line), "infra/README.md should say: {line}");
    }
    // The table's other rows are the template's other rules.
    assert_eq!(rules.len() - tier_rules, 5, "{rules:?}");
}

#[test]
fn the_service_runs_one_health_checked_daemon_and_alarms_when_it_stops_succeeding() {
    let responder = template("responder.yaml");
    let resources = &responder["Resources"];
    let service = &resources["Service"]["Properties"];
    assert_eq!(resources["Service"]["Type"], "AWS::ECS::Service");
    assert_eq!(service["DesiredCount"], 1);
    assert_eq!(service["LaunchType"], "FARGATE");
    let deployment = &service["DeploymentConfiguration"];
    assert_eq!(
        deployment["DeploymentCircuitBreaker"],
        serde_json::json!({ "Enable": true, "Rollback": true })
    );
    assert_eq!(deployment["MaximumPercent"], 100, "never two tasks at once");
    assert!(resources.get("Schedule").is_none() && resources.get("LedgerFileSystem").is_none());

    let container = &resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    let command: Vec<&str> = container["Command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command[0], "run");
    assert!(!command.contains(&"--once"), "the daemon, not one cycle");
    for flag in ["--log-format", "json", "--emf-metrics"] {
        assert!(command.contains(&flag), "{command:?}");
    }
    assert_eq!(
        container["HealthCheck"]["Command"],
        serde_json::json!([
            "CMD",
            "floodgate",
            "healthcheck",
            "--config",
            "/etc/floodgate/floodgate.toml"
        ])
    );
    assert_eq!(container["LogConfiguration"]["LogDriver"], "awslogs");
    assert_eq!(container["User"], "10001:10001");

    let stale = &resources["NoSuccessfulCycleAlarm"]["Properties"];
    assert_eq!(stale["Namespace"], "Floodgate");
    assert_eq!(stale["MetricName"], "SuccessfulCycles");
    assert_eq!(stale["TreatMissingData"], "breaching");
    // The example's schedule is every minute: three one-minute periods.
    assert_eq!(
        (&stale["Period"], &stale["EvaluationPeriods"]),
        (&serde_json::json!(60), &serde_json::json!(3))
    );
    let running = &resources["ServiceNotRunningAlarm"]["Properties"];
    assert_eq!(running["MetricName"], "RunningTaskCount");
    assert_eq!(
        resources["Cluster"]["Properties"]["ClusterSettings"],
        serde_json::json!([{ "Name": "containerInsights", "Value": "enabled" }])
    );
}

#[test]
fn the_scheduled_mode_runs_one_cycle_per_tick_with_its_ledger_on_efs() {
    let (_dir, responder) = scheduled_mode();
    let resources = &responder["Resources"];
    assert!(resources.get("Service").is_none());
    assert_eq!(
        resources["Schedule"]["Properties"]["ScheduleExpression"],
        "rate(2 minutes)"
    );
    let command = &resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Command"];
    assert_eq!(command[1], "--once");
    assert_eq!(
        resources["TaskDefinition"]["Properties"]["Volumes"][0]["EFSVolumeConfiguration"]["FilesystemId"],
        serde_json::json!({ "Ref": "LedgerFileSystem" })
    );
    assert!(resources.get("LedgerTable").is_none(), "the file ledger");
}

#[test]
fn policies_waf_cannot_mirror_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap();
    let cases = [
        (
            example.replacen("window_seconds = 300", "window_seconds = 200", 1),
            "tier \"login-flood\": window_seconds = 200 cannot be an AWS WAF rate-based rule window",
        ),
        (
            example[..example.find("[infra]").unwrap()].to_owned(),
            "the policy has no [infra] section",
        ),
    ];
    for (i, (policy, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.toml"));
        std::fs::write(&path, policy).unwrap();
        let out = dir.path().join("out");
        let output = render_infra(&path, &out);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!out.exists(), "nothing is written for an invalid policy");
    }
}

/// `examples/s3.toml` with an `[infra]` section, its bucket renamed by
/// `bucket`, rendered: (waf.yaml, responder.yaml, the output directory).
fn s3_source_rendered(bucket: &str) -> (Value, Value, tempfile::TempDir) {
    let policy = std::fs::read_to_string(workspace_root().join("examples/s3.toml"))
        .unwrap()
        .replace("aws-waf-logs-example", bucket)
        + "\n[infra]\nname = \"floodgate\"\nemergency_block_requests = 20000\nmode = \"scheduled\"\n";
    let (dir, out) = rendered(&policy);
    (
        read_template(&out, "waf.yaml"),
        read_template(&out, "responder.yaml"),
        dir,
    )
}

#[test]
fn an_s3_source_logs_to_its_bucket_and_the_role_reads_only_its_prefix() {
    let (waf, responder, dir) = s3_source_rendered("aws-waf-logs-example");
    let resources = waf["Resources"].as_object().unwrap();
    assert!(
        !resources.contains_key("WafLogGroup"),
        "no log group when logs go to S3"
    );
    assert_eq!(
        resources["WebACLLogging"]["Properties"]["LogDestinationConfigs"],
        serde_json::json!([{ "Fn::Sub": "arn:${AWS::Partition}:s3:::aws-waf-logs-example" }])
    );
    let statements: Vec<Value> = iam_statements(&responder)
        .into_iter()
        .filter(|(id, _)| id == "ResponderRole")
        .map(|(_, s)| s)
        .filter(|s| s["Sid"].as_str().unwrap().starts_with("WafLog"))
        .collect();
    assert_eq!(
        statements,
        [
            serde_json::json!({
                "Sid": "WafLogBucketList",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": { "Fn::Sub": "arn:${AWS::Partition}:s3:::aws-waf-logs-example" },
                "Condition": { "StringLike": { "s3:prefix": ["AWSLogs/*"] } },
            }),
            serde_json::json!({
                "Sid": "WafLogObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": { "Fn::Sub": "arn:${AWS::Partition}:s3:::aws-waf-logs-example/AWSLogs/*" },
            }),
        ]
    );
    let out = dir.path().join("out");
    let lint = cfn_lint(&[
        out.join("waf.yaml").to_str().unwrap(),
        out.join("responder.yaml").to_str().unwrap(),
    ]);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // A bucket Firehose fills: WAF cannot log to it directly, so the
    // template leaves logging alone and says why.
    let (waf, _, _dir) = s3_source_rendered("firehose-waf-logs");
    assert!(
        !waf["Resources"]
            .as_object()
            .unwrap()
            .contains_key("WebACLLogging")
    );
    assert!(
        waf["Outputs"]["WafLogBucket"]["Description"]
            .as_str()
            .unwrap()
            .contains("Firehose")
    );
}

#[test]
fn a_cloudflare_target_gets_the_custom_rule_that_makes_its_list_block() {
    let example =
        std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap();
    let policy = example
        + "\n[[targets]]\ntype = \"cloudflare\"\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
           list = \"floodgate_blocked\"\napi_token_env = \"CLOUDFLARE_API_TOKEN\"\n";
    let (_dir, out) = rendered(&policy);
    let text = std::fs::read_to_string(out.join("cloudflare-rules.json")).unwrap();
    let rules: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        rules["rules"],
        serde_json::json!([{
            "account_id": "0123456789abcdef0123456789abcdef",
            "list": "floodgate_blocked",
            "rule": {
                "description": "Floodgate: block the addresses in $floodgate_blocked",
                "expression": "ip.src in $floodgate_blocked",
                "action": "block",
            },
        }])
    );
    assert!(
        rules["deploy"]
            .as_str()
            .unwrap()
            .contains("http_request_firewall_custom")
    );

    // The token reaches the task from Secrets Manager, never in the
    // template: the execution role reads that one secret.
    let responder = read_template(&out, "responder.yaml");
    assert_eq!(
        responder["Parameters"]["CloudflareApiTokenSecretArn"]["Type"],
        "String"
    );
    assert_eq!(
        responder["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Secrets"],
        serde_json::json!([
            {
                "Name": "CLOUDFLARE_API_TOKEN",
                "ValueFrom": { "Ref": "CloudflareApiTokenSecretArn" },
            },
            {
                "Name": "FLOODGATE_WEBHOOK_URL",
                "ValueFrom": { "Ref": "FloodgateWebhookUrlSecretArn" },
            },
        ])
    );
    let execution: Vec<Value> = iam_statements(&responder)
        .into_iter()
        .filter(|(id, _)| id == "ExecutionRole")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        execution,
        [serde_json::json!({
            "Sid": "ResponderSecrets",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": [
                { "Ref": "CloudflareApiTokenSecretArn" },
                { "Ref": "FloodgateWebhookUrlSecretArn" },
            ],
        })]
    );
    let deployments = std::fs::read_to_string(out.join("deployments.tsv")).unwrap();
    assert!(
        deployments
            .contains("CloudflareApiTokenSecretArn=$FLOODGATE_CLOUDFLARE_API_TOKEN_SECRET_ARN"),
        "{deployments}"
    );
    let lint = cfn_lint(&[out.join("responder.yaml").to_str().unwrap()]);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // Without a Cloudflare target there is no such file.
    let (_dir, out) = rendered(
        &std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap(),
    );
    assert!(!out.join("cloudflare-rules.json").exists());
}

/// The responder stack's CloudWatch dashboard draws only metrics that
/// `floodgate run --emf-metrics` writes: those of a cycle over the sample,
/// and Logs Insights' cost, which only an Insights source writes (the unit
/// test of the EMF line checks it; the example policy reads Insights).
#[test]
fn the_cloudwatch_dashboard_draws_only_metrics_the_responder_writes() {
    let responder = template("responder.yaml");
    let body = responder["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    let mut drawn = std::collections::BTreeSet::new();
    for widget in body["widgets"].as_array().unwrap() {
        for line in widget["properties"]["metrics"].as_array().unwrap() {
            assert_eq!(line[0], "Floodgate", "{line}");
            assert_eq!(line[2], "Responder", "{line}");
            assert_eq!(line[3], "floodgate", "the [infra] name: {line}");
            drawn.insert(line[1].as_str().unwrap().to_owned());
        }
    }
    assert!(drawn.contains("InsightsCostUSD"), "{drawn:?}");

    let dir = tempfile::tempdir().unwrap();
    let policy = super::local_policy(dir.path(), &workspace_root().join("examples/logs"), "");
    let output = Command::new(super::floodgate_bin())
        .args(["run", "--once", "--emf-metrics", "--format", "json"])
        .args([
            "--config",
            policy.to_str().unwrap(),
            "--now",
            "2026-11-20T10:05:00Z",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    let emf: Value = serde_json::from_str(text.trim_end().rsplit_once('\n').unwrap().1).unwrap();
    let written: std::collections::BTreeSet<String> =
        emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .chain(["InsightsCostUSD".to_owned()])
            .collect();
    let missing: Vec<&String> = drawn.difference(&written).collect();
    assert!(missing.is_empty(), "drawn but never written: {missing:?}");
}

/// checkov over every deployment file, offline: no check fails, and each
/// one skipped says why in the file.
fn checkov(dir: &std::path::Path) -> std::process::Output {
    Command::new(venv_bin("checkov"))
        .args(["--directory"])
        .arg(dir)
        .args(["--framework", "cloudformation", "kubernetes"])
        .args(["--skip-download", "--compact", "--quiet"])
        .output()
        .unwrap()
}

#[test]
fn checkov_passes_every_deployment_file() {
    let output = checkov(&workspace_root().join("infra"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("cloudformation scan results")
            && report.contains("kubernetes scan results"),
        "{report}"
    );
    // Without a customer managed key, the three resources it would
    // encrypt say so.
    let responder = template("responder.yaml");
    let skipped = &responder["Resources"]["LedgerTable"]["Metadata"]["checkov"]["skip"][0];
    assert_eq!(skipped["id"], "CKV_AWS_119");
    assert!(skipped["comment"].as_str().unwrap().contains("kms_key_arn"));
}

/// With `[infra] kms_key_arn`, the ledger table and both log groups use the
/// key, the responder may use it on exactly that key, and checkov has
/// nothing to skip for them; cfn-lint passes.
#[test]
fn a_customer_managed_key_encrypts_the_ledger_and_the_logs() {
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let text = std::fs::read_to_string(workspace_root().join("examples/floodgate.toml"))
        .unwrap()
        .replace("[infra]\n", &format!("[infra]\nkms_key_arn = \"{key}\"\n"));
    assert!(text.contains(key));
    let (_dir, out) = rendered(&text);
    let responder = read_template(&out, "responder.yaml");
    let waf = read_template(&out, "waf.yaml");
    let table = &responder["Resources"]["LedgerTable"];
    assert_eq!(
        table["Properties"]["SSESpecification"],
        serde_json::json!({ "SSEEnabled": true, "SSEType": "KMS", "KMSMasterKeyId": key })
    );
    assert_eq!(
        responder["Resources"]["ResponderLogGroup"]["Properties"]["KmsKeyId"],
        key
    );
    assert_eq!(
        waf["Resources"]["WafLogGroup"]["Properties"]["KmsKeyId"],
        key
    );
    for resource in [
        table,
        &responder["Resources"]["ResponderLogGroup"],
        &waf["Resources"]["WafLogGroup"],
    ] {
        assert!(resource.get("Metadata").is_none(), "{resource}");
    }
    let statements = iam_statements(&responder);
    let (_, statement) = statements
        .iter()
        .find(|(_, statement)| statement["Sid"] == "LedgerKey")
        .unwrap();
    assert_eq!(statement["Resource"], key);
    assert!(
        statement["Action"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.as_str().unwrap().starts_with("kms:"))
    );
    let output = checkov(&out);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lint = cfn_lint(&[
        out.join("responder.yaml").to_str().unwrap(),
        out.join("waf.yaml").to_str().unwrap(),
    ]);
    assert_eq!(
        lint.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
}

/// The example policy with two member accounts: one holding IP sets in
/// eu-west-1 and a WAF log group there, one IP sets for CloudFront.
fn with_member_accounts() -> String {
    let example =
        std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap();
    let group = "  { region = \"us-east-1\", name = \"aws-waf-logs-floodgate-cloudfront\" },\n";
    example.replace(
        group,
        &format!("{group}  {{ region = \"eu-west-1\", name = \"aws-waf-logs-shop\", account = \"shop\" }},\n"),
    ) + r#"
[[accounts]]
name = "shop"
role_arn = "arn:aws:iam::111122223333:role/floodgate-member"
external_id_env = "FLOODGATE_SHOP_EXTERNAL_ID"

[[accounts]]
name = "media"
role_arn = "arn:aws:iam::444455556666:role/floodgate-member"

[[targets]]
type = "wafv2"
scope = "regional"
region = "eu-west-1"
ipv4_sets = ["floodgate-blocked-v4", "floodgate-blocked-v4-2"]
ipv6_sets = ["floodgate-blocked-v6"]
account = "shop"

[[targets]]
type = "wafv2"
scope = "cloudfront"
ipv4_sets = ["floodgate-blocked-v4", "floodgate-blocked-v4-2"]
ipv6_sets = ["floodgate-blocked-v6"]
account = "media"
"#
}

#[test]
fn member_accounts_get_a_role_that_trusts_only_the_responder_and_reaches_only_their_resources() {
    let (dir, out) = rendered(&with_member_accounts());
    let output = cfn_lint(&[
        out.join("member-role.yaml").to_str().unwrap(),
        out.join("responder.yaml").to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let output = checkov(&out);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // The responder may assume exactly the two roles, and its own
    // statements name only its own account's log groups.
    let responder = iam_statements(&read_template(&out, "responder.yaml"));
    let assume: Vec<&Value> = responder
        .iter()
        .filter(|(_, s)| s["Action"] == json!(["sts:AssumeRole"]))
        .map(|(_, s)| &s["Resource"])
        .collect();
    assert_eq!(
        assume,
        [&json!([
            "arn:aws:iam::111122223333:role/floodgate-member",
            "arn:aws:iam::444455556666:role/floodgate-member"
        ])]
    );
    let own = serde_json::to_string(&responder).unwrap();
    assert!(!own.contains("aws-waf-logs-shop"), "{own}");

    // The member role: trusted by the responder's role alone, with the
    // external id when one is given; its statements reach the member
    // targets' IP sets (eu-west-1 and CloudFront) and the member log group.
    let member = read_template(&out, "member-role.yaml");
    let role = &member["Resources"]["MemberRole"]["Properties"];
    let trust = &role["AssumeRolePolicyDocument"]["Statement"][0]["Fn::If"];
    assert_eq!(trust[0], "HasExternalId");
    for statement in [&trust[1], &trust[2]] {
        assert_eq!(
            statement["Principal"],
            json!({ "AWS": { "Ref": "ResponderRoleArn" } })
        );
        assert_eq!(statement["Action"], "sts:AssumeRole");
    }
    assert_eq!(
        trust[1]["Condition"],
        json!({ "StringEquals": { "sts:ExternalId": { "Ref": "ExternalId" } } })
    );
    assert_eq!(role["RoleName"], json!({ "Ref": "RoleName" }));
    assert_eq!(
        member["Parameters"]["RoleName"]["Default"],
        "floodgate-member"
    );
    let statements = iam_statements(&member);
    let sids: Vec<&str> = statements
        .iter()
        .map(|(_, s)| s["Sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids, ["MemberIpSets", "WafLogGroups"]);
    let resources = serde_json::to_string(&statements[0].1["Resource"]).unwrap();
    for place in [
        "wafv2:eu-west-1:${AWS::AccountId}:regional/ipset/floodgate-blocked-v4/*",
        "wafv2:us-east-1:${AWS::AccountId}:global/ipset/floodgate-blocked-v6/*",
    ] {
        assert!(resources.contains(place), "{place} in {resources}");
    }
    assert!(
        !resources.contains("ap-southeast-2"),
        "only the member targets' scopes: {resources}"
    );
    assert_eq!(
        statements[1].1["Resource"],
        json!([{ "Fn::Sub": "arn:${AWS::Partition}:logs:eu-west-1:${AWS::AccountId}:log-group:aws-waf-logs-shop" }])
    );

    // deploy.sh --member-account deploys it with the responder's role and
    // the external id, from a member account's credentials.
    let infra = dir.path().join("infra");
    std::fs::create_dir_all(infra.join("cloudformation")).unwrap();
    std::fs::copy(
        workspace_root().join("infra/deploy.sh"),
        infra.join("deploy.sh"),
    )
    .unwrap();
    for file in std::fs::read_dir(&out).unwrap() {
        let file = file.unwrap();
        std::fs::copy(
            file.path(),
            infra.join("cloudformation").join(file.file_name()),
        )
        .unwrap();
    }
    let calls = fake_aws(dir.path());
    let deploy = |role: Option<&str>| {
        let mut command = Command::new(infra.join("deploy.sh"));
        command
            .arg("--member-account")
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("FLOODGATE_EXTERNAL_ID", "s3cret");
        match role {
            Some(role) => command.env("FLOODGATE_RESPONDER_ROLE_ARN", role),
            None => command.env_remove("FLOODGATE_RESPONDER_ROLE_ARN"),
        };
        command.output().unwrap()
    };
    let refused = deploy(None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("FLOODGATE_RESPONDER_ROLE_ARN"));
    assert!(
        !calls.exists(),
        "nothing deployed without the responder's role"
    );
    let deployed = deploy(Some(
        "arn:aws:iam::123456789012:role/floodgate-responder-ResponderRole",
    ));
    assert_eq!(
        deployed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let calls = std::fs::read_to_string(calls).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    for part in [
        "cloudformation deploy --stack-name floodgate-member-role --region us-east-1",
        "member-role.yaml --capabilities CAPABILITY_NAMED_IAM",
        "ResponderRoleArn=arn:aws:iam::123456789012:role/floodgate-responder-ResponderRole ExternalId=s3cret",
    ] {
        assert!(calls.contains(part), "{part} in {calls}");
    }
}

#[test]
fn deploy_member_account_needs_a_policy_with_accounts() {
    let output = Command::new("infra/deploy.sh")
        .args(["--member-account", "--dry-run"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the policy has no [[accounts]]"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn s3_buckets_in_member_accounts_are_read_by_the_member_role_and_the_own_by_the_responder() {
    let policy = with_member_accounts();
    let start = policy.find("[source]\n").unwrap();
    let end = start + policy[start..].find("\n]\n").unwrap() + 3;
    let policy = format!(
        "{}[source]\ntype = \"s3\"\nbuckets = [\n  {{ bucket = \"aws-waf-logs-main\", region = \"eu-west-1\", prefix = \"AWSLogs\" }},\n  {{ bucket = \"aws-waf-logs-shop\", region = \"eu-west-1\", account = \"shop\" }},\n  {{ bucket = \"aws-waf-logs-media\", region = \"us-east-1\", account = \"media\" }},\n]\n{}",
        &policy[..start],
        &policy[end..]
    );
    let (_dir, out) = rendered(&policy);
    let output = cfn_lint(&[
        out.join("member-role.yaml").to_str().unwrap(),
        out.join("responder.yaml").to_str().unwrap(),
        out.join("waf.yaml").to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let resources = |template: &str, sid_prefix: &str| -> Vec<String> {
        iam_statements(&read_template(&out, template))
            .into_iter()
            .filter(|(_, s)| s["Sid"].as_str().unwrap().starts_with(sid_prefix))
            .map(|(_, s)| s["Resource"]["Fn::Sub"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        resources("responder.yaml", "WafLogObjects"),
        ["arn:${AWS::Partition}:s3:::aws-waf-logs-main/AWSLogs/*"]
    );
    assert_eq!(
        resources("member-role.yaml", "WafLogObjects"),
        [
            "arn:${AWS::Partition}:s3:::aws-waf-logs-shop/*",
            "arn:${AWS::Partition}:s3:::aws-waf-logs-media/*"
        ]
    );
    // The web ACL logs to the responder's own bucket.
    let waf = read_template(&out, "waf.yaml");
    let logging = serde_json::to_string(&waf["Resources"]["WebACLLogging"]).unwrap();
    assert!(logging.contains("aws-waf-logs-main"), "{logging}");
}

#[test]
fn fast_tiers_rules_carry_the_tiers_limit_window_and_match_and_the_role_may_read_only_them() {
    let example =
        std::fs::read_to_string(workspace_root().join("examples/floodgate.toml")).unwrap();
    let policy = example
        .replace(
            "match = { path = \"/login\", method = \"POST\" }\n",
            "match = { path = \"/login\", method = \"POST\" }\nfast = true\n",
        )
        .replace(
            "block_minutes = 1440\n",
            "block_minutes = 1440\nfast = true\n",
        );
    assert_eq!(policy.matches("fast = true").count(), 2);
    let (dir, out) = rendered(&policy);
    let waf = read_template(&out, "waf.yaml");
    let rules = waf["Resources"]["WebACL"]["Properties"]["Rules"]
        .as_array()
        .unwrap();
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["Name"] == name)
            .unwrap_or_else(|| panic!("no rule {name}"))
            .clone()
    };
    let login = rule("floodgate-tier-login-flood");
    let rate = &login["Statement"]["RateBasedStatement"];
    assert_eq!(rate["Limit"], 600);
    assert_eq!(rate["EvaluationWindowSec"], 300);
    assert_eq!(rate["AggregateKeyType"], "IP");
    assert_eq!(login["Action"], serde_json::json!({ "Count": {} }));
    let scope_down = rate["ScopeDownStatement"]["AndStatement"]["Statements"].to_string();
    for part in [
        "\"UriPath\"",
        "\"/login\"",
        "\"Method\"",
        "\"POST\"",
        "floodgate:allow-listed",
    ] {
        assert!(scope_down.contains(part), "{part} in {scope_down}");
    }
    let widest = rule("floodgate-tier-block-24h");
    assert_eq!(widest["Statement"]["RateBasedStatement"]["Limit"], 5000);

    let responder = read_template(&out, "responder.yaml");
    let statement = iam_statements(&responder)
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s["Sid"] == "ResponderRateRules")
        .expect("the role may read the rate-based rules");
    assert_eq!(
        statement["Action"],
        serde_json::json!([
            "wafv2:GetRateBasedStatementManagedKeys",
            "wafv2:GetWebACL",
            "wafv2:ListWebACLs"
        ])
    );
    let resources = statement["Resource"].to_string();
    for arn in [
        "wafv2:us-east-1:${AWS::AccountId}:regional/webacl/floodgate/*",
        "wafv2:eu-west-1:${AWS::AccountId}:regional/webacl/floodgate/*",
        "wafv2:ap-southeast-2:${AWS::AccountId}:regional/webacl/floodgate/*",
        "wafv2:us-east-1:${AWS::AccountId}:global/webacl/floodgate/*",
    ] {
        assert!(resources.contains(arn), "{arn} in {resources}");
    }
    let lint = cfn_lint(&[
        out.join("waf.yaml").to_str().unwrap(),
        out.join("responder.yaml").to_str().unwrap(),
    ]);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    drop(dir);
}
