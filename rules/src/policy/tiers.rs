//! Responder tiers: request-count thresholds over a window, and what
//! happens to an address that crosses one.

use std::fmt;
use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::detection::{Prefixes, check_prefixes};
use super::infra::{WAF_MIN_RATE_LIMIT, WAF_RATE_WINDOWS};
use super::raw::RawTier;
use super::scope::{RequestMatch, check_match};

/// A tier's name, such as `watch` or `block`: letters, digits, `_` and `-`,
/// so it can also serve as an AWS WAF label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(String);

impl TierName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One responder threshold. Tiers are kept in the file's order, which
/// validation guarantees runs from the lowest request rate to the highest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// The tier's name.
    pub name: TierName,
    /// An address qualifies with at least this many requests...
    pub requests: NonZeroU32,
    /// ...within this many seconds.
    pub window_seconds: NonZeroU32,
    /// What qualifying does.
    pub action: TierAction,
    /// The aggregation key this tier counts and blocks by.
    pub prefixes: Prefixes,
    /// The requests it counts (`match`); all of them when `None`.
    pub scope: Option<RequestMatch>,
    /// `fast = true`: the daemon also blocks, within seconds, what the
    /// tier's AWS WAF rate-based rule is limiting right now.
    pub fast: bool,
}

/// The name of `tier`'s COUNT rate-based rule in the web ACL `web_acl`:
/// what `render-infra` writes and the fast detector polls.
pub fn rate_rule_name(web_acl: &str, tier: &TierName) -> String {
    format!("{web_acl}-tier-{tier}")
}

/// What crossing a tier does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierAction {
    /// Report and alert, block nothing.
    Observe,
    /// Block the address for a while.
    Block(BlockRule),
}

/// How long a block lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRule {
    /// Length of a first block.
    pub block_minutes: NonZeroU32,
    /// Longer blocks for repeat offenders.
    pub escalation: Option<Escalation>,
}

/// Repeat offenders' blocks grow by `factor` with each offence, up to
/// `max_minutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    /// At least 2.
    pub factor: NonZeroU32,
    /// At least the tier's `block_minutes`.
    pub max_minutes: NonZeroU32,
}

impl BlockRule {
    /// Block length for an address's `offence`-th offence (1 for the first).
    pub fn minutes_for_offence(&self, offence: u32) -> u32 {
        let base = self.block_minutes.get();
        let Some(escalation) = self.escalation else {
            return base;
        };
        let growth = escalation
            .factor
            .get()
            .checked_pow(offence.saturating_sub(1))
            .unwrap_or(u32::MAX);
        base.saturating_mul(growth)
            .min(escalation.max_minutes.get())
    }
}

impl Tier {
    /// How the tier counts.
    pub fn aggregation(&self) -> super::Aggregation {
        super::Aggregation {
            prefixes: self.prefixes,
            scope: self.scope.clone(),
        }
    }

    /// Whether the tier blocks.
    pub fn blocks(&self) -> bool {
        matches!(self.action, TierAction::Block(_))
    }
}

/// Checks every tier, then their order.
/// Cloudflare's request logs carry no WAF labels: a tier matching one would
/// never count a request.
pub(crate) fn reject_label_matches(checker: &mut Checker<'_>, raw: &[Spanned<RawTier>]) {
    for (i, tier) in raw.iter().enumerate() {
        let label = tier
            .get_ref()
            .scope
            .as_ref()
            .and_then(|s| s.get_ref().label.as_ref());
        if let Some(label) = label {
            checker.error(
                label.span(),
                &format!("tiers[{i}].match.label"),
                "Cloudflare's request logs carry no WAF labels, so this tier would never match"
                    .to_owned(),
                Some("match on path, host, method, country or action instead".to_owned()),
            );
        }
    }
}

pub(crate) fn check_tiers(
    checker: &mut Checker<'_>,
    raw: &[Spanned<RawTier>],
    prefixes: Prefixes,
) -> Vec<Tier> {
    let mut tiers: Vec<Tier> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let path = format!("tiers[{i}]");
        let Some(tier) = check_tier(checker, entry.get_ref(), &path, prefixes) else {
            continue;
        };
        if let Some(earlier) = tiers.iter().find(|t| t.name == tier.name) {
            let message = format!("tier \"{}\" is defined twice", earlier.name);
            checker.error(
                entry.get_ref().name.span(),
                &format!("{path}.name"),
                message,
                Some("give each tier its own name".to_owned()),
            );
            continue;
        }
        // A scoped tier counts its own requests: it is ordered among the
        // tiers of the same scope only.
        if let Some(previous) = tiers.iter().rev().find(|t| t.scope == tier.scope) {
            check_order(checker, previous, &tier, entry, &path);
        }
        if let Some(scope) = &tier.scope
            && !tiers.iter().any(|t| t.scope.as_ref() == Some(scope))
            && distinct_matches(&tiers) >= MAX_MATCHES
        {
            let message = format!("more than {MAX_MATCHES} different tier matches");
            let help = Some("let tiers that count the same requests share one match".to_owned());
            checker.error(entry.span(), &format!("{path}.match"), message, help);
            continue;
        }
        tiers.push(tier);
    }
    tiers
}

