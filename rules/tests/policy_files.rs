//! Every policy under `tests/broken/` must fail with exactly the diagnostics
//! its `# expect:` lines list; every policy under `tests/warnings/` must load
//! with exactly the warnings listed; the documented example must load clean.

use std::path::{Path, PathBuf};

use floodgate_rules::{Policy, Severity};
use time::Date;
use time::macros::date;

/// The day the fixtures are evaluated on, so expiry never drifts with the calendar.
const TODAY: Date = date!(2026 - 11 - 22);

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// The fixture's name, text and expected diagnostic lines.
fn read_fixture(path: &Path) -> (String, String, Vec<String>) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let expected: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect();
    assert!(!expected.is_empty(), "{name} has no `# expect:` lines");
    (name, text, expected)
}

#[test]
fn broken_policies_fail_with_exactly_the_expected_errors() {
    let files = fixtures("broken");
    // The cases the policy issue names must stay covered.
    for case in [
        "invalid-cidr",
        "host-bits",
        "slash-zero",
        "too-broad",
        "unknown-key",
        "zero-threshold",
        "tiers-out-of-order",
        "unknown-plan",
        "duplicate-tenant",
        "not-a-date",
    ] {
        assert!(
            files.iter().any(|f| f.file_stem().unwrap() == case),
            "missing fixture {case}.toml"
        );
    }
    let mut mismatches = Vec::new();
    for path in &files {
        let (name, text, expected) = read_fixture(path);
        match Policy::from_toml(&text, &name, TODAY) {
            Ok(_) => mismatches.push(format!("{name}: loaded, but should have failed")),
            Err(error) => {
                let actual: Vec<String> =
                    error.diagnostics.iter().map(ToString::to_string).collect();
                if actual != expected {
                    mismatches.push(format!(
                        "{name}:\n  expected:\n    {}\n  actual:\n    {}",
                        expected.join("\n    "),
                        actual.join("\n    ")
                    ));
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn policies_with_warnings_load_and_list_every_warning() {
    let files = fixtures("warnings");
    assert!(!files.is_empty());
    for path in &files {
        let (name, text, expected) = read_fixture(path);
        let loaded = Policy::from_toml(&text, &name, TODAY)
            .unwrap_or_else(|e| panic!("{name} should load:\n{e}"));
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.severity == Severity::Warning)
        );
        let actual: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(actual, expected, "{name}");
    }
}

#[test]
fn expired_exceptions_no_longer_apply() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/warnings/expired-and-overlapping.toml");
    let (name, text, _) = read_fixture(&path);
    let policy = Policy::from_toml(&text, &name, TODAY).unwrap().policy;
    // allow[0] expired; its duplicate allow[1] still covers the range.
    let found = policy.allow.find_index("203.0.113.9".parse().unwrap());
    assert_eq!(found, Some(1));
    // The lab /26 is more specific than the office /24.
    assert_eq!(
        policy.allow.find_index("203.0.113.70".parse().unwrap()),
        Some(2)
    );
    // The expired override no longer applies: initech gets the default plan.
    let quotas = policy.quotas.unwrap();
    assert!(quotas.override_for("initech").is_none());
    assert_eq!(quotas.limits_for("initech")[0].requests.get(), 10);
    // The day before, it did.
    let earlier = Policy::from_toml(&text, &name, date!(2026 - 11 - 21))
        .unwrap()
        .policy;
    assert_eq!(
        earlier.quotas.unwrap().limits_for("initech")[0]
            .requests
            .get(),
        100
    );
}

#[test]
fn the_documented_example_policy_loads_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/floodgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded =
        Policy::from_toml(&text, "floodgate.toml", TODAY).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings, []);
    let policy = loaded.policy;
    // The real-world setup the example mirrors: watch 1000, block 15 min at
    // 2000, block 24 h at 5000 requests per 5 minutes; and a login flood
    // caught by a tier scoped to POST /login.
    let tiers: Vec<(&str, u32, u32, bool)> = policy
        .tiers
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.requests.get(),
                t.window_seconds.get(),
                t.blocks(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("login-flood", 600, 300, true),
            ("watch", 1000, 300, false),
            ("block", 2000, 300, true),
            ("block-24h", 5000, 300, true)
        ]
    );
    let login = policy.tiers[0].scope.as_ref().expect("a scoped tier");
    assert_eq!(login.to_string(), "POST /login");
    assert!(policy.tiers[1..].iter().all(|t| t.scope.is_none()));
    assert_eq!(policy.targets.len(), 4);
    assert!(policy.targets.iter().any(|t| matches!(t, floodgate_rules::policy::Target::Wafv2(w) if w.scope == floodgate_rules::policy::WafScope::CloudFront)));
    let quotas = policy.quotas.unwrap();
    assert_eq!(quotas.default_plan().name.as_str(), "free");
    assert_eq!(
        quotas.limits_for("acme-corp"),
        quotas.plan("enterprise").unwrap().limits.as_slice()
    );
    assert_eq!(quotas.limits_for("someone-else").len(), 2);
    // Route classes: the first matching route gives class and cost, and an
    // override's class limits replace its plan's.
    let export = quotas.route_for("POST", "/v1/exports").unwrap();
    assert_eq!((export.class.as_str(), export.cost.get()), ("exports", 5));
    let download = quotas.route_for("GET", "/v1/exports/7/download").unwrap();
    assert_eq!(
        (download.class.as_str(), download.cost.get()),
        ("exports", 1)
    );
    assert!(quotas.route_for("GET", "/v1/exports").is_none());
    let class_requests = |tenant| {
        quotas
            .class_limits_for(tenant, "exports")
            .map(|limits| limits[0].requests.get())
    };
    assert_eq!(class_requests("someone-else"), Some(10));
    assert_eq!(class_requests("initech"), Some(50));
    assert_eq!(
        class_requests("acme-corp"),
        None,
        "enterprise has no class limits"
    );
    assert_eq!(quotas.limits_for("initech").len(), 2, "keeps its plan");
}

