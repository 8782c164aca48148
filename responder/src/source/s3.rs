//! WAF log objects in S3, counted in-process by the same engine as local
//! files.
//!
//! Two layouts are read, and may sit side by side under one prefix:
//! - WAF's direct delivery (AWS WAF developer guide, "Sending web ACL
//!   traffic logs to an Amazon S3 bucket"):
//!   `[prefix/]AWSLogs/<account>/WAFLogs/<region>/<web-acl>/YYYY/MM/dd/HH/mm/<account>_waflogs_<region>_<web-acl>_<YYYYMMDDTHHmmZ>_<hash>.log.gz`,
//!   with `cloudfront` in place of the region for CloudFront web ACLs;
//! - Firehose's default: `[prefix/]YYYY/MM/DD/HH/<stream>-<version>-YYYY-MM-DD-HH-MM-SS-<id>[.gz]`.
//!
//! Cloudflare's records ([`LogFormat::Cloudflare`]) are read in Logpush's
//! layout instead (Cloudflare docs, "Enable Amazon S3" and the Logpush API's
//! `destination_conf`, whose `{DATE}` becomes a day folder):
//! `[prefix/][YYYYMMDD/]<start>_<end>_<hash>.log.gz`, where start and end
//! (`YYYYMMDDTHHMMSSZ`) bound the records' times. The prefix is the path
//! before `{DATE}`; without day folders, every object under it is listed.
//!
//! The configured prefix may be the folder holding the `YYYY/` folders or
//! any folder above it: the folders between (account, region, web ACL) are
//! found with delimited listings, one level at a time. A count lists only
//! the hour folders that can hold records of its windows, widened by the
//! delivery lag on both sides, and keeps the objects whose time (the minute
//! folder, or the time in a Firehose object's name) falls in that span.
//!
//! Objects are fetched concurrently (bounded) and streamed through the
//! decompressor into the counter: no object is ever held whole in memory.
//! An object that cannot be fetched or decoded is skipped, counted in
//! [`Stats::skipped_objects`] and logged with its key; a bucket or prefix
//! that cannot be listed fails the count.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use aws_sdk_s3::Client;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;

use floodgate_rules::policy::{LogFormat, RequestMatch};

use super::files::{gzip_lines, gzip_lines_pipelined};
use super::{LogSource, SourceError, parse_line};
use crate::traffic::{CountSpec, Stats, Traffic, TrafficCounter};
use crate::waflog::Hit;

/// Objects fetched at once when nothing else is configured.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How far below the prefix the `YYYY/` folders may be: `AWSLogs/`,
/// account, `WAFLogs/`, region, web ACL.
const MAX_DISCOVERY_DEPTH: usize = 5;
/// Folders looked into while finding the `YYYY/` folders: a prefix that
/// fans out wider than this is not a WAF log folder.
const MAX_DISCOVERED_FOLDERS: usize = 10_000;
/// Attempts at an object whose download broke off mid-stream (the SDK
/// retries failed requests itself, but not a body that stops halfway).
const OBJECT_ATTEMPTS: u32 = 3;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// WAF logs in one bucket, under one prefix.
#[derive(Debug, Clone)]
pub struct S3Source {
    client: Client,
    bucket: String,
    prefix: String,
    lag_ms: i64,
    concurrency: usize,
    format: LogFormat,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes, as listed.
    pub size: u64,
}

/// Which objects a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Every object under the prefix.
    Everything,
    /// Objects that can hold records from `start_ms` to `end_ms`.
    Between {
        /// Earliest record wanted (ms since the epoch).
        start_ms: i64,
        /// Latest record wanted.
        end_ms: i64,
    },
}

impl S3Source {
    /// A source reading `s3://bucket/prefix` with `client`. `prefix` is a
    /// folder: a missing trailing `/` is added.
    pub fn new(client: Client, bucket: &str, prefix: &str) -> S3Source {
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        S3Source {
            client,
            bucket: bucket.to_owned(),
            prefix,
            lag_ms: i64::from(floodgate_rules::policy::DEFAULT_DELIVERY_LAG_MINUTES) * 60_000,
            concurrency: DEFAULT_CONCURRENCY,
            format: LogFormat::Waf,
        }
    }

