//! Field checks shared by every section of the policy: each reads one raw
//! value, records a located diagnostic when it is wrong, and returns the
//! typed value when it is right.

use std::num::NonZeroU32;
use std::ops::Range;

use time::Date;
use toml::Spanned;

use crate::diagnostic::{Collector, closest};

/// Validation state for one policy file.
pub(crate) struct Checker<'a> {
    pub(crate) found: Collector<'a>,
    /// The day the policy is evaluated on, for expiry.
    pub(crate) today: Date,
}

/// What a URL key accepts.
pub(crate) struct UrlRules {
    /// Accepted prefixes, such as `http://`.
    pub schemes: &'static [&'static str],
    /// How the error names the kind: "an http(s)".
    pub kind: &'static str,
    /// A URL to suggest.
    pub example: &'static str,
    /// Where credentials come from instead.
    pub credentials: &'static str,
}

impl Checker<'_> {
    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        help: Option<String>,
    ) {
        self.found.error(span, path, message, help);
    }

    pub(crate) fn warn(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        help: Option<String>,
    ) {
        self.found.warn(span, path, message, help);
    }

    /// A whole number from 1 to `u32::MAX`.
    pub(crate) fn positive(&mut self, value: &Spanned<i64>, path: &str) -> Option<NonZeroU32> {
        let number = *value.get_ref();
        match u32::try_from(number).ok().and_then(NonZeroU32::new) {
            Some(n) => Some(n),
            None if number <= 0 => {
                self.error(
                    value.span(),
                    path,
                    format!("must be at least 1, got {number}"),
                    None,
                );
                None
            }
            None => {
                self.error(
                    value.span(),
                    path,
                    format!("{number} is too large; the most is {}", u32::MAX),
                    None,
                );
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub(crate) fn in_range(
        &mut self,
        value: &Spanned<i64>,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<u32> {
        let number = *value.get_ref();
        if (min..=max).contains(&number) {
            u32::try_from(number).ok()
        } else {
            self.error(
                value.span(),
                path,
                format!("must be from {min} to {max}, got {number}"),
                None,
            );
            None
        }
    }

    /// Free text that must say something: an owner, a reason.
    pub(crate) fn text(&mut self, value: &Spanned<String>, path: &str) -> Option<String> {
        let text = value.get_ref().trim();
        if text.is_empty() {
            let help = Some("say who or why, so the next reviewer knows".to_owned());
            self.error(value.span(), path, "must not be empty".to_owned(), help);
            None
        } else {
            Some(text.to_owned())
        }
    }

    /// One of a fixed set of words, with a suggestion for a typo.
    pub(crate) fn choice<'c>(
        &mut self,
        value: &Spanned<String>,
        path: &str,
        options: &[&'c str],
    ) -> Option<&'c str> {
        let word = value.get_ref().as_str();
        if let Some(option) = options.iter().find(|option| **option == word) {
            return Some(option);
        }
        let expected = options
            .iter()
            .map(|o| format!("\"{o}\""))
            .collect::<Vec<_>>()
            .join(" or ");
        let help = closest(word, options.iter().copied()).map(|c| format!("did you mean \"{c}\"?"));
        self.error(
            value.span(),
            path,
            format!("\"{word}\" is not one of {expected}"),
            help,
        );
        None
    }

    /// A URL with one of `rules.schemes`, a host, and no credentials.
    pub(crate) fn url(
        &mut self,
        value: &Spanned<String>,
        path: &str,
        rules: &UrlRules,
    ) -> Option<String> {
        let url = value.get_ref();
        let Some(rest) = rules.schemes.iter().find_map(|s| url.strip_prefix(s)) else {
            let help = Some(format!("write a URL such as \"{}\"", rules.example));
            let message = format!("\"{url}\" is not {} URL", rules.kind);
            self.error(value.span(), path, message, help);
            return None;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            let help = Some(format!(
                "remove the user and password; {}",
                rules.credentials
            ));
            let message = "the URL contains credentials".to_owned();
            self.error(value.span(), path, message, help);
            return None;
        }
        if authority.is_empty() {
            self.error(value.span(), path, format!("\"{url}\" has no host"), None);
            return None;
        }
        Some(url.clone())
    }

    /// The name of an environment variable that holds a secret, such as
    /// `example`.
    pub(crate) fn env_var_name(
        &mut self,
        value: &Spanned<String>,
        path: &str,
        example: &str,
    ) -> Option<String> {
        let name = value.get_ref();
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            let help = Some(format!("name a variable such as {example}"));
            let message = format!("\"{name}\" is not an environment variable name");
            self.error(value.span(), path, message, help);
        }
        valid.then(|| name.clone())
    }

    /// A calendar date, written as a TOML date (`2027-03-31`) or a string
    /// in the same form.
    pub(crate) fn date(&mut self, value: &Spanned<toml::Value>, path: &str) -> Option<Date> {
        let parsed = match value.get_ref() {
            toml::Value::Datetime(datetime) => match (datetime.date, datetime.time) {
                (Some(date), None) => date_from_parts(i32::from(date.year), date.month, date.day),
                _ => None,
            },
            toml::Value::String(text) => parse_date(text),
            _ => None,
        };
        if parsed.is_none() {
            let shown = match value.get_ref() {
                toml::Value::String(text) => format!("\"{text}\""),
                other => other.to_string(),
            };
            let help = Some("write a calendar date such as 2027-03-31".to_owned());
            self.error(value.span(), path, format!("{shown} is not a date"), help);
        }
        parsed
    }
}

/// Parses `YYYY-MM-DD`, rejecting days a month does not have.
fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    date_from_parts(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?)
}

fn date_from_parts(year: i32, month: u8, day: u8) -> Option<Date> {
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn dates_must_exist() {
        assert_eq!(parse_date("2028-02-29"), Some(date!(2028 - 02 - 29)));
        assert_eq!(parse_date("2027-02-29"), None);
        assert_eq!(parse_date("2027-13-01"), None);
        assert_eq!(parse_date("27-01-01"), None);
        assert_eq!(parse_date("next tuesday"), None);
    }
}
