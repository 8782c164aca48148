//! The Logs Insights source against scripted CloudWatch responses
//! (`aws-smithy-mocks`): the emulator cannot aggregate, and cannot produce
//! throttling, failed or timed-out queries.

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
    CloudWatchInsightsSource, MAX_ROWS, Polling, estimated_cost_usd, query_text,
};
use floodgate_responder::traffic::CountSpec;

#[test]
fn the_query_text_is_stable() {
    assert_eq!(
        query_text(2000),
        "stats count(*) as requests by httpRequest.clientIp\n| filter requests >= 2000\n| sort requests desc\n| limit 10000"
    );
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
    GetQueryResultsOutput::builder()
        .status(status)
        .set_results(Some(rows))
        .statistics(
            QueryStatistics::builder()
                .bytes_scanned(3.5e9)
                .records_matched(1e6)
                .records_scanned(2e6)
                .build(),
        )
        .build()
}

fn start_ok() -> Rule {
    mock!(Client::start_query)
        .match_requests(|r| {
            r.query_string() == Some(query_text(2000).as_str())
                && r.end_time().zip(r.start_time()).map(|(e, s)| e - s) == Some(300)
        })
        .then_output(|| StartQueryOutput::builder().query_id("q-1").build())
}

fn source(rules: &[&Rule], polling: Polling) -> CloudWatchInsightsSource {
    let client = mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, rules, |c| c
        .retry_config(retry_config()));
    let regions = vec![RegionLogs {
        region: "eu-west-1".into(),
        client,
        log_groups: vec!["aws-waf-logs-app".into()],
    }];
    CloudWatchInsightsSource::new(regions, 30, polling)
}

fn spec() -> CountSpec {
    // One 300 s window whose lowest tier threshold is 2000.
    CountSpec::new(1_700_000_300_000, &[300])
        .unwrap()
        .with_floor(300, 2000)
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
        traffic
            .get("203.0.113.66".parse().unwrap())
            .unwrap()
            .requests(300),
        Some(6000)
    );
    assert_eq!(
        traffic
            .get("2001:db8:bad::66".parse().unwrap())
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
            stats.truncated_queries
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
        traffic
            .get("192.0.2.1".parse().unwrap())
            .unwrap()
            .requests(300),
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

#[tokio::test(start_paused = true)]
async fn a_full_result_is_reported_as_truncated() {
    let start = start_ok();
    let poll = mock!(Client::get_query_results).then_output(|| {
        let rows = (0..MAX_ROWS as u32)
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
        .count(&spec())
        .await
        .unwrap();
    assert_eq!(traffic.stats().truncated_queries, 1);
    assert_eq!(traffic.distinct_ips(), MAX_ROWS);
}
