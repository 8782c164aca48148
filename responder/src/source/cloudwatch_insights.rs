//! CloudWatch Logs Insights: AWS counts, we read the counts.
//!
//! One query per region (up to 50 log groups each) and per distinct window:
//! StartQuery, then GetQueryResults with backoff until the query completes.
//! - Insights returns at most 10,000 rows. Each query keeps only IPs at or
//!   above the window's floor (its lowest tier threshold) and sorts by
//!   requests, so a truncated result still holds every IP above its lowest
//!   count; truncation is reported in the stats, never silent.
//! - At most `max_concurrent_queries` run at once (the account limit is 30
//!   in the API reference, 100 in newer guides).
//! - A query past its deadline, or whose caller gave up, is stopped with
//!   StopQuery so it does not keep scanning (and costing).
//! - Bytes scanned are reported; [`estimated_cost_usd`] prices them.
//!
//! Insights query bounds are whole seconds, so windows are counted to the
//! second.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::types::QueryStatus;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{LogSource, SourceError};
use crate::aws::{RegionLogs, describe_error};
use crate::traffic::{CountSpec, Stats, Traffic, TrafficCounter};

/// Rows Insights returns at most.
pub const MAX_ROWS: usize = 10_000;
/// Log groups one query may name.
const MAX_GROUPS_PER_QUERY: usize = 50;
/// Logs Insights price per GB scanned (US East), for the cost estimate.
const USD_PER_GB_SCANNED: f64 = 0.005;

/// The query that counts requests per client IP, with at least
/// `min_requests`, most first. Built in one place and golden-tested.
pub fn query_text(min_requests: u32) -> String {
    format!(
        "stats count(*) as requests by httpRequest.clientIp\n\
         | filter requests >= {min_requests}\n\
         | sort requests desc\n\
         | limit {MAX_ROWS}"
    )
}

/// What scanning `bytes` costs, in US dollars.
pub fn estimated_cost_usd(bytes: u64) -> f64 {
    bytes as f64 / 1e9 * USD_PER_GB_SCANNED
}

/// How queries are polled.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// First wait between GetQueryResults calls; doubles up to `max_interval`.
    pub first_interval: Duration,
    /// Longest wait between calls.
    pub max_interval: Duration,
    /// Give up (and stop the query) after this long.
    pub deadline: Duration,
}

impl Default for Polling {
    fn default() -> Self {
        Polling {
            first_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(5),
            deadline: Duration::from_secs(15 * 60),
        }
    }
}

/// WAF log groups counted by Logs Insights.
#[derive(Debug, Clone)]
pub struct CloudWatchInsightsSource {
    regions: Vec<RegionLogs>,
    queries: Arc<Semaphore>,
    polling: Polling,
}

impl CloudWatchInsightsSource {
    /// Queries the given log groups with at most `max_concurrent_queries` in flight.
    pub fn new(regions: Vec<RegionLogs>, max_concurrent_queries: usize, polling: Polling) -> Self {
        CloudWatchInsightsSource {
            regions,
            queries: Arc::new(Semaphore::new(max_concurrent_queries.max(1))),
            polling,
        }
    }
}

/// One query to run.
#[derive(Debug, Clone)]
struct Query {
    client: Client,
    region: String,
    log_groups: Vec<String>,
    window_seconds: u32,
    min_requests: u32,
    start_seconds: i64,
    end_seconds: i64,
}

/// Rows of one finished query.
struct QueryResult {
    window_seconds: u32,
    rows: Vec<(std::net::IpAddr, u32)>,
    bytes_scanned: u64,
    malformed_rows: u64,
}

impl Query {
    fn error(&self, message: String) -> SourceError {
        SourceError::CloudWatch {
            region: self.region.clone(),
            log_group: self.log_groups.join(", "),
            message,
        }
    }

