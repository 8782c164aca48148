//! The full parse: serde over every field we use; unknown fields ignored,
//! optional ones read leniently ([`super::lenient`]).

use std::borrow::Cow;
use std::net::IpAddr;

use floodgate_rules::policy::RequestFields;
use serde::Deserialize;

use super::lenient::{self, Named};
use super::{Action, BadLine, Hit};

/// Every field of a WAF record that Floodgate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The terminating action.
    pub action: Action,
    /// The rule that decided (`Default_Action` when none did).
    pub terminating_rule_id: String,
    /// `httpRequest.clientIp`.
    pub client_ip: IpAddr,
    /// `httpRequest.country`, ISO 3166 alpha-2 (`-` when unknown).
    pub country: String,
    /// `httpRequest.uri`.
    pub uri: String,
    /// `httpRequest.httpMethod`.
    pub http_method: String,
    /// The `host` header, if sent.
    pub host: Option<String>,
    /// The configured tenant header, if asked for and sent.
    pub tenant: Option<String>,
    /// The web ACL's ARN.
    pub webacl_id: String,
    /// `ALB`, `CF`, `APIGW`, `APPSYNC`...
    pub http_source_name: String,
    /// Label names, in record order.
    pub labels: Vec<String>,
}

impl WafRecord {
    /// The fields a tier's `match` reads.
    pub fn request_fields(&self) -> RequestFields<'_> {
        RequestFields {
            uri: self.uri.as_bytes(),
            method: self.http_method.as_bytes(),
            country: self.country.as_bytes(),
            host: self.host.as_deref().map(str::as_bytes),
            action: self.action.as_str().as_bytes(),
            labels: &self.labels,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRecord<'a> {
    timestamp: i64,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    terminating_rule_id: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    webacl_id: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    http_source_name: Cow<'a, str>,
    #[serde(borrow)]
    http_request: RawRequest<'a>,
    #[serde(default, borrow, deserialize_with = "lenient::named")]
    labels: Vec<Named<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest<'a> {
    #[serde(borrow)]
    client_ip: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    country: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    uri: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::string")]
    http_method: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "lenient::named")]
    headers: Vec<Named<'a>>,
}

fn parse_raw(line: &[u8]) -> Result<RawRecord<'_>, BadLine> {
    let raw: RawRecord<'_> = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            let message = e.to_string();
            let field = match &message {
                m if m.contains("timestamp") => "timestamp",
                m if m.contains("clientIp") => "httpRequest.clientIp",
                m if m.contains("httpRequest") => "httpRequest",
                m if m.contains("action") => "action",
                _ => "a record field",
            };
            if message.starts_with("duplicate field") {
                BadLine::DuplicateField(field)
            } else {
                BadLine::MissingField(field)
            }
        } else {
            BadLine::NotJson(e.to_string())
        }
    })?;
    Ok(raw)
}

fn checked_hit(raw: &RawRecord<'_>) -> Result<Hit, BadLine> {
    let client_ip = raw
        .http_request
        .client_ip
        .parse::<IpAddr>()
        .map_err(|_| BadLine::BadClientIp(raw.http_request.client_ip.to_string()))?;
    let action = Action::from_bytes(raw.action.as_bytes())
        .ok_or_else(|| BadLine::UnknownAction(raw.action.to_string()))?;
    Ok(Hit {
        timestamp_ms: raw.timestamp,
        client_ip,
        action,
        scopes: 0,
    })
}

/// The counting fields by full parse.
pub(super) fn parse_hit(line: &[u8]) -> Result<Hit, BadLine> {
    checked_hit(&parse_raw(line)?)
}

/// Parses every field Floodgate reads. `tenant_header` names the header
/// that carries the tenant id (case-insensitive), if any.
pub fn parse_record(line: &[u8], tenant_header: Option<&str>) -> Result<WafRecord, BadLine> {
    let raw = parse_raw(line)?;
    let hit = checked_hit(&raw)?;
    let header = |name: &str| {
        raw.http_request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| h.value.as_deref().map(str::to_owned))
    };
    Ok(WafRecord {
        timestamp_ms: hit.timestamp_ms,
        action: hit.action,
        terminating_rule_id: raw.terminating_rule_id.to_string(),
        client_ip: hit.client_ip,
        country: raw.http_request.country.to_string(),
        uri: raw.http_request.uri.to_string(),
        http_method: raw.http_request.http_method.to_string(),
        host: header("host"),
        tenant: tenant_header.and_then(header),
        webacl_id: raw.webacl_id.to_string(),
        http_source_name: raw.http_source_name.to_string(),
        labels: raw
            .labels
            .into_iter()
            .map(|l| l.name.into_owned())
            .collect(),
    })
}
