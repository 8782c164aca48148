//! WAF record parsing: fixtures transcribed from the AWS WAF developer
//! guide's log examples, adversarial records, and mutated records on which
//! the fast path and the full parse must agree.

use std::net::IpAddr;
use std::path::Path;
use std::sync::LazyLock;

use floodgate_responder::loggen::{LogSpec, records};
use floodgate_responder::waflog::{
    Action, BadLine, parse_hit, parse_hit_fast_only, parse_hit_full_only, parse_hit_scoped,
    parse_record,
};
use floodgate_rules::policy::{PathMatch, RequestMatch};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/waf")
        .join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    bytes
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn documented_records_parse_the_same_on_both_paths() {
    // (fixture, client IP, action, timestamp, fast path vouches)
    let cases = [
        (
            "rate-based-block.json",
            "52.46.82.45",
            Action::Block,
            1683355579981,
            true,
        ),
        (
            "labels-count-rule.json",
            "198.51.100.72",
            Action::Allow,
            1576280412771,
            true,
        ),
        (
            "ipv6-client.json",
            "2001:db8:85a3::8a2e:370:7334",
            Action::Allow,
            1700000123456,
            true,
        ),
        (
            "captcha.json",
            "72.21.198.65",
            Action::Captcha,
            1632420429309,
            true,
        ),
        (
            "rule-group-block.json",
            "1.1.1.1",
            Action::Block,
            1592357192516,
            true,
        ),
        // The first "action" key is a nested rule's: the fast path declines.
        (
            "nested-action-first.json",
            "192.0.2.44",
            Action::Allow,
            1700000000001,
            false,
        ),
        // Keys with spaces after the colon: left to the full parse.
        (
            "pretty-printed.json",
            "192.0.2.46",
            Action::Block,
            1700000000003,
            false,
        ),
        // A header entry with no `value` (its value under another key), as
        // in the SQL-injection example of the AWS WAF guide's "Log examples".
        (
            "header-without-value.json",
            "192.0.2.47",
            Action::Block,
            1700000000004,
            true,
        ),
        // Quoted key text inside a header value and the URI never matches.
        (
            "spoofed-header-and-uri.json",
            "192.0.2.45",
            Action::Allow,
            1700000000002,
            false,
        ),
    ];
    for (name, client_ip, action, timestamp_ms, fast) in cases {
        let line = fixture(name);
        let hit = parse_hit(&line).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (hit.client_ip, hit.action, hit.timestamp_ms),
            (ip(client_ip), action, timestamp_ms),
            "{name}"
        );
        assert_eq!(parse_hit_full_only(&line), Ok(hit), "{name}");
        assert_eq!(
            parse_hit_fast_only(&line).is_some(),
            fast,
            "{name}: fast path"
        );
    }
}

#[test]
fn the_fast_path_ignores_key_text_inside_values() {
    // The spoofed fixture keeps clientIp after the decoy header; the fast
    // path still finds the real key, and says so when it can vouch.
    let line = fixture("spoofed-header-and-uri.json");
    if let Some(hit) = parse_hit_fast_only(&line) {
        assert_eq!(hit.client_ip, ip("192.0.2.45"));
    }
    // A compact record whose header *name* is clientIp and whose value is
    // an address: the fast path vouches and takes the real one.
    let decoy = br#"{"timestamp":5,"action":"ALLOW","httpRequest":{"headers":[{"name":"clientIp","value":"6.6.6.6"}],"clientIp":"192.0.2.9"}}"#;
    assert_eq!(
        parse_hit_fast_only(decoy).map(|h| h.client_ip),
        Some(ip("192.0.2.9"))
    );
}

#[test]
fn full_records_carry_labels_headers_and_tenant() {
    let record = parse_record(&fixture("labels-count-rule.json"), Some("X-Tenant-Id")).unwrap();
    assert_eq!(
        record.labels,
        [
            "awswaf:managed:aws:core-rule-set:NoUserAgent_Header",
            "awswaf:111122223333:webacl:STMTest:TestLabel"
        ]
    );
    assert_eq!(record.host.as_deref(), Some("alb.example.com"));
    assert_eq!(record.tenant.as_deref(), Some("acme-corp"));
    assert_eq!(record.country, "AU");
    assert_eq!(record.http_method, "GET");
    assert_eq!(record.uri, "/index.html");
    assert_eq!(record.http_source_name, "ALB");
    assert_eq!(record.terminating_rule_id, "Default_Action");
    assert!(
        record
            .webacl_id
            .starts_with("arn:aws:wafv2:ap-southeast-2:")
    );
    let rate = parse_record(&fixture("rate-based-block.json"), None).unwrap();
    assert_eq!(rate.terminating_rule_id, "RateBasedRule");
    assert_eq!(
        rate.host.as_deref(),
        Some("rjvegx5guh.execute-api.eu-west-1.amazonaws.com")
    );
    assert_eq!(rate.tenant, None);
}