    /// Reads records written in `format`, in the layout that writes them:
    /// WAF's and Firehose's for WAF records (the default), Logpush's for
    /// Cloudflare's.
    pub fn with_format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// How long after a record's time its object may appear (default 10
    /// minutes).
    pub fn with_delivery_lag_minutes(mut self, minutes: u32) -> Self {
        self.lag_ms = i64::from(minutes) * 60_000;
        self
    }

    /// How many objects are fetched at once (default 16).
    pub fn with_concurrency(mut self, objects: usize) -> Self {
        self.concurrency = objects.max(1);
        self
    }

    /// One bucket of a policy's `[source] type = "s3"`.
    pub fn from_config(
        aws: &crate::aws::Aws,
        config: &floodgate_rules::policy::S3Source,
        bucket: &floodgate_rules::policy::S3Bucket,
    ) -> S3Source {
        let client = crate::aws::s3_client_from(&aws.config(
            bucket.account.as_ref(),
            bucket.region.as_str(),
            config.endpoint_url.as_deref(),
        ));
        S3Source::new(client, &bucket.bucket, &bucket.prefix)
            .with_delivery_lag_minutes(config.delivery_lag_minutes)
            .with_concurrency(config.max_concurrent_objects.get() as usize)
            .with_format(config.format)
    }

