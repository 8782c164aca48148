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
