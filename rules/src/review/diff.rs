//! What a change to the policy does, entry by entry: the allow-list's
//! exceptions and the tenant overrides added, removed, widened, extended or
//! narrowed (with owner, reason and expiry), and the tiers and plans
//! changed; each flagged when it needs a second reviewer.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::Policy;
//! use floodgate_rules::review::diff::{ChangeType, Risk, diff};
//! use time::macros::date;
//!
//! let entry = |cidr: &str| format!(
//!     "[[allow]]\ncidr = \"{cidr}\"\nreason = \"partner\"\nowner = \"sre\"\nexpires = 2027-01-31\n"
//! );
//! let today = date!(2026 - 12 - 07);
//! let base = Policy::from_toml(&entry("198.51.100.0/24"), "base.toml", today).unwrap().policy;
//! let head = Policy::from_toml(&entry("198.51.0.0/16"), "head.toml", today).unwrap().policy;
//! let changes = diff(&base, &head);
//! assert_eq!(changes[0].change, ChangeType::Widened);
//! assert_eq!(changes[0].risks, vec![Risk::Broad]);
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use time::{Date, Duration};

use super::{describe_limits, describe_override};
use crate::Policy;
use crate::policy::{AllowEntry, Plan, TenantOverride, Tier, TierAction};

/// An exception wider than this (IPv4) needs a second reviewer.
pub const BROAD_IPV4: u8 = 24;
/// An exception wider than this (IPv6) needs a second reviewer.
pub const BROAD_IPV6: u8 = 48;
/// An exception or override that lasts longer than this from the review
/// day needs a second reviewer.
pub const LONG_LIVED_DAYS: i64 = 365;

/// What a changed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// An `[[allow]]` entry, by its range.
    Allow,
    /// A `[[quotas.overrides]]` entry, by its tenant.
    TenantOverride,
    /// A `[[tiers]]` entry, by its name.
    Tier,
    /// A `[[quotas.plans]]` entry, by its name.
    Plan,
}

/// How an entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeType {
    /// New in the head.
    Added,
    /// Gone from the head.
    Removed,
    /// An exception that now exempts more: a wider range, or a higher
    /// threshold or none.
    Widened,
    /// An exception or override that now expires later.
    Extended,
    /// An exception that now exempts less.
    Narrowed,
    /// Anything else about it changed.
    Changed,
}

/// Why a change needs a second reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// An exception wider than a /24 (IPv4) or a /48 (IPv6).
    Broad,
    /// An exception or override that lasts more than a year from the
    /// review day.
    LongLived,
    /// An existing exception or override with a new owner.
    OwnerChanged,
    /// A block tier removed, made observe-only, shortened or given a
    /// higher rate to reach.
    Loosened,
    /// It would end blocks in force now.
    UnblocksNow,
}

/// One field's values before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldChange {
    /// The field, as the policy file names it.
    pub field: String,
    /// Its value in the base (`null` for an added entry).
    pub before: Option<String>,
    /// Its value in the head (`null` for a removed entry).
    pub after: Option<String>,
}

/// One entry's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Change {
    /// What kind of entry.
    pub section: Section,
    /// Its range, tenant or name (the head's, for a widened range).
    pub subject: String,
    /// How it changed.
    pub change: ChangeType,
    /// The fields that changed (every field, for an added or removed entry).
    pub fields: Vec<FieldChange>,
    /// Who answers for it (exceptions and overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Why it exists (exceptions and overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its last day, `YYYY-MM-DD` (exceptions and overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Its line in the head (in the base, for a removed entry), for the
    /// entries that keep one (exceptions and overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Why it needs a second reviewer; empty when it does not.
    pub risks: Vec<Risk>,
    /// Requests from inside an exception's range in the reviewed logs
    /// (`null` without logs, and for other entries).
    pub requests: Option<u64>,
    /// Distinct addresses those requests came from.
    pub addresses: Option<u64>,
    /// Blocks in force now that an exception would end (filled in by the
    /// responder, which reads the ledger).
    pub unblocks: Vec<String>,
}

