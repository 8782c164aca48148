//! Route classes for the rate-limit middleware: `[[quotas.routes]]` gives
//! requests of a method and path pattern a class (whose limits plans set
//! under `classes`) and a cost in quota units.
//!
//! A pattern is a path of `/`-separated segments. A literal segment matches
//! itself, `*` matches any one non-empty segment, and a last segment `**`
//! matches the rest of the path, however many segments (none included).
//! The query string is never part of the match.

use std::fmt;
use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawRoute;
use super::scope::METHODS;

/// A route class's name, such as `exports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassName(pub(crate) String);

impl ClassName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Exactly this text.
    Literal(String),
    /// Any one non-empty segment: `*`.
    Any,
}

/// A path pattern such as `/v1/exports/*` or `/v1/admin/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    /// Ends in `**`: any further segments match.
    rest: bool,
    text: String,
}

impl PathPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let Some(body) = text.strip_prefix('/') else {
            return Err("a path pattern starts with '/'".to_owned());
        };
        if text.contains(['?', '#']) {
            return Err("a path pattern has no query string or fragment".to_owned());
        }
        let mut segments = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = body.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *part {
                "**" if last => rest = true,
                "**" => return Err("'**' may only be the last segment".to_owned()),
                "*" => segments.push(Segment::Any),
                "" if last => segments.push(Segment::Literal(String::new())),
                "" => return Err("a path pattern has no empty segment ('//')".to_owned()),
                part if part.contains(['{', '}']) => {
                    return Err(format!(
                        "\"{part}\" is a router's parameter; write '*' for one segment"
                    ));
                }
                part if part.contains('*') => {
                    return Err(format!(
                        "\"{part}\": '*' must be a whole segment, such as /v1/exports/*"
                    ));
                }
                part => segments.push(Segment::Literal(part.to_owned())),
            }
        }
        Ok(PathPattern {
            segments,
            rest,
            text: text.to_owned(),
        })
    }

    /// Whether `path` (without its query string) matches. Allocates nothing.
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = body.split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let matched = match segment {
                Segment::Literal(text) => part == text,
                Segment::Any => !part.is_empty(),
            };
            if !matched {
                return false;
            }
        }
        self.rest || parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `[[quotas.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The class its requests are charged to.
    pub class: ClassName,
    /// The method it matches; any method when `None`.
    pub method: Option<String>,
    /// The paths it matches.
    pub path: PathPattern,
    /// Quota units one request costs, of the plan's limits and the class's.
    pub cost: NonZeroU32,
    /// Line of the entry in the policy file.
    pub line: usize,
}

impl Route {
    /// Whether a request with `method` and `path` matches.
    #[inline]
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

/// Checks a class's name: the rules of a plan's name.
pub(crate) fn check_class_name(
    checker: &mut Checker<'_>,
    name: &Spanned<String>,
    path: &str,
) -> Option<ClassName> {
    let text = name.get_ref();
    if is_valid_name(text) {
        return Some(ClassName(text.clone()));
    }
    let help = Some("use 1 to 64 letters, digits, '_' or '-'".to_owned());
    let message = format!("\"{text}\" is not a valid class name");
    checker.error(name.span(), path, message, help);
    None
}

/// A plan's or a class's name: 1 to 64 letters, digits, `_` or `-`.
pub(crate) fn is_valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An HTTP method in capitals, as the request line carries it.
fn check_method(checker: &mut Checker<'_>, method: &Spanned<String>, path: &str) -> Option<String> {
    let upper = method.get_ref().to_ascii_uppercase();
    if *method.get_ref() != upper && METHODS.contains(&upper.as_str()) {
        let message = format!(
            "\"{}\" is not a method as requests carry it",
            method.get_ref()
        );
        let help = Some(format!("write it in capitals: \"{upper}\""));
        checker.error(method.span(), path, message, help);
        return None;
    }
    checker.choice(method, path, &METHODS).map(str::to_owned)
}

/// Checks one route; `earlier` are the routes before it, for shadowing.
pub(crate) fn check_route(
    checker: &mut Checker<'_>,
    entry: &Spanned<RawRoute>,
    path: &str,
    earlier: &[Route],
) -> Option<Route> {
    let raw = entry.get_ref();
    let class = check_class_name(checker, &raw.class, &format!("{path}.class"));
    let method = match &raw.method {
        None => Some(None),
        Some(method) => check_method(checker, method, &format!("{path}.method")).map(Some),
    };
    let pattern = match PathPattern::parse(raw.path.get_ref()) {
        Ok(pattern) => Some(pattern),
        Err(problem) => {
            let message = format!("\"{}\" is not a path pattern", raw.path.get_ref());
            checker.error(
                raw.path.span(),
                &format!("{path}.path"),
                message,
                Some(problem),
            );
            None
        }
    };
    let cost = match &raw.cost {
        Some(cost) => checker.positive(cost, &format!("{path}.cost")),
        None => Some(NonZeroU32::MIN),
    };
    let route = Route {
        class: class?,
        method: method?,
        path: pattern?,
        cost: cost?,
        line: checker.found.line_of(entry.span().start),
    };
    let shadowed_by = earlier
        .iter()
        .find(|e| e.path == route.path && (e.method.is_none() || e.method == route.method));
    if let Some(first) = shadowed_by {
        let message = format!(
            "never matches: the route at line {} matches its requests first",
            first.line
        );
        let help = Some("remove it, or move it above the broader route".to_owned());
        checker.warn(entry.span(), path, message, help);
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: split both into segments (allocating), then compare them
    /// one by one.
    fn model_matches(pattern: &str, path: &str) -> bool {
        let (Some(pattern), Some(path)) = (pattern.strip_prefix('/'), path.strip_prefix('/'))
        else {
            return false;
        };
        let mut wanted: Vec<&str> = pattern.split('/').collect();
        let parts: Vec<&str> = path.split('/').collect();
        if wanted.last() == Some(&"**") {
            wanted.pop();
            return parts.len() >= wanted.len() && segments_match(&wanted, &parts[..wanted.len()]);
        }
        parts.len() == wanted.len() && segments_match(&wanted, &parts)
    }

    fn segments_match(wanted: &[&str], parts: &[&str]) -> bool {
        wanted
            .iter()
            .zip(parts)
            .all(|(w, p)| if *w == "*" { !p.is_empty() } else { w == p })
    }

    proptest! {
        /// Every pattern that parses matches exactly the paths the model
        /// matches, over a small alphabet so that they often meet.
        #[test]
        fn patterns_match_as_the_model_does(
            pattern in "(/(a|b|\\*|\\*\\*|)){1,4}",
            path in "(/(a|b|ab|)){1,5}",
        ) {
            if let Ok(parsed) = PathPattern::parse(&pattern) {
                prop_assert_eq!(parsed.matches(&path), model_matches(&pattern, &path), "{} against {}", pattern, path);
            }
        }
    }

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).unwrap()
    }

    #[test]
    fn literal_star_and_rest_segments_match_as_documented() {
        let one = pattern("/v1/exports/*");
        assert!(one.matches("/v1/exports/42"));
        assert!(!one.matches("/v1/exports/"));
        assert!(!one.matches("/v1/exports"));
        assert!(!one.matches("/v1/exports/42/file"));
        assert!(!one.matches("/v2/exports/42"));
        let rest = pattern("/v1/admin/**");
        assert!(rest.matches("/v1/admin"));
        assert!(rest.matches("/v1/admin/"));
        assert!(rest.matches("/v1/admin/users/7"));
        assert!(!rest.matches("/v1/administrators"));
        let exact = pattern("/status");
        assert!(exact.matches("/status"));
        assert!(!exact.matches("/status/"));
        assert!(!exact.matches("status"));
        assert!(pattern("/").matches("/"));
        assert!(!pattern("/").matches("/a"));
        assert!(pattern("/**").matches("/anything/at/all"));
        assert!(pattern("/v1/").matches("/v1/"));
        assert!(!pattern("/v1/").matches("/v1"));
    }

    #[test]
    fn malformed_patterns_say_what_to_write() {
        for (text, problem) in [
            ("v1/exports", "starts with '/'"),
            ("/v1//exports", "empty segment"),
            ("/v1/**/x", "last segment"),
            ("/v1/exports/{id}", "write '*'"),
            ("/v1/exports*", "whole segment"),
            ("/v1/exports?x=1", "query string"),
        ] {
            let error = PathPattern::parse(text).unwrap_err();
            assert!(error.contains(problem), "{text}: {error}");
        }
    }
}
