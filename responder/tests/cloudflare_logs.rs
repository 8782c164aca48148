//! Cloudflare's request logs read by the same engine as WAF's: the same
//! requests written in either format count the same, from files and from
//! Logpush's layout in S3 (moto).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use floodgate_responder::cloudflare_log;
use floodgate_responder::detect::count_spec;
use floodgate_responder::loggen::{LogSpec, generate};
use floodgate_responder::source::LogSource;
use floodgate_responder::source::files::FileSource;
use floodgate_responder::source::s3::S3Source;
use floodgate_responder::traffic::{CountSpec, Traffic};
use floodgate_rules::Policy;
use floodgate_rules::policy::{LogFormat, RequestMatch};
use floodgate_tests::{MotoServer, cloudflare_record, gzip_lines};
use proptest::prelude::*;

/// Every count of a traffic, in a form two counts can be compared by: per
/// key and net, the requests in each window, per action, and the
/// addresses seen.
type Counts = BTreeMap<(usize, String), (Vec<Option<u32>>, Vec<String>, u32)>;

fn counts(traffic: &Traffic) -> Counts {
    let windows = traffic.spec().windows().to_vec();
    traffic
        .iter()
        .map(|(key, net, counts)| {
            let per_window = windows.iter().map(|&w| counts.requests(w)).collect();
            let actions = counts.actions().map(|(a, n)| format!("{a}={n}")).collect();
            (
                (key, net.to_string()),
                (per_window, actions, counts.addresses()),
            )
        })
        .collect()
}

/// The example policy: a scoped login tier, IPv6 per /64, whole-API tiers.
fn policy() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local.toml");
    let text = std::fs::read_to_string(path).unwrap();
    Policy::from_toml(&text, "local.toml", time::macros::date!(2026 - 11 - 20))
        .unwrap()
        .policy
}

fn write(path: &Path, spec: &LogSpec) {
    let mut bytes = Vec::new();
    generate(spec, &mut bytes).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &bytes).unwrap();
        bytes = encoder.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn count_file(path: &Path, format: LogFormat, spec: &CountSpec) -> Traffic {
    FileSource::new(&[path.to_str().unwrap()])
        .unwrap()
        .with_format(format)
        .without_progress()
        .count_blocking(spec)
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Whatever the traffic, its Cloudflare rendering (gzip, nanosecond
    /// times, lower-case countries, Cloudflare's action names) counts
    /// exactly as its WAF rendering: every key, window, action and scoped
    /// tier.
    #[test]
    fn the_same_requests_count_the_same_in_either_format(
        seed in any::<u64>(),
        minutes in 1u32..=3,
        benign_records in 0u64..1500,
        benign_ips in 1u32..300,
        attacks in any::<bool>(),
        end_offset_s in 0i64..240,
    ) {
        let waf = LogSpec { seed, minutes, benign_records, benign_ips, attacks, ..LogSpec::default() };
        let cloudflare = LogSpec { format: LogFormat::Cloudflare, ..waf.clone() };
        let dir = tempfile::tempdir().unwrap();
        let (waf_path, cf_path) = (dir.path().join("waf.jsonl"), dir.path().join("cf.log.gz"));
        write(&waf_path, &waf);
        write(&cf_path, &cloudflare);

        let policy = policy();
        let end_ms = waf.start_ms + end_offset_s * 1000;
        let spec = count_spec(&policy, end_ms, 60).unwrap();
        let from_waf = count_file(&waf_path, LogFormat::Waf, &spec);
        let from_cloudflare = count_file(&cf_path, LogFormat::Cloudflare, &spec);
        prop_assert_eq!(from_cloudflare.stats().malformed, 0);
        prop_assert_eq!(from_cloudflare.stats().records, from_waf.stats().records);
        prop_assert_eq!(counts(&from_cloudflare), counts(&from_waf));
    }
}

/// Generated Cloudflare lines in every timestamp format, attacks included.
fn sample_lines() -> &'static [Vec<u8>] {
    static LINES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(generated_lines);
    &LINES
}

/// The example policy's tier matches.
fn scopes() -> &'static [RequestMatch] {
    static SCOPES: LazyLock<Vec<RequestMatch>> = LazyLock::new(|| {
        policy()
            .tiers
            .iter()
            .filter_map(|t| t.scope.clone())
            .collect()
    });
    &SCOPES
}

