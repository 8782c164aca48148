//! AWS WAF log records: one JSON object per line, as WAF writes them to
//! CloudWatch Logs, S3 or Firehose (AWS WAF developer guide, "Log fields for
//! web ACL traffic").
//!
//! Counting needs three fields of each record, which [`parse_hit`] takes
//! from the raw bytes on a fast path and from a full parse when the fast
//! path cannot vouch for a line. The two agree on every record the full
//! parse accepts; a line it rejects (damaged away from those fields, or
//! with a duplicate key) may still be counted on the fast path when the
//! three fields are whole. [`parse_record`] reads every field detection
//! and reports use.
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::waflog::{Action, parse_hit, parse_record};
//!
//! let line = br#"{"timestamp":1700000000123,"formatVersion":1,"webaclId":"arn:aws:wafv2:eu-west-1:111122223333:regional/webacl/app/1","terminatingRuleId":"Default_Action","terminatingRuleType":"REGULAR","action":"ALLOW","httpSourceName":"ALB","httpRequest":{"clientIp":"203.0.113.7","country":"NL","headers":[{"name":"host","value":"api.example.com"}],"uri":"/v1/items","httpMethod":"GET"}}"#;
//! let hit = parse_hit(line).unwrap();
//! assert_eq!(hit.client_ip.to_string(), "203.0.113.7");
//! assert_eq!(hit.action, Action::Allow);
//! let record = parse_record(line, Some("x-tenant-id")).unwrap();
//! assert_eq!(record.host.as_deref(), Some("api.example.com"));
//! ```

pub(crate) mod fast;
mod full;
pub(crate) mod lenient;

use std::fmt;
use std::net::IpAddr;

use floodgate_rules::policy::{RequestFields, RequestMatch};

pub use full::{WafRecord, parse_record};

/// A WAF record's terminating action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `ALLOW`.
    Allow,
    /// `BLOCK`.
    Block,
    /// `COUNT` (only in rule lists, kept for completeness).
    Count,
    /// `CAPTCHA`.
    Captcha,
    /// `CHALLENGE`.
    Challenge,
}

impl Action {
    /// Every action, in report order.
    pub const ALL: [Action; 5] = [
        Action::Allow,
        Action::Block,
        Action::Count,
        Action::Captcha,
        Action::Challenge,
    ];

    /// Reads an action as WAF writes it.
    pub fn from_bytes(text: &[u8]) -> Option<Action> {
        Some(match text {
            b"ALLOW" => Action::Allow,
            b"BLOCK" => Action::Block,
            b"COUNT" => Action::Count,
            b"CAPTCHA" => Action::Captcha,
            b"CHALLENGE" => Action::Challenge,
            _ => return None,
        })
    }

    /// The action as WAF writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Block => "BLOCK",
            Action::Count => "COUNT",
            Action::Captcha => "CAPTCHA",
            Action::Challenge => "CHALLENGE",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What counting needs of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `httpRequest.clientIp`.
    pub client_ip: IpAddr,
    /// The terminating action.
    pub action: Action,
    /// Bit `i` set: the request matches the count's `i`-th tier match
    /// ([`crate::traffic::CountSpec::scopes`]); 0 when none was asked.
    pub scopes: u32,
}

/// Why a line is not a usable record. Such lines are counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// Not JSON, truncated, or not valid UTF-8.
    #[error("not a complete JSON record: {0}")]
    NotJson(String),
    /// JSON, but a field detection needs is missing or of the wrong type.
    #[error("missing or invalid field {0}")]
    MissingField(&'static str),
    /// A field detection needs appears twice in one object.
    #[error("field {0} appears twice")]
    DuplicateField(&'static str),
    /// `httpRequest.clientIp` is not an IP address.
    #[error("clientIp {0:?} is not an IP address")]
    BadClientIp(String),
    /// `action` is not one WAF writes.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

/// The counting fields of one line: fast path first, full parse when the
/// fast path cannot vouch for the line.
pub fn parse_hit(line: &[u8]) -> Result<Hit, BadLine> {
    match fast::extract_hit(line) {
        Some(hit) => Ok(hit),
        None => full::parse_hit(line),
    }
}

/// The counting fields of one line, with the bits of the `scopes` it
/// matches ([`Hit::scopes`]). Without scopes, [`parse_hit`]. With them,
/// the fast path also reads the path and country, and the method only for
/// a match that names one and passed its other tests; a match on the host
/// header or a label, or a line the fast path cannot vouch for, is decided
/// by the full parse.
pub fn parse_hit_scoped(line: &[u8], scopes: &[RequestMatch]) -> Result<Hit, BadLine> {
    if scopes.is_empty() {
        return parse_hit(line);
    }
    if !scopes.iter().any(RequestMatch::needs_full_record)
        && let Some((mut hit, ip_end)) = fast::extract_hit_at(line)
        && let Some(bits) = fast_scope_bits(line, ip_end, hit.action, scopes)
    {
        hit.scopes = bits;
        return Ok(hit);
    }
    let record = parse_record(line, None)?;
    Ok(Hit {
        timestamp_ms: record.timestamp_ms,
        client_ip: record.client_ip,
        action: record.action,
        scopes: scope_bits(scopes, &record.request_fields()),
    })
}

/// [`scope_bits`] on the fast path, or `None` where it cannot vouch for a
/// field it needs. Most requests fail a match on their path, so the method
/// (the farthest field) is read only for a match still standing: each is
/// first tested as if the method were its own.
fn fast_scope_bits(
    line: &[u8],
    ip_end: usize,
    action: Action,
    scopes: &[RequestMatch],
) -> Option<u32> {
    let (uri, country, uri_end) = fast::extract_uri_country(line, ip_end)?;
    let mut sent_method = None;
    let mut bits = 0;
    for (i, scope) in scopes.iter().enumerate() {
        let mut request = RequestFields {
            uri,
            method: scope.method.as_deref().unwrap_or_default().as_bytes(),
            country,
            host: None,
            action: action.as_str().as_bytes(),
            labels: &[],
        };
        if !scope.matches(&request) {
            continue;
        }
        if scope.method.is_some() {
            let method = match sent_method {
                Some(method) => method,
                None => *sent_method.insert(fast::extract_method(line, uri_end)?),
            };
            request.method = method;
            if !scope.matches(&request) {
                continue;
            }
        }
        bits |= 1 << i;
    }
    Some(bits)
}

/// Bit `i` set for each `scopes[i]` the request matches.
pub(crate) fn scope_bits(scopes: &[RequestMatch], request: &RequestFields<'_>) -> u32 {
    scopes
        .iter()
        .enumerate()
        .filter(|(_, scope)| scope.matches(request))
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// The fast path alone, for tests and benchmarks: `None` when it would
/// fall back to the full parse.
pub fn parse_hit_fast_only(line: &[u8]) -> Option<Hit> {
    fast::extract_hit(line)
}

/// The full parse alone, for tests and benchmarks.
pub fn parse_hit_full_only(line: &[u8]) -> Result<Hit, BadLine> {
    full::parse_hit(line)
}
