//! Cloudflare's request logs: the `http_requests` dataset as Logpush writes
//! it, one JSON object per line (NDJSON, the default output type).
//!
//! Field names and values follow Cloudflare's "HTTP requests" log fields
//! page (developers.cloudflare.com/logs/reference/log-fields/zone/http_requests);
//! the timestamp formats follow "Log Output Options" (`timestamp_format`).
//! A record becomes the same [`Hit`] a WAF record does, so the counting
//! engine, prefix keys and scoped tiers treat both alike:
//!
//! | Tier match / count | Cloudflare field                  |
//! |--------------------|-----------------------------------|
//! | client address     | `ClientIP`                        |
//! | time               | `EdgeStartTimestamp`              |
//! | `path`, `path_prefix` | `ClientRequestPath` (no query) |
//! | `host`             | `ClientRequestHost`               |
//! | `method`           | `ClientRequestMethod`             |
//! | `country`          | `ClientCountry` (in capitals)     |
//! | `action`           | `SecurityAction`, as below        |
//!
//! As for WAF's records, a fast path reads these fields straight from the
//! bytes of a compact line (each key matched with its quotes and colon, at
//! the top level of the object, and the line whole: braces balanced, ASCII)
//! and leaves every line it cannot vouch for (escapes, spacing, an RFC 3339
//! time, a key inside a nested header map) to the full parse, whose answer
//! it gives on every line the full parse accepts. A line the full parse
//! rejects only for a repeated key, or for damage away from the fields
//! read, may still be counted, as with WAF's records.
//!
//! `SecurityAction` names the action of the security rule that ended the
//! request, if any. `block`, `connectionClose` and `forceConnectionClose`
//! refused it (`BLOCK`); `challenge`, `jschallenge` and `managedChallenge`
//! answered with a challenge (`CHALLENGE`); everything else let it through
//! (`ALLOW`): no action, `allow`, `skip`, `bypass`, `log`, `rewrite`, a
//! solved or bypassed challenge, and any value added after this was
//! written, so that a new value never turns a record into a malformed line.
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::cloudflare_log::parse_hit;
//! use floodgate_responder::waflog::Action;
//!
//! let line = br#"{"ClientIP":"203.0.113.7","EdgeStartTimestamp":1795168800123000000,"SecurityAction":"block"}"#;
//! let hit = parse_hit(line, &[]).unwrap();
//! assert_eq!(hit.client_ip.to_string(), "203.0.113.7");
//! assert_eq!(hit.timestamp_ms, 1_795_168_800_123);
//! assert_eq!(hit.action, Action::Block);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use floodgate_rules::policy::{RequestFields, RequestMatch};

use crate::waflog::fast::{at_top_level, parse_integer, parse_ip, scan_braces, string_value};
use crate::waflog::{Action, BadLine, Hit, scope_bits};

static CLIENT_IP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ClientIP":"#));
static EDGE_START: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(br#""EdgeStartTimestamp":"#));
static SECURITY_ACTION: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(br#""SecurityAction":"#));
static PATH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ClientRequestPath":"#));
static HOST: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ClientRequestHost":"#));
static METHOD: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(br#""ClientRequestMethod":"#));
static COUNTRY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ClientCountry":"#));

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(rename = "ClientIP", default, borrow)]
    client_ip: Option<Cow<'a, str>>,
    #[serde(rename = "EdgeStartTimestamp", default)]
    edge_start: Option<EdgeTime>,
    #[serde(
        rename = "ClientRequestPath",
        default,
        borrow,
        deserialize_with = "crate::waflog::lenient::optional_string"
    )]
    path: Option<Cow<'a, str>>,
    #[serde(
        rename = "ClientRequestHost",
        default,
        borrow,
        deserialize_with = "crate::waflog::lenient::optional_string"
    )]
    host: Option<Cow<'a, str>>,
    #[serde(
        rename = "ClientRequestMethod",
        default,
        borrow,
        deserialize_with = "crate::waflog::lenient::optional_string"
    )]
    method: Option<Cow<'a, str>>,
    #[serde(
        rename = "ClientCountry",
        default,
        borrow,
        deserialize_with = "crate::waflog::lenient::optional_string"
    )]
    country: Option<Cow<'a, str>>,
    #[serde(
        rename = "SecurityAction",
        default,
        borrow,
        deserialize_with = "crate::waflog::lenient::optional_string"
    )]
    security_action: Option<Cow<'a, str>>,
}