impl Change {
    fn new(section: Section, subject: String, change: ChangeType, line: Option<usize>) -> Change {
        Change {
            section,
            subject,
            change,
            fields: Vec::new(),
            owner: None,
            reason: None,
            expires: None,
            line,
            risks: Vec::new(),
            requests: None,
            addresses: None,
            unblocks: Vec::new(),
        }
    }

    /// Whether a second reviewer should approve it.
    pub fn is_risky(&self) -> bool {
        !self.risks.is_empty()
    }

    /// Adds `risk`, once, in order.
    pub fn flag(&mut self, risk: Risk) {
        if !self.risks.contains(&risk) {
            self.risks.push(risk);
            self.risks.sort_unstable();
        }
    }
}

/// An entry of a section, as the diff compares it.
trait Entry {
    const SECTION: Section;
    /// What identifies it across versions.
    fn key(&self) -> String;
    /// Its line in the file, if it keeps one.
    fn line(&self) -> Option<usize>;
    /// Its fields, as the policy file names them, in words.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// Who answers for it, why, and until when (exceptions and overrides).
    fn approval(&self) -> Option<(&str, &str, Date)> {
        None
    }
}

impl Entry for AllowEntry {
    const SECTION: Section = Section::Allow;
    fn key(&self) -> String {
        self.cidr.to_string()
    }
    fn line(&self) -> Option<usize> {
        Some(self.line)
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let threshold = self
            .requests
            .map_or("exempt".to_owned(), |r| format!("requests >= {r}"));
        vec![
            ("cidr", self.cidr.to_string()),
            ("threshold", threshold),
            ("owner", self.owner.clone()),
            ("reason", self.reason.clone()),
            ("expires", self.expires.to_string()),
        ]
    }
    fn approval(&self) -> Option<(&str, &str, Date)> {
        Some((&self.owner, &self.reason, self.expires))
    }
}

impl Entry for TenantOverride {
    const SECTION: Section = Section::TenantOverride;
    fn key(&self) -> String {
        self.tenant.to_string()
    }
    fn line(&self) -> Option<usize> {
        Some(self.line)
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("grants", describe_override(self)),
            ("owner", self.owner.clone()),
            ("reason", self.reason.clone()),
            ("expires", self.expires.to_string()),
        ]
    }
    fn approval(&self) -> Option<(&str, &str, Date)> {
        Some((&self.owner, &self.reason, self.expires))
    }
}

impl Entry for Tier {
    const SECTION: Section = Section::Tier;
    fn key(&self) -> String {
        self.name.to_string()
    }
    fn line(&self) -> Option<usize> {
        None
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let action = match &self.action {
            TierAction::Observe => "observe".to_owned(),
            TierAction::Block(rule) => {
                let mut text = format!("block {} min", rule.block_minutes);
                if let Some(escalation) = rule.escalation {
                    text.push_str(&format!(
                        ", x{} up to {} min",
                        escalation.factor, escalation.max_minutes
                    ));
                }
                text
            }
        };
        let scope = self
            .scope
            .as_ref()
            .map_or("every request".to_owned(), ToString::to_string);
        vec![
            ("requests", self.requests.to_string()),
            ("window_seconds", self.window_seconds.to_string()),
            ("action", action),
            (
                "prefixes",
                format!("/{} /{}", self.prefixes.ipv4, self.prefixes.ipv6),
            ),
            ("match", scope),
        ]
    }
}

impl Entry for Plan {
    const SECTION: Section = Section::Plan;
    fn key(&self) -> String {
        self.name.to_string()
    }
    fn line(&self) -> Option<usize> {
        None
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let classes = self
            .classes
            .iter()
            .map(|c| format!("{} {}", c.class, describe_limits(&c.limits)))
            .collect::<Vec<_>>()
            .join("; ");
        vec![
            ("limits", describe_limits(&self.limits)),
            ("classes", classes),
            ("shadow", self.shadow.to_string()),
        ]
    }
}

