//! Responder tiers: request-count thresholds over a window, and what
//! happens to an address that crosses one.

use std::fmt;
use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::detection::{Prefixes, check_prefixes};
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
    Some(Tier {
        name: name?,
        requests: requests?,
        window_seconds: window_seconds?,
        action: action?,
        prefixes,
        scope,
    })
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