/// The counting fields of one Cloudflare record, with the bits of the
/// `scopes` it matches ([`Hit::scopes`]): fast path first, the full parse
/// when the fast path cannot vouch for the line.
pub fn parse_hit(line: &[u8], scopes: &[RequestMatch]) -> Result<Hit, BadLine> {
    match fast_hit(line, scopes) {
        Some(hit) => Ok(hit),
        None => parse_hit_full_only(line, scopes),
    }
}

/// A top-level field as the fast path reads it.
enum Field<'a> {
    Absent,
    Null,
    Text(&'a [u8]),
    Integer(i64),
}

/// The field `key` names, or `None` where the fast path cannot vouch for
/// it: found away from the top level or after anything but `{` or `,`, a
/// value with escapes, spaces or a type of its own, or a key written with
/// a space before its colon.
fn field<'a>(line: &'a [u8], key: &Finder<'_>) -> Option<Field<'a>> {
    let Some(at) = key.find(line) else {
        // Absent, unless the key is there spaced from its colon.
        let quoted = &key.needle()[..key.needle().len() - 1];
        return memchr::memmem::find(line, quoted)
            .is_none()
            .then_some(Field::Absent);
    };
    if !matches!(line.get(at.wrapping_sub(1)), Some(b'{' | b',')) || !at_top_level(line, at) {
        return None;
    }
    let value = at + key.needle().len();
    match line.get(value)? {
        b'"' => string_value(line, value + 1).map(Field::Text),
        b'n' if line[value..].starts_with(b"null") => Some(Field::Null),
        b'0'..=b'9' => parse_integer(&line[value..]).map(Field::Integer),
        _ => None,
    }
}

/// A text field, empty when absent or null; `None` for another type.
fn text<'a>(line: &'a [u8], key: &Finder<'_>) -> Option<Option<&'a [u8]>> {
    match field(line, key)? {
        Field::Absent | Field::Null => Some(None),
        Field::Text(text) => Some(Some(text)),
        Field::Integer(_) => None,
    }
}

fn fast_hit(line: &[u8], scopes: &[RequestMatch]) -> Option<Hit> {
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return None;
    }
    let (balance, ascii) = scan_braces(line);
    if balance != 0 || !ascii {
        return None;
    }
    let client_ip = parse_ip(text(line, &CLIENT_IP)??)?;
    // An RFC 3339 time is left to the full parse.
    let Field::Integer(time) = field(line, &EDGE_START)? else {
        return None;
    };
    let action = security_action(text(line, &SECURITY_ACTION)?.unwrap_or_default());
    let mut bits = 0;
    if !scopes.is_empty() {
        // A country code is two letters: upper-cased on the stack.
        let mut country = [0u8; 2];
        let sent = text(line, &COUNTRY)?.unwrap_or_default();
        let country = country.get_mut(..sent.len())?;
        country.copy_from_slice(sent);
        country.make_ascii_uppercase();
        let request = RequestFields {
            uri: text(line, &PATH)?.unwrap_or_default(),
            method: text(line, &METHOD)?.unwrap_or_default(),
            country,
            host: text(line, &HOST)?,
            action: action.as_str().as_bytes(),
            labels: &[],
        };
        bits = scope_bits(scopes, &request);
    }
    Some(Hit {
        timestamp_ms: integer_time_ms(time),
        client_ip,
        action,
        scopes: bits,
    })
}

/// The fast path alone, for tests and benchmarks: `None` when it would
/// leave the line to the full parse.
pub fn parse_hit_fast_only(line: &[u8], scopes: &[RequestMatch]) -> Option<Hit> {
    fast_hit(line, scopes)
}

