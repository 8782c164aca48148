//! The Cloudflare IP-list target against the fake Lists API in the test
//! crate: paging, bulk operations and their polling, the account's item
//! cap, IPv6 widening, comments, and the faults the API documents.

use std::collections::BTreeMap;
use std::time::Duration;

use floodgate_responder::failure::FailureKind;
use floodgate_responder::sink::cloudflare::CloudflareTarget;
use floodgate_responder::sink::{BlockNote, DesiredSets, Outcome, WafTarget};
use floodgate_rules::policy::{CloudflareListName, CloudflareTarget as Config};
use floodgate_tests::cloudflare::{FakeCloudflare, Fault};
use ipnet::IpNet;
use serde_json::json;

const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-token";
const LIST: &str = "floodgate_blocked";
/// 2026-12-04 18:20 UTC.
const EXPIRES_MS: i64 = 1_796_408_400_000;

fn config(fake: &FakeCloudflare) -> Config {
    Config {
        account_id: ACCOUNT.to_owned(),
        list: CloudflareListName::new(LIST).unwrap(),
        api_token_env: "CLOUDFLARE_API_TOKEN".to_owned(),
        api_url: fake.url(),
        create_missing: true,
        max_items: 10_000,
        widen_ipv6: false,
    }
}

fn target(config: Config, allowed: &[&str]) -> CloudflareTarget {
    let allowed = allowed.iter().map(|a| net(a)).collect();
    CloudflareTarget::new(config, Some(TOKEN.to_owned()), allowed)
        .with_backoff(Duration::from_millis(10))
}

/// An address (as a /32 or /128) or a range.
fn net(text: &str) -> IpNet {
    text.parse()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .unwrap()
}

/// `v4` and `v6` in one set each, every one blocked by `tier`, ranked in
/// the order given.
fn desired(v4: &[&str], v6: &[&str], tier: &str) -> DesiredSets {
    let notes: BTreeMap<IpNet, BlockNote> = v4
        .iter()
        .chain(v6)
        .enumerate()
        .map(|(rank, a)| {
            let note = BlockNote {
                tier: tier.to_owned(),
                expires_at_ms: EXPIRES_MS,
                rank,
                adopted: false,
            };
            (net(a), note)
        })
        .collect();
    DesiredSets {
        ipv4: vec![v4.iter().map(|a| net(a)).collect()],
        ipv6: vec![v6.iter().map(|a| net(a)).collect()],
        notes,
    }
}

