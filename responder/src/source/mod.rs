//! Where WAF logs come from. Every source answers the same question, "how
//! many requests did each client IP send in each window ending at T?", with
//! a [`Traffic`]; AWS SDK types never cross this seam.
//!
//! - [`files`]: local `.jsonl` / `.json` / `.log` files and their `.gz`
//!   forms, counted in-process on every core (the embedded default);
//! - [`cloudwatch_insights`]: Logs Insights queries, counted by AWS;
//! - [`cloudwatch_events`]: raw CloudWatch Logs events, counted in-process.

pub mod cloudwatch_events;
pub mod cloudwatch_insights;
pub mod files;

use std::future::Future;
use std::path::PathBuf;

use crate::traffic::{CountSpec, Traffic};

/// A source of WAF log counts.
pub trait LogSource {
    /// Counts requests per client IP over each window of `spec`.
    fn count(&self, spec: &CountSpec) -> impl Future<Output = Result<Traffic, SourceError>> + Send;

    /// The newest record's timestamp (ms since the epoch), for windows that
    /// end "now" in historic logs; `None` when there are no records.
    fn newest_timestamp(&self) -> impl Future<Output = Result<Option<i64>, SourceError>> + Send;
}

/// Why a source could not answer. A malformed line is not an error: it is
/// counted in [`crate::traffic::Stats::malformed`] and skipped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A path or pattern matched no log file.
    #[error("{pattern}: no WAF log files (.jsonl, .json, .log, or .gz of those) found")]
    NoFiles {
        /// The path or glob as given.
        pattern: String,
    },
    /// A glob pattern is malformed.
    #[error("{pattern}: invalid glob pattern: {message}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// CloudWatch Logs failed for one region or log group.
    #[error("CloudWatch Logs in {region} ({log_group}): {message}")]
    CloudWatch {
        /// The region.
        region: String,
        /// The log group(s).
        log_group: String,
        /// What failed.
        message: String,
    },
    /// The count needs more windows than are supported.
    #[error(transparent)]
    Windows(#[from] crate::traffic::TooManyWindows),
}

/// The source a policy's `[source]` section names.
#[derive(Debug, Clone)]
pub enum ConfiguredSource {
    /// `type = "files"`.
    Files(files::FileSource),
    /// `type = "cloudwatch"`, `api = "events"`.
    Events(cloudwatch_events::CloudWatchEventsSource),
    /// `type = "cloudwatch"`, `api = "insights"`.
    Insights(cloudwatch_insights::CloudWatchInsightsSource),
}

impl ConfiguredSource {
    /// Builds the source, with AWS clients from the standard credential chain.
    pub async fn from_config(
        config: &floodgate_rules::policy::LogSourceConfig,
    ) -> Result<ConfiguredSource, SourceError> {
        use floodgate_rules::policy::{CloudWatchApi, LogSourceConfig};
        Ok(match config {
            LogSourceConfig::Files { paths } => {
                ConfiguredSource::Files(files::FileSource::new(paths)?)
            }
            LogSourceConfig::CloudWatch {
                api,
                log_groups,
                endpoint_url,
                max_concurrent_queries,
            } => {
                let regions = crate::aws::region_logs(log_groups, endpoint_url.as_deref()).await;
                match api {
                    CloudWatchApi::Events => ConfiguredSource::Events(
                        cloudwatch_events::CloudWatchEventsSource::new(regions),
                    ),
                    CloudWatchApi::Insights => ConfiguredSource::Insights(
                        cloudwatch_insights::CloudWatchInsightsSource::new(
                            regions,
                            max_concurrent_queries.get() as usize,
                            cloudwatch_insights::Polling::default(),
                        ),
                    ),
                }
            }
        })
    }
}

impl LogSource for ConfiguredSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        match self {
            ConfiguredSource::Files(source) => source.count(spec).await,
            ConfiguredSource::Events(source) => source.count(spec).await,
            ConfiguredSource::Insights(source) => source.count(spec).await,
        }
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        match self {
            ConfiguredSource::Files(source) => source.newest_timestamp().await,
            ConfiguredSource::Events(source) => source.newest_timestamp().await,
            ConfiguredSource::Insights(source) => source.newest_timestamp().await,
        }
    }
}
