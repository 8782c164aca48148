//! One responder cycle run as a library component, from parts a test
//! chooses: local WAF logs, the file ledger, and a WAFv2 target whose API
//! answers are scripted (`aws-smithy-mocks`), so every call it makes is
//! counted by the mock itself.

use std::sync::Arc;

use aws_sdk_wafv2::Client;
use aws_sdk_wafv2::operation::get_ip_set::GetIpSetOutput;
use aws_sdk_wafv2::operation::list_ip_sets::ListIpSetsOutput;
use aws_sdk_wafv2::operation::update_ip_set::UpdateIpSetOutput;
use aws_sdk_wafv2::types::{IpAddressVersion, IpSet, IpSetSummary};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use floodgate_responder::aws::retry_config;
use floodgate_responder::clock::{ManualClock, SystemClock};
use floodgate_responder::cycle::{self, Parts};
use floodgate_responder::ledger::ConfiguredLedger;
use floodgate_responder::sink::ConfiguredTarget;
use floodgate_responder::sink::wafv2::Wafv2Target;
use floodgate_responder::source::files::FileSource;
use floodgate_rules::Policy;
use floodgate_rules::policy::{Region, WafScope};
use time::macros::datetime;

fn summary(name: &str, id: &str) -> IpSetSummary {
    IpSetSummary::builder()
        .name(name)
        .id(id)
        .lock_token("t0")
        .arn("arn")
        .build()
}

fn set(name: &str, id: &str, version: IpAddressVersion, addresses: &[&str]) -> GetIpSetOutput {
    let set = IpSet::builder()
        .name(name)
        .id(id)
        .arn("arn")
        .ip_address_version(version)
        .set_addresses(Some(addresses.iter().map(|a| a.to_string()).collect()))
        .build()
        .unwrap();
    GetIpSetOutput::builder()
        .ip_set(set)
        .lock_token("t0")
        .build()
}

#[tokio::test]
async fn a_cycle_from_its_parts_reports_every_api_call_it_made_issue_18() {
    let dir = tempfile::tempdir().unwrap();
    // 30 requests from one client in the last five minutes: one block.
    let end_ms = 1_795_168_800_000_i64;
    let log = dir.path().join("waf.jsonl");
    let records: String = (0..30)
        .map(|i| {
            format!(
                "{{\"timestamp\":{},\"action\":\"ALLOW\",\"httpRequest\":{{\"clientIp\":\"203.0.113.9\"}}}}\n",
                end_ms - 1000 * (i + 1)
            )
        })
        .collect();
    std::fs::write(&log, records).unwrap();
    let text = format!(
        "[[tiers]]\nname = \"block\"\nrequests = 20\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\n\n\
         [[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\n\n\
         [responder]\nstate_dir = \"{}\"\n",
        dir.path().display()
    );
    let policy = Policy::from_toml(&text, "p.toml", time::macros::date!(2026 - 11 - 20))
        .unwrap()
        .policy;

    // The sets exist; the IPv4 one already holds an address the empty
    // ledger does not know, so the cycle reads the sets to adopt it.
    let list = mock!(Client::list_ip_sets).then_output(|| {
        ListIpSetsOutput::builder()
            .ip_sets(summary("fg-v4", "id-4"))
            .ip_sets(summary("fg-v6", "id-6"))
            .next_marker("end")
            .build()
    });
    let get = mock!(Client::get_ip_set).then_compute_output(|input| match input.id() {
        Some("id-4") => set("fg-v4", "id-4", IpAddressVersion::Ipv4, &["192.0.2.50/32"]),
        _ => set("fg-v6", "id-6", IpAddressVersion::Ipv6, &[]),
    });
    let update = mock!(Client::update_ip_set)
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t1").build());
    let client = mock_client!(
        aws_sdk_wafv2,
        RuleMode::MatchAny,
        [&list, &get, &update],
        |c| c.retry_config(retry_config())
    );
    let target = Wafv2Target::new(
        client,
        WafScope::Regional(Region::new("eu-west-1").unwrap()),
        vec!["fg-v4".into()],
        vec!["fg-v6".into()],
        false,
    );

    let parts = Parts {
        policy: &policy,
        source: FileSource::new(&[log.to_str().unwrap()]).unwrap(),
        ledger: ConfiguredLedger::from_policy(&policy).await,
        targets: vec![Arc::new(ConfiguredTarget::Wafv2(target))],
        lease: None,
        clock: Arc::new(ManualClock::new(datetime!(2026-11-20 10:00 UTC))),
        lease_clock: Arc::new(SystemClock),
        writes: Default::default(),
    };
    let report = cycle::run(parts).await.unwrap();

    assert!(report.converged(), "{report:?}");
    assert_eq!(report.adopted, ["192.0.2.50/32"]);
    assert_eq!(report.added, ["203.0.113.9/32"]);
    assert_eq!(report.targets[0].outcome, "updated +1 −0");
    // The adoption reads count as much as the writes.
    let made = list.num_calls() + get.num_calls() + update.num_calls();
    assert_eq!(report.api_calls as usize, made, "{report:?}");
    assert!(
        get.num_calls() > 2,
        "the sets were read before they were written"
    );
}

