//! The S3 source against moto's S3: both delivery layouts, windows across
//! hour folders, damaged objects, a thousand small objects, and the errors
//! a user meets. Each count is checked against the file source counting the
//! same lines locally, the engine the S3 source must agree with.

use std::collections::BTreeMap;

use floodgate_responder::source::files::FileSource;
use floodgate_responder::source::s3::S3Source;
use floodgate_responder::source::{LogSource, SourceError};
use floodgate_responder::traffic::{CountSpec, Traffic};
use floodgate_tests::{MotoServer, gzip_lines, waf_record};

const BUCKET: &str = "aws-waf-logs-test";
const WINDOW: u32 = 300;
const WAF_ROOT: &str = "AWSLogs/111122223333/WAFLogs/eu-west-1/app-acl/";
const EDGE_ROOT: &str = "AWSLogs/111122223333/WAFLogs/cloudfront/edge-acl/";

/// 2026-12-04T10:02:00Z: the window [09:57, 10:02] spans two hour folders.
const END_MS: i64 = 1_796_378_520_000;
const MINUTE: i64 = 60_000;

async fn moto() -> MotoServer {
    tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap()
}

/// A key and the lines of its object.
type Object = (String, Vec<String>);

/// `count` records from `ip`, evenly from `from_ms` to just before `to_ms`.
fn records(ip: &str, count: i64, from_ms: i64, to_ms: i64) -> Vec<String> {
    (0..count)
        .map(|i| waf_record(from_ms + i * (to_ms - from_ms) / count, ip))
        .collect()
}