fn generated_lines() -> Vec<Vec<u8>> {
    use floodgate_responder::loggen::{Timestamps, records};
    [Timestamps::UnixNano, Timestamps::Unix, Timestamps::Rfc3339]
        .into_iter()
        .flat_map(|timestamps| {
            records(&LogSpec {
                format: LogFormat::Cloudflare,
                timestamps,
                minutes: 1,
                benign_records: 100,
                ..LogSpec::default()
            })
            .into_iter()
            .step_by(40)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever a line has become (cut short, text inserted anywhere, a key
    /// repeated or nested in a header map), wherever the full parse accepts
    /// it, the fast path gives the full parse's answer.
    #[test]
    fn the_fast_path_agrees_with_the_full_parse(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mutation in 0..5u8,
        text in prop::sample::select(vec![
            "", " ", "}", "{", "\\", "\"", ",\"ClientIP\":\"192.0.2.9\"",
            ",\"RequestHeaders\":{\"ClientIP\":\"192.0.2.8\"}",
            ",\"SecurityAction\":\"block\"", ",\"EdgeStartTimestamp\":12",
            ",\"ClientRequestPath\":\"/lo\\u0067in\"", "\u{e9}",
        ]),
    ) {
        let mut line = pick.get(sample_lines()).clone();
        let at = at.index(line.len() + 1);
        match mutation {
            0 => {}
            1 => line.truncate(at),
            2 => { line.splice(at..at, text.bytes()); }
            // Right after the opening brace, as a first field.
            3 => { line.splice(1..1, text.trim_start_matches(',').bytes().chain(*b",")); }
            _ => { line.splice(line.len() - 1..line.len() - 1, text.bytes()); }
        }
        if let Ok(full) = cloudflare_log::parse_hit_full_only(&line, scopes()) {
            prop_assert_eq!(cloudflare_log::parse_hit(&line, scopes()), Ok(full), "{}", String::from_utf8_lossy(&line));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Any optional field missing, null or of another type: the record is
    /// still counted, with the same client and time (and the scopes a
    /// missing path or method cannot match, not matched).
    #[test]
    fn odd_optional_fields_never_cost_the_record(
        pick in any::<prop::sample::Index>(),
        changes in prop::collection::vec((0..6usize, 0..5u8), 1..4),
    ) {
        use serde_json::json;
        const OPTIONAL: [&str; 6] = [
            "ClientRequestPath", "ClientRequestHost", "ClientRequestMethod",
            "ClientCountry", "SecurityAction", "RequestHeaders",
        ];
        let line = pick.get(sample_lines());
        let expected = cloudflare_log::parse_hit(line, &[]).unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(line).unwrap();
        for (field, change) in &changes {
            let object = record.as_object_mut().unwrap();
            let value = match change {
                0 => None,
                1 => Some(json!(null)),
                2 => Some(json!(404)),
                3 => Some(json!(["a", 1])),
                _ => Some(json!({"nested": true})),
            };
            match value {
                None => drop(object.remove(OPTIONAL[*field])),
                Some(value) => drop(object.insert(OPTIONAL[*field].to_owned(), value)),
            }
        }
        let mutated = serde_json::to_vec(&record).unwrap();
        let hit = cloudflare_log::parse_hit(&mutated, &[]);
        prop_assert!(hit.is_ok(), "{}: {:?}", String::from_utf8_lossy(&mutated), hit);
        let hit = hit.unwrap();
        prop_assert_eq!((hit.client_ip, hit.timestamp_ms), (expected.client_ip, expected.timestamp_ms));
        prop_assert!(cloudflare_log::parse_hit(&mutated, scopes()).is_ok());
    }
}

#[test]
fn the_fast_path_reads_logpush_lines_as_written() {
    let integer_times: Vec<_> = sample_lines()
        .iter()
        .filter(|l| !l.windows(5).any(|w| w == b"Z\",\"R"))
        .collect();
    assert!(integer_times.len() > 10);
    for line in integer_times {
        let fast = cloudflare_log::parse_hit_fast_only(line, scopes());
        assert!(fast.is_some(), "{}", String::from_utf8_lossy(line));
        assert_eq!(
            fast.map(Ok),
            Some(cloudflare_log::parse_hit_full_only(line, scopes()))
        );
    }
}

#[test]
fn the_attack_scenarios_are_found_in_cloudflare_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cf.log");
    let spec = LogSpec {
        format: LogFormat::Cloudflare,
        timestamps: floodgate_responder::loggen::Timestamps::Rfc3339,
        ..LogSpec::default()
    };
    write(&path, &spec);
    let policy = policy();
    let end_ms = spec.start_ms + 5 * 60_000;
    let traffic = count_file(
        &path,
        LogFormat::Cloudflare,
        &count_spec(&policy, end_ms, 300).unwrap(),
    );
    let tiers: BTreeMap<String, String> =
        floodgate_responder::detect::detect(&traffic, &policy, 300)
            .iter()
            .filter_map(|o| Some((o.net.to_string(), o.tier.as_ref()?.to_string())))
            .collect();
    assert_eq!(tiers["203.0.113.66/32"], "block-24h", "{tiers:?}");
    assert_eq!(tiers["192.0.2.44/32"], "login-flood", "{tiers:?}");
    assert_eq!(tiers["2001:db8:64:64::/64"], "block", "{tiers:?}");
}

const BUCKET: &str = "cloudflare-logs-test";
/// 2026-12-05T00:02:00Z: the window [23:57, 00:02] spans two day folders.
const END_MS: i64 = 1_796_428_920_000;
const MINUTE: i64 = 60_000;

/// A Logpush object name for the batch from `start_ms` to `end_ms`.
fn logpush_name(start_ms: i64, end_ms: i64, hash: &str) -> String {
    let stamp = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap();
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    format!("{}_{}_{hash}.log.gz", stamp(start_ms), stamp(end_ms))
}

/// `count` Cloudflare records from `ip`, evenly over `[from_ms, to_ms)`.
fn records(ip: &str, count: i64, from_ms: i64, to_ms: i64) -> Vec<String> {
    (0..count)
        .map(|i| cloudflare_record(from_ms + i * (to_ms - from_ms) / count, ip))
        .collect()
}

/// Requests per key over the widest window.
fn per_key(traffic: &Traffic) -> BTreeMap<String, u32> {
    let widest = traffic.spec().widest();
    traffic
        .iter()
        .filter_map(|(_, net, counts)| Some((net.to_string(), counts.requests(widest)?)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logpush_objects_in_s3_are_read_by_day_folder_or_flat() {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .unwrap();
    moto.create_bucket(BUCKET).await;
    let at = |minutes_before_end: i64| END_MS - minutes_before_end * MINUTE;
    // Two batches in the window, on both sides of midnight; one from the
    // morning before, outside it.
    let before_midnight = records("203.0.113.1", 40, at(4), at(2));
    let mut after_midnight = records("203.0.113.1", 25, at(2), END_MS);
    after_midnight.extend(records("2001:db8::7", 12, at(2), END_MS));
    let morning = records("203.0.113.99", 500, at(14 * 60), at(14 * 60 - 5));
    let batches = [
        (at(5), at(2), "1a2b3c4d", &before_midnight),
        (at(2), END_MS, "5e6f7a8b", &after_midnight),
        (at(14 * 60), at(14 * 60 - 5), "9c0d1e2f", &morning),
    ];
    let day = |ms: i64| format!("{}/", &logpush_name(ms, ms, "x")[..8]);
    let mut objects = Vec::new();
    for (start, end, hash, lines) in batches {
        let name = logpush_name(start, end, hash);
        objects.push((format!("daily/{}{name}", day(start)), gzip_lines(lines)));
        objects.push((format!("flat/{name}"), gzip_lines(lines)));
    }
    // Logpush's proof that it may write there: not a log.
    for folder in ["daily/", "flat/"] {
        objects.push((
            format!("{folder}ownership-challenge-0a1b2c3d.txt"),
            b"d8f5c3e7a1b94f20".to_vec(),
        ));
    }
    moto.put_objects(BUCKET, objects).await;

    let spec = CountSpec::new(END_MS, &[300]).unwrap();
    for prefix in ["daily", "flat/"] {
        let source =
            S3Source::new(moto.s3_client(), BUCKET, prefix).with_format(LogFormat::Cloudflare);
        let traffic = source.count(&spec).await.unwrap();
        assert_eq!(
            per_key(&traffic),
            BTreeMap::from([
                ("203.0.113.1/32".to_owned(), 65),
                ("2001:db8::/64".to_owned(), 12),
            ]),
            "{prefix}"
        );
        let stats = traffic.stats();
        assert_eq!(
            (stats.objects, stats.malformed, stats.skipped_objects),
            (2, 0, 0),
            "{prefix}: only the window's batches are fetched"
        );
        // The newest record: the last of the after-midnight batch.
        assert_eq!(
            source.newest_timestamp().await.unwrap(),
            Some(at(2) + 24 * (END_MS - at(2)) / 25),
            "{prefix}"
        );
    }

    // A prefix with nothing under it is a mistake, said as such.
    let error = S3Source::new(moto.s3_client(), BUCKET, "logs/")
        .with_format(LogFormat::Cloudflare)
        .count(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("s3://cloudflare-logs-test/logs/") && error.contains("{DATE}"),
        "{error}"
    );

    // Everything under a prefix (review --logs): every batch, no challenge.
    let everything = S3Source::new(moto.s3_client(), BUCKET, "flat")
        .with_format(LogFormat::Cloudflare)
        .count_everything(&CountSpec::new(END_MS, &[u32::MAX]).unwrap())
        .await
        .unwrap();
    let stats = everything.stats();
    assert_eq!((stats.objects, stats.records, stats.malformed), (3, 577, 0));
}
