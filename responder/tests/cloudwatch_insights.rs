//! The Logs Insights source against scripted CloudWatch responses
//! (`aws-smithy-mocks`): the emulator cannot aggregate, and cannot produce
//! throttling, failed or timed-out queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::operation::get_query_results::GetQueryResultsOutput;
use aws_sdk_cloudwatchlogs::operation::start_query::StartQueryOutput;
use aws_sdk_cloudwatchlogs::operation::stop_query::StopQueryOutput;
use aws_sdk_cloudwatchlogs::types::{QueryStatistics, QueryStatus, ResultField};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use floodgate_responder::aws::{RegionLogs, retry_config};
use floodgate_responder::source::LogSource;
use floodgate_responder::source::cloudwatch_insights::{
    CloudWatchInsightsSource, DEFAULT_MAX_QUERIES, Floors, Frame, Head, MAX_CANDIDATE_QUERIES,
    MAX_ROWS, Polling, estimated_cost_usd, head_query_text, query_text,
};
use floodgate_responder::traffic::CountSpec;
use floodgate_rules::policy::Prefixes;
use ipnet::IpNet;
use proptest::prelude::*;

#[test]
fn the_query_text_is_stable() {
    assert_eq!(
        query_text(Floors::both(2000), &frame(), &[]),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| stats count(*) as requests by httpRequest.clientIp\n| filter requests >= 2000\n| sort requests desc\n| limit 100000"
    );
}

#[test]
fn a_family_counted_by_prefix_keeps_every_address() {
    let floors = Floors { ipv4: 400, ipv6: 1 };
    assert_eq!(
        query_text(floors, &frame(), &[]),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| stats count(*) as requests by httpRequest.clientIp\n| filter (isValidIpV4(httpRequest.clientIp) and requests >= 400) or (isValidIpV6(httpRequest.clientIp) and requests >= 1)\n| sort requests desc\n| limit 100000"
    );
}

#[test]
fn the_prefix_pass_groups_by_the_head_of_the_address() {
    let head = Head::covering(true, 64).unwrap();
    assert_eq!(
        head,
        Head {
            ipv6: true,
            groups: 4
        }
    );
    assert_eq!(
        head_query_text(head, &frame(), false),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| filter isValidIpV6(httpRequest.clientIp)\n| parse httpRequest.clientIp /^(?<head>[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}):/\n| filter ispresent(head)\n| stats count(*) as requests, count_distinct(httpRequest.clientIp) as addresses by head\n| sort requests desc\n| limit 100000"
    );
    assert_eq!(
        head_query_text(head, &frame(), true),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| filter isValidIpV6(httpRequest.clientIp)\n| parse httpRequest.clientIp /^(?<head>[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}):/\n| filter not ispresent(head)\n| stats count(*) as requests by httpRequest.clientIp\n| sort requests desc\n| limit 100000"
    );
    let v4 = Head::covering(false, 20).unwrap();
    assert_eq!(
        head_query_text(v4, &frame(), false),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| filter isValidIpV4(httpRequest.clientIp)\n| parse httpRequest.clientIp /^(?<head>[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3})\\./\n| filter ispresent(head)\n| stats count(*) as requests, count_distinct(httpRequest.clientIp) as addresses by head\n| sort requests desc\n| limit 100000"
    );
    // A key of the whole address needs no head.
    assert_eq!(Head::covering(false, 32), None);
    assert_eq!(Head::covering(true, 128), None);
    assert_eq!(Head::covering(true, 113), None);
}

#[test]
fn a_head_names_its_prefix() {
    let v6 = Head::covering(true, 56).unwrap();
    assert_eq!(
        v6.net("2001:DB8:0a:ff00"),
        Some("2001:db8:a:ff00::/64".parse().unwrap())
    );
    assert_eq!(v6.net("2001:db8:a"), None, "too few groups");
    assert_eq!(v6.net("2001:db8:a:+f"), None);
    assert_eq!(v6.net("2001:db8:a:12345"), None);
    let v4 = Head::covering(false, 24).unwrap();
    assert_eq!(v4.net("203.0.113"), Some("203.0.113.0/24".parse().unwrap()));
    assert_eq!(v4.net("203.0.256"), None);
    assert_eq!(v4.net("203.0"), None);
}

/// A rotation over 12,000 addresses of one /64, under a wall of 2,000
/// single-request IPv6 clients: the first pass is cut at 10,000 rows, and
/// the prefix pass counts the /64 in full.
#[test]
fn a_rotation_past_the_row_limit_is_counted_in_full() {
    let mut events: Vec<Event> = (0..12_000u32)
        .map(|i| at(format!("2001:db8:6:4:{:x}:{:x}::1", i >> 8, i & 0xff), 30))
        .collect();
    events.extend((0..2_000u32).map(|i| at(format!("2001:db8:{i:x}::9"), 30)));
    let limits = Limits {
        rows: 10_000,
        ..DEFAULT_LIMITS
    };
    let traffic = count_by_insights(&[events], Prefixes::default(), 2000, 2000, limits);
    let net: IpNet = "2001:db8:6:4::/64".parse().unwrap();
    let counts = traffic.get(0, net).expect("the rotating /64");
    assert_eq!(counts.requests(300), Some(12_000));
    assert_eq!(counts.addresses(), 12_000);
    assert!(counts.addresses_at_least(), "count_distinct, not a union");
    let other: IpNet = "2001:db8:7::/64".parse().unwrap();
    assert_eq!(traffic.get(0, other).unwrap().requests(300), Some(1));
    let stats = traffic.stats();
    assert!(
        stats.incomplete.is_empty(),
        "the prefix pass repaired the cut"
    );
    // Per window: the heads, and the addresses written with `::` inside them.
    assert_eq!(stats.second_pass.queries, 4);
}

