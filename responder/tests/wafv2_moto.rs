//! The WAFv2 target against moto: real SDK calls, real lock tokens, three
//! regions plus CloudFront, a foreign writer racing us, 10,000+ addresses,
//! and blocks expiring as an injected clock moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_wafv2::Client;
use aws_sdk_wafv2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_wafv2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_wafv2::error::BoxError;
use aws_sdk_wafv2::types::Scope;
use floodgate_responder::aws::retry_config;
use floodgate_responder::clock::{Clock, ManualClock, unix_ms};
use floodgate_responder::detect::Offender;
use floodgate_responder::ledger::LedgerState;
use floodgate_responder::plan::{Capacity, WAF_IP_SET_CAPACITY, plan};
use floodgate_responder::sink::wafv2::Wafv2Target;
use floodgate_responder::sink::{DesiredSets, Outcome, WafTarget, apply_all};
use floodgate_rules::Policy;
use floodgate_rules::policy::{Region, WafScope};
use floodgate_tests::MotoServer;
use ipnet::IpNet;
use time::macros::{date, datetime};

fn scope_of(region: &str) -> WafScope {
    if region == "cloudfront" {
        WafScope::CloudFront
    } else {
        WafScope::Regional(Region::new(region).unwrap())
    }
}

fn target(moto: &MotoServer, region: &str) -> Wafv2Target {
    let scope = scope_of(region);
    let client = moto.wafv2_client(scope.api_region());
    let client = Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(retry_config())
            .build(),
    );
    Wafv2Target::new(
        client,
        scope,
        vec!["fg-v4".into(), "fg-v4-2".into()],
        vec!["fg-v6".into()],
        true,
    )
}

/// What a set holds, read with a separate client, sorted.
async fn addresses(moto: &MotoServer, region: &str, name: &str) -> Vec<String> {
    let scope = scope_of(region);
    let sdk_scope = if matches!(scope, WafScope::CloudFront) {
        Scope::Cloudfront
    } else {
        Scope::Regional
    };
    let set = moto.ip_set(scope.api_region(), sdk_scope, name).await;
    set.into_iter().collect()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

async fn moto() -> MotoServer {
    tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_three_regions_and_cloudfront_then_writes_nothing_when_converged() {
    let moto = moto().await;
    let regions = ["us-east-1", "eu-west-1", "ap-southeast-2", "cloudfront"];
    let targets: Vec<Arc<Wafv2Target>> =
        regions.iter().map(|r| Arc::new(target(&moto, r))).collect();
    let desired = DesiredSets {
        ipv4: vec![nets(&["203.0.113.66/32", "203.0.113.128/28"]), vec![]],
        ipv6: vec![nets(&["2001:db8:bad::66/128"])],
        ..Default::default()
    };
    let reports = apply_all(targets.clone(), &desired, 4).await;
    for report in &reports {
        assert_eq!(
            report.outcome,
            Outcome::Updated {
                added: 3,
                removed: 0
            },
            "{}",
            report.target
        );
    }
    for region in regions {
        assert_eq!(
            addresses(&moto, region, "fg-v4").await,
            ["203.0.113.128/28", "203.0.113.66/32"],
            "{region}"
        );
        assert_eq!(
            addresses(&moto, region, "fg-v6").await,
            ["2001:db8:bad::66/128"],
            "{region}"
        );
        assert!(addresses(&moto, region, "fg-v4-2").await.is_empty());
    }
    // The same plan again: a get per set, no write.
    let again = apply_all(targets, &desired, 4).await;
    for report in &again {
        assert_eq!(report.outcome, Outcome::Unchanged, "{}", report.target);
        assert_eq!(
            (report.calls.get, report.calls.update, report.calls.list),
            (3, 0, 0),
            "{}",
            report.target
        );
    }
}

/// Before our first UpdateIPSet, another writer updates the same set, so
/// our lock token is stale when our update arrives.
#[derive(Debug)]
struct ForeignWriter {
    client: Client,
    fired: Arc<AtomicBool>,
}

impl Intercept for ForeignWriter {
    fn name(&self) -> &'static str {
        "ForeignWriter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let is_update = context
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with("UpdateIPSet"));
        if is_update && !self.fired.swap(true, Ordering::SeqCst) {
            let client = self.client.clone();
            // Hooks are synchronous: write from another thread and wait.
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    let list = client
                        .list_ip_sets()
                        .scope(Scope::Regional)
                        .send()
                        .await
                        .unwrap();
                    let id = list
                        .ip_sets()
                        .iter()
                        .find(|s| s.name() == Some("fg-v4"))
                        .unwrap()
                        .id()
                        .unwrap()
                        .to_owned();
                    let got = client
                        .get_ip_set()
                        .name("fg-v4")
                        .scope(Scope::Regional)
                        .id(&id)
                        .send()
                        .await
                        .unwrap();
                    client
                        .update_ip_set()
                        .name("fg-v4")
                        .scope(Scope::Regional)
                        .id(&id)
                        .lock_token(got.lock_token().unwrap())
                        .addresses("198.18.0.1/32")
                        .send()
                        .await
                        .unwrap();
                })
            })
            .join()
            .unwrap();
        }
        Ok(())
    }
}

