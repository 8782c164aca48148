//! Safety limits on what the responder may do in one run.

use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawSafety;

/// Whether the responder changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Detect, plan and apply blocks.
    Enforce,
    /// Detect and plan, report what would happen, write nothing.
    Observe,
}

/// The `[safety]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Safety {
    /// `enforce` (the default) or `observe`.
    pub mode: Mode,
    /// Circuit breaker: at most this many new blocks per run (default 1000).
    pub max_new_blocks_per_run: NonZeroU32,
    /// Broadest IPv4 allow-list prefix without `broad = true` (default 16).
    pub broadest_allow_prefix_v4: u8,
    /// Broadest IPv6 allow-list prefix without `broad = true` (default 32).
    pub broadest_allow_prefix_v6: u8,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            mode: Mode::Enforce,
            max_new_blocks_per_run: NonZeroU32::new(1000).expect("1000 is not zero"),
            broadest_allow_prefix_v4: 16,
            broadest_allow_prefix_v6: 32,
        }
    }
}

/// Checks `[safety]`; a missing key keeps its default.
pub(crate) fn check_safety(checker: &mut Checker<'_>, raw: Option<&Spanned<RawSafety>>) -> Safety {
    let mut safety = Safety::default();
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return safety;
    };
    if let Some(mode) = &raw.mode {
        match checker.choice(mode, "safety.mode", &["enforce", "observe"]) {
            Some("observe") => safety.mode = Mode::Observe,
            _ => safety.mode = Mode::Enforce,
        }
    }
    if let Some(max) = &raw.max_new_blocks_per_run
        && let Some(max) = checker.positive(max, "safety.max_new_blocks_per_run")
    {
        safety.max_new_blocks_per_run = max;
    }
    if let Some(prefix) = &raw.broadest_allow_prefix_v4
        && let Some(prefix) = checker.in_range(prefix, "safety.broadest_allow_prefix_v4", 1, 32)
    {
        safety.broadest_allow_prefix_v4 = prefix as u8;
    }
    if let Some(prefix) = &raw.broadest_allow_prefix_v6
        && let Some(prefix) = checker.in_range(prefix, "safety.broadest_allow_prefix_v6", 1, 128)
    {
        safety.broadest_allow_prefix_v6 = prefix as u8;
    }
    safety
}