/// The change from `before` to `after` (one of them may be absent), with
/// the fields that differ, or every field of an added or removed entry;
/// `None` when nothing changed. Typed `added`, `removed` or `changed`.
fn compare<T: Entry>(before: Option<&T>, after: Option<&T>) -> Option<Change> {
    let shown = after.or(before)?;
    let kind = match (before, after) {
        (None, _) => ChangeType::Added,
        (_, None) => ChangeType::Removed,
        _ => ChangeType::Changed,
    };
    let mut change = Change::new(T::SECTION, shown.key(), kind, shown.line());
    let old = before.map(Entry::fields).unwrap_or_default();
    let new = after.map(Entry::fields).unwrap_or_default();
    for (field, _) in shown.fields() {
        let value = |fields: &[(&str, String)]| {
            fields
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| v.clone())
        };
        let (was, is) = (value(&old), value(&new));
        if was != is {
            change.fields.push(FieldChange {
                field: field.to_owned(),
                before: was,
                after: is,
            });
        }
    }
    if change.fields.is_empty() {
        return None;
    }
    if let Some((owner, reason, expires)) = shown.approval() {
        change.owner = Some(owner.to_owned());
        change.reason = Some(reason.to_owned());
        change.expires = Some(expires.to_string());
    }
    if let (Some(before), Some(after)) = (
        before.and_then(Entry::approval),
        after.and_then(Entry::approval),
    ) {
        if before.0 != after.0 {
            change.flag(Risk::OwnerChanged);
        }
        if after.2 > before.2 {
            change.change = ChangeType::Extended;
        }
    }
    Some(change)
}

/// Entries matched by key: the head's in file order, then those removed.
fn keyed<'p, T: Entry>(base: &'p [T], head: &'p [T]) -> Vec<(Option<&'p T>, Option<&'p T>)> {
    let base_by_key: BTreeMap<String, &T> = base.iter().map(|b| (b.key(), b)).collect();
    let head_by_key: BTreeMap<String, &T> = head.iter().map(|h| (h.key(), h)).collect();
    let mut pairs: Vec<(Option<&T>, Option<&T>)> = head
        .iter()
        .map(|h| (base_by_key.get(&h.key()).copied(), Some(h)))
        .collect();
    pairs.extend(
        base.iter()
            .filter(|b| !head_by_key.contains_key(&b.key()))
            .map(|b| (Some(b), None)),
    );
    pairs
}

/// Exceptions matched by range; an added range that holds a removed one
/// widens it, and a removed range that holds an added one was narrowed to
/// it (reported once, as the head's entry).
fn allow_pairs<'p>(
    base: &'p [AllowEntry],
    head: &'p [AllowEntry],
) -> Vec<(Option<&'p AllowEntry>, Option<&'p AllowEntry>)> {
    let mut pairs = keyed(base, head);
    let lone_base: Vec<usize> = (0..pairs.len()).filter(|&i| pairs[i].1.is_none()).collect();
    let lone_head: Vec<usize> = (0..pairs.len()).filter(|&i| pairs[i].0.is_none()).collect();
    let mut paired = Vec::new();
    for &h in &lone_head {
        let head_net = pairs[h].1.expect("a head entry").cidr;
        let partner = lone_base.iter().copied().find(|&b| {
            let base_net = pairs[b].0.expect("a base entry").cidr;
            !paired.contains(&b) && (head_net.contains(&base_net) || base_net.contains(&head_net))
        });
        if let Some(b) = partner {
            pairs[h].0 = pairs[b].0;
            paired.push(b);
        }
    }
    let mut i = 0;
    pairs.retain(|_| {
        i += 1;
        !paired.contains(&(i - 1))
    });
    pairs
}

/// How much an exception exempts: a range, and the requests it may send
/// before a tier counts it (all, for a full exception).
fn exempts_more(after: &AllowEntry, before: &AllowEntry) -> (bool, bool) {
    let budget = |e: &AllowEntry| e.requests.map_or(u64::MAX, |r| u64::from(r.get()));
    let wider = after.cidr != before.cidr && after.cidr.contains(&before.cidr);
    let narrower = after.cidr != before.cidr && before.cidr.contains(&after.cidr);
    (
        wider || budget(after) > budget(before),
        narrower || budget(after) < budget(before),
    )
}