/// A WAF direct-delivery key in the 5-minute folder starting `at_ms`.
fn waf_key(root: &str, at_ms: i64, name: &str) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(at_ms / 1000).unwrap();
    format!(
        "{root}{:04}/{:02}/{:02}/{:02}/{:02}/111122223333_waflogs_{name}_{:04}{:02}{:02}T{:02}{:02}Z_e0ca43b5.log.gz",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// A record's `timestamp`.
fn timestamp(line: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["timestamp"]
        .as_i64()
        .unwrap()
}

/// Requests per key over the window.
fn per_key(traffic: &Traffic) -> BTreeMap<String, u32> {
    traffic
        .iter()
        .filter_map(|(_, net, counts)| Some((net.to_string(), counts.requests(WINDOW)?)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What the file source counts from the same objects' lines.
fn counted_locally(objects: &[Object], spec: &CountSpec) -> BTreeMap<String, u32> {
    let dir = tempfile::tempdir().unwrap();
    for (i, (_, lines)) in objects.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.jsonl")), lines.join("\n")).unwrap();
    }
    let path = dir.path().to_str().unwrap().to_owned();
    per_key(
        &FileSource::new(&[path])
            .unwrap()
            .without_progress()
            .count_blocking(spec)
            .unwrap(),
    )
}

async fn put(moto: &MotoServer, objects: &[Object]) {
    moto.put_objects(
        BUCKET,
        objects
            .iter()
            .map(|(key, lines)| {
                let body = if key.ends_with(".gz") {
                    gzip_lines(lines)
                } else {
                    (lines.join("\n") + "\n").into_bytes()
                };
                (key.clone(), body)
            })
            .collect(),
    )
    .await;
}

/// Two web ACLs (a region and CloudFront), each with 5-minute folders on
/// both sides of the hour, and objects far outside the window.
fn waf_layout() -> (Vec<Object>, Vec<Object>) {
    let at = |minutes_before_end: i64| END_MS - minutes_before_end * MINUTE;
    let mut in_window = Vec::new();
    for (root, name) in [
        (WAF_ROOT, "eu-west-1_app-acl"),
        (EDGE_ROOT, "cloudfront_edge-acl"),
    ] {
        // The 09:55 folder holds 09:58 to 10:00, the 10:00 folder the rest.
        let mut early = records("203.0.113.1", 40, at(4), at(2));
        early.extend(records("198.51.100.2", 5, at(4), at(2)));
        let mut late = records("203.0.113.1", 25, at(2), END_MS);
        late.extend(records("2001:db8::7", 12, at(2), END_MS));
        in_window.push((waf_key(root, at(7), name), early));
        in_window.push((waf_key(root, at(2), name), late));
    }
    // Outside the window and its delivery lag: never fetched.
    let far = vec![
        (
            waf_key(WAF_ROOT, END_MS - 3 * 60 * MINUTE, "eu-west-1_app-acl"),
            records(
                "203.0.113.1",
                500,
                END_MS - 180 * MINUTE,
                END_MS - 175 * MINUTE,
            ),
        ),
        (
            waf_key(EDGE_ROOT, END_MS + 28 * MINUTE, "cloudfront_edge-acl"),
            records(
                "203.0.113.1",
                500,
                END_MS + 28 * MINUTE,
                END_MS + 33 * MINUTE,
            ),
        ),
    ];
    (in_window, far)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waf_layout_across_two_hours_and_two_web_acls_counts_as_the_files_do() {
    let moto = moto().await;
    moto.create_bucket(BUCKET).await;
    let (in_window, far) = waf_layout();
    put(&moto, &in_window).await;
    put(&moto, &far).await;
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let expected = counted_locally(&in_window, &spec);
    assert_eq!(expected["203.0.113.1/32"], 2 * (40 + 25), "{expected:?}");

    // From the bucket's top, from AWSLogs/, and from one web ACL's folder.
    for (prefix, acls) in [("", 2), ("AWSLogs/", 2), (WAF_ROOT, 1)] {
        let source = S3Source::new(moto.s3_client(), BUCKET, prefix);
        let traffic = source.count(&spec).await.unwrap();
        let wanted = if acls == 2 {
            expected.clone()
        } else {
            counted_locally(&in_window[..2], &spec)
        };
        assert_eq!(per_key(&traffic), wanted, "prefix {prefix:?}");
        let stats = traffic.stats();
        assert_eq!(
            stats.objects,
            2 * acls,
            "only the window's objects are fetched"
        );
        assert_eq!((stats.skipped_objects, stats.malformed), (0, 0));
        assert_eq!(
            stats.records,
            in_window[..2 * acls as usize]
                .iter()
                .map(|(_, l)| l.len() as u64)
                .sum::<u64>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_layout_reads_gzip_and_plain_objects_and_not_its_failures() {
    let moto = moto().await;
    moto.create_bucket(BUCKET).await;
    let objects = vec![
        (
            "firehose/2026/12/04/09/aws-waf-logs-app-1-2026-12-04-09-58-10-0a1b2c3d.gz".to_owned(),
            records("203.0.113.5", 70, END_MS - 4 * MINUTE, END_MS - 2 * MINUTE),
        ),
        (
            // Firehose without compression: no extension, plain lines.
            "firehose/2026/12/04/10/aws-waf-logs-app-1-2026-12-04-10-00-20-4e5f6a7b".to_owned(),
            records("203.0.113.5", 30, END_MS - 2 * MINUTE, END_MS),
        ),
    ];
    put(&moto, &objects).await;
    // What Firehose could not deliver: not WAF records, never read.
    put(
        &moto,
        &[(
            "firehose/processing-failed/2026/12/04/10/aws-waf-logs-app-1-2026-12-04-10-00-20-x"
                .to_owned(),
            vec!["{\"errorCode\":\"Lambda.InvokeAccessDenied\"}".to_owned()],
        )],
    )
    .await;
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let traffic = S3Source::new(moto.s3_client(), BUCKET, "firehose")
        .count(&spec)
        .await
        .unwrap();
    assert_eq!(per_key(&traffic), counted_locally(&objects, &spec));
    assert_eq!(per_key(&traffic)["203.0.113.5/32"], 100);
    let stats = traffic.stats();
    assert_eq!(
        (stats.objects, stats.malformed, stats.skipped_objects),
        (2, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_objects_are_skipped_and_counted_and_the_rest_is_read() {
    let moto = moto().await;
    moto.create_bucket(BUCKET).await;
    let (in_window, _) = waf_layout();
    put(&moto, &in_window).await;
    let folder = &waf_key(WAF_ROOT, END_MS - 2 * MINUTE, "x")[..WAF_ROOT.len() + 17];
    let mut truncated = gzip_lines(&records("203.0.113.66", 5000, END_MS - MINUTE, END_MS));
    truncated.truncate(truncated.len() / 2);
    moto.put_objects(
        BUCKET,
        vec![
            (
                format!("{folder}plain-text.log.gz"),
                waf_record(END_MS - MINUTE, "203.0.113.66").into_bytes(),
            ),
            (format!("{folder}truncated.log.gz"), truncated),
        ],
    )
    .await;
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let traffic = S3Source::new(moto.s3_client(), BUCKET, "AWSLogs/")
        .count(&spec)
        .await
        .unwrap();
    assert_eq!(per_key(&traffic), counted_locally(&in_window, &spec));
    assert!(!per_key(&traffic).contains_key("203.0.113.66/32"));
    let stats = traffic.stats();
    assert_eq!((stats.objects, stats.skipped_objects), (4, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_objects_are_all_counted() {
    let moto = moto().await;
    moto.create_bucket(BUCKET).await;
    let objects: Vec<Object> = (0..1000)
        .map(|i: i64| {
            let key = format!(
                "firehose/2026/12/04/10/aws-waf-logs-app-1-2026-12-04-10-01-{:02}-{i:04}.gz",
                i % 60
            );
            let lines = records(
                &format!("198.51.100.{}", i % 7),
                1 + i % 3,
                END_MS - 90_000,
                END_MS,
            );
            (key, lines)
        })
        .collect();
    put(&moto, &objects).await;
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let traffic = S3Source::new(moto.s3_client(), BUCKET, "firehose/")
        .with_concurrency(8)
        .count(&spec)
        .await
        .unwrap();
    let expected = counted_locally(&objects, &spec);
    assert_eq!(
        expected.values().sum::<u32>(),
        (0..1000).map(|i| 1 + i % 3).sum::<u32>()
    );
    assert_eq!(per_key(&traffic), expected);
    assert_eq!(traffic.stats().objects, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_record_and_a_period_s_records_come_from_their_hours() {
    let moto = moto().await;
    moto.create_bucket(BUCKET).await;
    let (in_window, far) = waf_layout();
    put(&moto, &in_window).await;
    put(&moto, &far).await;
    let source = S3Source::new(moto.s3_client(), BUCKET, "");
    let newest = far[1].1.iter().chain(in_window.iter().flat_map(|(_, l)| l));
    let newest = newest.map(|line| timestamp(line)).max();
    assert_eq!(source.newest_timestamp().await.unwrap(), newest);

    let (hits, stats) = source
        .hits(&[], END_MS - 5 * MINUTE, END_MS, |_| true)
        .await
        .unwrap();
    assert_eq!(stats.objects, 4);
    let in_period = in_window
        .iter()
        .flat_map(|(_, lines)| lines)
        .filter(|line| (END_MS - 5 * MINUTE..=END_MS).contains(&timestamp(line)))
        .count();
    assert_eq!(
        hits.iter()
            .filter(|h| (END_MS - 5 * MINUTE..=END_MS).contains(&h.timestamp_ms))
            .count(),
        in_period
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_or_an_empty_prefix_is_a_clear_error() {
    let moto = moto().await;
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let error = S3Source::new(moto.s3_client(), "aws-waf-logs-missing", "AWSLogs/")
        .count(&spec)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::S3 { .. }), "{error:?}");
    let message = error.to_string();
    for part in [
        "s3://aws-waf-logs-missing/AWSLogs/",
        "ListObjectsV2",
        "NoSuchBucket",
        "check the bucket's name",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }

    moto.create_bucket(BUCKET).await;
    put(
        &moto,
        &[("notes/readme.txt".to_owned(), vec!["hello".to_owned()])],
    )
    .await;
    let message = S3Source::new(moto.s3_client(), BUCKET, "notes")
        .count(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("s3://aws-waf-logs-test/notes/: no YYYY/MM/DD/HH/ folders"),
        "{message}"
    );
    assert!(
        message.contains("point the prefix at the folder holding the YYYY/ folders"),
        "{message}"
    );
}

#[test]
fn the_local_helper_reads_what_it_wrote() {
    // Guards the comparison the tests above rely on.
    let spec = CountSpec::new(END_MS, &[WINDOW]).unwrap();
    let lines = records("203.0.113.9", 10, END_MS - MINUTE, END_MS);
    let counted = counted_locally(&[("k".to_owned(), lines)], &spec);
    assert_eq!(counted.get("203.0.113.9/32"), Some(&10));
}