#[test]
fn a_scoped_tier_gets_its_match_as_a_filter() {
    use floodgate_rules::policy::{PathMatch, RequestMatch};
    let login = RequestMatch {
        path: Some(PathMatch::Exact("/login".into())),
        method: Some("POST".into()),
        ..Default::default()
    };
    assert_eq!(
        query_text(
            Floors::both(120),
            &Frame {
                scope: Some(&login),
                ..frame()
            },
            &[]
        ),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| filter httpRequest.uri = \"/login\" and httpRequest.httpMethod = \"POST\"\n| stats count(*) as requests by httpRequest.clientIp\n| filter requests >= 120\n| sort requests desc\n| limit 100000"
    );
    let every_field = RequestMatch {
        path: Some(PathMatch::Prefix("/api/v1.2/".into())),
        host: Some("api.example.com".into()),
        method: None,
        country: Some("NL".into()),
        label: Some("awswaf:managed:aws:bot-control:bot:verified".into()),
        action: Some("BLOCK".into()),
    };
    assert_eq!(
        floodgate_responder::source::cloudwatch_insights::scope_filter(&every_field),
        r#"httpRequest.uri like /^\/api\/v1\.2\// and httpRequest.country = "NL" and action = "BLOCK" and @message like /(?i)"name":"host","value":"api\.example\.com"/ and @message like /"labels":\[[^\]]*"name":"awswaf\:managed\:aws\:bot\-control\:bot\:verified"/"#
    );
}

/// The rows of a scoped query go to the scoped tier's keys only, and the
/// rows of the unscoped query to the others.
#[tokio::test(start_paused = true)]
async fn scoped_rows_count_for_the_scoped_tier_only() {
    use floodgate_rules::policy::{Aggregation, PathMatch, RequestMatch};
    let login = RequestMatch {
        path: Some(PathMatch::Exact("/login".into())),
        ..Default::default()
    };
    let scoped_query = query_text(
        Floors::both(600),
        &Frame {
            scope: Some(&login),
            ..frame()
        },
        &[],
    );
    let start = mock!(Client::start_query).then_compute_output(move |input| {
        let id = if input.query_string() == Some(scoped_query.as_str()) {
            "login"
        } else {
            "all"
        };
        StartQueryOutput::builder().query_id(id).build()
    });
    let poll = mock!(Client::get_query_results).then_compute_output(|input| {
        let rows = match input.query_id() {
            Some("login") => vec![row("192.0.2.44", 1500)],
            _ => vec![row("192.0.2.44", 1600), row("203.0.113.66", 6000)],
        };
        results(QueryStatus::Complete, rows)
    });
    let all = Aggregation::from(Prefixes::PER_ADDRESS);
    let scoped = Aggregation {
        prefixes: Prefixes::PER_ADDRESS,
        scope: Some(login),
    };
    let spec = CountSpec::new(1_700_000_300_000, &[300])
        .unwrap()
        .with_keys(&[all.clone(), scoped.clone()])
        .with_floor(&all, 300, 2000)
        .with_floor(&scoped, 300, 600);
    let traffic = source(&[&start, &poll], fast_polling())
        .count(&spec)
        .await
        .unwrap();
    assert_eq!(start.num_calls(), 2, "one query per slice");
    let attacker = host("192.0.2.44");
    assert_eq!(traffic.get(0, attacker).unwrap().requests(300), Some(1600));
    assert_eq!(traffic.get(1, attacker).unwrap().requests(300), Some(1500));
    assert!(traffic.get(1, host("203.0.113.66")).is_none());
}

/// The 300 s window ending at END_SECONDS, every request and address.
fn frame() -> Frame<'static> {
    Frame::window(END_MS - 300_000, END_MS)
}

/// An address as its own key.
fn host(ip: &str) -> IpNet {
    ip.parse::<std::net::IpAddr>().unwrap().into()
}

#[test]
fn cost_is_half_a_cent_per_gigabyte() {
    assert!((estimated_cost_usd(2_000_000_000) - 0.01).abs() < 1e-12);
}

fn row(ip: &str, requests: u32) -> Vec<ResultField> {
    vec![
        ResultField::builder()
            .field("httpRequest.clientIp")
            .value(ip)
            .build(),
        ResultField::builder()
            .field("requests")
            .value(requests.to_string())
            .build(),
    ]
}

fn results(status: QueryStatus, rows: Vec<Vec<ResultField>>) -> GetQueryResultsOutput {
    scanned(status, rows, 3.5e9, 1e6)
}

fn scanned(
    status: QueryStatus,
    rows: Vec<Vec<ResultField>>,
    bytes: f64,
    matched: f64,
) -> GetQueryResultsOutput {
    GetQueryResultsOutput::builder()
        .status(status)
        .set_results(Some(rows))
        .statistics(
            QueryStatistics::builder()
                .bytes_scanned(bytes)
                .records_matched(matched)
                .records_scanned(2e6)
                .build(),
        )
        .build()
}

fn start_ok() -> Rule {
    mock!(Client::start_query)
        .match_requests(|r| {
            r.query_string() == Some(query_text(Floors::both(2000), &frame(), &[]).as_str())
                && r.end_time().zip(r.start_time()).map(|(e, s)| e - s) == Some(300)
        })
        .then_output(|| StartQueryOutput::builder().query_id("q-1").build())
}

