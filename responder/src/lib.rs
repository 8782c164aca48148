//! The Floodgate responder: the `floodgate` command's library.
//! ARCHITECTURE.md, at the repository's root, draws how these fit.
//!
//! A cycle, in the order it runs:
//! - [`source`]: the `LogSource` seam: local files, S3 objects, Logs
//!   Insights queries, raw CloudWatch Logs events.
//! - [`waflog`] and [`cloudflare_log`]: the two log formats, AWS WAF's
//!   records and Cloudflare's Logpush `http_requests`, each read into the
//!   same hit.
//! - [`traffic`]: requests per key (an address cut to a prefix) per window.
//! - [`detect`]: tiers and the allow-list applied to the counts.
//! - [`ledger`]: the `Ledger` seam, with file and DynamoDB backends.
//! - [`plan`]: the pure block plan: expiry, escalation, circuit breaker,
//!   the allow-list cut out of the sets.
//! - [`lease`]: which responder of a primary/standby pair may apply.
//! - [`sink`]: where blocks go, the `WafTarget` seam: WAFv2 IP sets (each
//!   region and CloudFront), a Cloudflare IP list, files.
//! - `alert` (private): webhook alerts for what a cycle saw.
//! - [`cycle`]: one responder cycle from its parts, and its report.
//! - [`fast`]: between cycles, the fast detector's pass: what the fast
//!   tiers' rate-based rules ([`rate_rules`]) are limiting, blocked
//!   everywhere through the same plan and apply.
//!
//! Around it:
//! - [`cli`]: the commands, a thin shell over the modules here; `daemon`
//!   (private) runs cycles on the schedule with `/healthz` and `/metrics`.
//! - `backtest` (private): a policy replayed over historical logs.
//! - `infra` (private): CloudFormation from the policy (`render-infra`).
//! - [`loggen`]: synthetic WAF and Cloudflare logs.
//! - [`policy_file`]: reads the policy file from disk.
//! - [`aws`]: AWS clients, their credentials (the process's and each
//!   account's role) and their retry policy; `http_client` (private): the
//!   HTTPS client for Cloudflare and webhooks; `retry` (private): the
//!   backoff of every loop outside the SDK's retries.
//! - [`failure`]: the kinds of failure every seam's errors carry.
//! - [`clock`]: the only reader of the system time.
//! - `atomic_file` (private): state files a crash cannot tear.

// The CloudFormation templates in `infra` are deeply nested `json!` literals.
#![recursion_limit = "512"]

/// The version of the shape of every JSON output (`run`, `plan`,
/// `status`, `top`, `review`, `backtest`), at the root of each as
/// `"version"`. A change that breaks a script reading them raises it;
/// docs/schemas/ holds the JSON Schema of each, and CHANGELOG.md the change.
pub const JSON_VERSION: u32 = 1;

mod alert;
mod atomic_file;
pub mod aws;
mod backtest;
pub mod cli;
pub mod clock;
pub mod cloudflare_log;
pub mod cycle;
mod daemon;
pub mod detect;
pub mod failure;
pub mod fast;
mod http_client;
mod infra;
mod json_text;
pub mod lease;
pub mod ledger;
pub mod loggen;
pub mod plan;
pub mod policy_file;
pub mod rate_rules;
mod retry;
pub mod sink;
pub mod source;
pub mod traffic;
pub mod waflog;
