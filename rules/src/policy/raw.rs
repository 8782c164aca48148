//! The policy file exactly as written, before validation.
//!
//! Numbers are read as `i64` and names as strings so that validation, not
//! the TOML decoder, reports a zero, a negative or a misspelt choice, with
//! every problem listed at once. Every value keeps its byte span.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file, section by section (`parse` decodes each on its own).
#[derive(Debug, Default)]
pub(crate) struct RawPolicy {
    pub tiers: Vec<Spanned<RawTier>>,
    pub allow: Vec<Spanned<RawAllow>>,
    pub quotas: Option<Spanned<RawQuotas>>,
    pub targets: Vec<Spanned<RawTarget>>,
    pub source: Option<Spanned<RawSource>>,
    pub safety: Option<Spanned<RawSafety>>,
    pub infra: Option<Spanned<RawInfra>>,
    pub responder: Option<Spanned<RawResponder>>,
    pub alerts: Option<Spanned<RawAlerts>>,
    pub detection: Option<Spanned<RawDetection>>,
    pub accounts: Vec<Spanned<RawAccount>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccount {
    pub name: Spanned<String>,
    pub role_arn: Spanned<String>,
    pub external_id_env: Option<Spanned<String>>,
    pub endpoint_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDetection {
    pub ipv4_prefix: Option<Spanned<i64>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub webhook_url_env: Spanned<String>,
    pub repeat_minutes: Option<Spanned<i64>>,
    pub target_failure_cycles: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    pub name: Spanned<String>,
    pub requests: Spanned<i64>,
    pub window_seconds: Spanned<i64>,
    pub action: Spanned<String>,
    pub block_minutes: Option<Spanned<i64>>,
    pub escalation: Option<Spanned<RawEscalation>>,
    pub ipv4_prefix: Option<Spanned<i64>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
    #[serde(rename = "match")]
    pub scope: Option<Spanned<RawMatch>>,
    pub fast: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub country: Option<Spanned<String>>,
    pub label: Option<Spanned<String>>,
    pub action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEscalation {
    pub factor: Spanned<i64>,
    pub max_minutes: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub cidr: Spanned<String>,
    pub reason: Spanned<String>,
    pub owner: Spanned<String>,
    pub expires: Spanned<toml::Value>,
    pub requests: Option<Spanned<i64>>,
    #[serde(default)]
    pub broad: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuotas {
    pub default_plan: Spanned<String>,
    pub anonymous_plan: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub redis: Option<Spanned<RawRedis>>,
    #[serde(default)]
    pub plans: Vec<Spanned<RawPlan>>,
    #[serde(default)]
    pub overrides: Vec<Spanned<RawOverride>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub class: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub cost: Option<Spanned<i64>>,
}

/// `classes = { exports = [{ requests = 10, per_seconds = 3600 }] }`.
pub(crate) type RawClasses = Spanned<BTreeMap<Spanned<String>, Spanned<Vec<Spanned<RawLimit>>>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub cluster: Option<Spanned<bool>>,
    pub username: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub tls_ca_file: Option<Spanned<String>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub expected_instances: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    pub name: Spanned<String>,
    pub limits: Spanned<Vec<Spanned<RawLimit>>>,
    pub classes: Option<RawClasses>,
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub requests: Spanned<i64>,
    pub per_seconds: Spanned<i64>,
    pub burst: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub tenant: Spanned<String>,
    pub plan: Option<Spanned<String>>,
    pub limits: Option<Spanned<Vec<Spanned<RawLimit>>>>,
    pub classes: Option<RawClasses>,
    pub reason: Spanned<String>,
    pub owner: Spanned<String>,
    pub expires: Spanned<toml::Value>,
}

/// One table for every target type; validation checks which keys a type takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub scope: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub ipv4_sets: Option<Spanned<Vec<Spanned<String>>>>,
    pub ipv6_sets: Option<Spanned<Vec<Spanned<String>>>>,
    pub endpoint_url: Option<Spanned<String>>,
    pub create_missing: Option<Spanned<bool>>,
    pub dir: Option<Spanned<String>>,
    pub account_id: Option<Spanned<String>>,
    pub list: Option<Spanned<String>>,
    pub api_token_env: Option<Spanned<String>>,
    /// Never valid: read only to say where the token goes instead.
    pub api_token: Option<Spanned<String>>,
    pub api_url: Option<Spanned<String>>,
    pub max_items: Option<Spanned<i64>>,
    pub widen_ipv6: Option<Spanned<bool>>,
    pub account: Option<Spanned<String>>,
}

/// One table for every source type; validation checks which keys a type takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub api: Option<Spanned<String>>,
    pub log_groups: Option<Spanned<Vec<Spanned<RawLogGroup>>>>,
    pub endpoint_url: Option<Spanned<String>>,
    pub max_concurrent_queries: Option<Spanned<i64>>,
    pub row_limit: Option<Spanned<i64>>,
    pub max_queries_per_cycle: Option<Spanned<i64>>,
    pub bucket: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub delivery_lag_minutes: Option<Spanned<i64>>,
    pub max_concurrent_objects: Option<Spanned<i64>>,
    pub format: Option<Spanned<String>>,
    pub account: Option<Spanned<String>>,
    pub buckets: Option<Spanned<Vec<Spanned<RawS3Bucket>>>>,
}

/// One bucket of an S3 source; also the single-bucket form's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawS3Bucket {
    pub bucket: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub account: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogGroup {
    pub region: Spanned<String>,
    pub name: Spanned<String>,
    pub account: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSafety {
    pub mode: Option<Spanned<String>>,
    pub max_new_blocks_per_run: Option<Spanned<i64>>,
    pub broadest_allow_prefix_v4: Option<Spanned<i64>>,
    pub broadest_allow_prefix_v6: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInfra {
    pub name: Option<Spanned<String>>,
    pub emergency_block_requests: Spanned<i64>,
    pub emergency_block_window_seconds: Option<Spanned<i64>>,
    pub log_retention_days: Option<Spanned<i64>>,
    pub schedule_expression: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub standby_region: Option<Spanned<String>>,
    pub kms_key_arn: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResponder {
    pub state_dir: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<i64>>,
    pub schedule: Option<Spanned<String>>,
    pub jitter_seconds: Option<Spanned<i64>>,
    pub stale_after_minutes: Option<Spanned<i64>>,
    pub fast_interval_seconds: Option<Spanned<i64>>,
    pub listen: Option<Spanned<String>>,
    pub role: Option<Spanned<String>>,
    pub ledger: Option<Spanned<RawLedger>>,
    pub lease: Option<Spanned<RawLease>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLedger {
    pub backend: Spanned<String>,
    pub table: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub endpoint_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLease {
    pub table: Option<Spanned<String>>,
    pub holder_id: Spanned<String>,
    pub ttl_seconds: Spanned<i64>,
    pub max_clock_skew_seconds: Option<Spanned<i64>>,
}
