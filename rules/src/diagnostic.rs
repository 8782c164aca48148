//! Errors and warnings about a policy file, each pinned to a file, line,
//! column and key path, with a suggested fix where one is known.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::Policy;
//! use time::macros::date;
//!
//! let text = "[[allow]]\ncidr = \"10.0.0.1/8\"\nreason = \"r\"\nowner = \"o\"\nexpires = 2030-01-01\n";
//! let err = Policy::from_toml(text, "floodgate.toml", date!(2026 - 01 - 01)).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "floodgate.toml:2:8: error: allow[0].cidr: \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"
//! );
//! ```

use std::fmt;
use std::ops::Range;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Something that ops should look at; the policy still loads.
    Warning,
    /// The policy is invalid and nothing may be applied.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about a policy file, located to the line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file name as given by the caller.
    pub file: String,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column (in characters) of the offending value.
    pub column: usize,
    /// The key path, such as `allow[3].cidr` (array indexes count from 0).
    /// Empty when the problem is not tied to one key (a TOML syntax error).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we know.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file, self.line, self.column, self.severity
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "; {help}")?;
        }
        Ok(())
    }
}

/// A policy that failed to load: every error found, plus the warnings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Errors first, then warnings, each group in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    /// The diagnostics that are errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics by byte span while a policy is validated, and turns
/// the spans into lines and columns at the end.
pub(crate) struct Collector<'a> {
    file: &'a str,
    text: &'a str,
    found: Vec<Found>,
}

/// A diagnostic whose location is still a byte span.
struct Found {
    severity: Severity,
    span: Range<usize>,
    path: String,
    message: String,
    help: Option<String>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Collector {
            file,
            text,
            found: Vec::new(),
        }
    }

    /// Records an error at `span` for the key `path`.
    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(Severity::Error, span, path.into(), message.into(), help);
    }

    /// Records a warning at `span` for the key `path`.
    pub(crate) fn warn(
        &mut self,
        span: Range<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push(Severity::Warning, span, path.into(), message.into(), help);
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        path: String,
        message: String,
        help: Option<String>,
    ) {
        self.found.push(Found {
            severity,
            span,
            path,
            message,
            help,
        });
    }

    /// The 1-based line of a byte offset, for cross-references in messages.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_column(self.text, offset).0
    }

    /// Sorts and locates everything found: errors first, each group in file order.
    pub(crate) fn finish(self) -> Vec<Diagnostic> {
        let mut found = self.found;
        found.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.span.start.cmp(&b.span.start))
        });
        found
            .into_iter()
            .map(|found| {
                let (line, column) = line_column(self.text, found.span.start);
                Diagnostic {
                    severity: found.severity,
                    file: self.file.to_owned(),
                    line,
                    column,
                    path: found.path,
                    message: found.message,
                    help: found.help,
                }
            })
            .collect()
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a likely typo. A swap of two neighbours counts as one edit (optimal
/// string alignment): `paht` is one edit from `path`.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_column(text, 6 + "bé ".len()), (2, 4));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn closest_finds_typos_but_not_unrelated_words() {
        assert_eq!(
            closest("enterprize", ["free", "pro", "enterprise"]),
            Some("enterprise")
        );
        assert_eq!(closest("gold", ["free", "pro", "enterprise"]), None);
        assert_eq!(closest("paht", ["path", "host"]), Some("path"));
    }
}
