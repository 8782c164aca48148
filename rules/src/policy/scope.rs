//! A tier's `match`: which requests it counts. A scoped tier counts only
//! the requests that match every field given, so a flood of one endpoint
//! can be caught below a threshold sized for the whole API.
//!
//! Every value is written as WAF logs carry it (`POST`, `US`, `BLOCK`), so
//! a pattern the logs can never hold is an error in `floodgate check`, not
//! a tier that silently never fires.

use std::fmt;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawMatch;

/// What a scoped tier counts: requests matching every field set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestMatch {
    /// `httpRequest.uri` equals this, or starts with it.
    pub path: Option<PathMatch>,
    /// The `host` header, compared without regard to case (stored lower case).
    pub host: Option<String>,
    /// `httpRequest.httpMethod`.
    pub method: Option<String>,
    /// `httpRequest.country` (ISO 3166-1 alpha-2).
    pub country: Option<String>,
    /// A label WAF added (`labels[].name`).
    pub label: Option<String>,
    /// The terminating `action`.
    pub action: Option<String>,
}

/// A URI path test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// The start of the path.
    Prefix(String),
}

/// The fields of one request a match reads, as the log wrote them (bytes:
/// the fast path reads them from the raw line).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFields<'a> {
    /// `httpRequest.uri`.
    pub uri: &'a [u8],
    /// `httpRequest.httpMethod`.
    pub method: &'a [u8],
    /// `httpRequest.country`.
    pub country: &'a [u8],
    /// The `host` header, if sent.
    pub host: Option<&'a [u8]>,
    /// The terminating action, as WAF writes it.
    pub action: &'a [u8],
    /// Label names.
    pub labels: &'a [String],
}

/// HTTP methods as WAF logs them.
pub(crate) const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];
/// Terminating actions as WAF logs them.
const ACTIONS: [&str; 5] = ["ALLOW", "BLOCK", "COUNT", "CAPTCHA", "CHALLENGE"];

impl RequestMatch {
    /// Whether a request matches every field set.
    pub fn matches(&self, request: &RequestFields<'_>) -> bool {
        let path = match &self.path {
            None => true,
            Some(PathMatch::Exact(path)) => request.uri == path.as_bytes(),
            Some(PathMatch::Prefix(prefix)) => request.uri.starts_with(prefix.as_bytes()),
        };
        let is = |wanted: &Option<String>, sent: &[u8]| {
            wanted.as_ref().is_none_or(|w| w.as_bytes() == sent)
        };
        path && is(&self.method, request.method)
            && is(&self.country, request.country)
            && is(&self.action, request.action)
            && self.host.as_ref().is_none_or(|h| {
                request
                    .host
                    .is_some_and(|sent| sent.eq_ignore_ascii_case(h.as_bytes()))
            })
            && self
                .label
                .as_deref()
                .is_none_or(|l| request.labels.iter().any(|sent| sent == l))
    }

    /// Whether matching needs the host header or the labels, which only a
    /// full parse of the record reads.
    pub fn needs_full_record(&self) -> bool {
        self.host.is_some() || self.label.is_some()
    }
}

impl fmt::Display for RequestMatch {
    /// `POST /login*` style: the fields set, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.method.clone());
        match &self.path {
            Some(PathMatch::Exact(path)) => parts.push(path.clone()),
            Some(PathMatch::Prefix(prefix)) => parts.push(format!("{prefix}*")),
            None => {}
        }
        parts.extend(self.host.as_ref().map(|h| format!("host {h}")));
        parts.extend(self.country.as_ref().map(|c| format!("country {c}")));
        parts.extend(self.label.as_ref().map(|l| format!("label {l}")));
        parts.extend(self.action.as_ref().map(|a| format!("action {a}")));
        f.write_str(&parts.join(" "))
    }
}

