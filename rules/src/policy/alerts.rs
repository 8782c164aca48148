//! The `[alerts]` section: where the responder posts alerts, and how often
//! it may repeat one.

use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawAlerts;

/// The `[alerts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// The environment variable that holds the webhook URL: a Slack-style
    /// URL is itself a secret, so it never sits in the policy file.
    pub webhook_url_env: String,
    /// The same alert is sent at most once per this many minutes (default 60).
    pub repeat_minutes: NonZeroU32,
    /// A target failing this many cycles in a row raises an alert (default 3).
    pub target_failure_cycles: NonZeroU32,
}

/// Checks `[alerts]`.
pub(crate) fn check_alerts(checker: &mut Checker<'_>, raw: &Spanned<RawAlerts>) -> Option<Alerts> {
    let raw = raw.get_ref();
    let webhook_url_env = checker.env_var_name(
        &raw.webhook_url_env,
        "alerts.webhook_url_env",
        "FLOODGATE_WEBHOOK_URL",
    );
    let repeat_minutes = match &raw.repeat_minutes {
        Some(minutes) => checker.positive(minutes, "alerts.repeat_minutes"),
        None => NonZeroU32::new(60),
    };
    let target_failure_cycles = match &raw.target_failure_cycles {
        Some(cycles) => checker.positive(cycles, "alerts.target_failure_cycles"),
        None => NonZeroU32::new(3),
    };
    Some(Alerts {
        webhook_url_env: webhook_url_env?,
        repeat_minutes: repeat_minutes?,
        target_failure_cycles: target_failure_cycles?,
    })
}
