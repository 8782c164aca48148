//! What ops look at before they approve a policy change: every allow-list
//! exception and tenant override with its owner, reason and expiry, flagged
//! when it needs attention.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::{Policy, review::{review, Flag}};
//! use time::macros::date;
//!
//! let text = "[[allow]]\ncidr = \"192.0.2.0/24\"\nreason = \"monitoring\"\nowner = \"sre\"\nexpires = 2026-11-01\n";
//! let today = date!(2026 - 11 - 22);
//! let loaded = Policy::from_toml(text, "floodgate.toml", today).unwrap();
//! let items = review(&loaded.policy);
//! assert_eq!(items[0].days_left, -21);
//! assert_eq!(items[0].flags, vec![Flag::Expired]);
//! ```

pub mod diff;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::Policy;
use crate::cidr::PrefixMap;
use crate::policy::allow::nested_pairs;
use crate::policy::{Grant, Limit, TenantOverride};

/// What kind of exception an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    /// An `[[allow]]` entry.
    Allow,
    /// A `[[quotas.overrides]]` entry.
    TenantOverride,
}

/// Why an item needs a second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "flag")]
pub enum Flag {
    /// Broader than `[safety]` allows by default (approved with `broad = true`).
    TooBroad,
    /// Contains, or lies inside, the entry at `line`.
    Overlapping {
        /// Line of the other entry.
        line: usize,
    },
    /// The same range as the entry at `line`.
    Duplicate {
        /// Line of the other entry.
        line: usize,
    },
    /// Past its expiry; it no longer applies.
    Expired,
    /// Matched no request in the reviewed logs.
    Unused,
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::TooBroad => f.write_str("too-broad"),
            Flag::Overlapping { line } => write!(f, "overlapping(line {line})"),
            Flag::Duplicate { line } => write!(f, "duplicate(line {line})"),
            Flag::Expired => f.write_str("EXPIRED"),
            Flag::Unused => f.write_str("unused"),
        }
    }
}

/// What an exception grants, as fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Granted {
    /// An allow entry that is never blocked.
    Exempt,
    /// An allow entry blocked only at `requests` or more in a tier's window.
    RequestsAtLeast {
        /// The entry's own threshold.
        requests: u32,
    },
    /// A tenant override.
    Override {
        /// The plan whose limits the tenant gets instead of its own, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        plan: Option<String>,
        /// Limits of the tenant's own (empty with a plan, or with classes
        /// only).
        limits: Vec<LimitFields>,
        /// The route classes it raises, each with its limits.
        classes: Vec<ClassGrant>,
    },
}

/// One limit of a tenant override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LimitFields {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period, in seconds.
    pub per_seconds: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

/// A route class a tenant override raises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ClassGrant {
    /// The class.
    pub class: String,
    /// Its limits for the tenant.
    pub limits: Vec<LimitFields>,
}

fn limit_fields(limits: &[Limit]) -> Vec<LimitFields> {
    limits
        .iter()
        .map(|l| LimitFields {
            requests: l.requests.get(),
            per_seconds: l.per_seconds.get(),
            burst: l.burst.get(),
        })
        .collect()
}

/// One exception, as ops review it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ReviewItem {
    /// Allow entry or tenant override.
    pub kind: ItemKind,
    /// The CIDR, or the tenant id.
    pub subject: String,
    /// What it grants: `exempt`, `requests >= N`, `plan NAME` or limits,
    /// then for an override each class it raises: `exports 100/3600s`.
    pub grants: String,
    /// The same as fields, for scripts.
    pub grant: Granted,
    /// Who answers for it.
    pub owner: String,
    /// Why it exists.
    pub reason: String,
    /// Last day it applies, `YYYY-MM-DD`.
    pub expires: String,
    /// Days from the review day to `expires`; negative once expired.
    pub days_left: i64,
    /// Line in the policy file.
    pub line: usize,
    /// What needs attention.
    pub flags: Vec<Flag>,
    /// Requests from inside the entry in the reviewed logs; `None` when no
    /// logs were given (and for tenant overrides, which WAF logs do not show).
    pub requests: Option<u64>,
    /// Distinct client addresses seen inside the entry in the reviewed
    /// logs; `None` when no logs were given.
    pub addresses: Option<u64>,
}