/// The most different `match` tables the tiers may have: the responder
/// tests each record against all of them at once.
pub const MAX_MATCHES: usize = 32;

fn distinct_matches(tiers: &[Tier]) -> usize {
    let mut seen: Vec<&RequestMatch> = Vec::new();
    for scope in tiers.iter().filter_map(|t| t.scope.as_ref()) {
        if !seen.contains(&scope) {
            seen.push(scope);
        }
    }
    seen.len()
}

fn check_tier(
    checker: &mut Checker<'_>,
    raw: &RawTier,
    path: &str,
    prefixes: Prefixes,
) -> Option<Tier> {
    let name = check_name(checker, &raw.name, &format!("{path}.name"));
    let requests = checker.positive(&raw.requests, &format!("{path}.requests"));
    let window_seconds = checker.positive(&raw.window_seconds, &format!("{path}.window_seconds"));
    let action = match checker.choice(
        &raw.action,
        &format!("{path}.action"),
        &["observe", "block"],
    )? {
        "observe" => {
            let stray = [
                raw.block_minutes
                    .as_ref()
                    .map(|b| ("block_minutes", b.span())),
                raw.escalation.as_ref().map(|e| ("escalation", e.span())),
            ];
            for (key, span) in stray.into_iter().flatten() {
                let message = format!("{key} applies only to action = \"block\"");
                checker.error(
                    span,
                    &format!("{path}.{key}"),
                    message,
                    Some(format!("remove {key}, or make this a block tier")),
                );
            }
            Some(TierAction::Observe)
        }
        _ => check_block_rule(checker, raw, path).map(TierAction::Block),
    };
    let prefixes = check_prefixes(
        checker,
        raw.ipv4_prefix.as_ref(),
        raw.ipv6_prefix.as_ref(),
        path,
        prefixes,
    );
    let scope = match &raw.scope {
        Some(scope) => Some(check_match(checker, scope, &format!("{path}.match"))?),
        None => None,
    };
    let fast = raw.fast.as_ref().filter(|f| *f.get_ref());
    if let Some(fast) = fast
        && !check_fast(checker, raw, fast, path)
    {
        return None;
    }
    Some(Tier {
        name: name?,
        requests: requests?,
        window_seconds: window_seconds?,
        action: action?,
        prefixes,
        scope,
        fast: fast.is_some(),
    })
}

/// Whether a `fast = true` tier can be an AWS WAF rate-based rule: a block
/// tier whose threshold and window the rule can hold, and whose `match`
/// it can evaluate. Reports each reason it cannot.
fn check_fast(checker: &mut Checker<'_>, raw: &RawTier, fast: &Spanned<bool>, path: &str) -> bool {
    let mut mappable = true;
    let mut refuse = |checker: &mut Checker<'_>, span, key: &str, message: String, help: String| {
        checker.error(span, &format!("{path}.{key}"), message, Some(help));
        mappable = false;
    };
    if raw.action.get_ref() != "block" {
        let message =
            "fast applies only to block tiers: it blocks what the tier's rate-based rule limits"
                .to_owned();
        refuse(
            checker,
            fast.span(),
            "fast",
            message,
            "remove fast, or make this a block tier".to_owned(),
        );
    }
    let window = *raw.window_seconds.get_ref();
    if !WAF_RATE_WINDOWS.iter().any(|&w| i64::from(w) == window) {
        let message = format!(
            "a fast tier's window is its rate-based rule's evaluation window, and AWS WAF has no {window} s window"
        );
        let help = "use window_seconds = 60, 120, 300 or 600 (scale requests with it)".to_owned();
        refuse(
            checker,
            raw.window_seconds.span(),
            "window_seconds",
            message,
            help,
        );
    }
    let requests = *raw.requests.get_ref();
    if requests < i64::from(WAF_MIN_RATE_LIMIT) {
        let message = format!(
            "a fast tier's requests is its rate-based rule's limit, and AWS WAF's smallest is {WAF_MIN_RATE_LIMIT}"
        );
        let help = format!("use requests = {WAF_MIN_RATE_LIMIT} or more, or remove fast");
        refuse(checker, raw.requests.span(), "requests", message, help);
    }
    let action_match = raw.scope.as_ref().and_then(|s| s.get_ref().action.as_ref());
    if let Some(action) = action_match {
        let message = "a rate-based rule counts a request before its action is known, so it cannot match on action".to_owned();
        let help = "remove match.action, or remove fast".to_owned();
        refuse(checker, action.span(), "match.action", message, help);
    }
    mappable
}