fn is_broad(net: &IpNet) -> bool {
    match net {
        IpNet::V4(_) => net.prefix_len() < BROAD_IPV4,
        IpNet::V6(_) => net.prefix_len() < BROAD_IPV6,
    }
}

fn is_long_lived(expires: Date, today: Date) -> bool {
    expires > today + Duration::days(LONG_LIVED_DAYS)
}

/// Requests per second a tier takes to reach, and the minutes it blocks
/// for (0 for an observe tier).
fn strictness(tier: &Tier) -> (f64, u32) {
    let rate = f64::from(tier.requests.get()) / f64::from(tier.window_seconds.get());
    let minutes = match &tier.action {
        TierAction::Block(rule) => rule.block_minutes.get(),
        TierAction::Observe => 0,
    };
    (rate, minutes)
}

fn overrides(policy: &Policy) -> &[TenantOverride] {
    policy.quotas.as_ref().map_or(&[], |q| q.overrides())
}

fn plans(policy: &Policy) -> &[Plan] {
    policy.quotas.as_ref().map_or(&[], |q| q.plans())
}

/// Every change from `base` to `head`: exceptions, then tenant overrides,
/// tiers and plans, each in the head's file order (removed ones last).
/// Risks are judged as of the head's review day.
pub fn diff(base: &Policy, head: &Policy) -> Vec<Change> {
    let today = head.evaluated_on;
    let mut changes = Vec::new();
    for (before, after) in allow_pairs(base.allow.entries(), head.allow.entries()) {
        let Some(mut change) = compare(before, after) else {
            continue;
        };
        if let (Some(before), Some(after)) = (before, after) {
            let (more, less) = exempts_more(after, before);
            if more {
                change.change = ChangeType::Widened;
            } else if less && change.change != ChangeType::Extended {
                change.change = ChangeType::Narrowed;
            }
        }
        if let Some(after) = after.filter(|_| change.change != ChangeType::Narrowed) {
            if is_broad(&after.cidr) && change.change != ChangeType::Changed {
                change.flag(Risk::Broad);
            }
            if is_long_lived(after.expires, today) && change.change != ChangeType::Changed {
                change.flag(Risk::LongLived);
            }
        }
        changes.push(change);
    }
    for (before, after) in keyed(overrides(base), overrides(head)) {
        let Some(mut change) = compare(before, after) else {
            continue;
        };
        let grows = matches!(change.change, ChangeType::Added | ChangeType::Extended);
        if grows && after.is_some_and(|a| is_long_lived(a.expires, today)) {
            change.flag(Risk::LongLived);
        }
        changes.push(change);
    }
    for (before, after) in keyed(&base.tiers, &head.tiers) {
        let Some(mut change) = compare(before, after) else {
            continue;
        };
        if let Some(before) = before.filter(|b| strictness(b).1 > 0) {
            let (rate, minutes) = strictness(before);
            let loosened =
                after.is_none_or(|a| strictness(a).0 > rate || strictness(a).1 < minutes);
            if loosened {
                change.flag(Risk::Loosened);
            }
        }
        changes.push(change);
    }
    changes.extend(
        keyed(plans(base), plans(head))
            .into_iter()
            .filter_map(|(before, after)| compare(before, after)),
    );
    changes
}