fn source(rules: &[&Rule], polling: Polling) -> CloudWatchInsightsSource {
    let client = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, rules, |c| c
        .retry_config(retry_config()));
    let regions = vec![RegionLogs {
        place: "eu-west-1".into(),
        client,
        log_groups: vec!["aws-waf-logs-app".into()],
    }];
    CloudWatchInsightsSource::new(regions, 30, polling)
}

fn spec() -> CountSpec {
    // One 300 s window whose lowest tier threshold is 2000, per address.
    CountSpec::new(1_700_000_300_000, &[300])
        .unwrap()
        .with_keys(&[Prefixes::PER_ADDRESS.into()])
        .with_floor(&Prefixes::PER_ADDRESS.into(), 300, 2000)
}

fn fast_polling() -> Polling {
    Polling {
        first_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
    }
}

#[tokio::test(start_paused = true)]
async fn polls_until_complete_and_reads_the_counts() {
    let start = start_ok();
    let poll = mock!(Client::get_query_results)
        .sequence()
        .output(|| results(QueryStatus::Scheduled, vec![]))
        .output(|| results(QueryStatus::Running, vec![]))
        .times(2)
        .output(|| {
            results(
                QueryStatus::Complete,
                vec![
                    row("203.0.113.66", 6000),
                    row("2001:db8:bad::66", 3000),
                    row("not-an-ip", 5),
                ],
            )
        })
        .build();
    let traffic = source(&[&start, &poll], fast_polling())
        .count(&spec())
        .await
        .unwrap();
    assert_eq!(poll.num_calls(), 4);
    assert_eq!(start.num_calls(), 1);
    assert_eq!(
        traffic.get(0, host("203.0.113.66")).unwrap().requests(300),
        Some(6000)
    );
    assert_eq!(
        traffic
            .get(0, host("2001:db8:bad::66"))
            .unwrap()
            .requests(300),
        Some(3000)
    );
    let stats = traffic.stats();
    assert_eq!(
        (
            stats.records,
            stats.malformed,
            stats.bytes,
            stats.incomplete.len()
        ),
        (2, 1, 3_500_000_000, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn failed_and_timed_out_queries_are_errors() {
    for (status, word) in [
        (QueryStatus::Failed, "Failed"),
        (QueryStatus::Timeout, "Timeout"),
        (QueryStatus::Cancelled, "Cancelled"),
    ] {
        let start = start_ok();
        let poll =
            mock!(Client::get_query_results).then_output(move || results(status.clone(), vec![]));
        let err = source(&[&start, &poll], fast_polling())
            .count(&spec())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eu-west-1") && err.contains("aws-waf-logs-app") && err.contains(word),
            "{err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried() {
    let start = mock!(Client::start_query)
        .sequence()
        .http_status(
            400,
            Some(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into()),
        )
        .times(2)
        .output(|| StartQueryOutput::builder().query_id("q-1").build())
        .build();
    let poll = mock!(Client::get_query_results)
        .sequence()
        .http_status(
            400,
            Some(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into()),
        )
        .output(|| results(QueryStatus::Complete, vec![row("192.0.2.1", 2500)]))
        .build();
    let traffic = source(&[&start, &poll], fast_polling())
        .count(&spec())
        .await
        .unwrap();
    assert_eq!(start.num_calls(), 3);
    assert_eq!(poll.num_calls(), 2);
    assert_eq!(
        traffic.get(0, host("192.0.2.1")).unwrap().requests(300),
        Some(2500)
    );
}

#[tokio::test(start_paused = true)]
async fn a_query_past_its_deadline_is_stopped() {
    let start = start_ok();
    let poll =
        mock!(Client::get_query_results).then_output(|| results(QueryStatus::Running, vec![]));
    let stop = mock!(Client::stop_query)
        .match_requests(|r| r.query_id() == Some("q-1"))
        .then_output(|| StopQueryOutput::builder().success(true).build());
    let polling = Polling {
        deadline: Duration::from_secs(20),
        ..fast_polling()
    };
    let err = source(&[&start, &poll, &stop], polling)
        .count(&spec())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("still running"), "{err}");
    // StopQuery is sent from a spawned task: let it run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stop.num_calls(), 1);
    assert!(poll.num_calls() >= 5, "polled {} times", poll.num_calls());
}

/// A result the row limit cuts every time, however narrow the query: the
/// count splits it until the query budget is spent, then reports the parts
/// still cut, and keeps every row it read.
#[tokio::test(start_paused = true)]
async fn splitting_stops_at_the_query_budget_and_says_what_stayed_cut() {
    const ROWS: u32 = 50;
    let start = mock!(Client::start_query)
        .then_output(|| StartQueryOutput::builder().query_id("q-1").build());
    let poll = mock!(Client::get_query_results).then_output(|| {
        let rows = (0..ROWS)
            .map(|i| {
                row(
                    &std::net::Ipv4Addr::from_bits(0x0b00_0000 + i).to_string(),
                    12_000 - i,
                )
            })
            .collect();
        results(QueryStatus::Complete, rows)
    });
    let traffic = source(&[&start, &poll], fast_polling())
        .with_max_rows(ROWS as usize)
        .with_max_queries(7)
        .count(&spec())
        .await
        .unwrap();
    // The first query over all addresses; its halves, IPv4 and IPv6; then
    // the halves of each: 7, and the budget is spent.
    assert_eq!(start.num_calls(), 7);
    let stats = traffic.stats();
    assert_eq!(stats.split_queries, 6);
    assert_eq!(stats.incomplete.len(), 4, "{:?}", stats.incomplete);
    let cut = &stats.incomplete[0];
    assert_eq!(
        (cut.region.as_str(), cut.window_seconds, cut.lowest),
        ("eu-west-1", 300, 12_000 - ROWS + 1)
    );
    let mut parts: Vec<&str> = stats
        .incomplete
        .iter()
        .map(|c| c.addresses.as_str())
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        ["0.0.0.0/1", "128.0.0.0/1", "8000::/1", "::/1"],
        "each family split once more"
    );
    assert_eq!(traffic.distinct_keys(), ROWS as usize);
}

/// More clients over a tier's floor than a query may return, all in one
/// region: the cut result is split by address until no part is cut, and
/// every client is counted in full.
#[test]
fn more_clients_than_rows_are_counted_in_full() {
    let events: Vec<Event> = (0..25_000u32)
        .flat_map(|i| {
            let ip = std::net::Ipv4Addr::from_bits(0x0a00_0000 + i * 613).to_string();
            burst(&[&ip], 3, 30)
        })
        .collect();
    let limits = Limits {
        rows: 10_000,
        ..DEFAULT_LIMITS
    };
    let traffic = count_by_insights(&[events], Prefixes::PER_ADDRESS, 3, 3, limits);
    let stats = traffic.stats();
    assert!(stats.incomplete.is_empty(), "{:?}", stats.incomplete);
    assert!(stats.split_queries > 0);
    assert_eq!(traffic.distinct_keys(), 25_000);
    for i in [0u32, 9_999, 24_999] {
        let ip = std::net::Ipv4Addr::from_bits(0x0a00_0000 + i * 613).to_string();
        assert_eq!(traffic.get(0, host(&ip)).unwrap().requests(300), Some(3));
    }
}

/// The issue's case: tens of thousands of IPv6 /64s of one request each
/// (a scan), and a few /64s just over the floor. The first pass and the
/// prefix pass are both cut at the row limit; the prefix pass is split
/// until its parts are whole, so the few are counted in full.
#[test]
fn a_scan_over_more_64s_than_rows_is_counted_in_full() {
    let mut events: Vec<Event> = (0..30_000u32)
        .map(|i| at(format!("2001:db8:{:x}:{:x}::1", i >> 8, i & 0xff), 30))
        .collect();
    for i in 0..5u32 {
        for host in 1..=3u32 {
            events.push(at(format!("2001:db8:ffff:{i:x}::{host:x}"), 20));
        }
    }
    let limits = Limits {
        rows: 10_000,
        ..DEFAULT_LIMITS
    };
    let traffic = count_by_insights(&[events], Prefixes::default(), 3, 3, limits);
    let stats = traffic.stats();
    assert!(stats.incomplete.is_empty(), "{:?}", stats.incomplete);
    for i in 0..5u32 {
        let net: IpNet = format!("2001:db8:ffff:{i:x}::/64").parse().unwrap();
        let counts = traffic.get(0, net).expect("a /64 at the floor");
        assert_eq!(counts.requests(60), Some(3));
        assert_eq!(counts.requests(300), Some(3));
    }
    assert_eq!(traffic.distinct_keys(), 30_005);
}

#[test]
fn the_second_pass_query_names_its_addresses() {
    assert_eq!(
        query_text(
            Floors::both(1),
            &frame(),
            &["203.0.113.9".to_owned(), "2001:db8::1".to_owned()]
        ),
        "filter timestamp > 1700000000000 and timestamp <= 1700000300000\n| filter httpRequest.clientIp in [\"203.0.113.9\", \"2001:db8::1\"]\n| stats count(*) as requests by httpRequest.clientIp\n| filter requests >= 1\n| sort requests desc\n| limit 100000"
    );
}

/// The end of the counted windows, as in `spec()`.
const END_SECONDS: i64 = 1_700_000_300;
const END_MS: i64 = END_SECONDS * 1000;

/// One request: the client IP as the logs write it, and its `timestamp`
/// (ms; the log event's time too).
type Event = (String, i64);

/// A request `age` seconds before the end.
fn at(ip: String, age: i64) -> Event {
    (ip, END_MS - age * 1000)
}

/// Runs a Logs Insights query over `events` as Insights would, from its
/// text alone, returning at most `max_rows` rows (StartQuery's `limit`).
/// Before `stats`: `filter timestamp > A and timestamp <= B` (required),
/// `filter httpRequest.clientIp in [...]`,
/// `filter isValidIpV4(httpRequest.clientIp)` (or `V6`), `filter
/// isIpv4InSubnet(httpRequest.clientIp, "net")` (or `isIpv6InSubnet`; the
/// IP address string functions of the Logs Insights query syntax), `parse
/// httpRequest.clientIp /regex/` with a group `head`, and `filter
/// [not] ispresent(head)`. Then `stats count(*) as requests by
/// httpRequest.clientIp`, or `stats count(*) as requests,
/// count_distinct(httpRequest.clientIp) as addresses by head`; `filter
/// requests >= N` (or one floor per family, as `filter
/// (isValidIpV4(httpRequest.clientIp) and requests >= N) or
/// (isValidIpV6(httpRequest.clientIp) and requests >= M)`), `sort requests
/// desc`, `limit N`. The time range is inclusive at both ends (StartQuery's
/// documentation). Any other stage fails the test. Returns the rows and
/// the events the stages before `stats` kept (`recordsMatched`).
fn evaluate(
    query: &str,
    start: i64,
    end: i64,
    max_rows: usize,
    events: &[Event],
) -> (Vec<Vec<ResultField>>, usize) {
    type Keep = Box<dyn Fn(&str, Option<&str>) -> bool>;
    let mut keeps: Vec<Keep> = Vec::new();
    let mut head: Option<regex::Regex> = None;
    let (mut min_v4, mut min_v6, mut limit) = (0u32, 0u32, max_rows);
    let mut grouped: Option<bool> = None; // Some(true): by head
    let mut window: Option<(i64, i64)> = None;
    let is_v4 = |ip: &str| ip.parse::<std::net::Ipv4Addr>().is_ok();
    let is_v6 = |ip: &str| ip.parse::<std::net::Ipv6Addr>().is_ok();
    for stage in query.split("\n| ") {
        let before_stats = grouped.is_none();
        let subnet = stage
            .strip_prefix("filter isIpv4InSubnet(httpRequest.clientIp, \"")
            .map(|rest| (false, rest))
            .or_else(|| {
                stage
                    .strip_prefix("filter isIpv6InSubnet(httpRequest.clientIp, \"")
                    .map(|rest| (true, rest))
            });
        if let Some(bounds) = stage.strip_prefix("filter timestamp > ") {
            let (after, until) = bounds.split_once(" and timestamp <= ").unwrap();
            window = Some((after.parse().unwrap(), until.parse().unwrap()));
        } else if let Some((ipv6, rest)) = subnet {
            assert!(before_stats, "the subnet filter must come before stats");
            let net: IpNet = rest.strip_suffix("\")").unwrap().parse().unwrap();
            assert_eq!(net.addr().is_ipv6(), ipv6, "{stage}");
            keeps.push(Box::new(move |ip, _| {
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_ipv6() == ipv6 && net.contains(&ip))
            }));
        } else if let Some(list) = stage
            .strip_prefix("filter httpRequest.clientIp in [")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            assert!(before_stats, "the address filter must come before stats");
            let only: Vec<String> = list
                .split(", ")
                .map(|quoted| quoted.trim_matches('"').to_owned())
                .collect();
            keeps.push(Box::new(move |ip, _| only.iter().any(|o| o == ip)));
        } else if before_stats && stage == "filter isValidIpV4(httpRequest.clientIp)" {
            keeps.push(Box::new(move |ip, _| is_v4(ip)));
        } else if before_stats && stage == "filter isValidIpV6(httpRequest.clientIp)" {
            keeps.push(Box::new(move |ip, _| is_v6(ip)));
        } else if let Some(pattern) = stage
            .strip_prefix("parse httpRequest.clientIp /")
            .and_then(|rest| rest.strip_suffix('/'))
        {
            head = Some(regex::Regex::new(pattern).unwrap());
        } else if stage == "filter ispresent(head)" {
            keeps.push(Box::new(|_, head| head.is_some()));
        } else if stage == "filter not ispresent(head)" {
            keeps.push(Box::new(|_, head| head.is_none()));
        } else if stage == "stats count(*) as requests by httpRequest.clientIp" {
            grouped = Some(false);
        } else if stage
            == "stats count(*) as requests, count_distinct(httpRequest.clientIp) as addresses by head"
        {
            assert!(head.is_some(), "{query}");
            grouped = Some(true);
        } else if let Some(n) = stage.strip_prefix("filter requests >= ") {
            min_v4 = n.parse().unwrap();
            min_v6 = min_v4;
        } else if let Some(rest) =
            stage.strip_prefix("filter (isValidIpV4(httpRequest.clientIp) and requests >= ")
        {
            let (v4, v6) = rest
                .strip_suffix(')')
                .and_then(|r| {
                    r.split_once(") or (isValidIpV6(httpRequest.clientIp) and requests >= ")
                })
                .unwrap_or_else(|| panic!("the fake cannot read {stage:?}"));
            (min_v4, min_v6) = (v4.parse().unwrap(), v6.parse().unwrap());
        } else if stage == "sort requests desc" {
        } else if let Some(n) = stage.strip_prefix("limit ") {
            limit = limit.min(n.parse().unwrap());
        } else {
            panic!("the fake does not know the stage {stage:?} of {query:?}");
        }
    }
    let by_head = grouped.unwrap_or_else(|| panic!("no stats in {query}"));
    let (after, until) = window.unwrap_or_else(|| panic!("no window in {query}"));
    // StartQuery's range: whole seconds, inclusive at both ends.
    let (from, to) = (start * 1000, end * 1000 + 999);
    // Per group: requests, and the distinct addresses.
    let mut groups: HashMap<String, (u32, std::collections::HashSet<&str>)> = HashMap::new();
    let mut matched = 0;
    for (ip, ts) in events {
        let captured = head
            .as_ref()
            .and_then(|re| re.captures(ip))
            .map(|c| c.name("head").expect("a group head").as_str());
        let in_window = (from..=to).contains(ts) && *ts > after && *ts <= until;
        if in_window && keeps.iter().all(|keep| keep(ip, captured)) {
            matched += 1;
            let group = if by_head { captured.unwrap() } else { ip };
            let entry = groups.entry(group.to_owned()).or_default();
            entry.0 += 1;
            entry.1.insert(ip);
        }
    }
    let at_floor = |group: &str, n: u32| n >= if is_v4(group) { min_v4 } else { min_v6 };
    let mut rows: Vec<(String, u32, usize)> = groups
        .into_iter()
        .filter(|(group, (n, _))| by_head || at_floor(group, *n))
        .map(|(group, (n, addresses))| (group, n, addresses.len()))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(limit);
    let rows = rows
        .into_iter()
        .map(|(group, n, addresses)| {
            if by_head {
                head_row(&group, n, addresses)
            } else {
                row(&group, n)
            }
        })
        .collect();
    (rows, matched)
}