/// The full parse alone, for tests and benchmarks.
pub fn parse_hit_full_only(line: &[u8], scopes: &[RequestMatch]) -> Result<Hit, BadLine> {
    let record: RawRecord<'_> =
        serde_json::from_slice(line).map_err(|e| BadLine::NotJson(e.to_string()))?;
    let client_ip = record.client_ip.ok_or(BadLine::MissingField("ClientIP"))?;
    let client_ip: IpAddr = client_ip
        .parse()
        .map_err(|_| BadLine::BadClientIp(client_ip.into_owned()))?;
    let timestamp_ms = record
        .edge_start
        .ok_or(BadLine::MissingField("EdgeStartTimestamp"))?
        .0;
    let action = security_action(
        record
            .security_action
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    let scopes = if scopes.is_empty() {
        0
    } else {
        let country = record
            .country
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let request = RequestFields {
            uri: record.path.as_deref().unwrap_or_default().as_bytes(),
            method: record.method.as_deref().unwrap_or_default().as_bytes(),
            country: country.as_bytes(),
            host: record.host.as_deref().map(str::as_bytes),
            action: action.as_str().as_bytes(),
            labels: &[],
        };
        scope_bits(scopes, &request)
    };
    Ok(Hit {
        timestamp_ms,
        client_ip,
        action,
        scopes,
    })
}

/// The WAF action a `SecurityAction` value amounts to (see the module docs).
pub fn security_action(value: &[u8]) -> Action {
    match value {
        b"block" | b"connectionClose" | b"forceConnectionClose" => Action::Block,
        b"challenge" | b"jschallenge" | b"managedChallenge" => Action::Challenge,
        _ => Action::Allow,
    }
}

/// `EdgeStartTimestamp` in milliseconds since the epoch, from any
/// `timestamp_format` Logpush writes: `unixnano` (the default) and `unix`
/// as integers, `rfc3339` as a string (with or without a fraction of a
/// second). Integers are told apart by size: seconds until the year 5138,
/// nanoseconds from 1973; milliseconds and microseconds in between are
/// read as such too.
struct EdgeTime(i64);

impl<'de> Deserialize<'de> for EdgeTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EdgeTimeVisitor)
    }
}

struct EdgeTimeVisitor;