    /// The source an `s3://bucket/prefix/` argument names, with the region
    /// and endpoint of the standard AWS environment (`AWS_REGION`,
    /// `AWS_ENDPOINT_URL`).
    pub async fn from_url(url: &str) -> Result<S3Source, SourceError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let client = crate::aws::s3_client(None, None).await;
        Ok(S3Source::new(client, bucket, prefix))
    }

    /// `s3://bucket/prefix/`, for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The objects that can hold records of `period`, sorted by key.
    pub async fn objects(&self, period: Period) -> Result<Vec<LogObject>, SourceError> {
        let mut objects = Vec::new();
        match period {
            Period::Everything => {
                objects = self.list_objects(&self.prefix).await?;
            }
            Period::Between { start_ms, end_ms } => {
                let (from, to) = (start_ms - self.lag_ms, end_ms + self.lag_ms);
                let folders = self.period_folders(from, to).await?;
                let format = self.format;
                // A long backtest lists hundreds of hours: as many at once
                // as objects are fetched.
                let permits = Arc::new(Semaphore::new(self.concurrency));
                let mut listings = JoinSet::new();
                for (root, folder) in folders {
                    let (source, permits) = (self.clone(), permits.clone());
                    listings.spawn(async move {
                        let _permit = permits.acquire_owned().await.expect("never closed");
                        let listed = source.list_objects(&folder).await?;
                        Ok::<_, SourceError>(
                            listed
                                .into_iter()
                                .filter(|object| {
                                    key_time_span(format, &object.key[root.len()..])
                                        .is_none_or(|(start, end)| start <= to && from <= end)
                                })
                                .collect::<Vec<_>>(),
                        )
                    });
                }
                while let Some(listed) = listings.join_next().await {
                    objects.extend(listed.expect("listing task panicked")?);
                }
            }
        }
        // Logpush proves it may write to a folder with an ownership
        // challenge file there: not a log.
        let challenge = |key: &str| {
            self.format == LogFormat::Cloudflare
                && key
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with("ownership-challenge"))
        };
        objects.retain(|o| !o.key.ends_with('/') && !challenge(&o.key));
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup();
        Ok(objects)
    }

    /// The folders to list for records from `from` to `to` (ms since the
    /// epoch), each with the root its keys' times are read below.
    async fn period_folders(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, String)>, SourceError> {
        let mut folders = Vec::new();
        match self.format {
            LogFormat::Waf => {
                for root in self.time_roots().await? {
                    let mut hour = from.div_euclid(HOUR_MS) * HOUR_MS;
                    while hour <= to {
                        folders.push((root.clone(), format!("{root}{}", hour_folder(hour))));
                        hour += HOUR_MS;
                    }
                }
            }
            LogFormat::Cloudflare => {
                let root = self.prefix.clone();
                if self.newest_logpush_day().await?.is_some() {
                    let mut day = from.div_euclid(DAY_MS) * DAY_MS;
                    while day <= to {
                        folders.push((root.clone(), format!("{root}{}", day_folder(day))));
                        day += DAY_MS;
                    }
                } else if self.holds_objects(&root).await? {
                    folders.push((root.clone(), root));
                } else {
                    return Err(self.no_logs(
                        "no Logpush objects in it and no YYYYMMDD/ folders: name the path before {DATE} in the job's destination",
                    ));
                }
            }
        }
        Ok(folders)
    }

    /// The newest `YYYYMMDD/` folder Logpush wrote below the prefix, if it
    /// writes day folders.
    async fn newest_logpush_day(&self) -> Result<Option<String>, SourceError> {
        let children = self.list_folders(&self.prefix).await?;
        Ok(children
            .into_iter()
            .filter(|c| is_number_folder(&c[self.prefix.len()..], 8))
            .max())
    }

    /// The folders that hold `YYYY/` folders, at or below the prefix.
    async fn time_roots(&self) -> Result<Vec<String>, SourceError> {
        let mut roots = Vec::new();
        let mut level = vec![self.prefix.clone()];
        let mut seen = 0;
        for _ in 0..=MAX_DISCOVERY_DEPTH {
            let mut below = Vec::new();
            for folder in level {
                let children = self.list_folders(&folder).await?;
                seen += children.len();
                if seen > MAX_DISCOVERED_FOLDERS {
                    return Err(self.no_logs(&format!(
                        "more than {MAX_DISCOVERED_FOLDERS} folders below it and none is a YYYY/ folder of WAF logs"
                    )));
                }
                if children
                    .iter()
                    .any(|c| is_number_folder(&c[folder.len()..], 4))
                {
                    roots.push(folder);
                } else {
                    // Firehose writes records it could not deliver under
                    // `processing-failed/` and the like: not WAF logs.
                    below.extend(children.into_iter().filter(|c| !c.ends_with("-failed/")));
                }
            }
            level = below;
            if level.is_empty() {
                break;
            }
        }
        if roots.is_empty() {
            return Err(self.no_logs(
                "no YYYY/MM/DD/HH/ folders of WAF logs in it or in the folders below it",
            ));
        }
        Ok(roots)
    }

    fn no_logs(&self, why: &str) -> SourceError {
        SourceError::NoS3Logs {
            location: self.location(),
            message: why.to_owned(),
        }
    }

    /// The folders directly below `folder` (a delimited listing).
    async fn list_folders(&self, folder: &str) -> Result<Vec<String>, SourceError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(folder)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut folders = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.list_error(folder, &e))?;
            folders.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
        }
        Ok(folders)
    }

    /// Whether any object lies under `prefix`.
    async fn holds_objects(&self, prefix: &str) -> Result<bool, SourceError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.list_error(prefix, &e))?;
        Ok(page.key_count().unwrap_or(0) > 0 || !page.contents().is_empty())
    }

    /// Every object under `prefix`.
    async fn list_objects(&self, prefix: &str) -> Result<Vec<LogObject>, SourceError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.list_error(prefix, &e))?;
            objects.extend(page.contents().iter().filter_map(|o| {
                Some(LogObject {
                    key: o.key()?.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                })
            }));
        }
        Ok(objects)
    }

    fn list_error<E, R>(
        &self,
        prefix: &str,
        error: &aws_sdk_s3::error::SdkError<E, R>,
    ) -> SourceError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let message = crate::aws::describe_error(error);
        let help = match error.as_service_error().and_then(|e| e.code()) {
            Some("NoSuchBucket") => "; check the bucket's name (and region)",
            Some("AccessDenied") => {
                "; the responder's role needs s3:ListBucket on this prefix (render-infra adds it)"
            }
            Some("PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                "; the bucket is in another region: set [source] region (AWS_REGION with --logs) to it"
            }
            _ => "",
        };
        SourceError::S3 {
            location: format!("s3://{}/{prefix}", self.bucket),
            call: "ListObjectsV2",
            message: format!("{message}{help}"),
        }
    }

    /// Streams every line of every object through `per_line`, `concurrency`
    /// objects at a time, each object into a fresh state from `init`; hands
    /// each whole object's state to `done` as it finishes. Returns the
    /// objects read and skipped, and the bytes fetched, and why each
    /// skipped object was skipped (for the caller to log once: finding the
    /// newest record reads the same objects as the count after it).
    async fn read<S, I, F>(
        &self,
        objects: Vec<LogObject>,
        init: I,
        per_line: F,
        mut done: impl FnMut(S),
    ) -> (Stats, Vec<Skipped>)
    where
        S: Send + 'static,
        I: Fn() -> S + Send + Sync + 'static,
        F: Fn(&mut S, &[u8]) + Send + Sync + 'static,
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let reader = Arc::new(ObjectReader {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            pipelined: objects.len() < cores,
            init,
            per_line,
        });
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        for object in objects {
            let (reader, permits) = (reader.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                let outcome = reader.read(&object.key).await;
                (object, outcome)
            });
        }
        let mut stats = Stats::default();
        let mut skipped = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (object, outcome) = joined.expect("object reader panicked");
            match outcome {
                Ok(state) => {
                    stats.objects += 1;
                    stats.bytes += object.size;
                    done(state);
                }
                Err(why) => {
                    stats.skipped_objects += 1;
                    skipped.push(Skipped {
                        object: format!("s3://{}/{}", self.bucket, object.key),
                        why,
                    });
                }
            }
        }
        (stats, skipped)
    }

    /// Counts the objects of `period` against `spec`.
    async fn count_period(&self, spec: &CountSpec, period: Period) -> Result<Traffic, SourceError> {
        let mut merged = TrafficCounter::new(spec.clone());
        self.count_into(spec, period, &mut merged).await?;
        Ok(merged.finish())
    }

    /// Counts the period's records into `merged`, which may hold other
    /// buckets' counts: one count, not a sum of counts.
    async fn count_into(
        &self,
        spec: &CountSpec,
        period: Period,
        merged: &mut TrafficCounter,
    ) -> Result<(), SourceError> {
        let objects = self.objects(period).await?;
        let (line_spec, format) = (spec.clone(), self.format);
        let (stats, skipped) = self
            .read(
                objects,
                {
                    let spec = spec.clone();
                    move || TrafficCounter::new(spec.clone())
                },
                move |counter, line| {
                    if !line.trim_ascii().is_empty() {
                        counter.add_parsed(parse_line(format, line, line_spec.scopes()));
                    }
                },
                |counter| merged.merge(counter),
            )
            .await;
        Skipped::log(&skipped);
        merged.add_stats(stats);
        Ok(())
    }

    /// Counts every object under the prefix, whatever its time.
    pub async fn count_everything(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        self.count_period(spec, Period::Everything).await
    }

    /// Every usable record from `start_ms` to `end_ms` that `keep` accepts,
    /// in no particular order: for replaying logs rather than counting them.
    pub async fn hits(
        &self,
        scopes: &[RequestMatch],
        start_ms: i64,
        end_ms: i64,
        keep: impl Fn(&Hit) -> bool + Send + Sync + 'static,
    ) -> Result<(Vec<Hit>, Stats), SourceError> {
        let objects = self.objects(Period::Between { start_ms, end_ms }).await?;
        let (scopes, format) = (scopes.to_vec(), self.format);
        let mut hits = Vec::new();
        let (stats, skipped) = self
            .read(
                objects,
                Vec::new,
                move |hits: &mut Vec<Hit>, line| {
                    if let Ok(hit) = parse_line(format, line, &scopes)
                        && keep(&hit)
                    {
                        hits.push(hit);
                    }
                },
                |object_hits| hits.extend(object_hits),
            )
            .await;
        Skipped::log(&skipped);
        Ok((hits, stats))
    }

    /// The newest record in the newest hour folder of every time root (and
    /// of any object under the prefix, with [`Period::Everything`]).
    async fn newest_in(&self, objects: Vec<LogObject>) -> Option<i64> {
        let mut newest = None::<i64>;
        let format = self.format;
        self.read(
            objects,
            || None::<i64>,
            move |newest: &mut Option<i64>, line| {
                if let Ok(Hit { timestamp_ms, .. }) = parse_line(format, line, &[]) {
                    *newest = Some(newest.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
                }
            },
            |object_newest| newest = newest.max(object_newest),
        )
        .await;
        newest
    }

    /// The newest hour folder below a time root (`YYYY/MM/DD/HH/`), found
    /// by taking the last folder of each level.
    async fn newest_hour(&self, root: &str) -> Result<Option<String>, SourceError> {
        let mut folder = root.to_owned();
        for _ in 0..4 {
            let children = self.list_folders(&folder).await?;
            match children
                .into_iter()
                .filter(|c| {
                    c[folder.len()..]
                        .trim_end_matches('/')
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .max()
            {
                Some(child) => folder = child,
                None => return Ok(None),
            }
        }
        Ok(Some(folder))
    }
}

impl LogSource for S3Source {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let period = Period::Between {
            start_ms: spec.start_ms(),
            end_ms: spec.end_ms(),
        };
        self.count_period(spec, period).await
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        if self.format == LogFormat::Cloudflare {
            let folder = self.newest_logpush_day().await?;
            let mut objects = self
                .list_objects(folder.as_deref().unwrap_or(&self.prefix))
                .await?;
            // The newest batches are enough: those ending within the
            // delivery lag of the newest.
            let below = folder.as_deref().unwrap_or(&self.prefix).len();
            let end = |o: &LogObject| logpush_span(&o.key[below..]).map(|(_, end)| end);
            if let Some(newest_end) = objects.iter().filter_map(end).max() {
                objects.retain(|o| end(o).is_none_or(|e| e >= newest_end - self.lag_ms));
            }
            return Ok(self.newest_in(objects).await);
        }
        let mut objects = Vec::new();
        for root in self.time_roots().await? {
            if let Some(hour) = self.newest_hour(&root).await? {
                objects.extend(self.list_objects(&hour).await?);
            }
        }
        Ok(self.newest_in(objects).await)
    }
}

/// The buckets of one `[source] type = "s3"`, perhaps in several accounts,
/// read as one source: every bucket's records go into one count, so a
/// client spread over buckets is counted exactly.
#[derive(Debug, Clone)]
pub struct S3Buckets(Vec<S3Source>);

impl S3Buckets {
    /// The buckets a policy's S3 source names, each with a client in its
    /// region and account.
    pub fn from_config(
        aws: &crate::aws::Aws,
        config: &floodgate_rules::policy::S3Source,
    ) -> S3Buckets {
        S3Buckets(
            config
                .buckets
                .iter()
                .map(|bucket| S3Source::from_config(aws, config, bucket))
                .collect(),
        )
    }
}

impl From<S3Source> for S3Buckets {
    fn from(source: S3Source) -> Self {
        S3Buckets(vec![source])
    }
}

impl LogSource for S3Buckets {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let period = Period::Between {
            start_ms: spec.start_ms(),
            end_ms: spec.end_ms(),
        };
        let mut merged = TrafficCounter::new(spec.clone());
        for bucket in &self.0 {
            bucket.count_into(spec, period, &mut merged).await?;
        }
        Ok(merged.finish())
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        let mut newest = None;
        for bucket in &self.0 {
            newest = newest.max(bucket.newest_timestamp().await?);
        }
        Ok(newest)
    }
}