/// Fast tiers need a web ACL to poll: at least one wafv2 target.
pub(crate) fn check_fast_has_waf(
    checker: &mut Checker<'_>,
    raw: &[Spanned<RawTier>],
    has_waf: bool,
) {
    if has_waf {
        return;
    }
    for (i, tier) in raw.iter().enumerate() {
        if let Some(fast) = tier.get_ref().fast.as_ref().filter(|f| *f.get_ref()) {
            checker.error(
                fast.span(),
                &format!("tiers[{i}].fast"),
                "a fast tier's rate-based rule lives in the web ACLs of the wafv2 targets, and there is none".to_owned(),
                Some("add a [[targets]] entry with type = \"wafv2\", or remove fast".to_owned()),
            );
        }
    }
}

fn check_block_rule(checker: &mut Checker<'_>, raw: &RawTier, path: &str) -> Option<BlockRule> {
    let Some(minutes) = &raw.block_minutes else {
        let help = Some("add block_minutes = 15 (or however long a block should last)".to_owned());
        checker.error(
            raw.action.span(),
            path,
            "a block tier needs block_minutes".to_owned(),
            help,
        );
        return None;
    };
    let block_minutes = checker.positive(minutes, &format!("{path}.block_minutes"))?;
    let escalation = match &raw.escalation {
        None => None,
        Some(escalation) => {
            let raw_escalation = escalation.get_ref();
            let factor_path = format!("{path}.escalation.factor");
            let factor = checker.positive(&raw_escalation.factor, &factor_path)?;
            if factor.get() < 2 {
                let help = Some(
                    "use 2 to double the block on each repeat, or remove escalation".to_owned(),
                );
                checker.error(
                    raw_escalation.factor.span(),
                    &factor_path,
                    "must be at least 2".to_owned(),
                    help,
                );
                return None;
            }
            let max_path = format!("{path}.escalation.max_minutes");
            let max_minutes = checker.positive(&raw_escalation.max_minutes, &max_path)?;
            if max_minutes < block_minutes {
                let message =
                    format!("{max_minutes} is shorter than block_minutes ({block_minutes})");
                checker.error(
                    raw_escalation.max_minutes.span(),
                    &max_path,
                    message,
                    Some(format!("set it to at least {block_minutes}")),
                );
                return None;
            }
            Some(Escalation {
                factor,
                max_minutes,
            })
        }
    };
    Some(BlockRule {
        block_minutes,
        escalation,
    })
}

fn check_name(checker: &mut Checker<'_>, name: &Spanned<String>, path: &str) -> Option<TierName> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Some(TierName(text.clone()))
    } else {
        let help =
            Some("use 1 to 64 letters, digits, '_' or '-', such as \"block-24h\"".to_owned());
        checker.error(
            name.span(),
            path,
            format!("\"{text}\" is not a valid tier name"),
            help,
        );
        None
    }
}

/// Tiers run from the lowest request rate to the highest, observe tiers first.
fn check_order(
    checker: &mut Checker<'_>,
    previous: &Tier,
    tier: &Tier,
    entry: &Spanned<RawTier>,
    path: &str,
) {
    if previous.blocks() && !tier.blocks() {
        let message = format!(
            "observe tier \"{}\" comes after block tier \"{}\"; an address that crosses both would only be observed",
            tier.name, previous.name
        );
        checker.error(
            entry.get_ref().action.span(),
            &format!("{path}.action"),
            message,
            Some("list observe tiers before block tiers".to_owned()),
        );
        return;
    }
    // Compare requests per second without rounding: r1/w1 < r2/w2.
    let lower = u64::from(previous.requests.get()) * u64::from(tier.window_seconds.get());
    let higher = u64::from(tier.requests.get()) * u64::from(previous.window_seconds.get());
    if higher <= lower {
        let message = format!(
            "tier \"{}\" ({} requests per {} s) is not above the tier before it, \"{}\" ({} requests per {} s)",
            tier.name,
            tier.requests,
            tier.window_seconds,
            previous.name,
            previous.requests,
            previous.window_seconds
        );
        checker.error(
            entry.get_ref().requests.span(),
            &format!("{path}.requests"),
            message,
            Some("list tiers from the lowest rate to the highest".to_owned()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_grows_by_factor_up_to_the_cap() {
        let rule = BlockRule {
            block_minutes: NonZeroU32::new(15).unwrap(),
            escalation: Some(Escalation {
                factor: NonZeroU32::new(4).unwrap(),
                max_minutes: NonZeroU32::new(1440).unwrap(),
            }),
        };
        let minutes: Vec<u32> = (1..=5).map(|n| rule.minutes_for_offence(n)).collect();
        assert_eq!(minutes, [15, 60, 240, 960, 1440]);
        assert_eq!(rule.minutes_for_offence(u32::MAX), 1440);
        let flat = BlockRule {
            escalation: None,
            ..rule
        };
        assert_eq!(flat.minutes_for_offence(9), 15);
    }
}
