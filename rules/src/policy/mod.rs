//! The policy file: one TOML file holding the responder's tiers, the
//! allow-list exceptions, the tenant quotas, the WAF targets, the log source
//! and the safety limits.
//!
//! Loading goes parse → validate → typed [`Policy`]. Validation is pure: the
//! caller passes the text and the day to evaluate expiry on, and gets back
//! either a policy plus warnings, or every error found.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::Policy;
//! use time::macros::date;
//!
//! let text = r#"
//! [[tiers]]
//! name = "block"
//! requests = 2000
//! window_seconds = 300
//! action = "block"
//! block_minutes = 15
//!
//! [[allow]]
//! cidr = "198.51.100.0/24"
//! reason = "partner office NAT"
//! owner = "netops@example.com"
//! expires = 2027-06-30
//! "#;
//! let loaded = Policy::from_toml(text, "floodgate.toml", date!(2026 - 11 - 22)).unwrap();
//! assert!(loaded.warnings.is_empty());
//! let allowed = loaded.policy.allow.find("198.51.100.7".parse().unwrap()).unwrap();
//! assert_eq!(allowed.owner, "netops@example.com");
//! ```

mod accounts;
mod alerts;
pub(crate) mod allow;
mod check;
mod detection;
mod infra;
mod parse;
mod quotas;
mod raw;
mod responder;
mod routes;
mod safety;
mod scope;
mod targets;
mod tiers;

pub use accounts::{Account, AccountName, RoleArn};
pub use alerts::Alerts;
pub use allow::{AllowEntry, AllowList};
pub use detection::{Aggregation, MIN_IPV4_PREFIX, MIN_IPV6_PREFIX, Prefixes};
pub use infra::{Infra, InfraMode, LOG_RETENTION_DAYS, WAF_MIN_RATE_LIMIT, WAF_RATE_WINDOWS};
pub use quotas::{
    ClassLimits, DEFAULT_REDIS_TIMEOUT_MS, Grant, Limit, MAX_CLASSES, MAX_LIMITS_PER_PLAN, Plan,
    PlanName, QuotaBackend, Quotas, QuotasError, RedisBackend, TenantId, TenantOverride,
};
pub use responder::{
    DEFAULT_MAX_CLOCK_SKEW_SECONDS, DEFAULT_SCHEDULE, DynamoDbTable, Lease, LedgerStore, Responder,
    Role, is_holder_id, schedule_period_seconds,
};
pub use routes::{ClassName, PathPattern, Route, Segment};
pub use safety::{Mode, Safety};
pub use scope::{PathMatch, RequestFields, RequestMatch};
pub use targets::{
    CLOUDFLARE_ACCOUNT_ITEMS, CLOUDFLARE_API_URL, CLOUDFLARE_ENTERPRISE_ITEMS, CloudWatchApi,
    CloudflareListName, CloudflareTarget, DEFAULT_DELIVERY_LAG_MINUTES, INSIGHTS_MAX_QUERIES,
    INSIGHTS_MAX_ROWS, IpSetName, LogFormat, LogGroup, LogSourceConfig, Region, S3Bucket, S3Source,
    Target, WafScope, Wafv2Target, valid_bucket_name,
};
pub use tiers::{BlockRule, Escalation, MAX_MATCHES, Tier, TierAction, TierName, rate_rule_name};

use time::Date;

use crate::diagnostic::{Collector, Diagnostic, PolicyError, Severity, closest};
use check::Checker;

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Responder tiers, from the lowest request rate to the highest.
    pub tiers: Vec<Tier>,
    /// The aggregation key of tiers that do not set their own
    /// (`[detection]`; IPv4 per address and IPv6 per /64 by default).
    pub prefixes: Prefixes,
    /// Allow-list exceptions.
    pub allow: AllowList,
    /// Tenant quotas for the middleware, if the file has `[quotas]`.
    pub quotas: Option<Quotas>,
    /// AWS accounts reached through a role (`[[accounts]]`).
    pub accounts: Vec<Account>,
    /// Where blocks go.
    pub targets: Vec<Target>,
    /// Where WAF logs come from, if the file has `[source]`.
    pub source: Option<LogSourceConfig>,
    /// Safety limits.
    pub safety: Safety,
    /// What `render-infra` needs, if the file has `[infra]`.
    pub infra: Option<Infra>,
    /// How the responder job runs.
    pub responder: Responder,
    /// Where alerts go, if the file has `[alerts]`.
    pub alerts: Option<Alerts>,
    /// The day expiry was evaluated on.
    pub evaluated_on: Date,
}

