//! From policy text to [`RawPolicy`], with every syntax and type error at
//! once: the TOML is parsed untyped first (recovering after a syntax error
//! so that later ones are found too), then each section, and each entry of
//! an array of tables, is decoded on its own, so that one bad value hides
//! no other. Each error names its key path (`tiers[2].requests`) and, where
//! one is known, the fix.

use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::check::Checker;
use super::raw::RawPolicy;
use crate::diagnostic::closest;

/// The policy's sections, as the file names them.
const SECTIONS: &[&str] = &[
    "tiers",
    "allow",
    "quotas",
    "targets",
    "source",
    "safety",
    "infra",
    "responder",
    "alerts",
    "detection",
    "accounts",
];

/// Sections written as arrays of tables (`[[tiers]]`).
const ARRAYS: &[&str] = &["tiers", "allow", "targets", "accounts"];

/// Decodes `text` into the raw policy; `None` after reporting every
/// syntax or type error to `checker`.
pub(crate) fn raw_policy(text: &str, checker: &mut Checker<'_>) -> Option<RawPolicy> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for error in &syntax {
            let message = error.message().trim_end().to_owned();
            let help = syntax_help(&message);
            checker.error(error.span().unwrap_or(0..0), "", message, help);
        }
        return None;
    }
    let mut raw = RawPolicy::default();
    let mut failed = false;
    for (key, value) in root.into_inner() {
        let (name, key_span) = (key.get_ref().as_ref(), key.span());
        if !SECTIONS.contains(&name) {
            let help = match closest(name, SECTIONS.iter().copied()) {
                Some(section) => format!("did you mean `{section}`?"),
                None => format!("the sections are {}", SECTIONS.join(", ")),
            };
            let message = format!("unknown section `{name}`");
            checker.error(key_span, name, message, Some(help));
            failed = true;
            continue;
        }
        if ARRAYS.contains(&name) {
            let Some(entries) = entries(name, value, checker) else {
                failed = true;
                continue;
            };
            for (index, entry) in entries.into_iter().enumerate() {
                let path = format!("{name}[{index}]");
                let decoded = match name {
                    "tiers" => decode(entry, &path, checker).map(|t| raw.tiers.push(t)),
                    "allow" => decode(entry, &path, checker).map(|a| raw.allow.push(a)),
                    "accounts" => decode(entry, &path, checker).map(|a| raw.accounts.push(a)),
                    _ => decode(entry, &path, checker).map(|t| raw.targets.push(t)),
                };
                failed |= decoded.is_none();
            }
            continue;
        }
        let decoded = match name {
            "quotas" => decode(value, name, checker).map(|q| raw.quotas = Some(q)),
            "source" => decode(value, name, checker).map(|s| raw.source = Some(s)),
            "safety" => decode(value, name, checker).map(|s| raw.safety = Some(s)),
            "infra" => decode(value, name, checker).map(|i| raw.infra = Some(i)),
            "responder" => decode(value, name, checker).map(|r| raw.responder = Some(r)),
            "alerts" => decode(value, name, checker).map(|a| raw.alerts = Some(a)),
            _ => decode(value, name, checker).map(|d| raw.detection = Some(d)),
        };
        failed |= decoded.is_none();
    }
    (!failed).then_some(raw)
}

/// The entries of an array-of-tables section; a single table written
/// `[tiers]` instead of `[[tiers]]` is reported with the fix.
fn entries<'i>(
    name: &str,
    value: Spanned<DeValue<'i>>,
    checker: &mut Checker<'_>,
) -> Option<Vec<Spanned<DeValue<'i>>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(entries) => Some(entries.into_iter().collect()),
        other => {
            let message = format!("expected an array of tables, found {}", other.type_str());
            let help = format!("write each entry under its own [[{name}]] header, not [{name}]");
            checker.error(span, name, message, Some(help));
            None
        }
    }
}

/// Decodes one section or entry, reporting a type error with its path.
fn decode<'i, T: Deserialize<'i>>(
    value: Spanned<DeValue<'i>>,
    path: &str,
    checker: &mut Checker<'_>,
) -> Option<T> {
    let whole = value.span();
    match serde_path_to_error::deserialize(ValueDeserializer::from(value)) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let mut full = path.to_owned();
            for segment in error.path() {
                match segment {
                    Segment::Seq { index } => full.push_str(&format!("[{index}]")),
                    // Spanned values are maps of private keys inside.
                    Segment::Map { key } if key.starts_with("$__") => {}
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        full.push('.');
                        full.push_str(key);
                    }
                    Segment::Unknown => {}
                }
            }
            let inner = error.into_inner();
            let message = inner.message().trim_end().to_owned();
            let help = type_help(&message, &full);
            checker.error(inner.span().unwrap_or(whole), &full, message, help);
            None
        }
    }
}

/// The fix for a TOML syntax error, where one is known.
fn syntax_help(message: &str) -> Option<String> {
    if message.starts_with("invalid date") || message.contains("expected day between") {
        return Some("write a calendar date such as 2027-03-31".to_owned());
    }
    if message.contains("expected `\"`") {
        return Some("close the string with a \" on the same line".to_owned());
    }
    None
}

/// The fix for a type error, where one is known.
fn type_help(message: &str, path: &str) -> Option<String> {
    let key = path.rsplit(['.', ']']).next().unwrap_or(path);
    if let Some(rest) = message.strip_prefix("invalid type: string ")
        && rest.ends_with("expected i64")
    {
        let quoted = rest.split(", expected").next().unwrap_or(rest);
        let number = quoted.trim_matches('"');
        return Some(if number.parse::<i64>().is_ok() {
            format!("write the number without quotes: {key} = {number}")
        } else {
            format!("write a whole number: {key} = 1000")
        });
    }
    if message.starts_with("invalid type:") && message.ends_with("expected a string") {
        return Some(format!("quote the value: {key} = \"…\""));
    }
    if message.starts_with("invalid type:") && message.ends_with("expected a boolean") {
        return Some(format!("write true or false: {key} = true"));
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        return Some(format!("add {field} = … to {path}"));
    }
    super::misspelt_key_help(message)
}