/// An object that could not be fetched or decoded, and why.
#[derive(Debug)]
struct Skipped {
    object: String,
    why: String,
}

impl Skipped {
    /// One warning per object.
    fn log(skipped: &[Skipped]) {
        for Skipped { object, why } in skipped {
            tracing::warn!(object = %object, "skipped: {why}");
        }
    }
}

/// What each object task needs: the client, and how to count a line.
struct ObjectReader<I, F> {
    client: Client,
    bucket: String,
    /// Whether gzip inflates on a thread of its own: when there are fewer
    /// objects than cores.
    pipelined: bool,
    init: I,
    per_line: F,
}

impl<S, I, F> ObjectReader<I, F>
where
    S: Send + 'static,
    I: Fn() -> S + Send + Sync + 'static,
    F: Fn(&mut S, &[u8]) + Send + Sync + 'static,
{
    /// Fetches one object and streams its lines into a fresh state; tries
    /// again from the start when the download breaks off, and gives up on
    /// an object that cannot be fetched or decoded.
    async fn read(self: Arc<Self>, key: &str) -> Result<S, String> {
        let mut attempt = 1;
        loop {
            let object = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| format!("GetObject: {}", crate::aws::describe_error(&e)))?;
            let body = SyncIoBridge::new(object.body.into_async_read());
            let (this, key_owned) = (self.clone(), key.to_owned());
            let outcome = tokio::task::spawn_blocking(move || {
                let mut state = (this.init)();
                read_object_lines(body, &key_owned, this.pipelined, |line| {
                    (this.per_line)(&mut state, line)
                })
                .map(|()| state)
            })
            .await
            .expect("object reader panicked");
            match outcome {
                Ok(state) => return Ok(state),
                Err(ObjectError::Damaged(why)) => return Err(why),
                Err(ObjectError::Download(why)) if attempt >= OBJECT_ATTEMPTS => {
                    return Err(format!("download broke off {attempt} times: {why}"));
                }
                Err(ObjectError::Download(_)) => attempt += 1,
            }
        }
    }
}