/// 30 requests from 203.0.113.9 in the five minutes before `end_ms`, in a
/// log file under `dir`, and a policy that blocks it on `targets` (TOML).
fn one_offender(dir: &std::path::Path, end_ms: i64, targets: &str) -> (Policy, String) {
    let log = dir.join("waf.jsonl");
    let records: String = (0..30)
        .map(|i| {
            format!(
                "{{\"timestamp\":{},\"action\":\"ALLOW\",\"httpRequest\":{{\"clientIp\":\"203.0.113.9\"}}}}\n",
                end_ms - 1000 * (i + 1)
            )
        })
        .collect();
    std::fs::write(&log, records).unwrap();
    let text = format!(
        "[[tiers]]\nname = \"block\"\nrequests = 20\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 60\n\n\
         {targets}\n[responder]\nstate_dir = \"{}\"\n",
        dir.display()
    );
    let policy = Policy::from_toml(&text, "p.toml", time::macros::date!(2026 - 11 - 20))
        .unwrap()
        .policy;
    (policy, log.to_str().unwrap().to_owned())
}

const TWO_REGIONS: &str = "[[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\n\n\
    [[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"us-east-1\"\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\n";

/// A region's WAFv2 API: its IPv4 set holds `v4`; every GetIPSet fails with
/// `error` (a code) while it is `Some`. Returns the target and its
/// UpdateIPSet rule, to count writes.
fn region(
    name: &'static str,
    v4: &'static [&'static str],
    error: Option<&'static str>,
) -> (ConfiguredTarget, aws_smithy_mocks::Rule) {
    let list = mock!(Client::list_ip_sets).then_output(|| {
        ListIpSetsOutput::builder()
            .ip_sets(summary("fg-v4", "id-4"))
            .ip_sets(summary("fg-v6", "id-6"))
            .next_marker("end")
            .build()
    });
    let get = match error {
        Some(code) => mock!(Client::get_ip_set).then_error(move || {
            aws_sdk_wafv2::operation::get_ip_set::GetIPSetError::generic(
                aws_sdk_wafv2::error::ErrorMetadata::builder()
                    .code(code)
                    .message("refused by the test")
                    .build(),
            )
        }),
        None => mock!(Client::get_ip_set).then_compute_output(move |input| match input.id() {
            Some("id-4") => set("fg-v4", "id-4", IpAddressVersion::Ipv4, v4),
            _ => set("fg-v6", "id-6", IpAddressVersion::Ipv6, &[]),
        }),
    };
    let update = mock!(Client::update_ip_set)
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t1").build());
    let client = mock_client!(
        aws_sdk_wafv2,
        RuleMode::MatchAny,
        [&list, &get, &update],
        |c| c.retry_config(retry_config())
    );
    let scope = WafScope::Regional(Region::new(name).unwrap());
    let target = Wafv2Target::new(
        client,
        scope,
        vec!["fg-v4".into()],
        vec!["fg-v6".into()],
        false,
    );
    (ConfiguredTarget::Wafv2(target), update)
}