    async fn run(self, polling: Polling) -> Result<QueryResult, SourceError> {
        let started = self
            .client
            .start_query()
            .set_log_group_names(Some(self.log_groups.clone()))
            .start_time(self.start_seconds)
            .end_time(self.end_seconds)
            .query_string(query_text(self.min_requests))
            .limit(MAX_ROWS as i32)
            .send()
            .await
            .map_err(|e| self.error(format!("StartQuery: {}", describe_error(&e))))?;
        let query_id = started.query_id().unwrap_or_default().to_owned();
        // Stops the query if this future is dropped or fails before it completes.
        let mut guard = StopOnDrop {
            client: self.client.clone(),
            query_id: Some(query_id.clone()),
        };
        // tokio's clock, which tests pause and advance instead of sleeping.
        let give_up = tokio::time::Instant::now() + polling.deadline;
        let mut interval = polling.first_interval;
        loop {
            let results = self
                .client
                .get_query_results()
                .query_id(&query_id)
                .send()
                .await
                .map_err(|e| self.error(format!("GetQueryResults: {}", describe_error(&e))))?;
            match results.status() {
                Some(QueryStatus::Complete) => {
                    guard.query_id = None;
                    return Ok(self.parse(&results));
                }
                Some(QueryStatus::Scheduled | QueryStatus::Running) | None => {}
                Some(status) => {
                    guard.query_id = None;
                    return Err(self.error(format!("query {query_id} ended {}", status.as_str())));
                }
            }
            if tokio::time::Instant::now() + interval > give_up {
                return Err(self.error(format!(
                    "query {query_id} still running after {:?}; stopped it",
                    polling.deadline
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(polling.max_interval);
        }
    }

    fn parse(
        &self,
        results: &aws_sdk_cloudwatchlogs::operation::get_query_results::GetQueryResultsOutput,
    ) -> QueryResult {
        let mut rows = Vec::with_capacity(results.results().len());
        let mut malformed_rows = 0;
        for row in results.results() {
            let field = |name: &str| {
                row.iter()
                    .find(|f| f.field() == Some(name))
                    .and_then(|f| f.value())
            };
            let ip = field("httpRequest.clientIp").and_then(|v| v.parse().ok());
            let requests = field("requests").and_then(|v| v.parse::<u32>().ok());
            match (ip, requests) {
                (Some(ip), Some(requests)) => rows.push((ip, requests)),
                _ => malformed_rows += 1,
            }
        }
        QueryResult {
            window_seconds: self.window_seconds,
            rows,
            bytes_scanned: results
                .statistics()
                .map_or(0, |s| s.bytes_scanned().max(0.0) as u64),
            malformed_rows,
        }
    }
}

/// Sends StopQuery for a query that is abandoned before it completes.
struct StopOnDrop {
    client: Client,
    query_id: Option<String>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let (Some(query_id), Ok(runtime)) =
            (self.query_id.take(), tokio::runtime::Handle::try_current())
        {
            let client = self.client.clone();
            runtime.spawn(async move {
                if let Err(e) = client.stop_query().query_id(&query_id).send().await {
                    tracing::warn!(query_id, error = %describe_error(&e), "StopQuery failed");
                }
            });
        }
    }
}

impl LogSource for CloudWatchInsightsSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let end_seconds = spec.end_ms().div_euclid(1000);
        let mut tasks = JoinSet::new();
        for region in &self.regions {
            for groups in region.log_groups.chunks(MAX_GROUPS_PER_QUERY) {
                for &window_seconds in spec.windows() {
                    let query = Query {
                        client: region.client.clone(),
                        region: region.region.clone(),
                        log_groups: groups.to_vec(),
                        window_seconds,
                        min_requests: spec.floor(window_seconds),
                        start_seconds: end_seconds - i64::from(window_seconds),
                        end_seconds,
                    };
                    let (queries, polling) = (self.queries.clone(), self.polling);
                    tasks.spawn(async move {
                        let _slot = queries
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        query.run(polling).await
                    });
                }
            }
        }
        let mut counter = TrafficCounter::new(spec.clone());
        while let Some(done) = tasks.join_next().await {
            // Returning early drops the other tasks, whose guards stop their queries.
            let result = done.expect("query task panicked")?;
            let truncated = result.rows.len() + result.malformed_rows as usize >= MAX_ROWS;
            if truncated {
                let lowest = result.rows.last().map_or(0, |&(_, n)| n);
                tracing::warn!(
                    window_seconds = result.window_seconds,
                    lowest,
                    "Logs Insights returned {MAX_ROWS} rows: IPs at {lowest} requests may be missing"
                );
            }
            for &(ip, requests) in &result.rows {
                counter.add_requests(ip, result.window_seconds, requests);
            }
            counter.add_stats(Stats {
                records: result.rows.len() as u64,
                malformed: result.malformed_rows,
                bytes: result.bytes_scanned,
                truncated_queries: u64::from(truncated),
                ..Stats::default()
            });
        }
        Ok(counter.finish())
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        // Insights counts windows that end now; the newest event is read the
        // same way as for raw events.
        super::cloudwatch_events::CloudWatchEventsSource::new(self.regions.clone())
            .newest_timestamp()
            .await
    }
}