/// Fills in, for each exception changed, the requests and addresses of
/// `traffic` (each client address once, with its requests) inside its
/// range.
pub fn add_diff_usage(changes: &mut [Change], traffic: impl IntoIterator<Item = (IpAddr, u64)>) {
    let ranges: Vec<(usize, IpNet)> = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.section == Section::Allow)
        .filter_map(|(i, c)| Some((i, c.subject.parse().ok()?)))
        .collect();
    for &(i, _) in &ranges {
        changes[i].requests = Some(0);
        changes[i].addresses = Some(0);
    }
    // A handful of changed ranges: each address is tested against each.
    for (ip, requests) in traffic {
        for &(i, _) in ranges.iter().filter(|(_, net)| net.contains(&ip)) {
            *changes[i].requests.get_or_insert(0) += requests;
            *changes[i].addresses.get_or_insert(0) += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TIERS: &str = "[[tiers]]\nname = \"watch\"\nrequests = 500\nwindow_seconds = 300\naction = \"observe\"\n\n[[tiers]]\nname = \"block\"\nrequests = 2000\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\n";

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, "floodgate.toml", date!(2026 - 12 - 07))
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
    }

    fn allow(cidr: &str, extra: &str) -> String {
        format!(
            "[[allow]]\ncidr = \"{cidr}\"\nreason = \"partner\"\nowner = \"sre\"\nexpires = 2027-01-31\n{extra}\n"
        )
    }

    fn one_change(base: &str, head: &str) -> Change {
        let changes = diff(&policy(base), &policy(head));
        assert_eq!(changes.len(), 1, "{changes:#?}");
        changes.into_iter().next().unwrap()
    }

    #[test]
    fn the_same_policy_changes_nothing() {
        let text = format!("{TIERS}{}", allow("198.51.100.0/24", "requests = 5000"));
        assert!(diff(&policy(&text), &policy(&text)).is_empty());
    }

    #[test]
    fn an_exception_narrowed_to_a_range_inside_it_is_one_change() {
        let change = one_change(&allow("198.51.100.0/24", ""), &allow("198.51.100.0/26", ""));
        assert_eq!(change.change, ChangeType::Narrowed);
        assert_eq!(change.subject, "198.51.100.0/26");
        assert!(change.risks.is_empty());
    }

    #[test]
    fn a_higher_threshold_or_none_widens_and_a_lower_narrows() {
        let raised = one_change(
            &allow("198.51.100.0/24", "requests = 5000"),
            &allow("198.51.100.0/24", "requests = 9000"),
        );
        assert_eq!(raised.change, ChangeType::Widened);
        let exempt = one_change(
            &allow("198.51.100.0/24", "requests = 5000"),
            &allow("198.51.100.0/24", ""),
        );
        assert_eq!(exempt.change, ChangeType::Widened);
        assert_eq!(exempt.fields[0].after.as_deref(), Some("exempt"));
        let lowered = one_change(
            &allow("198.51.100.0/24", ""),
            &allow("198.51.100.0/24", "requests = 5000"),
        );
        assert_eq!(lowered.change, ChangeType::Narrowed);
    }

    #[test]
    fn an_exception_added_for_over_a_year_or_wider_than_a_48_needs_a_second_reviewer() {
        let head = allow("2001:db8::/32", "").replace("2027-01-31", "2028-01-31");
        let change = one_change("", &head);
        assert_eq!(change.change, ChangeType::Added);
        assert_eq!(change.risks, [Risk::Broad, Risk::LongLived]);
        let removed = one_change(&head, "");
        assert_eq!(removed.change, ChangeType::Removed);
        assert!(
            removed.risks.is_empty(),
            "removing an exception blocks more"
        );
    }

    #[test]
    fn a_block_tier_removed_made_observe_or_harder_to_reach_is_loosened() {
        let observe_only = TIERS.replace(
            "action = \"block\"\nblock_minutes = 15",
            "action = \"observe\"",
        );
        let stricter = TIERS.replace("requests = 2000", "requests = 1500");
        let removed = TIERS.split("\n\n").next().unwrap().to_owned() + "\n";
        for (head, loosened) in [(observe_only, true), (removed, true), (stricter, false)] {
            let change = one_change(TIERS, &head);
            assert_eq!(change.section, Section::Tier);
            assert_eq!(
                change.risks.contains(&Risk::Loosened),
                loosened,
                "{change:#?}"
            );
        }
        let watch_raised = TIERS.replace("requests = 500", "requests = 900");
        assert!(
            one_change(TIERS, &watch_raised).risks.is_empty(),
            "an observe tier blocks nothing"
        );
    }
}