async fn run_cycle(
    policy: &Policy,
    log: &str,
    targets: Vec<ConfiguredTarget>,
    at: time::OffsetDateTime,
) -> cycle::CycleReport {
    let parts = Parts {
        policy,
        source: FileSource::new(&[log]).unwrap(),
        ledger: ConfiguredLedger::from_policy(policy).await,
        targets: targets.into_iter().map(Arc::new).collect(),
        lease: None,
        clock: Arc::new(ManualClock::new(at)),
        lease_clock: Arc::new(SystemClock),
        writes: Default::default(),
    };
    cycle::run(parts).await.unwrap()
}

/// The first run after a lost ledger, with one region whose sets cannot be
/// read (throttled past every retry, or access denied): that region fails
/// alone and is written nothing; the other is adopted from and written;
/// the ledger is saved. When the region answers again, the next cycle
/// adopts what it holds (a block only it had) and converges it.
#[tokio::test(start_paused = true)]
async fn a_region_that_cannot_be_read_on_a_first_run_fails_alone_then_is_adopted() {
    use floodgate_responder::ledger::Ledger;
    for (code, kind) in [
        ("ThrottlingException", "throttled"),
        ("AccessDeniedException", "denied"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let end_ms = 1_795_168_800_000_i64;
        let (policy, log) = one_offender(dir.path(), end_ms, TWO_REGIONS);
        let (europe, europe_writes) = region("eu-west-1", &["192.0.2.50/32"], None);
        let (america, america_writes) = region("us-east-1", &[], Some(code));
        let first = run_cycle(
            &policy,
            &log,
            vec![europe, america],
            datetime!(2026-11-20 10:00 UTC),
        )
        .await;

        assert!(!first.converged(), "{code}: {first:?}");
        assert_eq!(first.adopted, ["192.0.2.50/32"], "{code}");
        assert_eq!(first.added, ["203.0.113.9/32"], "{code}");
        assert_eq!(first.targets[0].target, "wafv2 regional/eu-west-1");
        assert_eq!(first.targets[0].outcome, "updated +1 −0", "{code}");
        assert!(europe_writes.num_calls() > 0);
        assert_eq!(first.targets[1].target, "wafv2 regional/us-east-1");
        assert_eq!(first.targets[1].failure, Some(kind), "{code}");
        assert!(
            first.targets[1]
                .outcome
                .starts_with("failed: GetIPSet fg-v4")
                && first.targets[1].outcome.contains(code),
            "{code}: {}",
            first.targets[1].outcome
        );
        assert_eq!(
            america_writes.num_calls(),
            0,
            "{code}: nothing written to it"
        );
        let saved = ConfiguredLedger::from_policy(&policy)
            .await
            .load()
            .await
            .unwrap();
        assert!(
            saved
                .entries
                .contains_key(&"203.0.113.9/32".parse().unwrap())
        );
        assert_eq!(
            saved.unadopted.iter().collect::<Vec<_>>(),
            ["wafv2 regional/us-east-1"]
        );

        // The region answers again, holding a block only it had.
        let (europe, _) = region("eu-west-1", &["192.0.2.50/32"], None);
        let (america, america_writes) = region("us-east-1", &["198.51.100.7/32"], None);
        let second = run_cycle(
            &policy,
            &log,
            vec![europe, america],
            datetime!(2026-11-20 10:01 UTC),
        )
        .await;
        assert!(second.converged(), "{code}: {second:?}");
        assert_eq!(second.adopted, ["198.51.100.7/32"], "{code}");
        assert_eq!(
            second.targets[1].outcome, "updated +2 −0",
            "{code}: nothing of its own removed"
        );
        assert!(america_writes.num_calls() > 0);
        let saved = ConfiguredLedger::from_policy(&policy)
            .await
            .load()
            .await
            .unwrap();
        assert!(saved.unadopted.is_empty());
        assert_eq!(saved.entries.len(), 3, "{code}: {:?}", saved.entries.keys());
    }
}

/// The same for a Cloudflare list, answering 503 past every retry or 403
/// (a token without the permission), beside a WAFv2 region that works.
#[tokio::test]
async fn a_cloudflare_list_that_cannot_be_read_on_a_first_run_fails_alone_then_is_adopted() {
    use floodgate_responder::ledger::Ledger;
    use floodgate_responder::sink::cloudflare::{CloudflareTarget, MAX_ATTEMPTS};
    use floodgate_tests::cloudflare::{FakeCloudflare, Fault};
    const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "test-token";
    for (fault, kind) in [("503", "unavailable"), ("403", "denied")] {
        let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
        fake.add_list("floodgate_blocked", "ip", &["198.51.100.7"]);
        let targets = format!(
            "[[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"fg-v4\"]\nipv6_sets = [\"fg-v6\"]\n\n\
             [[targets]]\ntype = \"cloudflare\"\naccount_id = \"{ACCOUNT}\"\nlist = \"floodgate_blocked\"\napi_token_env = \"CLOUDFLARE_API_TOKEN\"\napi_url = \"{}\"\n",
            fake.url()
        );
        let dir = tempfile::tempdir().unwrap();
        let (policy, log) = one_offender(dir.path(), 1_795_168_800_000, &targets);
        let config = match &policy.targets[1] {
            floodgate_rules::policy::Target::Cloudflare(config) => config.clone(),
            other => panic!("{other:?}"),
        };
        let cloudflare = |token: &str| {
            let target = CloudflareTarget::new(config.clone(), Some(token.to_owned()), Vec::new())
                .with_backoff(std::time::Duration::from_millis(5));
            ConfiguredTarget::Cloudflare(Box::new(target))
        };
        let token = match fault {
            "503" => {
                fake.inject(&vec![Fault::Unavailable; MAX_ATTEMPTS as usize]);
                TOKEN
            }
            _ => "a token without Account Filter Lists Edit",
        };
        let (europe, europe_writes) = region("eu-west-1", &[], None);
        let first = run_cycle(
            &policy,
            &log,
            vec![europe, cloudflare(token)],
            datetime!(2026-11-20 10:00 UTC),
        )
        .await;
        assert!(!first.converged(), "{fault}: {first:?}");
        assert_eq!(first.targets[0].outcome, "updated +1 −0", "{fault}");
        assert!(europe_writes.num_calls() > 0);
        assert_eq!(first.targets[1].failure, Some(kind), "{fault}: {first:?}");
        assert!(
            first.targets[1].outcome.contains(fault),
            "{fault}: {}",
            first.targets[1].outcome
        );
        assert_eq!(
            fake.ips("floodgate_blocked"),
            ["198.51.100.7"],
            "{fault}: untouched"
        );
        let saved = ConfiguredLedger::from_policy(&policy)
            .await
            .load()
            .await
            .unwrap();
        assert_eq!(saved.unadopted.len(), 1, "{fault}");

        let (europe, _) = region("eu-west-1", &["203.0.113.9/32"], None);
        let second = run_cycle(
            &policy,
            &log,
            vec![europe, cloudflare(TOKEN)],
            datetime!(2026-11-20 10:01 UTC),
        )
        .await;
        assert!(second.converged(), "{fault}: {second:?}");
        assert_eq!(second.adopted, ["198.51.100.7/32"], "{fault}");
        let mut held = fake.ips("floodgate_blocked");
        held.sort();
        assert_eq!(held, ["198.51.100.7", "203.0.113.9"], "{fault}");
    }
}

/// A count Logs Insights' row limit left cut, with the query budget spent
/// before splitting repaired it: what was found is still blocked, the
/// report and the plan list the parts still cut (region, window,
/// addresses), and the cycle is not complete (`run` exits 2).
#[tokio::test(start_paused = true)]
async fn a_count_left_cut_by_the_row_limit_makes_the_cycle_incomplete() {
    use aws_sdk_cloudwatchlogs::Client as Logs;
    use aws_sdk_cloudwatchlogs::operation::get_query_results::GetQueryResultsOutput;
    use aws_sdk_cloudwatchlogs::operation::start_query::StartQueryOutput;
    use aws_sdk_cloudwatchlogs::types::{QueryStatus, ResultField};
    use floodgate_responder::aws::RegionLogs;
    use floodgate_responder::source::cloudwatch_insights::{CloudWatchInsightsSource, Polling};
    // Two rows a query, every time: a row limit of 2 cuts every result.
    // IPv6 queries get IPv6 rows; the rest, IPv4 rows.
    let start = mock!(Logs::start_query).then_compute_output(|input| {
        let text = input.query_string().unwrap_or_default();
        let id = if text.contains("IpV6") || text.contains("Ipv6") {
            "v6"
        } else {
            "v4"
        };
        StartQueryOutput::builder().query_id(id).build()
    });
    let poll = mock!(Logs::get_query_results).then_compute_output(|input| {
        let rows: &[(&str, u32)] = match input.query_id() {
            Some("v6") => &[("2001:db8::1", 40), ("2001:db8:1::1", 40)],
            _ => &[("203.0.113.9", 30), ("198.51.100.1", 25)],
        };
        let field =
            |name: &str, value: String| ResultField::builder().field(name).value(value).build();
        let rows = rows
            .iter()
            .map(|(ip, n)| {
                vec![
                    field("httpRequest.clientIp", (*ip).to_owned()),
                    field("requests", n.to_string()),
                ]
            })
            .collect();
        GetQueryResultsOutput::builder()
            .status(QueryStatus::Complete)
            .set_results(Some(rows))
            .build()
    });
    let logs = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, [&start, &poll]);
    let source = || {
        let regions = vec![RegionLogs {
            place: "eu-west-1".into(),
            client: logs.clone(),
            log_groups: vec!["aws-waf-logs-app".into()],
        }];
        CloudWatchInsightsSource::new(regions, 4, Polling::default())
            .with_max_rows(2)
            .with_max_queries(3)
    };
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = one_offender(dir.path(), 1_795_168_800_000, TWO_REGIONS);
    let parts = |target: ConfiguredTarget, ledger| Parts {
        policy: &policy,
        source: source(),
        ledger,
        targets: vec![Arc::new(target)],
        lease: None,
        clock: Arc::new(ManualClock::new(datetime!(2026-11-20 10:00 UTC))),
        lease_clock: Arc::new(SystemClock),
        writes: Default::default(),
    };
    let (europe, _) = region("eu-west-1", &[], None);
    let ledger = ConfiguredLedger::from_policy(&policy).await;
    let prepared = cycle::prepare(&parts(europe, ledger)).await.unwrap();
    let planned: Vec<&str> = prepared
        .stats
        .incomplete
        .iter()
        .map(|c| c.addresses.as_str())
        .collect();
    assert_eq!(
        planned,
        ["0.0.0.0/0", "::/0"],
        "the plan lists the cut parts"
    );

    let (europe, writes) = region("eu-west-1", &[], None);
    let ledger = ConfiguredLedger::from_policy(&policy).await;
    let report = cycle::run(parts(europe, ledger)).await.unwrap();
    assert!(report.converged(), "{report:?}");
    assert!(!report.complete(), "{report:?}");
    assert!(writes.num_calls() > 0);
    assert!(
        report.added.contains(&"203.0.113.9/32".to_owned()),
        "{:?}",
        report.added
    );
    let json = serde_json::to_value(&report).unwrap();
    let cut = &json["incomplete"][0];
    assert_eq!(cut["region"], "eu-west-1");
    assert_eq!(cut["window_seconds"], 300);
    assert_eq!(cut["addresses"], "0.0.0.0/0");
    assert_eq!(cut["lowest"], 25);
}