/// Every allow entry, then every tenant override, in file order, as of the
/// day the policy was evaluated on.
pub fn review(policy: &Policy) -> Vec<ReviewItem> {
    let today = policy.evaluated_on;
    let entries = policy.allow.entries();
    let mut items: Vec<ReviewItem> = entries
        .iter()
        .map(|entry| {
            let broadest = match entry.cidr {
                ipnet::IpNet::V4(_) => policy.safety.broadest_allow_prefix_v4,
                ipnet::IpNet::V6(_) => policy.safety.broadest_allow_prefix_v6,
            };
            let mut flags = Vec::new();
            if entry.cidr.prefix_len() < broadest {
                flags.push(Flag::TooBroad);
            }
            if entry.is_expired(today) {
                flags.push(Flag::Expired);
            }
            ReviewItem {
                kind: ItemKind::Allow,
                subject: entry.cidr.to_string(),
                grants: entry
                    .requests
                    .map_or("exempt".to_owned(), |r| format!("requests >= {r}")),
                grant: entry
                    .requests
                    .map_or(Granted::Exempt, |r| Granted::RequestsAtLeast {
                        requests: r.get(),
                    }),
                owner: entry.owner.clone(),
                reason: entry.reason.clone(),
                expires: entry.expires.to_string(),
                days_left: entry.days_left(today),
                line: entry.line,
                flags,
                requests: None,
                addresses: None,
            }
        })
        .collect();
    for (inner, outer) in nested_pairs(entries) {
        let duplicate = entries[inner].cidr == entries[outer].cidr;
        for (this, other) in [(inner, outer), (outer, inner)] {
            let line = entries[other].line;
            let flag = if duplicate {
                Flag::Duplicate { line }
            } else {
                Flag::Overlapping { line }
            };
            items[this].flags.push(flag);
        }
    }
    if let Some(quotas) = &policy.quotas {
        items.extend(quotas.overrides().iter().map(|o| ReviewItem {
            kind: ItemKind::TenantOverride,
            subject: o.tenant.to_string(),
            grants: describe_override(o),
            grant: override_grant(o),
            owner: o.owner.clone(),
            reason: o.reason.clone(),
            expires: o.expires.to_string(),
            days_left: (o.expires - today).whole_days(),
            line: o.line,
            flags: if o.is_expired(today) {
                vec![Flag::Expired]
            } else {
                Vec::new()
            },
            requests: None,
            addresses: None,
        }));
    }
    items
}

/// Adds the requests each allow entry carried, and flags the entries that
/// carried none. `traffic` yields each client IP once with its requests;
/// an IP counts for every entry that contains it, expired ones included.
pub fn add_usage(
    items: &mut [ReviewItem],
    policy: &Policy,
    traffic: impl IntoIterator<Item = (IpAddr, u64)>,
) {
    // `traffic` holds one row per address.
    let entries = policy.allow.entries();
    let nets: Vec<IpNet> = entries.iter().map(|e| e.cidr).collect();
    let map = PrefixMap::new(&nets);
    // Allow entries nest, so every entry that contains an IP lies on the
    // chain of innermost containers from the most specific one.
    let mut container = vec![None; entries.len()];
    for (inner, outer) in nested_pairs(entries) {
        container[inner] = Some(outer);
    }
    let mut requests = vec![0u64; entries.len()];
    let mut addresses = vec![0u64; entries.len()];
    for (ip, count) in traffic {
        let mut entry = map.lookup(ip);
        while let Some(index) = entry {
            requests[index] += count;
            addresses[index] += 1;
            entry = container[index];
        }
    }
    let allow_items = items.iter_mut().filter(|item| item.kind == ItemKind::Allow);
    for ((item, count), seen) in allow_items.zip(requests).zip(addresses) {
        item.requests = Some(count);
        item.addresses = Some(seen);
        if count == 0 {
            item.flags.push(Flag::Unused);
        }
    }
}

/// [`describe_override`] as fields.
fn override_grant(entry: &TenantOverride) -> Granted {
    let (plan, limits) = match &entry.grant {
        Some(Grant::Plan(plan)) => (Some(plan.to_string()), Vec::new()),
        Some(Grant::Limits(limits)) => (None, limit_fields(limits)),
        None => (None, Vec::new()),
    };
    Granted::Override {
        plan,
        limits,
        classes: entry
            .classes
            .iter()
            .map(|c| ClassGrant {
                class: c.class.to_string(),
                limits: limit_fields(&c.limits),
            })
            .collect(),
    }
}

/// `plan pro`, `100/60s` or `plan pro; exports 100/3600s; reports 5/60s`:
/// what it grants, then each class it raises.
fn describe_override(entry: &TenantOverride) -> String {
    let grant = match &entry.grant {
        Some(Grant::Plan(plan)) => Some(format!("plan {plan}")),
        Some(Grant::Limits(limits)) => Some(describe_limits(limits)),
        None => None,
    };
    let classes = entry
        .classes
        .iter()
        .map(|c| format!("{} {}", c.class, describe_limits(&c.limits)));
    grant
        .into_iter()
        .chain(classes)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `100/60s burst 150, 5000/3600s`.
fn describe_limits(limits: &[Limit]) -> String {
    limits
        .iter()
        .map(|l| {
            let mut text = format!("{}/{}s", l.requests, l.per_seconds);
            if l.burst != l.requests {
                text.push_str(&format!(" burst {}", l.burst));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}
