//! The fast detector as a library component, against moto: every target
//! is a real WAFv2 IP set, and the rate-based rules' managed keys come from
//! a gate in front of moto (moto lacks `GetRateBasedStatementManagedKeys`;
//! see `floodgate_tests::managed_keys` for the documented shape it answers).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_wafv2::types::Scope;
use floodgate_responder::clock::{SystemClock, unix_ms};
use floodgate_responder::cycle::{self, CycleReport, Parts, Writes};
use floodgate_responder::fast::FastDetector;
use floodgate_responder::lease::dynamodb::DynamoDbLease;
use floodgate_responder::lease::{ConfiguredLease, Contender, Standing, acquire};
use floodgate_responder::ledger::{ConfiguredLedger, Ledger, LedgerEntry};
use floodgate_responder::rate_rules::RateRule;
use floodgate_responder::sink::ConfiguredTarget;
use floodgate_responder::sink::wafv2::Wafv2Target;
use floodgate_responder::source::files::FileSource;
use floodgate_rules::Policy;
use floodgate_rules::policy::{Region, Role, WafScope};
use floodgate_tests::managed_keys::ManagedKeysGate;
use floodgate_tests::{MotoServer, burst};

const RULE: &str = "floodgate-tier-block";
const ATTACKER: &str = "203.0.113.9";
const PARTNER: &str = "198.51.100.7";

/// Two regions and CloudFront, each with the web ACL `floodgate` and the
/// block tier's rule, its IP sets reached through the gate.
struct Setup {
    moto: MotoServer,
    gate: ManagedKeysGate,
    policy: Policy,
    targets: Vec<Arc<ConfiguredTarget>>,
    detector: FastDetector,
    dir: tempfile::TempDir,
    writes: Writes,
}

const PLACES: [(&str, Option<&str>); 3] = [
    ("eu-west-1", Some("eu-west-1")),
    ("us-east-2", Some("us-east-2")),
    ("us-east-1", None),
];

fn scope_of(region: Option<&str>) -> (Scope, WafScope) {
    match region {
        Some(region) => (
            Scope::Regional,
            WafScope::Regional(Region::new(region).unwrap()),
        ),
        None => (Scope::Cloudfront, WafScope::CloudFront),
    }
}

async fn setup() -> Setup {
    let moto = MotoServer::start();
    let gate = ManagedKeysGate::start(&moto.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[tiers]]\nname = \"block\"\nrequests = 100\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\nfast = true\n\n\
         [[allow]]\ncidr = \"198.51.100.0/24\"\nowner = \"partners@example.com\"\nreason = \"a partner's crawler\"\nexpires = \"2099-01-01\"\n\n\
         [[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\n\n\
         [responder]\nstate_dir = \"{}\"\n",
        dir.path().display()
    );
    let policy = Policy::from_toml(&text, "p.toml", time::macros::date!(2026 - 12 - 07))
        .unwrap()
        .policy;
    let (mut targets, mut rules) = (Vec::new(), Vec::new());
    for (api_region, region) in PLACES {
        let (sdk_scope, scope) = scope_of(region);
        moto.create_rate_rule(api_region, sdk_scope, "floodgate", RULE, 100, 300)
            .await;
        let client = moto.wafv2_client_via(&gate.endpoint(), api_region);
        let target = Wafv2Target::new(
            client.clone(),
            scope.clone(),
            vec!["fg-v4".into()],
            vec!["fg-v6".into()],
            true,
        );
        targets.push(Arc::new(ConfiguredTarget::Wafv2(target)));
        let tier = policy.tiers[0].name.clone();
        rules.push(RateRule::new(client, tier, "floodgate", scope, None));
        gate.set(region.unwrap_or("cloudfront"), RULE, &[]);
    }
    Setup {
        moto,
        gate,
        policy,
        targets,
        detector: FastDetector::new(rules, Duration::from_secs(10)),
        dir,
        writes: Writes::default(),
    }
}