#[test]
fn bad_lines_are_classified() {
    let good = fixture("ipv6-client.json");
    let truncated = &good[..good.len() / 2];
    assert!(matches!(parse_hit(truncated), Err(BadLine::NotJson(_))));
    let bad_ip = String::from_utf8(good.clone())
        .unwrap()
        .replace("2001:db8:85a3::8a2e:370:7334", "2001:db8::zz");
    assert_eq!(
        parse_hit(bad_ip.as_bytes()),
        Err(BadLine::BadClientIp("2001:db8::zz".into()))
    );
    let bad_action = String::from_utf8(good.clone())
        .unwrap()
        .replace(r#""action":"ALLOW""#, r#""action":"MAYBE""#);
    assert_eq!(
        parse_hit(bad_action.as_bytes()),
        Err(BadLine::UnknownAction("MAYBE".into()))
    );
    let mut not_utf8 = good.clone();
    let at = not_utf8.windows(3).position(|w| w == b"*/*").unwrap();
    not_utf8[at] = 0xff;
    assert!(matches!(parse_hit(&not_utf8), Err(BadLine::NotJson(_))));
    assert_eq!(parse_hit_fast_only(&not_utf8), None);
    assert!(matches!(
        parse_hit(b"{\"timestamp\":1}"),
        Err(BadLine::MissingField(_))
    ));
    assert!(parse_hit(b"garbage").is_err());
}

/// Generated records, the raw material of the mutations.
fn sample_lines() -> &'static [Vec<u8>] {
    static LINES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
        records(&LogSpec {
            benign_records: 300,
            minutes: 1,
            attacks: false,
            ..LogSpec::default()
        })
    });
    &LINES
}

/// Ways a real record gets damaged or made hostile.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    InvalidUtf8(usize),
    ReplaceIp(String),
    ReplaceAction(String),
    ReplaceTimestamp(String),
    HostileHeaderValue(String),
    HostileUri(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::InvalidUtf8),
        prop_oneof![
            Just("1.2.3".to_owned()),
            Just("::ffff:1.2.3.4".to_owned()),
            Just("fe80::1%eth0".to_owned()),
            "[0-9a-f.:]{0,20}"
        ]
        .prop_map(Mutation::ReplaceIp),
        prop_oneof![
            Just("BLOCK".to_owned()),
            Just("COUNT".to_owned()),
            Just("allow".to_owned()),
            "[A-Z]{0,9}"
        ]
        .prop_map(Mutation::ReplaceAction),
        prop_oneof![
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            Just("99999999999999999999".to_owned()),
            "[0-9]{1,16}"
        ]
        .prop_map(Mutation::ReplaceTimestamp),
        r#"[a-zA-Z0-9 {}\[\]:,"\\]{0,40}"#.prop_map(Mutation::HostileHeaderValue),
        r#"[a-zA-Z0-9 {}\[\]:,"\\/]{0,40}"#.prop_map(Mutation::HostileUri),
    ]
}