fn writes(fake: &FakeCloudflare) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_list_fills_it_with_commented_items_and_then_writes_nothing() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let target = target(config(&fake), &[]);
    let wanted = desired(
        &["198.51.100.7", "203.0.113.0/24"],
        &["2001:db8::/64"],
        "block",
    );

    let report = target.apply(&wanted).await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 3,
            removed: 0
        }
    );
    assert!(report.left_out.is_empty());
    let items = fake.items(LIST).expect("the list was created");
    let listed: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.ip.as_str(), i.comment.as_str()))
        .collect();
    let comment = "floodgate: block until 2026-12-04 19:00 UTC";
    assert_eq!(
        listed,
        [
            ("198.51.100.7", comment),
            ("2001:db8::/64", comment),
            ("203.0.113.0/24", comment)
        ]
    );
    // The documented request shapes: Create a list, then Create list items.
    let requests = fake.requests();
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/rules/lists"));
    assert_eq!(
        create.unwrap().body,
        json!({
            "name": LIST,
            "kind": "ip",
            "description": "Blocked by Floodgate; each item's comment gives its tier and expiry",
        })
    );
    let append = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/items"));
    assert_eq!(
        append.unwrap().body,
        json!([
            { "ip": "198.51.100.7", "comment": comment },
            { "ip": "203.0.113.0/24", "comment": comment },
            { "ip": "2001:db8::/64", "comment": comment },
        ])
    );
    // The write was polled to completion.
    assert!(
        requests
            .iter()
            .any(|r| r.path.contains("/rules/lists/bulk_operations/"))
    );
    assert!(report.calls.get >= 2, "{:?}", report.calls);

    fake.clear_requests();
    let again = target.apply(&wanted).await;
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert_eq!(writes(&fake), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_page_and_deletes_only_what_ended() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    fake.set_page_size(7);
    let addresses: Vec<String> = (0..40).map(|i| format!("192.0.2.{i}")).collect();
    let all: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let target = target(config(&fake), &[]);
    target.apply(&desired(&all, &[], "block")).await;
    assert_eq!(fake.ips(LIST).len(), 40);

    fake.clear_requests();
    let report = target.apply(&desired(&all[..30], &[], "block")).await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 0,
            removed: 10
        }
    );
    let pages = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/items?"))
        .count();
    assert_eq!(pages, 6, "40 items in pages of 7");
    let deletes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body["items"].as_array().unwrap().len(), 10);
    let mut left = fake.ips(LIST);
    left.sort();
    let mut expected: Vec<String> = addresses[..30].to_vec();
    expected.sort();
    assert_eq!(left, expected);

    let read = target.read().await.unwrap();
    assert_eq!(read.nets.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_added_item_is_removed_and_a_new_tier_rewrites_the_list_in_one_replacement() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    fake.add_list(LIST, "ip", &["198.51.100.1"]);
    let target = target(config(&fake), &[]);
    let report = target
        .apply(&desired(&["198.51.100.7"], &[], "watch"))
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 1
        }
    );
    assert_eq!(fake.ips(LIST), ["198.51.100.7"]);
    assert_eq!(
        writes(&fake)
            .iter()
            .map(|w| w.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["DELETE", "POST"]
    );

    fake.clear_requests();
    target
        .apply(&desired(&["198.51.100.7"], &[], "block"))
        .await;
    let items = fake.items(LIST).unwrap();
    assert_eq!(
        items[0].comment,
        "floodgate: block until 2026-12-04 19:00 UTC"
    );
    let written: Vec<_> = writes(&fake);
    assert_eq!(written.len(), 1);
    assert!(written[0].starts_with("PUT "), "{written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_address_is_left_out_or_widened_but_never_over_an_allow_listed_one() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let wanted = desired(
        &[],
        &[
            "2001:db8:1::5/128",
            "2001:db8:1::6/128",
            "2001:db8:2::9/128",
        ],
        "block",
    );

    let strict = target(config(&fake), &[]);
    let report = strict.apply(&wanted).await;
    // The list is made (create_missing), and nothing goes into it.
    assert_eq!(report.outcome, Outcome::Created { sets: 1 });
    assert_eq!(report.left_out.len(), 3);
    assert!(
        report.left_out[0].reason.contains("widen_ipv6"),
        "{:?}",
        report.left_out
    );

    let mut widening = config(&fake);
    widening.widen_ipv6 = true;
    let partner = "2001:db8:2::1/128";
    let report = target(widening, &[partner]).apply(&wanted).await;
    assert_eq!(fake.ips(LIST), ["2001:db8:1::/64"]);
    assert_eq!(report.left_out.len(), 1);
    assert_eq!(report.left_out[0].net, net("2001:db8:2::9/128"));
    assert!(
        report.left_out[0].reason.contains(partner),
        "{:?}",
        report.left_out
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_account_cap_the_most_severe_are_kept_and_the_rest_reported() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    fake.add_list("office", "ip", &["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    let mut capped = config(&fake);
    capped.max_items = 5;
    // Ranked in this order: the first is the most severe.
    let wanted = desired(
        &["203.0.113.9", "198.51.100.1", "203.0.113.1", "198.51.100.9"],
        &[],
        "block",
    );
    let report = target(capped, &[]).apply(&wanted).await;
    let mut kept = fake.ips(LIST);
    kept.sort();
    assert_eq!(kept, ["198.51.100.1", "203.0.113.9"]);
    let left: Vec<IpNet> = report.left_out.iter().map(|l| l.net).collect();
    assert_eq!(left, [net("203.0.113.1/32"), net("198.51.100.9/32")]);
    assert!(report.left_out[0].reason.contains("3 items in other lists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_outages_are_retried_and_a_failed_operation_fails_the_target() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let target = target(config(&fake), &[]);
    fake.inject(&[Fault::RateLimited { retry_after: 1 }, Fault::Unavailable]);
    let report = target
        .apply(&desired(&["198.51.100.7"], &[], "block"))
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(fake.ips(LIST), ["198.51.100.7"]);

    fake.inject(&[Fault::FailOperation("internal error".to_owned())]);
    let report = target
        .apply(&desired(&["198.51.100.8"], &[], "block"))
        .await;
    let Outcome::Failed(reason) = &report.outcome else {
        panic!("the operation failed: {:?}", report.outcome);
    };
    assert!(reason.detail.contains("failed: internal error"), "{reason}");
    assert_eq!(reason.kind, FailureKind::Invalid);
    assert_eq!(fake.ips(LIST), ["198.51.100.7"], "nothing was applied");

    // The next run converges.
    let report = target
        .apply(&desired(&["198.51.100.8"], &[], "block"))
        .await;
    assert!(matches!(report.outcome, Outcome::Updated { .. }));
    assert_eq!(fake.ips(LIST), ["198.51.100.8"]);

    fake.inject(&[Fault::RateLimited { retry_after: 3600 }]);
    let report = target
        .apply(&desired(&["198.51.100.9"], &[], "block"))
        .await;
    let Outcome::Failed(reason) = &report.outcome else {
        panic!("an hour's wait fails this run: {:?}", report.outcome);
    };
    assert!(reason.detail.contains("rate limited (429)"), "{reason}");
    assert_eq!(
        reason.kind,
        FailureKind::Throttled {
            retry_after: Some(std::time::Duration::from_secs(3600))
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_list_token_or_permission_fails_with_the_fix() {
    let fake = FakeCloudflare::start(ACCOUNT, TOKEN);
    let mut no_create = config(&fake);
    no_create.create_missing = false;
    let report = target(no_create, &[])
        .apply(&desired(&["198.51.100.7"], &[], "block"))
        .await;
    let Outcome::Failed(reason) = &report.outcome else {
        panic!("no list: {:?}", report.outcome);
    };
    assert!(
        reason.detail.contains("no list named floodgate_blocked"),
        "{reason}"
    );
    assert!(reason.detail.contains("create_missing = true"), "{reason}");
    assert_eq!(reason.kind, FailureKind::NotFound);

    let unset = CloudflareTarget::new(config(&fake), None, Vec::new());
    let Outcome::Failed(reason) = unset.apply(&DesiredSets::default()).await.outcome else {
        panic!("no token");
    };
    assert!(
        reason.detail.contains("CLOUDFLARE_API_TOKEN is not set"),
        "{reason}"
    );
    assert_eq!(reason.kind, FailureKind::Denied);

    let wrong = CloudflareTarget::new(config(&fake), Some("wrong".to_owned()), Vec::new());
    let Outcome::Failed(reason) = wrong.apply(&DesiredSets::default()).await.outcome else {
        panic!("a wrong token");
    };
    assert!(reason.detail.contains("403"), "{reason}");
    assert!(
        reason.detail.contains("Account Filter Lists Edit"),
        "{reason}"
    );
    assert_eq!(reason.kind, FailureKind::Denied);

    fake.add_list(LIST, "hostname", &[]);
    let Outcome::Failed(reason) = target(config(&fake), &[])
        .apply(&DesiredSets::default())
        .await
        .outcome
    else {
        panic!("a hostname list");
    };
    assert!(reason.detail.contains("holds hostname items"), "{reason}");
    assert_eq!(reason.kind, FailureKind::Invalid);
}