impl Visitor<'_> for EdgeTimeVisitor {
    type Value = EdgeTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Unix time in seconds or nanoseconds, or an RFC 3339 time")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<EdgeTime, E> {
        Ok(EdgeTime(integer_time_ms(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<EdgeTime, E> {
        i64::try_from(value)
            .map(|v| EdgeTime(integer_time_ms(v)))
            .map_err(|_| E::custom(format!("time {value} is out of range")))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<EdgeTime, E> {
        let time = OffsetDateTime::parse(value, &Rfc3339)
            .map_err(|e| E::custom(format!("time {value:?} is not RFC 3339: {e}")))?;
        Ok(EdgeTime((time.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

fn integer_time_ms(value: i64) -> i64 {
    match value.unsigned_abs() {
        0..100_000_000_000 => value.saturating_mul(1000),
        100_000_000_000..100_000_000_000_000 => value,
        100_000_000_000_000..100_000_000_000_000_000 => value / 1000,
        _ => value / 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-20T10:00:00.123Z.
    const MS: i64 = 1_795_168_800_123;

    fn line(timestamp: &str, rest: &str) -> Vec<u8> {
        format!(r#"{{"ClientIP":"2001:db8::7","EdgeStartTimestamp":{timestamp}{rest}}}"#)
            .into_bytes()
    }

    #[test]
    fn every_logpush_timestamp_format_reads_as_the_same_millisecond() {
        for (timestamp, expected) in [
            ("1795168800123456789", MS),
            ("1795168800", MS - 123),
            (r#""2026-11-20T10:00:00Z""#, MS - 123),
            (r#""2026-11-20T10:00:00.123Z""#, MS),
            (r#""2026-11-20T10:00:00.123456789Z""#, MS),
            (r#""2026-11-20T11:00:00.123+01:00""#, MS),
            ("1795168800123", MS),
            ("1795168800123456", MS),
        ] {
            let hit = parse_hit(&line(timestamp, ""), &[]).unwrap();
            assert_eq!(hit.timestamp_ms, expected, "{timestamp}");
        }
    }

    #[test]
    fn a_record_without_an_address_or_a_time_is_malformed() {
        assert_eq!(
            parse_hit(br#"{"EdgeStartTimestamp":1795168800}"#, &[]),
            Err(BadLine::MissingField("ClientIP"))
        );
        assert_eq!(
            parse_hit(br#"{"ClientIP":"192.0.2.1"}"#, &[]),
            Err(BadLine::MissingField("EdgeStartTimestamp"))
        );
        assert_eq!(
            parse_hit(
                br#"{"ClientIP":"nope","EdgeStartTimestamp":1795168800}"#,
                &[]
            ),
            Err(BadLine::BadClientIp("nope".to_owned()))
        );
        for bad in [
            &br#"{"ClientIP":"192.0.2.1","EdgeStartTimestamp":"yesterday"}"#[..],
            br#"{"ClientIP":"192.0.2.1","EdgeStartTimestamp":1795168800"#,
            br#"{"ClientIP":"192.0.2.1","EdgeStartTimestamp":true}"#,
        ] {
            assert!(
                matches!(parse_hit(bad, &[]), Err(BadLine::NotJson(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_repeated_key_is_refused_by_the_full_parse_and_read_first_on_the_fast_path() {
        let line = br#"{"ClientIP":"192.0.2.1","ClientIP":"192.0.2.2","EdgeStartTimestamp":1}"#;
        assert!(matches!(
            parse_hit_full_only(line, &[]),
            Err(BadLine::NotJson(_))
        ));
        assert_eq!(
            parse_hit(line, &[]).unwrap().client_ip.to_string(),
            "192.0.2.1"
        );
    }

    #[test]
    fn security_actions_map_to_what_the_request_met() {
        for (value, action) in [
            ("block", Action::Block),
            ("connectionClose", Action::Block),
            ("forceConnectionClose", Action::Block),
            ("challenge", Action::Challenge),
            ("jschallenge", Action::Challenge),
            ("managedChallenge", Action::Challenge),
            ("managedChallengeInteractiveSolved", Action::Allow),
            ("challengeBypassed", Action::Allow),
            ("log", Action::Allow),
            ("skip", Action::Allow),
            ("unknown", Action::Allow),
            ("", Action::Allow),
            ("somethingNew", Action::Allow),
        ] {
            let rest = format!(r#","SecurityAction":"{value}""#);
            assert_eq!(
                parse_hit(&line("1795168800", &rest), &[]).unwrap().action,
                action,
                "{value}"
            );
        }
        // No SecurityAction field at all, or a null one.
        assert_eq!(
            parse_hit(&line("1795168800", r#","SecurityAction":null"#), &[])
                .unwrap()
                .action,
            Action::Allow
        );
    }

    #[test]
    fn tier_matches_read_the_request_fields_as_waf_writes_them() {
        let text = r#"
[[tiers]]
name = "login"
requests = 10
window_seconds = 60
action = "block"
block_minutes = 5
match = { path = "/login", method = "POST", country = "NL", host = "api.example.com" }

[[tiers]]
name = "blocked"
requests = 10
window_seconds = 60
action = "observe"
match = { action = "BLOCK" }
"#;
        let policy =
            floodgate_rules::Policy::from_toml(text, "t.toml", time::macros::date!(2026 - 11 - 20))
                .unwrap()
                .policy;
        let scopes: Vec<RequestMatch> = policy
            .tiers
            .iter()
            .filter_map(|t| t.scope.clone())
            .collect();
        let request = |fields: &str| {
            parse_hit(&line("1795168800", fields), &scopes)
                .unwrap()
                .scopes
        };
        let login = r#","ClientRequestPath":"/login","ClientRequestMethod":"POST","ClientCountry":"nl","ClientRequestHost":"API.example.com""#;
        assert_eq!(request(login), 0b01);
        assert_eq!(
            request(&format!(r#"{login},"SecurityAction":"block""#)),
            0b11
        );
        let query_elsewhere = login.replace("/login", "/login/x");
        assert_eq!(request(&query_elsewhere), 0);
        assert_eq!(request(&login.replace("POST", "GET")), 0);
        assert_eq!(request(&login.replace("nl", "de")), 0);
        assert_eq!(request(r#","ClientRequestPath":"/login""#), 0);
    }
}
