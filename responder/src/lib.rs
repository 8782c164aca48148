//! The Floodgate responder: the `floodgate` command's library.
//!
//! - [`cli`]: the commands, a thin shell over the modules below.
//! - [`waflog`]: AWS WAF log records, fast path and full parse.
//! - [`source`]: the `LogSource` seam: files, Logs Insights, raw events.
//! - [`traffic`]: requests per client IP per window.
//! - [`detect`]: tiers and the allow-list applied to the counts.
//! - [`infra`]: CloudFormation from the policy.
//! - [`ledger`]: the `Ledger` seam, with file and DynamoDB backends.
//! - [`lease`]: which responder of a primary/standby pair may apply.
//! - [`plan`]: the pure block plan.
//! - [`cycle`]: one responder cycle from its parts, and its report.
//! - [`sink`]: where blocks go, the `WafTarget` seam: WAFv2 IP sets and files.
//! - [`loggen`]: synthetic WAF logs.
//! - [`aws`]: AWS clients and their retry policy.
//! - [`clock`]: the only reader of the system time.
//! - [`policy_file`]: reads the policy file from disk.

// The CloudFormation templates in `infra` are deeply nested `json!` literals.
#![recursion_limit = "512"]

pub mod alert;
pub mod atomic_file;
pub mod aws;
pub mod backtest;
pub mod cli;
pub mod clock;
pub mod cloudflare_log;
pub mod cycle;
pub mod daemon;
pub mod detect;
pub mod http_client;
pub mod infra;
pub mod lease;
pub mod ledger;
pub mod loggen;
pub mod plan;
pub mod policy_file;
pub mod sink;
pub mod source;
pub mod traffic;
pub mod waflog;
