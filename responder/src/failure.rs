//! What kind of failure a seam met, in the terms the cycle decides on:
//! wait and try again, or give up until an operator acts, and on what.
//! Every target error carries one, so a 429, an access denial and a
//! timeout no longer look alike to the code that isolates failures.

use std::fmt;
use std::time::Duration;

/// The kind of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The provider asked to slow down (HTTP 429, `ThrottlingException`,
    /// `WAFLimitsExceededException`), with the delay it asked for when it
    /// gave one.
    Throttled {
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider or the network failed: a 5xx, a timeout, a refused or
    /// broken connection. Worth trying again.
    Unavailable,
    /// The credentials are missing, invalid or expired, or lack a
    /// permission: an operator must act.
    Denied,
    /// The set, list or account named does not exist.
    NotFound,
    /// The request was refused as invalid, or the answer made no sense:
    /// the policy or the target needs fixing.
    Invalid,
    /// Another writer changed the object first, past every retry.
    Conflict,
    /// Not written: this responder no longer holds the lease.
    Fenced,
}

impl FailureKind {
    /// Whether the same call may succeed later without anyone acting.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::Throttled { .. } | FailureKind::Unavailable | FailureKind::Conflict
        )
    }

    /// The kind an HTTP status means, for APIs that answer with one.
    pub fn from_http_status(status: u16, retry_after: Option<Duration>) -> FailureKind {
        match status {
            429 => FailureKind::Throttled { retry_after },
            401 | 403 => FailureKind::Denied,
            404 => FailureKind::NotFound,
            409 | 412 => FailureKind::Conflict,
            500..=599 => FailureKind::Unavailable,
            _ => FailureKind::Invalid,
        }
    }

    /// A short name for logs and reports: `throttled`, `unavailable`,
    /// `denied`, `not_found`, `invalid`, `conflict`, `fenced`.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Throttled { .. } => "throttled",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Denied => "denied",
            FailureKind::NotFound => "not_found",
            FailureKind::Invalid => "invalid",
            FailureKind::Conflict => "conflict",
            FailureKind::Fenced => "fenced",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error and its causes on one line, each cause once (most errors name
/// their cause in their own message already), with no `Debug` dump.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_what_the_cycle_can_do() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(
            FailureKind::from_http_status(429, wait),
            FailureKind::Throttled { retry_after: wait }
        );
        assert_eq!(
            FailureKind::from_http_status(403, None),
            FailureKind::Denied
        );
        assert_eq!(
            FailureKind::from_http_status(401, None),
            FailureKind::Denied
        );
        assert_eq!(
            FailureKind::from_http_status(404, None),
            FailureKind::NotFound
        );
        assert_eq!(
            FailureKind::from_http_status(503, None),
            FailureKind::Unavailable
        );
        assert_eq!(
            FailureKind::from_http_status(400, None),
            FailureKind::Invalid
        );
        assert!(FailureKind::from_http_status(503, None).is_transient());
        assert!(!FailureKind::from_http_status(403, None).is_transient());
    }
}