impl Setup {
    async fn parts(&self, lease: Option<ConfiguredLease>) -> Parts<'_, ()> {
        Parts {
            policy: &self.policy,
            source: (),
            ledger: ConfiguredLedger::from_policy(&self.policy).await,
            targets: self.targets.clone(),
            lease,
            clock: Arc::new(SystemClock),
            lease_clock: Arc::new(SystemClock),
            writes: Arc::clone(&self.writes),
        }
    }

    /// A scheduled cycle over `log`.
    async fn log_cycle(&self, log: &Path) -> CycleReport {
        let parts = Parts {
            policy: &self.policy,
            source: FileSource::new(&[log.to_str().unwrap()]).unwrap(),
            ledger: ConfiguredLedger::from_policy(&self.policy).await,
            targets: self.targets.clone(),
            lease: None,
            clock: Arc::new(SystemClock),
            lease_clock: Arc::new(SystemClock),
            writes: Arc::clone(&self.writes),
        };
        cycle::run(parts).await.unwrap()
    }

    /// A log file of `lines`.
    fn log(&self, name: &str, lines: &[(i64, String)]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        let text: String = lines.iter().map(|(_, line)| format!("{line}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The IPv4 set of every place.
    async fn sets(&self) -> Vec<std::collections::BTreeSet<String>> {
        let mut sets = Vec::new();
        for (api_region, region) in PLACES {
            let (scope, _) = scope_of(region);
            sets.push(self.moto.ip_set(api_region, scope, "fg-v4").await);
        }
        sets
    }

    /// The ledger as saved.
    async fn ledger(&self) -> floodgate_responder::ledger::LedgerState {
        let ledger = ConfiguredLedger::from_policy(&self.policy).await;
        ledger.load().await.unwrap()
    }
}

#[tokio::test]
async fn a_listed_address_is_blocked_everywhere_once_and_the_log_cycle_keeps_it_issue_33() {
    let setup = setup().await;
    let now_ms = unix_ms(time::OffsetDateTime::now_utc());
    setup.gate.set(
        "eu-west-1",
        RULE,
        &[&format!("{ATTACKER}/32"), &format!("{PARTNER}/32")],
    );

    // Before any cycle, the sets' contents are not adopted yet: nothing is
    // written.
    let waiting = setup.detector.pass(&setup.parts(None).await).await.unwrap();
    assert_eq!(waiting.mode, "waiting");
    assert!(waiting.added.is_empty() && waiting.targets.is_empty());
    assert!(setup.ledger().await.entries.is_empty());

    let quiet = setup.log("quiet.jsonl", &[]);
    setup.log_cycle(&quiet).await;
    // A block that ends right after that cycle: the pass's write ends it
    // and says so.
    let mut ledger = setup.ledger().await;
    let ended: ipnet::IpNet = "192.0.2.200/32".parse().unwrap();
    let last_run = ledger.last_run_ms.unwrap();
    ledger.entries.insert(
        ended,
        LedgerEntry {
            net: ended,
            tier: "block".to_owned(),
            first_seen_ms: last_run,
            last_seen_ms: last_run,
            blocked_at_ms: last_run - 900_000,
            expires_at_ms: last_run + 1,
            offences: 1,
            requests: 100,
            addresses: 1,
            source: "eu-west-1/aws-waf-logs-app".to_owned(),
            reason: "100 requests in 300 s (tier block)".to_owned(),
            suppressed_until_ms: None,
        },
    );
    ledger.version += 1;
    ConfiguredLedger::from_policy(&setup.policy)
        .await
        .save(&ledger)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let calls_before = setup.gate.calls();
    let report = setup.detector.pass(&setup.parts(None).await).await.unwrap();
    assert_eq!(report.mode, "enforce");
    assert_eq!(report.rules_polled, 3);
    assert_eq!(setup.gate.calls() - calls_before, 3, "one call per rule");
    assert_eq!(report.listed, 2);
    let added: Vec<&str> = report.added.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(added, [format!("{ATTACKER}/32")]);
    assert!(report.added[0].rule.contains("eu-west-1"), "{report:?}");
    assert_eq!(
        report.allow_listed,
        [format!("{PARTNER}/32")],
        "never blocked"
    );
    assert_eq!(report.expired, ["192.0.2.200/32"]);
    assert_eq!(report.targets.len(), 3);
    assert!(
        report.targets.iter().all(|t| t.failure.is_none()),
        "{report:?}"
    );
    for set in setup.sets().await {
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            [format!("{ATTACKER}/32")]
        );
    }
    let ledger = setup.ledger().await;
    let entry = &ledger.entries[&format!("{ATTACKER}/32").parse().unwrap()];
    assert_eq!(entry.source, "rate-rule");
    assert!(
        entry
            .reason
            .contains("web ACL floodgate, regional/eu-west-1"),
        "{}",
        entry.reason
    );
    let expires = entry.expires_at_ms;
    assert!(expires >= now_ms + 15 * 60_000, "the tier's block_minutes");

    // Listed again: already blocked, nothing is written.
    let again = setup.detector.pass(&setup.parts(None).await).await.unwrap();
    assert_eq!(again.already_blocked, 1);
    assert!(
        again.added.is_empty() && again.targets.is_empty(),
        "{again:?}"
    );

    // The next log cycle sees the attack in the logs: it extends the block
    // and neither adds it again nor shortens it.
    let attack = setup.log("attack.jsonl", &burst(ATTACKER, 150, now_ms));
    let cycle = setup.log_cycle(&attack).await;
    assert!(cycle.added.is_empty(), "{cycle:?}");
    assert_eq!(cycle.extended, [format!("{ATTACKER}/32")]);
    let after = setup.ledger().await;
    let entry = &after.entries[&format!("{ATTACKER}/32").parse().unwrap()];
    assert!(entry.expires_at_ms >= expires);
    assert_eq!(entry.offences, 1);
    for set in setup.sets().await {
        assert_eq!(set.len(), 1);
    }
}

#[tokio::test]
async fn a_standby_writes_nothing_issue_33() {
    let setup = setup().await;
    let quiet = setup.log("quiet.jsonl", &[]);
    setup.log_cycle(&quiet).await;
    setup
        .gate
        .set("us-east-2", RULE, &[&format!("{ATTACKER}/32")]);
    setup
        .moto
        .create_ledger_table("eu-west-1", "floodgate-ledger")
        .await;
    let lease = |holder: &str, role| ConfiguredLease {
        store: DynamoDbLease::new(setup.moto.dynamodb_client("eu-west-1"), "floodgate-ledger"),
        holder_id: holder.to_owned(),
        role,
        ttl_ms: 60_000,
        skew_ms: 1_000,
    };
    let primary = lease("primary", Role::Primary);
    let now_ms = unix_ms(time::OffsetDateTime::now_utc());
    let me = Contender {
        holder_id: "primary",
        role: Role::Primary,
        ttl_ms: primary.ttl_ms,
        skew_ms: primary.skew_ms,
    };
    let held = acquire(&primary.store, &me, now_ms).await.unwrap();
    assert!(matches!(held, Standing::Holding { .. }));

    let report = setup
        .detector
        .pass(&setup.parts(Some(lease("standby", Role::Standby))).await)
        .await
        .unwrap();
    assert_eq!(report.mode, "standby");
    assert!(report.added.is_empty(), "{report:?}");
    assert_eq!(report.lease.as_ref().unwrap().holder, "primary");
    assert!(setup.sets().await.iter().all(|s| s.is_empty()));
    let ledger = setup.ledger().await;
    assert!(ledger.entries.is_empty(), "the standby saved nothing");
}