fn head_row(head: &str, requests: u32, addresses: usize) -> Vec<ResultField> {
    let field = |name: &str, value: String| ResultField::builder().field(name).value(value).build();
    vec![
        field("head", head.to_owned()),
        field("requests", requests.to_string()),
        field("addresses", addresses.to_string()),
    ]
}

/// Bytes of one WAF record, as `gen-logs` writes them.
const RECORD_BYTES: f64 = 1_200.0;

/// A region's Logs Insights, faked over its `events`. A query scans (and
/// is billed for) every event of its time range, whatever its filters.
fn insights_over(events: Vec<Event>) -> (Rule, Rule) {
    type Stored = HashMap<String, (Vec<Vec<ResultField>>, f64, usize)>;
    let queries: Arc<Mutex<Stored>> = Arc::default();
    let stored = Arc::clone(&queries);
    let start = mock!(Client::start_query).then_compute_output(move |input| {
        let (from, to) = (input.start_time().unwrap(), input.end_time().unwrap());
        let max_rows = input.limit().map_or(MAX_ROWS, |n| n as usize);
        let (rows, matched) = evaluate(input.query_string().unwrap(), from, to, max_rows, &events);
        let in_range = events
            .iter()
            .filter(|(_, ts)| (from * 1000..=to * 1000 + 999).contains(ts));
        let bytes = in_range.count() as f64 * RECORD_BYTES;
        let mut queries = stored.lock().unwrap();
        let id = format!("q-{}", queries.len());
        queries.insert(id.clone(), (rows, bytes, matched));
        StartQueryOutput::builder().query_id(id).build()
    });
    let poll = mock!(Client::get_query_results).then_compute_output(move |input| {
        let (rows, bytes, matched) = queries.lock().unwrap()[input.query_id().unwrap()].clone();
        scanned(QueryStatus::Complete, rows, bytes, matched as f64)
    });
    (start, poll)
}