/// JSON-escapes hostile text, as WAF does when it logs a header or URI.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The byte after the JSON string whose opening quote is at `open`.
fn string_end(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    let mut i = open + 1;
    while bytes[i] != b'"' {
        i += if bytes[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

fn apply(line: &[u8], mutation: &Mutation) -> Vec<u8> {
    let text = String::from_utf8(line.to_vec()).unwrap();
    let replace_value = |key: &str, value: &str, quoted: bool| {
        let start = text.find(key).unwrap() + key.len();
        let end = if quoted {
            start + text[start..].find('"').unwrap()
        } else {
            start + text[start..].find(',').unwrap()
        };
        format!("{}{}{}", &text[..start], value, &text[end..]).into_bytes()
    };
    match mutation {
        Mutation::Truncate(at) => line[..at % line.len()].to_vec(),
        Mutation::InvalidUtf8(at) => {
            let mut bytes = line.to_vec();
            bytes.insert(at % line.len(), 0xc3);
            bytes
        }
        Mutation::ReplaceIp(ip) => replace_value(r#""clientIp":""#, ip, true),
        Mutation::ReplaceAction(action) => replace_value(r#""action":""#, action, true),
        Mutation::ReplaceTimestamp(ts) => replace_value(r#""timestamp":"#, ts, false),
        Mutation::HostileHeaderValue(value) => text
            .replacen(
                r#""value":"application/json""#,
                &format!(r#""value":{}"#, json_string(value)),
                1,
            )
            .into_bytes(),
        Mutation::HostileUri(uri) => {
            let start = text.find(r#""uri":"#).unwrap() + 6;
            let end = string_end(&text, start);
            format!("{}{}{}", &text[..start], json_string(uri), &text[end..]).into_bytes()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn fast_path_and_full_parse_agree_on_mutated_records(index in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..3)) {
        let lines = sample_lines();
        let mut line = lines[index % lines.len()].clone();
        for m in &mutations {
            if std::str::from_utf8(&line).is_err() || line.is_empty() {
                break;
            }
            if !matches!(m, Mutation::Truncate(_) | Mutation::InvalidUtf8(_)) && parse_hit_full_only(&line).is_err() {
                break;
            }
            line = apply(&line, m);
        }
        // Where the full parse accepts the line, the fast path reads the
        // same; a line it rejects may still be counted on the fast path
        // (a truncation that happens to balance, see fast.rs).
        let full = parse_hit_full_only(&line);
        let fast = parse_hit_fast_only(&line);
        if full.is_ok() && let Some(fast) = fast {
            prop_assert_eq!(Ok(fast), full.clone(), "{}", String::from_utf8_lossy(&line));
        }
        prop_assert_eq!(parse_hit(&line), fast.ok_or(()).or(full));
    }

    /// Tier matches read the same from a mutated record on the fast path
    /// (path, method, country, action) as from its full parse.
    #[test]
    fn scoped_hits_agree_with_the_full_record(index in any::<usize>(), mutations in prop::collection::vec(mutation(), 0..3)) {
        let lines = sample_lines();
        let mut line = lines[index % lines.len()].clone();
        for m in &mutations {
            if std::str::from_utf8(&line).is_err() || parse_hit_full_only(&line).is_err() {
                break;
            }
            line = apply(&line, m);
        }
        let scopes = fast_scopes();
        let expected = parse_record(&line, None).map(|record| {
            let request = record.request_fields();
            scopes.iter().enumerate().filter(|(_, s)| s.matches(&request)).fold(0u32, |bits, (i, _)| bits | 1 << i)
        });
        prop_assert_eq!(parse_hit_scoped(&line, &scopes).map(|hit| hit.scopes), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_hit(&bytes);
        let _ = parse_record(&bytes, Some("x-tenant-id"));
    }
}

/// What an optional field of a record may be replaced with.
fn odd_value() -> impl Strategy<Value = Option<serde_json::Value>> {
    use serde_json::json;
    prop_oneof![
        Just(None),
        Just(Some(json!(null))),
        Just(Some(json!(7))),
        Just(Some(json!(true))),
        Just(Some(json!("text"))),
        Just(Some(json!([1, "two", {"name": 3}]))),
        Just(Some(json!({"name": "x", "value": {"nested": []}}))),
    ]
}

/// Fields a WAF record may lack or carry in another shape: none of them
/// needed to count it.
const OPTIONAL_FIELDS: &[&[&str]] = &[
    &["formatVersion"],
    &["webaclId"],
    &["terminatingRuleId"],
    &["terminatingRuleType"],
    &["httpSourceName"],
    &["labels"],
    &["ruleGroupList"],
    &["httpRequest", "country"],
    &["httpRequest", "uri"],
    &["httpRequest", "httpMethod"],
    &["httpRequest", "headers"],
    &["httpRequest", "args"],
    &["httpRequest", "httpVersion"],
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any optional field missing, null, of another type or shaped
    /// otherwise, and any header entry without a value or not an object:
    /// the record is still counted, with the same key and action.
    #[test]
    fn odd_optional_fields_never_cost_the_record(
        index in any::<usize>(),
        changes in prop::collection::vec((0..OPTIONAL_FIELDS.len(), odd_value()), 1..4),
        header in any::<prop::sample::Index>(),
        header_change in 0..3u8,
    ) {
        let lines = sample_lines();
        let line = &lines[index % lines.len()];
        let expected = parse_hit(line).unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(line).unwrap();
        if let Some(headers) = record["httpRequest"]["headers"].as_array_mut()
            && !headers.is_empty()
        {
            let at = header.index(headers.len());
            match header_change {
                0 => drop(headers[at].as_object_mut().unwrap().remove("value")),
                1 => headers[at] = serde_json::json!("not an object"),
                _ => headers[at]["value"] = serde_json::json!(42),
            }
        }
        for (field, value) in &changes {
            let path = OPTIONAL_FIELDS[*field];
            let (last, parents) = path.split_last().unwrap();
            let mut parent = &mut record;
            for key in parents {
                parent = &mut parent[*key];
            }
            let object = parent.as_object_mut().unwrap();
            match value {
                None => drop(object.remove(*last)),
                Some(value) => drop(object.insert((*last).to_owned(), value.clone())),
            }
        }
        let mutated = serde_json::to_vec(&record).unwrap();
        let text = String::from_utf8_lossy(&mutated).into_owned();
        prop_assert_eq!(parse_hit(&mutated), Ok(expected), "{}", text);
        let full = parse_record(&mutated, Some("x-tenant-id"));
        prop_assert!(full.is_ok(), "{}: {:?}", text, full);
    }
}

#[test]
fn a_header_without_a_value_matches_nothing_and_costs_nothing() {
    let line = fixture("header-without-value.json");
    let record = parse_record(&line, Some("myHeader")).unwrap();
    assert_eq!(record.tenant, None, "no value, no tenant");
    assert_eq!(record.host.as_deref(), Some("localhost:1989"));
    assert_eq!(record.uri, "/myUri");
}

/// Matches the fast path reads: path, method, country and action.
fn fast_scopes() -> Vec<RequestMatch> {
    let only = |path: Option<PathMatch>,
                method: Option<&str>,
                country: Option<&str>,
                action: Option<&str>| RequestMatch {
        path,
        method: method.map(str::to_owned),
        country: country.map(str::to_owned),
        action: action.map(str::to_owned),
        ..Default::default()
    };
    vec![
        only(
            Some(PathMatch::Exact("/login".into())),
            Some("POST"),
            None,
            None,
        ),
        only(Some(PathMatch::Prefix("/v1/".into())), None, None, None),
        only(None, None, Some("US"), None),
        only(None, Some("GET"), None, Some("BLOCK")),
    ]
}

#[test]
fn tier_matches_select_the_generated_login_flood() {
    let scopes = fast_scopes();
    let mut login = 0;
    for line in sample_lines() {
        let hit = parse_hit_scoped(line, &scopes).unwrap();
        let record = parse_record(line, None).unwrap();
        assert_eq!(
            hit.scopes & 1 != 0,
            record.uri == "/login" && record.http_method == "POST"
        );
        assert_eq!(hit.scopes & 2 != 0, record.uri.starts_with("/v1/"));
        login += usize::from(hit.scopes & 1 != 0);
    }
    assert!(login > 0, "the sample holds login attempts");
    // A match on the host header goes through the full record.
    let host = RequestMatch {
        host: Some("API.example.com".to_ascii_lowercase()),
        ..Default::default()
    };
    let line = &sample_lines()[0];
    assert_eq!(parse_hit_scoped(line, &[host]).unwrap().scopes, 1);
}

#[test]
fn the_fast_path_vouches_for_generated_records() {
    // The fast path must actually carry the load on real-shaped records.
    let lines = sample_lines();
    assert!(lines.len() >= 300);
    for line in lines {
        assert_eq!(
            parse_hit_fast_only(line).map(Ok),
            Some(parse_hit_full_only(line))
        );
    }
}

/// Found by the fuzz target `waf_record`: a record whose JSON is broken
/// away from the counting fields (a header's key here), with its quotes,
/// braces and UTF-8 intact. The full parse rejects it; the fast path, which
/// does not check every byte's grammar, counts it as the record it was
/// (see `waflog/fast.rs`).
#[test]
fn a_record_broken_away_from_the_counting_fields_is_counted() {
    let clean = sample_lines()[0].clone();
    let text = String::from_utf8(clean.clone()).unwrap();
    assert!(text.contains(r#"{"name":"host""#));
    let broken = text.replacen(r#"{"name":"host""#, r#"{"n"a:me"host""#, 1);
    assert!(matches!(
        parse_hit_full_only(broken.as_bytes()),
        Err(BadLine::NotJson(_))
    ));
    assert_eq!(
        parse_hit_fast_only(broken.as_bytes()),
        Some(parse_hit(&clean).unwrap())
    );
    // Found by the property test: a record cut right after a `}`, whose
    // braces balance only by two inside a header's value.
    let hostile = text.replacen(r#""value":"application/json""#, r#""value":"}}""#, 1);
    let cut = &hostile[..hostile.find(r#""}],"uri""#).unwrap() + 2];
    assert!(matches!(
        parse_hit_full_only(cut.as_bytes()),
        Err(BadLine::NotJson(_))
    ));
    assert_eq!(
        parse_hit_fast_only(cut.as_bytes()),
        Some(parse_hit(&clean).unwrap())
    );
}

#[test]
fn a_duplicated_counting_field_is_reported_as_duplicated() {
    let clean = String::from_utf8(sample_lines()[0].clone()).unwrap();
    let twice = clean.replacen('{', r#"{"timestamp":1,"#, 1);
    let error = parse_hit_full_only(twice.as_bytes()).unwrap_err();
    assert!(
        matches!(error, BadLine::DuplicateField("timestamp")),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "field timestamp appears twice");
    let missing = clean.replacen(r#""action":"#, r#""actio":"#, 1);
    assert!(matches!(
        parse_hit_full_only(missing.as_bytes()),
        Err(BadLine::MissingField("action"))
    ));
}