/// Why an object's lines could not all be read.
#[derive(Debug)]
enum ObjectError {
    /// The bytes are not a readable log (not gzip though named so, corrupt
    /// or truncated gzip): reading again would not help.
    Damaged(String),
    /// The download stopped partway: reading again may.
    Download(String),
}

/// Hands every line of an object's body to `per_line`: gzip (by its magic
/// bytes, whatever the key) is decompressed as it streams, anything else
/// is read as plain lines, except that a `.gz` key must hold gzip. When
/// `pipelined`, gzip inflates on a thread of its own.
fn read_object_lines(
    body: impl Read + Send,
    key: &str,
    pipelined: bool,
    mut per_line: impl FnMut(&[u8]),
) -> Result<(), ObjectError> {
    let mut reader = BufReader::with_capacity(1 << 16, body);
    let head = reader.fill_buf().map_err(download_error)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let read = if pipelined {
            gzip_lines_pipelined(reader, per_line)
        } else {
            gzip_lines(reader, per_line)
        };
        return read.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof => {
                ObjectError::Damaged(format!("not a whole gzip stream ({e})"))
            }
            _ => download_error(e),
        });
    }
    if key.ends_with(".gz") && !head.is_empty() {
        return Err(ObjectError::Damaged(
            "named .gz but not gzip (it does not start with the gzip magic bytes 1f 8b)".to_owned(),
        ));
    }
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(download_error)?
            == 0
        {
            return Ok(());
        }
        per_line(line.strip_suffix(b"\n").unwrap_or(&line));
    }
}