/// Counts `regions`' events through the Insights source (one log group
/// per region) by `keys`, with windows of 60 s (floor `floor_60`) and 300 s
/// (floor `floor_300`) ending at END_SECONDS, at most `max_rows` rows a query.
fn count_by_insights(
    regions: &[Vec<Event>],
    keys: Prefixes,
    floor_60: u32,
    floor_300: u32,
    limits: Limits,
) -> floodgate_responder::traffic::Traffic {
    let sources: Vec<RegionLogs> = regions
        .iter()
        .enumerate()
        .map(|(i, events)| {
            let (start, poll) = insights_over(events.clone());
            let client = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, &[&start, &poll]);
            RegionLogs {
                place: format!("region-{i}"),
                client,
                log_groups: vec!["aws-waf-logs-app".into()],
            }
        })
        .collect();
    let spec = CountSpec::new(END_MS, &[60, 300])
        .unwrap()
        .with_keys(&[keys.into()])
        .with_floor(&keys.into(), 60, floor_60)
        .with_floor(&keys.into(), 300, floor_300);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime
        .block_on(
            CloudWatchInsightsSource::new(sources, 30, fast_polling())
                .with_max_rows(limits.rows)
                .with_max_queries(limits.queries)
                .with_max_candidate_queries(limits.candidate_queries)
                .count(&spec),
        )
        .unwrap()
}

