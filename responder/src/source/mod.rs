//! Where WAF logs come from. Every source answers the same question, "how
//! many requests did each client IP send in each window ending at T?", with
//! a [`Traffic`]; AWS SDK types never cross this seam.
//!
//! - [`files`]: local `.jsonl` / `.json` / `.log` files and their `.gz`
//!   forms, counted in-process on every core (the embedded default);
//! - [`cloudwatch_insights`]: Logs Insights queries, counted by AWS;
//! - [`cloudwatch_events`]: raw CloudWatch Logs events, counted in-process;
//! - [`s3`]: objects in S3 as WAF, Firehose or Cloudflare's Logpush
//!   delivers them, streamed and counted in-process by the same engine as
//!   local files.
//!
//! Files and S3 objects hold WAF's records or Cloudflare's ([`LogFormat`]);
//! [`parse_line`] reads either into the same [`Hit`].

pub mod cloudwatch_events;
pub mod cloudwatch_insights;
pub mod files;
pub mod s3;

use std::future::Future;
use std::path::PathBuf;

use floodgate_rules::policy::{LogFormat, RequestMatch};

use crate::cloudflare_log;
use crate::traffic::{CountSpec, Traffic};
use crate::waflog::{self, BadLine, Hit};

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
    /// An S3 bucket or prefix could not be listed.
    #[error("{location}: {call} failed: {message}")]
    S3 {
        /// `s3://bucket/prefix`.
        location: String,
        /// The API call.
        call: &'static str,
        /// What failed, with the fix where one is known.
        message: String,
    },
    /// An S3 prefix holds no WAF log folders.
    #[error(
        "{location}: {message}; point the prefix at the folder holding the YYYY/ folders, or a folder above it such as AWSLogs/"
    )]
    NoS3Logs {
        /// `s3://bucket/prefix`.
        location: String,
        /// What was found instead.
        message: String,
    },
    /// An `s3://` argument is malformed.
    #[error("{url}: not an S3 location: {message}; write s3://bucket/prefix/")]
    BadS3Url {
        /// The argument.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The count needs more windows than are supported.
    #[error(transparent)]
    Windows(#[from] crate::traffic::TooManyWindows),
}

/// The counting fields of one line written in `format`, with the bits of
/// the `scopes` it matches.
pub fn parse_line(format: LogFormat, line: &[u8], scopes: &[RequestMatch]) -> Result<Hit, BadLine> {
    match format {
        LogFormat::Waf => waflog::parse_hit_scoped(line, scopes),
        LogFormat::Cloudflare => cloudflare_log::parse_hit(line, scopes),
    }
}

/// Why no line could be read, with the likely fix: the logs are of the
/// other format.
pub fn all_malformed(format: LogFormat, malformed: u64) -> String {
    let (name, fix) = match format {
        LogFormat::Waf => (
            "WAF",
            "if they are Cloudflare's request logs, set format = \"cloudflare\" in [source] or pass --logs-from cloudflare",
        ),
        LogFormat::Cloudflare => (
            "Cloudflare",
            "if they are AWS WAF's logs, remove format = \"cloudflare\" from [source] or pass --logs-from waf",
        ),
    };
    format!("no usable {name} log records: all {malformed} lines are malformed; {fix}")
}

/// What `--logs` names: local paths, or one `s3://bucket/prefix/`.
#[derive(Debug, Clone)]
pub enum LogsArgument {
    /// Files, directories or globs.
    Files(files::FileSource),
    /// Objects under an S3 prefix.
    S3(s3::S3Source),
}

impl LogsArgument {
    /// Reads `--logs`: one `s3://` location, or local paths, holding
    /// records in `format`.
    pub async fn new(logs: &[String], format: LogFormat) -> Result<LogsArgument, SourceError> {
        match logs.iter().find(|l| l.starts_with("s3://")) {
            Some(url) if logs.len() == 1 => Ok(LogsArgument::S3(
                s3::S3Source::from_url(url).await?.with_format(format),
            )),
            Some(url) => Err(SourceError::BadS3Url {
                url: url.clone(),
                message: "--logs takes one s3:// location, or local paths, not both or several"
                    .to_owned(),
            }),
            None => Ok(LogsArgument::Files(
                files::FileSource::new(logs)?.with_format(format),
            )),
        }
    }

    /// As a source for counting windows.
    pub fn into_source(self) -> ConfiguredSource {
        match self {
            LogsArgument::Files(source) => ConfiguredSource::Files(source),
            LogsArgument::S3(source) => ConfiguredSource::S3(source.into()),
        }
    }
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
    /// `type = "s3"`.
    S3(s3::S3Buckets),
}

impl ConfiguredSource {
    /// Builds the source, with AWS clients from `aws`.
    pub fn from_config(
        aws: &crate::aws::Aws,
        config: &floodgate_rules::policy::LogSourceConfig,
    ) -> Result<ConfiguredSource, SourceError> {
        use floodgate_rules::policy::{CloudWatchApi, LogSourceConfig};
        Ok(match config {
            LogSourceConfig::Files { paths, format } => {
                ConfiguredSource::Files(files::FileSource::new(paths)?.with_format(*format))
            }
            LogSourceConfig::S3(config) => {
                ConfiguredSource::S3(s3::S3Buckets::from_config(aws, config))
            }
            LogSourceConfig::CloudWatch {
                api,
                log_groups,
                endpoint_url,
                max_concurrent_queries,
                row_limit,
                max_queries_per_cycle,
            } => {
                let regions = crate::aws::region_logs(aws, log_groups, endpoint_url.as_deref());
                match api {
                    CloudWatchApi::Events => ConfiguredSource::Events(
                        cloudwatch_events::CloudWatchEventsSource::new(regions),
                    ),
                    CloudWatchApi::Insights => ConfiguredSource::Insights(
                        cloudwatch_insights::CloudWatchInsightsSource::new(
                            regions,
                            max_concurrent_queries.get() as usize,
                            cloudwatch_insights::Polling::default(),
                        )
                        .with_max_rows(row_limit.get() as usize)
                        .with_max_queries(max_queries_per_cycle.get() as usize),
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
            ConfiguredSource::S3(source) => source.count(spec).await,
        }
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        match self {
            ConfiguredSource::Files(source) => source.newest_timestamp().await,
            ConfiguredSource::Events(source) => source.newest_timestamp().await,
            ConfiguredSource::Insights(source) => source.newest_timestamp().await,
            ConfiguredSource::S3(source) => source.newest_timestamp().await,
        }
    }
}