/// Checks a tier's `match` at `path`.
pub(crate) fn check_match(
    checker: &mut Checker<'_>,
    raw: &Spanned<RawMatch>,
    path: &str,
) -> Option<RequestMatch> {
    let fields = raw.get_ref();
    let mut ok = true;
    let mut text = |value: &Option<Spanned<String>>,
                    key: &str,
                    valid: &dyn Fn(&str) -> Result<(), String>|
     -> Option<String> {
        let value = value.as_ref()?;
        match valid(value.get_ref()) {
            Ok(()) => Some(value.get_ref().clone()),
            Err(help) => {
                let message = format!("{:?} is not a value WAF logs carry", value.get_ref());
                checker.error(value.span(), &format!("{path}.{key}"), message, Some(help));
                ok = false;
                None
            }
        }
    };
    let exact = text(&fields.path, "path", &valid_path);
    let prefix = text(&fields.path_prefix, "path_prefix", &valid_path);
    let host = text(&fields.host, "host", &valid_host).map(|h| h.to_ascii_lowercase());
    let method = text(&fields.method, "method", &|m| one_of(m, &METHODS));
    let country = text(&fields.country, "country", &valid_country);
    let label = text(&fields.label, "label", &valid_label);
    let action = text(&fields.action, "action", &|a| one_of(a, &ACTIONS));
    if let (Some(_), Some(second)) = (&fields.path, &fields.path_prefix) {
        let help = Some("keep path for one exact path, or path_prefix for all under it".to_owned());
        let message = "give path or path_prefix, not both".to_owned();
        checker.error(second.span(), &format!("{path}.path_prefix"), message, help);
        return None;
    }
    let scope = RequestMatch {
        path: exact
            .map(PathMatch::Exact)
            .or(prefix.map(PathMatch::Prefix)),
        host,
        method,
        country,
        label,
        action,
    };
    if ok && scope == RequestMatch::default() {
        let help = Some(
            "add path, path_prefix, host, method, country, label or action, or remove match"
                .to_owned(),
        );
        let message = "an empty match counts every request".to_owned();
        checker.error(raw.span(), path, message, help);
        return None;
    }
    ok.then_some(scope)
}

fn valid_path(path: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@".contains(c);
    if !path.starts_with('/') {
        Err(format!("WAF logs the path from its leading /: \"/{path}\""))
    } else if path.contains('?') {
        Err("WAF logs the query string apart (args): drop it from the path".to_owned())
    } else if !path.chars().all(allowed) {
        Err("use the path as sent on the wire: ASCII, percent-encoded".to_owned())
    } else {
        Ok(())
    }
}

fn valid_host(host: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-:".contains(c);
    if !host.is_empty() && host.chars().all(allowed) {
        Ok(())
    } else {
        Err("a host name, such as \"api.example.com\" (with :port if sent)".to_owned())
    }
}

fn valid_country(country: &str) -> Result<(), String> {
    if country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        let upper = country.to_ascii_uppercase();
        Err(format!(
            "an ISO 3166-1 alpha-2 code in capitals, as WAF logs it, such as \"{}\"",
            if upper.len() == 2 {
                upper.as_str()
            } else {
                "US"
            }
        ))
    }
}

fn valid_label(label: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ":_-.".contains(c);
    if !label.is_empty() && label.chars().all(allowed) {
        Ok(())
    } else {
        Err("a WAF label name: letters, digits, ':', '_', '-' and '.'".to_owned())
    }
}

fn one_of(value: &str, options: &[&str]) -> Result<(), String> {
    if options.contains(&value) {
        return Ok(());
    }
    let upper = value.to_ascii_uppercase();
    if options.contains(&upper.as_str()) {
        Err(format!("WAF logs it in capitals: \"{upper}\""))
    } else {
        Err(format!("one of {}", options.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_needs_every_field_it_sets() {
        let login = RequestMatch {
            path: Some(PathMatch::Prefix("/login".into())),
            host: Some("api.example.com".into()),
            method: Some("POST".into()),
            ..Default::default()
        };
        let mut request = RequestFields {
            uri: b"/login/sso",
            method: b"POST",
            host: Some(b"API.example.com"),
            ..RequestFields::default()
        };
        assert!(login.matches(&request));
        request.method = b"GET";
        assert!(!login.matches(&request));
        request.method = b"POST";
        request.host = None;
        assert!(!login.matches(&request));
        assert_eq!(login.to_string(), "POST /login* host api.example.com");
        assert!(login.needs_full_record());
    }
}