/// StartQuery's row limit, and how many queries a count may run.
#[derive(Debug, Clone, Copy)]
struct Limits {
    rows: usize,
    queries: usize,
    /// Queries naming a partition's missing candidates, past which it is
    /// counted whole.
    candidate_queries: usize,
}

/// The defaults a policy gets.
const DEFAULT_LIMITS: Limits = Limits {
    rows: MAX_ROWS,
    queries: DEFAULT_MAX_QUERIES,
    candidate_queries: MAX_CANDIDATE_QUERIES,
};

/// `per_ip` requests from each of `ips`, `age` seconds before the end.
fn burst(ips: &[&str], per_ip: usize, age: i64) -> Vec<Event> {
    ips.iter()
        .flat_map(|ip| std::iter::repeat_n(at((*ip).to_owned(), age), per_ip))
        .collect()
}

#[test]
fn an_address_spread_over_five_regions_is_counted_in_full() {
    // 900 requests in each of 4 regions and 100 in a fifth: under a
    // per-region floor of 2000, 3700 in all; the fifth region's share is
    // below even the first pass's floor (2000 / 5), so only the second
    // pass finds it. A local client stays under every floor.
    let regions: Vec<Vec<Event>> = (0..5)
        .map(|i| {
            let per_region = if i == 4 { 100 } else { 900 };
            let mut events = burst(&["203.0.113.9"], per_region, 30);
            events.extend(burst(&[&format!("192.0.2.{i}")], 10, 30));
            events
        })
        .collect();
    let traffic = count_by_insights(&regions, Prefixes::default(), 1000, 2000, DEFAULT_LIMITS);
    let counts = traffic
        .get(0, host("203.0.113.9"))
        .expect("the spread attacker");
    assert_eq!(counts.requests(300), Some(3700));
    assert_eq!(counts.requests(60), Some(3700));
    let second = traffic.stats().second_pass;
    assert!(second.queries > 0 && second.rows > 0, "{second:?}");
}