#[test]
fn the_s3_example_policy_loads_with_its_source() {
    use floodgate_rules::policy::{LogSourceConfig, S3Bucket, S3Source};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/s3.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded = Policy::from_toml(&text, "s3.toml", TODAY).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings, []);
    let Some(LogSourceConfig::S3(source)) = loaded.policy.source else {
        panic!("an S3 source");
    };
    assert_eq!(
        source,
        S3Source {
            buckets: vec![S3Bucket {
                bucket: "aws-waf-logs-example".to_owned(),
                prefix: "AWSLogs/".to_owned(),
                region: floodgate_rules::policy::Region::new("eu-west-1").unwrap(),
                account: None,
            }],
            endpoint_url: None,
            delivery_lag_minutes: 10,
            max_concurrent_objects: 16.try_into().unwrap(),
            format: floodgate_rules::policy::LogFormat::Waf,
        }
    );
    // The defaults, and a prefix written without its trailing slash.
    let minimal = "[source]\ntype = \"s3\"\nbucket = \"aws-waf-logs-x\"\nregion = \"us-east-1\"\nprefix = \"waf\"\n";
    let Some(LogSourceConfig::S3(source)) = Policy::from_toml(minimal, "m.toml", TODAY)
        .unwrap()
        .policy
        .source
    else {
        panic!("an S3 source");
    };
    assert_eq!(source.buckets[0].prefix, "waf/");
    assert_eq!(source.delivery_lag_minutes, 10);
    assert_eq!(source.max_concurrent_objects.get(), 16);
}

#[test]
fn the_cloudflare_example_policy_loads_with_both_targets() {
    use floodgate_rules::policy::{CloudflareListName, CloudflareTarget, Target};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloudflare.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded =
        Policy::from_toml(&text, "cloudflare.toml", TODAY).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings, []);
    let targets = &loaded.policy.targets;
    assert!(matches!(targets[0], Target::Wafv2(_)));
    assert_eq!(
        targets[1],
        Target::Cloudflare(CloudflareTarget {
            account_id: "0123456789abcdef0123456789abcdef".to_owned(),
            list: CloudflareListName::new("floodgate_blocked").unwrap(),
            api_token_env: "CLOUDFLARE_API_TOKEN".to_owned(),
            api_url: "https://api.cloudflare.com/client/v4".to_owned(),
            create_missing: true,
            max_items: 10_000,
            widen_ipv6: true,
        })
    );
    // The defaults; an upper-case account id is Cloudflare's own.
    let minimal = "[[targets]]\ntype = \"cloudflare\"\naccount_id = \"0123456789ABCDEF0123456789ABCDEF\"\nlist = \"l\"\napi_token_env = \"T\"\napi_url = \"http://127.0.0.1:1/client/v4/\"\n";
    let loaded = Policy::from_toml(minimal, "m.toml", TODAY).unwrap_or_else(|e| panic!("{e}"));
    let Target::Cloudflare(target) = &loaded.policy.targets[0] else {
        panic!("a Cloudflare target");
    };
    assert_eq!(target.account_id, "0123456789abcdef0123456789abcdef");
    assert_eq!(target.api_url, "http://127.0.0.1:1/client/v4");
    assert_eq!(target.max_items, 10_000);
    assert!(!target.create_missing && !target.widen_ipv6);
}

#[test]
fn more_route_classes_than_the_cap_is_an_error() {
    let mut text = String::from(
        "[quotas]\ndefault_plan = \"free\"\nplans = [{ name = \"free\", limits = [{ requests = 10, per_seconds = 1 }] }]\n",
    );
    let classes = floodgate_rules::policy::MAX_CLASSES + 1;
    for i in 0..classes {
        text.push_str(&format!(
            "[[quotas.routes]]\nclass = \"c{i}\"\npath = \"/v1/c{i}\"\n"
        ));
    }
    let error = Policy::from_toml(&text, "many.toml", TODAY)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "many.toml:4:1: error: quotas.routes: names {classes} route classes; at most 64 are allowed"
        )),
        "{error}"
    );
    // At the cap, it loads.
    let at_cap = text.replace(&format!("class = \"c{}\"", classes - 1), "class = \"c0\"");
    assert!(Policy::from_toml(&at_cap, "many.toml", TODAY).is_ok());
}

#[test]
fn the_example_policys_commented_redis_settings_load() {
    use floodgate_rules::policy::QuotaBackend;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/floodgate.toml");
    let example = std::fs::read_to_string(&path).unwrap();
    let commented: Vec<&str> = example
        .lines()
        .filter_map(|line| line.strip_prefix("# redis = "))
        .collect();
    assert_eq!(commented.len(), 2, "one node, and a cluster over TLS");
    let mut backends = Vec::new();
    for table in commented {
        let text = format!(
            "[quotas]\ndefault_plan = \"free\"\nbackend = \"redis\"\nredis = {table}\nplans = [{{ name = \"free\", limits = [{{ requests = 10, per_seconds = 1 }}] }}]\n"
        );
        let loaded =
            Policy::from_toml(&text, "floodgate.toml", TODAY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.warnings, []);
        let Some(QuotaBackend::Redis(redis)) = loaded.policy.quotas.map(|q| q.backend().clone())
        else {
            panic!("the redis backend");
        };
        backends.push(redis);
    }
    assert!(!backends[0].cluster && !backends[0].tls());
    assert!(backends[1].cluster && backends[1].tls());
    assert_eq!(backends[1].username.as_deref(), Some("floodgate"));
}
