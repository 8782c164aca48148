//! The S3 source against scripted S3 responses (`aws-smithy-mocks`), for
//! what moto cannot do: a denied prefix, a denied object, and a download
//! that breaks off halfway.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ErrorMetadata;
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2Error, ListObjectsV2Output};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CommonPrefix, Object};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use bytes::Bytes;
use floodgate_responder::source::LogSource;
use floodgate_responder::source::s3::S3Source;
use floodgate_responder::traffic::CountSpec;
use floodgate_tests::{gzip_lines, waf_record};

/// 2026-12-04T10:02:00Z.
const END_MS: i64 = 1_796_378_520_000;
const GOOD: &str = "logs/2026/12/04/10/00/good.log.gz";
const OTHER: &str = "logs/2026/12/04/10/00/other.log.gz";

fn lines(ip: &str, count: i64) -> Vec<String> {
    (0..count)
        .map(|i| waf_record(END_MS - 60_000 + i, ip))
        .collect()
}

fn access_denied() -> ErrorMetadata {
    ErrorMetadata::builder()
        .code("AccessDenied")
        .message("Access Denied")
        .build()
}

/// Listing: `logs/` holds `2026/`, and the 10:00 hour holds both objects.
fn listing() -> Rule {
    mock!(Client::list_objects_v2).then_output(|| {
        ListObjectsV2Output::builder()
            .common_prefixes(CommonPrefix::builder().prefix("logs/2026/").build())
            .contents(Object::builder().key(GOOD).size(100).build())
            .contents(Object::builder().key(OTHER).size(100).build())
            .build()
    })
}

fn body(ip: &str, count: i64) -> ByteStream {
    ByteStream::from(gzip_lines(&lines(ip, count)))
}

fn source(rules: &[Rule]) -> S3Source {
    let client = mock_client!(aws_sdk_s3, RuleMode::MatchAny, rules);
    S3Source::new(client, "aws-waf-logs-test", "logs/")
}

#[tokio::test]
async fn a_denied_prefix_fails_the_count_and_says_which_permission_is_missing() {
    let denied =
        mock!(Client::list_objects_v2).then_error(|| ListObjectsV2Error::generic(access_denied()));
    let error = source(&[denied])
        .count(&CountSpec::new(END_MS, &[300]).unwrap())
        .await
        .unwrap_err()
        .to_string();
    for part in [
        "s3://aws-waf-logs-test/logs/",
        "ListObjectsV2",
        "AccessDenied",
        "s3:ListBucket",
    ] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
}

#[tokio::test]
async fn a_denied_object_is_skipped_and_the_others_are_counted() {
    let good = mock!(Client::get_object)
        .match_requests(|r| r.key() == Some(GOOD))
        .then_output(|| {
            GetObjectOutput::builder()
                .body(body("203.0.113.1", 7))
                .build()
        });
    let denied = mock!(Client::get_object)
        .match_requests(|r| r.key() == Some(OTHER))
        .then_error(|| GetObjectError::generic(access_denied()));
    let traffic = source(&[listing(), good, denied])
        .count(&CountSpec::new(END_MS, &[300]).unwrap())
        .await
        .unwrap();
    let stats = traffic.stats();
    assert_eq!(
        (stats.objects, stats.skipped_objects, stats.records),
        (1, 1, 7)
    );
}

/// A body that sends its bytes, then fails as a reset connection does.
struct BreaksOff(Option<Bytes>);

impl http_body::Body for BreaksOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(match self.0.take() {
            Some(bytes) => Ok(http_body::Frame::data(bytes)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            )),
        }))
    }
}

#[tokio::test]
async fn a_download_that_breaks_off_is_read_again_from_the_start_and_counted_once() {
    let whole = gzip_lines(&lines("203.0.113.2", 2000));
    let half = Bytes::copy_from_slice(&whole[..whole.len() / 2]);
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let flaky = mock!(Client::get_object)
        .match_requests(|r| r.key() == Some(GOOD))
        .then_output(move || {
            let body = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                ByteStream::from_body_1_x(BreaksOff(Some(half.clone())))
            } else {
                ByteStream::from(whole.clone())
            };
            GetObjectOutput::builder().body(body).build()
        });
    let other = mock!(Client::get_object)
        .match_requests(|r| r.key() == Some(OTHER))
        .then_output(|| {
            GetObjectOutput::builder()
                .body(body("203.0.113.3", 5))
                .build()
        });
    let traffic = source(&[listing(), flaky, other])
        .count(&CountSpec::new(END_MS, &[300]).unwrap())
        .await
        .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let stats = traffic.stats();
    assert_eq!(
        (stats.objects, stats.skipped_objects, stats.records),
        (2, 0, 2005)
    );
}