#[test]
fn an_ipv6_rotation_over_regions_is_counted_per_64() {
    // 60 addresses of one /64, 40 requests each, spread over 3 regions: no
    // address comes near the floor of 2000, their /64 does (2400).
    let regions: Vec<Vec<Event>> = (0..3)
        .map(|region| {
            (0..60)
                .filter(|i| i % 3 == region)
                .flat_map(|i| burst(&[&format!("2001:db8:6:4::{i:x}")], 40, 30))
                .collect()
        })
        .collect();
    let traffic = count_by_insights(&regions, Prefixes::default(), 2000, 2000, DEFAULT_LIMITS);
    let net: IpNet = "2001:db8:6:4::/64".parse().unwrap();
    let counts = traffic.get(0, net).expect("the rotating /64");
    assert_eq!(counts.requests(300), Some(2400));
    assert_eq!(counts.addresses(), 60);
    assert!(
        !counts.addresses_at_least(),
        "the union of the rows' addresses"
    );
}

/// A botnet over three regions: `FLOODGATE_BOTNET_CLIENTS` (default
/// 20,000) clients, half IPv4 and half IPv6 /64s, each in one region with
/// 20 to 80 requests over a tier of 20 in 300 s. Every client is counted
/// in full; the second pass counts each region whole instead of naming
/// thousands of candidates. Prints the figures for BENCHMARKS.md:
/// `FLOODGATE_BOTNET_CLIENTS=200000 cargo test -p floodgate-responder
/// --release --test integration cloudwatch_insights::a_botnet -- --nocapture`.
#[test]
fn a_botnet_over_three_regions_is_counted_in_full() {
    let clients: u32 = std::env::var("FLOODGATE_BOTNET_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let address = |i: u32| {
        if i.is_multiple_of(2) {
            std::net::Ipv4Addr::from_bits(0x0b00_0000 + i * 97).to_string()
        } else {
            format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
        }
    };
    let requests = |i: u32| 20 + (i * 7919) % 61;
    let mut regions: Vec<Vec<Event>> = vec![Vec::new(); 3];
    for i in 0..clients {
        let ip = address(i);
        regions[(i % 3) as usize]
            .extend((0..requests(i)).map(|r| at(ip.clone(), i64::from((i + r * 13) % 300))));
    }
    let started = std::time::Instant::now();
    let traffic = count_by_insights(&regions, Prefixes::default(), 20, 20, DEFAULT_LIMITS);
    let elapsed = started.elapsed();
    for i in (0..clients).step_by(997) {
        let ip: std::net::IpAddr = address(i).parse().unwrap();
        let key = Prefixes::default().key(ip);
        let counts = traffic.get(0, key).unwrap_or_else(|| panic!("{key}"));
        assert_eq!(counts.requests(300), Some(requests(i)), "{key}");
    }
    assert_eq!(traffic.distinct_keys(), clients as usize);
    let stats = traffic.stats();
    assert!(stats.incomplete.is_empty(), "{:?}", stats.incomplete);
    let second = stats.second_pass;
    assert!(
        second.queries <= 2 * 3,
        "a whole count per region and window, not a query per few hundred candidates: {second:?}"
    );
    let first_bytes = stats.bytes - second.bytes;
    println!(
        "{clients} clients over 3 regions, windows 60 s and 300 s: first pass 6 queries, {} rows, \
         {:.0} MB scanned; second pass {} queries, {} rows, {:.0} MB scanned; \
         split {} queries; {:.1} s through the evaluator",
        stats.records,
        first_bytes as f64 / 1e6,
        second.queries,
        second.rows,
        second.bytes as f64 / 1e6,
        stats.split_queries,
        elapsed.as_secs_f64()
    );
}

/// What the second pass adds on a 5-region example: 2,000 benign clients
/// a region and one attacker spread over all five, with a 1-minute and a
/// 5-minute tier. Prints the
/// figures for BENCHMARKS.md:
/// `cargo test -p floodgate-responder --test integration
/// cloudwatch_insights::second_pass_cost -- --nocapture`.
#[test]
fn second_pass_cost_on_five_regions() {
    let regions: Vec<Vec<Event>> = (0..5)
        .map(|region| {
            let mut events: Vec<Event> = (0..2_000)
                .flat_map(|client| {
                    let ip = format!("10.{region}.{}.{}", client / 250, client % 250);
                    // 1 to 40 requests each over the 5 minutes.
                    (0..1 + client % 40).map(move |i| at(ip.clone(), (i * 7 + client) % 300))
                })
                .collect();
            // The spread attacker: 900 requests in two regions and 200 in
            // three, 2,400 in all; the three are under the first pass's floor.
            let share = if region < 2 { 900 } else { 200 };
            events.extend((0..share).map(|i| at("203.0.113.9".to_owned(), i % 300)));
            events
        })
        .collect();
    let traffic = count_by_insights(&regions, Prefixes::default(), 1_000, 2_000, DEFAULT_LIMITS);
    let counts = traffic.get(0, host("203.0.113.9")).unwrap();
    assert_eq!(
        counts.requests(300),
        Some(2_400),
        "the spread attacker, in full"
    );
    let stats = traffic.stats();
    let second = stats.second_pass;
    let first_bytes = stats.bytes - second.bytes;
    assert!(second.queries > 0 && second.bytes <= first_bytes);
    println!(
        "5 regions, windows 60 s and 300 s: first pass 10 queries, {:.1} MB scanned; \
         second pass {} queries, {} rows, {:.1} MB scanned (+{:.0}% bytes and cost)",
        first_bytes as f64 / 1e6,
        second.queries,
        second.rows,
        second.bytes as f64 / 1e6,
        second.bytes as f64 * 100.0 / first_bytes as f64
    );
}