fn download_error(error: std::io::Error) -> ObjectError {
    ObjectError::Download(error.to_string())
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix.
pub fn parse_s3_url(url: &str) -> Result<(&str, &str), SourceError> {
    let bad = |message: &str| SourceError::BadS3Url {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !floodgate_rules::policy::valid_bucket_name(bucket) {
        return Err(bad(&format!(
            "\"{bucket}\" is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        )));
    }
    Ok((bucket, prefix))
}

/// Whether a folder name (with its `/`) is `digits` digits: a year
/// (`YYYY/`, as WAF's and Firehose's time folders start) or a Logpush
/// `{DATE}` (`YYYYMMDD/`).
fn is_number_folder(name: &str, digits: usize) -> bool {
    name.len() == digits + 1
        && name.ends_with('/')
        && name[..digits].bytes().all(|b| b.is_ascii_digit())
}

/// The UTC time of `ms` since the epoch.
fn utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `YYYYMMDD/` of a day (ms since the epoch, UTC).
fn day_folder(day_ms: i64) -> String {
    let time = utc(day_ms);
    format!(
        "{:04}{:02}{:02}/",
        time.year(),
        u8::from(time.month()),
        time.day()
    )
}

/// The span of record times an object can hold, from its key below the
/// time root; `None` when the key carries no time.
fn key_time_span(format: LogFormat, below_root: &str) -> Option<(i64, i64)> {
    match format {
        LogFormat::Waf => key_time_ms(below_root).map(|t| (t, t)),
        LogFormat::Cloudflare => logpush_span(below_root),
    }
}

/// The `<start>_<end>` times (`YYYYMMDDTHHMMSSZ`) that begin a Logpush
/// object's name, below its day folder if it has one.
pub fn logpush_span(below_root: &str) -> Option<(i64, i64)> {
    let name = below_root.rsplit('/').next().unwrap_or_default();
    let mut times = name.splitn(3, '_').map(|part| {
        let bytes = part.as_bytes();
        let shape_fits = bytes.len() == 16
            && bytes[8] == b'T'
            && bytes[15] == b'Z'
            && bytes[..8]
                .iter()
                .chain(&bytes[9..15])
                .all(u8::is_ascii_digit);
        if !shape_fits {
            return None;
        }
        let number = |from: usize, len: usize| part[from..from + len].parse::<u16>().ok();
        utc_ms(
            number(0, 4)?,
            number(4, 2)?,
            number(6, 2)?,
            number(9, 2)?,
            number(11, 2)?,
            number(13, 2)?,
        )
    });
    let start = times.next()??;
    let end = times.next()??;
    Some((start, end))
}

/// `YYYY/MM/DD/HH/` of an hour (ms since the epoch, UTC).
fn hour_folder(hour_ms: i64) -> String {
    let time = utc(hour_ms);
    format!(
        "{:04}/{:02}/{:02}/{:02}/",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour()
    )
}

/// The time of an object from its key below the time root: the minute
/// folder of WAF's layout (`YYYY/MM/dd/HH/mm/…`), else the time in a
/// Firehose object's name (`…-YYYY-MM-DD-HH-MM-SS-…`), else the hour
/// folder. `None` when the key carries no time.
pub fn key_time_ms(below_root: &str) -> Option<i64> {
    let mut parts = below_root.split('/');
    let mut field = |len: usize| {
        parts
            .next()
            .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
    };
    let (year, month, day, hour) = (field(4)?, field(2)?, field(2)?, field(2)?);
    let minute = field(2);
    let hour_ms = utc_ms(year, month, day, hour, 0, 0)?;
    if let Some(minute) = minute.filter(|&m| m < 60) {
        return Some(hour_ms + i64::from(minute) * 60_000);
    }
    let name = below_root.rsplit('/').next().unwrap_or_default();
    Some(firehose_name_time_ms(name).unwrap_or(hour_ms))
}

/// The `YYYY-MM-DD-HH-MM-SS` time in a Firehose object's name.
fn firehose_name_time_ms(name: &str) -> Option<i64> {
    const SHAPE: &[u8] = b"dddd-dd-dd-dd-dd-dd";
    let bytes = name.as_bytes();
    (0..bytes.len().saturating_sub(SHAPE.len() - 1))
        .rev()
        .find_map(|at| {
            let window = &bytes[at..at + SHAPE.len()];
            let fits = window.iter().zip(SHAPE).all(|(&b, &s)| match s {
                b'd' => b.is_ascii_digit(),
                _ => b == s,
            });
            if !fits {
                return None;
            }
            let number =
                |from: usize, len: usize| name[at + from..at + from + len].parse::<u16>().ok();
            let ms = utc_ms(
                number(0, 4)?,
                number(5, 2)?,
                number(8, 2)?,
                number(11, 2)?,
                number(14, 2)?,
                number(17, 2)?,
            )?;
            Some(ms)
        })
}

fn utc_ms(year: u16, month: u16, day: u16, hour: u16, minute: u16, second: u16) -> Option<i64> {
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::from(year), month, u8::try_from(day).ok()?).ok()?;
    let time = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some((date.with_time(time).assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waf_key_is_timed_by_its_minute_folder() {
        let below = "2021/10/28/19/50/111111111111_waflogs_us-east-1_TEST-WEBACL_20211028T1950Z_e0ca43b5.log.gz";
        assert_eq!(key_time_ms(below), utc_ms(2021, 10, 28, 19, 50, 0));
    }

    #[test]
    fn a_firehose_key_is_timed_by_its_name() {
        let below = "2020/10/02/21/aws-waf-logs-testing-1-2020-10-02-21-25-30-5f3e1b7a-0c7b.gz";
        assert_eq!(key_time_ms(below), utc_ms(2020, 10, 2, 21, 25, 30));
        // A name without a time falls back to its hour folder.
        assert_eq!(
            key_time_ms("2020/10/02/21/part-0001.gz"),
            utc_ms(2020, 10, 2, 21, 0, 0)
        );
        assert_eq!(key_time_ms("notes/readme.txt"), None);
        assert_eq!(key_time_ms("2020/13/02/21/x.gz"), None);
    }

    #[test]
    fn a_logpush_key_spans_its_start_and_end() {
        let name = "20261120T095500Z_20261120T100000Z_6a2b4f1d.log.gz";
        let span = Some((
            utc_ms(2026, 11, 20, 9, 55, 0).unwrap(),
            utc_ms(2026, 11, 20, 10, 0, 0).unwrap(),
        ));
        assert_eq!(logpush_span(name), span);
        assert_eq!(logpush_span(&format!("20261120/{name}")), span);
        assert_eq!(
            key_time_span(LogFormat::Cloudflare, &format!("20261120/{name}")),
            span
        );
        assert_eq!(logpush_span("20261120T095500Z.log.gz"), None);
        assert_eq!(logpush_span("ownership-challenge-1a2b.txt"), None);
        assert_eq!(
            logpush_span("20261399T095500Z_20261120T100000Z_x.log.gz"),
            None
        );
        assert_eq!(
            day_folder(utc_ms(2026, 1, 2, 23, 59, 0).unwrap()),
            "20260102/"
        );
        assert!(is_number_folder("20260102/", 8) && !is_number_folder("2026/", 8));
    }

    #[test]
    fn hour_folders_are_utc_and_zero_padded() {
        let ms = utc_ms(2026, 1, 2, 3, 59, 59).unwrap();
        assert_eq!(hour_folder(ms), "2026/01/02/03/");
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_s3_url("s3://aws-waf-logs-x/AWSLogs/1/").unwrap(),
            ("aws-waf-logs-x", "AWSLogs/1/")
        );
        assert_eq!(
            parse_s3_url("s3://aws-waf-logs-x").unwrap(),
            ("aws-waf-logs-x", "")
        );
        let error = parse_s3_url("s3://Bad_Bucket/x").unwrap_err().to_string();
        assert!(error.contains("is not a bucket name"), "{error}");
        assert!(parse_s3_url("/tmp/logs").is_err());
    }

    #[test]
    fn an_object_named_gz_must_be_gzip_and_a_truncated_one_is_damaged() {
        let plain = b"{\"a\":1}\n{\"b\":2}\n";
        let mut lines = 0;
        read_object_lines(&plain[..], "x.log", false, |_| lines += 1).unwrap();
        assert_eq!(lines, 2);
        let error = read_object_lines(&plain[..], "x.log.gz", false, |_| {}).unwrap_err();
        assert!(
            matches!(error, ObjectError::Damaged(ref m) if m.contains("not gzip")),
            "{error:?}"
        );

        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &plain.repeat(1000)).unwrap();
        let gzip = encoder.finish().unwrap();
        let mut lines = 0;
        read_object_lines(&gzip[..], "no-extension", true, |_| lines += 1).unwrap();
        assert_eq!(lines, 2000);
        let error = read_object_lines(&gzip[..gzip.len() / 2], "x.gz", true, |_| {}).unwrap_err();
        assert!(matches!(error, ObjectError::Damaged(_)), "{error:?}");
    }
}