/// A policy that loaded, with the warnings ops should still read.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The policy.
    pub policy: Policy,
    /// Warnings in file order: expired, duplicate or overlapping entries...
    pub warnings: Vec<Diagnostic>,
}

impl Policy {
    /// Parses and validates policy text. `file` names the file in messages;
    /// `today` decides which exceptions have expired.
    pub fn from_toml(text: &str, file: &str, today: Date) -> Result<LoadedPolicy, PolicyError> {
        let mut checker = Checker {
            found: Collector::new(file, text),
            today,
        };
        let Some(raw) = parse::raw_policy(text, &mut checker) else {
            return Err(PolicyError {
                diagnostics: checker.found.finish(),
            });
        };
        let safety = safety::check_safety(&mut checker, raw.safety.as_ref());
        let prefixes = detection::check_detection(&mut checker, raw.detection.as_ref());
        let tiers = tiers::check_tiers(&mut checker, &raw.tiers, prefixes);
        let allow = allow::check_allow_list(&mut checker, &raw.allow, &safety, &tiers);
        let quotas = raw
            .quotas
            .as_ref()
            .and_then(|q| quotas::check_quotas(&mut checker, q));
        let accounts = accounts::check_accounts(&mut checker, &raw.accounts);
        let targets = targets::check_targets(&mut checker, &raw.targets, &accounts);
        let has_waf = targets.iter().any(|t| matches!(t, Target::Wafv2(_)));
        tiers::check_fast_has_waf(&mut checker, &raw.tiers, has_waf);
        let source = raw
            .source
            .as_ref()
            .and_then(|s| targets::check_source(&mut checker, s, &accounts));
        accounts::warn_unused(&mut checker, &raw, &accounts);
        if source.as_ref().and_then(LogSourceConfig::format) == Some(LogFormat::Cloudflare) {
            tiers::reject_label_matches(&mut checker, &raw.tiers);
        }
        let shared_ledger = raw
            .responder
            .as_ref()
            .and_then(|r| r.get_ref().ledger.as_ref())
            .is_some_and(|l| l.get_ref().backend.get_ref() == "dynamodb");
        let infra = raw
            .infra
            .as_ref()
            .and_then(|i| infra::check_infra(&mut checker, i, shared_ledger));
        let responder =
            responder::check_responder(&mut checker, raw.responder.as_ref(), infra.as_ref());
        let alerts = raw
            .alerts
            .as_ref()
            .and_then(|a| alerts::check_alerts(&mut checker, a));
        let diagnostics = checker.found.finish();
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(PolicyError { diagnostics });
        }
        let policy = Policy {
            tiers,
            prefixes,
            allow,
            quotas,
            accounts,
            targets,
            source,
            safety,
            infra,
            responder,
            alerts,
            evaluated_on: today,
        };
        Ok(LoadedPolicy {
            policy,
            warnings: diagnostics,
        })
    }

    /// The `[[accounts]]` entry of that name.
    pub fn account(&self, name: &AccountName) -> Option<&Account> {
        self.accounts.iter().find(|a| &a.name == name)
    }

    /// The web ACL `render-infra` deploys and the fast tiers' rate-based
    /// rules live in: `[infra] name`, `floodgate` without it.
    pub fn web_acl_name(&self) -> &str {
        self.infra.as_ref().map_or("floodgate", |i| i.name.as_str())
    }

    /// The tiers with `fast = true`.
    pub fn fast_tiers(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter().filter(|t| t.fast)
    }

    /// The tier of that name.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name.as_str() == name)
    }

    /// How severe the tier of that name is, for ordering: any block tier
    /// above every observe tier, then the later in the file above the
    /// earlier; `None` (below all) for a tier the policy no longer has.
    pub fn severity(&self, tier: &str) -> Option<(bool, usize)> {
        let position = self.tiers.iter().position(|t| t.name.as_str() == tier)?;
        Some((self.tiers[position].blocks(), position))
    }
}

/// For toml's "unknown field `x`, expected one of `a`, `b`", the closest key.
fn misspelt_key_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(unknown, candidates.iter().copied()) {
        Some(key) => Some(format!("did you mean `{key}`?")),
        None => Some(format!(
            "remove `{unknown}`; this table takes {}",
            expected
                .trim_start_matches(", expected ")
                .trim_start_matches("expected ")
        )),
    }
}