/// Each key's requests per window, counted in-process from the events:
/// the model the Insights path must agree with. Independent of the
/// source's key code: the prefix is cut with ipnet's `trunc`.
fn model(regions: &[Vec<Event>], keys: Prefixes) -> HashMap<(IpNet, u32), u32> {
    let mut counts = HashMap::new();
    for (ip, ts) in regions.iter().flatten() {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let length = if ip.is_ipv4() { keys.ipv4 } else { keys.ipv6 };
        let key = IpNet::new(ip, length).unwrap().trunc();
        for window in [60, 300] {
            // The README's window: end − W < timestamp ≤ end.
            if (0..window * 1000).contains(&(END_MS - ts)) {
                *counts.entry((key, window as u32)).or_default() += 1;
            }
        }
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For any spread of requests over 1 to 6 regions (with records at the
    /// windows' very edges, to the millisecond), any of the key kinds (per
    /// address, the default IPv6 /64, IPv4 /24 with IPv6 /64, IPv4 /20
    /// with IPv6 /56), a row limit that cuts results or not (4 to 7 rows
    /// against 11 clients), a query budget, and a second pass that names
    /// its candidates or counts a partition whole: every count reported is at
    /// most the true count and, unless a part was reported cut, every key
    /// whose total reaches a window's floor gets its exact total. With a
    /// budget that does not run out, no part stays cut: splitting makes
    /// every count exact whatever the row limit.
    #[test]
    fn insights_counts_agree_with_counting_the_events(
        regions in prop::collection::vec(
            prop::collection::vec((0..IPS.len(), ages_ms()), 0..120),
            1..=6,
        ),
        keys in prop_oneof![
            Just(Prefixes::PER_ADDRESS),
            Just(Prefixes::default()),
            Just(Prefixes { ipv4: 24, ipv6: 64 }),
            Just(Prefixes { ipv4: 20, ipv6: 56 }),
        ],
        floor_60 in 1..30u32,
        floor_300 in 1..60u32,
        max_rows in prop_oneof![Just(MAX_ROWS), 4..8usize],
        max_queries in prop_oneof![Just(100_000), 1..40usize],
        candidate_queries in prop_oneof![Just(MAX_CANDIDATE_QUERIES), Just(0)],
    ) {
        // As WAF writes them: RFC 5952 text.
        let texts: Vec<String> = IPS.iter().map(|ip| ip.parse::<std::net::IpAddr>().unwrap().to_string()).collect();
        let regions: Vec<Vec<Event>> = regions
            .iter()
            .map(|events| events.iter().map(|&(i, age)| (texts[i].clone(), END_MS - age)).collect())
            .collect();
        let expected = model(&regions, keys);
        let limits = Limits { rows: max_rows, queries: max_queries, candidate_queries };
        let traffic = count_by_insights(&regions, keys, floor_60, floor_300, limits);
        let reported: HashMap<(IpNet, u32), u32> = traffic
            .iter()
            .flat_map(|(_, net, counts)| {
                [60u32, 300].into_iter().filter_map(move |w| {
                    counts.requests(w).filter(|&n| n > 0).map(|n| ((net, w), n))
                })
            })
            .collect();
        let cut = !traffic.stats().incomplete.is_empty();
        prop_assert!(!(cut && max_queries == 100_000), "a cut result splitting did not repair");
        // Records per window come from recordsMatched, exact even when a
        // count stays cut.
        let in_window = |w: i64| regions.iter().flatten().filter(|(_, ts)| (0..w * 1000).contains(&(END_MS - ts))).count() as u64;
        prop_assert_eq!(&traffic.stats().in_windows, &vec![in_window(60), in_window(300)]);
        for (key, &n) in &reported {
            let truth = expected.get(key).copied().unwrap_or(0);
            if cut {
                prop_assert!(n <= truth, "{:?} reported {} of {}", key, n, truth);
            } else {
                prop_assert_eq!(n, truth, "{:?}", key);
            }
        }
        if !cut {
            for ((net, window), &n) in &expected {
                let floor = if *window == 60 { floor_60 } else { floor_300 };
                if n >= floor {
                    prop_assert_eq!(reported.get(&(*net, *window)), Some(&n), "{} in {} s", net, window);
                }
            }
        }
    }
}

/// The property test's ages of a record, in ms before the end: inside
/// each window, at its edges (a record at exactly `end − W` is outside),
/// and just after the end (outside).
fn ages_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        0..60_000i64,
        60_001..300_000i64,
        prop::sample::select(vec![-1i64, 0, 59_999, 60_000, 299_999, 300_000, 300_001]),
    ]
}

/// The property test's clients: IPv4 addresses in one /24 and in others;
/// IPv6 addresses whose text holds their /64 in full, and others written
/// with `::` inside it, some of them in the same /64.
const IPS: [&str; 11] = [
    "203.0.113.1",
    "203.0.113.2",
    "203.0.113.200",
    "198.51.100.3",
    "192.0.2.6",
    "2001:db8:6:4::1",
    "2001:db8:6:4:a:b:c:d",
    "2001:db8:6:4:1:0:0:7",
    "2001:db8::4",
    "2001:db8:0:0:1:0:0:7",
    "2001:db8:1::5",
];
