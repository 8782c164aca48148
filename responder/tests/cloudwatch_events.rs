//! The raw-events source against moto's CloudWatch Logs: real SDK calls,
//! pagination and two regions, compared with a naive count.

use std::collections::HashMap;
use std::net::IpAddr;

use aws_sdk_cloudwatchlogs::Client;
use floodgate_responder::aws::{RegionLogs, retry_config};
use floodgate_responder::loggen::{LogSpec, records};
use floodgate_responder::source::LogSource;
use floodgate_responder::source::cloudwatch_events::CloudWatchEventsSource;
use floodgate_responder::traffic::CountSpec;
use floodgate_responder::waflog::parse_hit_full_only;
use floodgate_rules::policy::Prefixes;
use floodgate_tests::{MotoServer, wall_clock_ms};

fn client(moto: &MotoServer, region: &str) -> Client {
    // Our retry policy, as the responder's own clients have it.
    let config = moto
        .logs_client(region)
        .config()
        .to_builder()
        .retry_config(retry_config())
        .build();
    Client::from_conf(config)
}

/// Writes generated WAF records into a new log group in `region`.
async fn put_records(moto: &MotoServer, region: &str, group: &str, records: &[Vec<u8>]) {
    let events = records
        .iter()
        .map(|line| {
            let timestamp = parse_hit_full_only(line).unwrap().timestamp_ms;
            (timestamp, String::from_utf8(line.clone()).unwrap())
        })
        .collect();
    moto.create_waf_log_group(region, group).await;
    moto.put_waf_logs(region, group, events).await;
}

fn sample(seed: u64, start_ms: i64) -> Vec<Vec<u8>> {
    records(&LogSpec {
        seed,
        start_ms,
        minutes: 2,
        benign_records: 1500,
        benign_ips: 200,
        attacks: false,
        ..LogSpec::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_events_across_regions_like_a_naive_count() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    // CloudWatch refuses events older than 14 days: write recent ones.
    let now_ms = wall_clock_ms();
    let start_ms = now_ms - 10 * 60_000;
    let (eu, us) = (client(&moto, "eu-west-1"), client(&moto, "us-east-1"));
    let eu_records = sample(1, start_ms);
    let us_records = sample(2, start_ms);
    put_records(&moto, "eu-west-1", "aws-waf-logs-app", &eu_records).await;
    put_records(
        &moto,
        "us-east-1",
        "aws-waf-logs-app-cloudfront",
        &us_records,
    )
    .await;

    let source = CloudWatchEventsSource::new(vec![
        RegionLogs {
            place: "eu-west-1".into(),
            client: eu,
            log_groups: vec!["aws-waf-logs-app".into()],
        },
        RegionLogs {
            place: "us-east-1".into(),
            client: us,
            log_groups: vec!["aws-waf-logs-app-cloudfront".into()],
        },
    ])
    // Small pages: the paginator must follow nextToken.
    .with_page_size(400);
    let newest = source.newest_timestamp().await.unwrap().unwrap();
    let all: Vec<&Vec<u8>> = eu_records.iter().chain(&us_records).collect();
    let newest_record = all
        .iter()
        .map(|l| parse_hit_full_only(l).unwrap().timestamp_ms)
        .max()
        .unwrap();
    assert_eq!(newest, newest_record);

    let spec = CountSpec::new(newest, &[60, 300])
        .unwrap()
        .with_keys(&[Prefixes::PER_ADDRESS.into()]);
    let traffic = source.count(&spec).await.unwrap();
    assert_eq!(
        traffic.stats().records,
        all.len() as u64,
        "every event read, across pages and regions"
    );
    for window in [60u32, 300] {
        let mut expected: HashMap<IpAddr, u32> = HashMap::new();
        for line in &all {
            let hit = parse_hit_full_only(line).unwrap();
            if (0..i64::from(window) * 1000).contains(&(newest - hit.timestamp_ms)) {
                *expected.entry(hit.client_ip).or_default() += 1;
            }
        }
        let actual: HashMap<IpAddr, u32> = traffic
            .iter()
            .filter_map(|(_, net, c)| {
                c.requests(window)
                    .filter(|&n| n > 0)
                    .map(|n| (net.addr(), n))
            })
            .collect();
        assert_eq!(actual, expected, "window {window}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_group_names_region_and_group() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    let source = CloudWatchEventsSource::new(vec![RegionLogs {
        place: "ap-southeast-2".into(),
        client: client(&moto, "ap-southeast-2"),
        log_groups: vec!["aws-waf-logs-missing".into()],
    }]);
    let err = source
        .count(&CountSpec::new(1_700_000_000_000, &[300]).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ap-southeast-2")
            && err.contains("aws-waf-logs-missing")
            && err.contains("ResourceNotFound"),
        "{err}"
    );
}