/// With `create_missing`, a first run with nothing to block creates the
/// sets and says so, not "unchanged" (issue 35).
#[tokio::test]
async fn a_first_run_with_nothing_to_block_reports_the_sets_it_created() {
    let moto = moto().await;
    let target = target(&moto, "eu-west-1");
    let report = target.apply(&DesiredSets::default()).await;
    assert_eq!(report.outcome, Outcome::Created { sets: 3 });
    assert_eq!(
        addresses(&moto, "eu-west-1", "fg-v4-2").await,
        Vec::<String>::new()
    );
    assert_eq!(
        target.apply(&DesiredSets::default()).await.outcome,
        Outcome::Unchanged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_between_get_and_update_forces_a_lock_retry() {
    let moto = moto().await;
    // Create the sets first, without interference.
    target(&moto, "eu-west-1")
        .apply(&DesiredSets::default())
        .await;
    let fired = Arc::new(AtomicBool::new(false));
    let racing = moto.wafv2_client("eu-west-1");
    let client = Client::from_conf(
        moto.wafv2_client("eu-west-1")
            .config()
            .to_builder()
            .interceptor(ForeignWriter {
                client: racing,
                fired: fired.clone(),
            })
            .build(),
    );
    let ours = Wafv2Target::new(
        client,
        scope_of("eu-west-1"),
        vec!["fg-v4".into()],
        vec![],
        false,
    );
    let report = ours
        .apply(&DesiredSets {
            ipv4: vec![nets(&["203.0.113.66/32"])],
            ipv6: vec![],
            ..Default::default()
        })
        .await;
    assert!(fired.load(Ordering::SeqCst));
    // The first update met a stale token; the retry re-read the set (now
    // holding the foreign entry), re-diffed, and won.
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 1
        }
    );
    assert_eq!((report.calls.get, report.calls.update), (2, 2));
    assert_eq!(
        addresses(&moto, "eu-west-1", "fg-v4").await,
        ["203.0.113.66/32"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_thousand_addresses_spill_into_the_second_set() {
    let moto = moto().await;
    let policy = Policy::from_toml("", "p.toml", date!(2026 - 11 - 22))
        .unwrap()
        .policy;
    let _ = policy;
    // 10,250 scattered /32s: no two aggregate.
    let all: Vec<IpNet> = (0..10_250u32)
        .map(|i| {
            IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from_bits(
                0x0b00_0000 + i * 2,
            )))
        })
        .collect();
    let desired = DesiredSets {
        ipv4: all
            .chunks(WAF_IP_SET_CAPACITY)
            .map(<[IpNet]>::to_vec)
            .collect(),
        ipv6: vec![],
        ..Default::default()
    };
    let report = target(&moto, "eu-west-1").apply(&desired).await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 10_250,
            removed: 0
        }
    );
    assert_eq!(addresses(&moto, "eu-west-1", "fg-v4").await.len(), 10_000);
    assert_eq!(addresses(&moto, "eu-west-1", "fg-v4-2").await.len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_leave_every_set_when_the_clock_passes_their_expiry() {
    let moto = moto().await;
    let policy = Policy::from_toml(
        "[[tiers]]\nname = \"block\"\nrequests = 100\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\n",
        "p.toml",
        date!(2026 - 11 - 22),
    )
    .unwrap()
    .policy;
    let clock = ManualClock::new(datetime!(2026-11-22 10:00 UTC));
    let attacker = Offender {
        net: "203.0.113.66/32".parse().unwrap(),
        addresses: 1,
        addresses_at_least: false,
        requests: 500,
        tier: Some(policy.tiers[0].name.clone()),
        actions: Vec::new(),
        allow_entry: None,
    };
    let capacity = Capacity {
        ipv4_sets: 2,
        ipv6_sets: 1,
        per_set: WAF_IP_SET_CAPACITY,
    };
    let targets: Vec<Arc<Wafv2Target>> = ["eu-west-1", "cloudfront"]
        .iter()
        .map(|r| Arc::new(target(&moto, r)))
        .collect();

    let first = plan(
        &[attacker],
        &policy,
        &LedgerState::default(),
        unix_ms(clock.now()),
        "eu-west-1",
        capacity,
    );
    apply_all(targets.clone(), &first.desired(), 2).await;
    assert_eq!(
        addresses(&moto, "cloudfront", "fg-v4").await,
        ["203.0.113.66/32"]
    );

    // 14 minutes on, no new traffic: still blocked.
    clock.advance(time::Duration::minutes(14));
    let still = plan(
        &[],
        &policy,
        &first.ledger,
        unix_ms(clock.now()),
        "eu-west-1",
        capacity,
    );
    let reports = apply_all(targets.clone(), &still.desired(), 2).await;
    assert!(reports.iter().all(|r| r.outcome == Outcome::Unchanged));

    // Past 15 minutes: the first run after expiry removes it everywhere.
    clock.advance(time::Duration::minutes(1));
    let expired = plan(
        &[],
        &policy,
        &still.ledger,
        unix_ms(clock.now()),
        "eu-west-1",
        capacity,
    );
    assert_eq!(expired.expired, [IpNet::from(attacker_ip())]);
    let reports = apply_all(targets, &expired.desired(), 2).await;
    assert!(
        reports.iter().all(|r| r.outcome
            == Outcome::Updated {
                added: 0,
                removed: 1
            }),
        "{reports:?}"
    );
    for region in ["eu-west-1", "cloudfront"] {
        assert!(
            addresses(&moto, region, "fg-v4").await.is_empty(),
            "{region}"
        );
    }
}

fn attacker_ip() -> std::net::IpAddr {
    "203.0.113.66".parse().unwrap()
}

#[tokio::test]
async fn targets_are_built_from_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"fg-v4\", \"fg-v4-2\"]\nipv6_sets = [\"fg-v6\"]\n\n\
         [[targets]]\ntype = \"wafv2\"\nscope = \"cloudfront\"\nipv4_sets = [\"fg-v4\", \"fg-v4-2\"]\nipv6_sets = [\"fg-v6\"]\n\n\
         [[targets]]\ntype = \"file\"\ndir = \"{}\"\n",
        dir.path().display()
    );
    let policy = Policy::from_toml(&text, "p.toml", date!(2026 - 11 - 22))
        .unwrap()
        .policy;
    let aws = floodgate_responder::aws::Aws::from_policy(&policy).await;
    let targets = floodgate_responder::sink::ConfiguredTarget::from_policy(&aws, &policy);
    let labels: Vec<String> = targets.iter().map(WafTarget::label).collect();
    assert_eq!(
        labels,
        [
            "wafv2 regional/eu-west-1".to_owned(),
            "wafv2 cloudfront".to_owned(),
            format!("file {}", dir.path().display())
        ]
    );
    // The file target mirrors the WAF sets' names.
    let desired = DesiredSets {
        ipv4: vec![nets(&["203.0.113.66/32"]), vec![]],
        ipv6: vec![vec![]],
        ..Default::default()
    };
    assert_eq!(
        targets[2].apply(&desired).await.outcome,
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    for name in ["fg-v4", "fg-v4-2", "fg-v6"] {
        assert!(dir.path().join(format!("{name}.json")).exists(), "{name}");
    }
}
