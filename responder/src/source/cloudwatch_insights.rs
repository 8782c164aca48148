//! CloudWatch Logs Insights: AWS counts, we read the counts.
//!
//! One query per partition (a region's log groups, 50 at most) and per
//! distinct window: StartQuery, then GetQueryResults with backoff until the
//! query completes.
//! - **Exact across partitions.** A floor filtered per query and then summed
//!   is not a count: an address spread over regions can be under every
//!   query's floor while its total crosses a tier. So the first pass keeps,
//!   in each of the `n` partitions, the IPs at or above the window's floor
//!   divided by `n` (rounded up): an address whose total reaches the floor
//!   reaches that share in at least one partition. Every IP some partition
//!   returned is a candidate, and a second pass counts exactly the
//!   candidates each partition did not return (`filter httpRequest.clientIp
//!   in [...]`, in chunks that fit a query). Each candidate's count is then
//!   the exact sum over all partitions. With one partition, or a floor of
//!   0 or 1, the first pass is exact and no second pass runs.
//! - Insights returns at most 10,000 rows. Each query sorts by requests, so
//!   a truncated result still holds every IP above its lowest count;
//!   truncation is reported in the stats, never silent, and the second pass
//!   asks a truncated partition for every candidate.
//! - At most `max_concurrent_queries` run at once (the account limit is 30
//!   in the API reference, 100 in newer guides).
//! - A query past its deadline, or whose caller gave up, is stopped with
//!   StopQuery so it does not keep scanning (and costing).
//! - Bytes scanned are reported; [`estimated_cost_usd`] prices them.
//!
//! - **Prefix keys.** Insights groups rows by the address as the logs wrote
//!   it, and cannot cut an IPv6 address to its /64 from its text (the `::`
//!   of the compressed form moves). So rows stay per address and are summed
//!   into their keys here; a floor per address is only sound where the key
//!   is the address, so for a family whose key is wider (IPv6 by default)
//!   the first pass keeps every address (floor 1), and a truncated result
//!   is reported as ever.
//!
//! Insights query bounds are whole seconds, so windows are counted to the
//! second.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::types::QueryStatus;
use floodgate_rules::policy::{PathMatch, Prefixes, RequestMatch};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{LogSource, SourceError};
use crate::aws::{RegionLogs, describe_error};
use crate::traffic::{CountSpec, NOT_READ, SecondPass, Stats, Traffic, TrafficCounter};

/// Rows Insights returns at most.
pub const MAX_ROWS: usize = 10_000;
/// The longest query string StartQuery accepts.
pub const MAX_QUERY_LENGTH: usize = 10_000;
/// Log groups one query may name.
const MAX_GROUPS_PER_QUERY: usize = 50;
/// Logs Insights price per GB scanned (US East), for the cost estimate.
const USD_PER_GB_SCANNED: f64 = 0.005;

/// The fewest requests a client address needs, per family, to be kept in a
/// query's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floors {
    /// For IPv4 addresses.
    pub ipv4: u32,
    /// For IPv6 addresses.
    pub ipv6: u32,
}

impl Floors {
    /// The same floor for both families.
    pub fn both(min_requests: u32) -> Floors {
        Floors {
            ipv4: min_requests,
            ipv6: min_requests,
        }
    }

    fn of(&self, ip: IpAddr) -> u32 {
        if ip.is_ipv4() { self.ipv4 } else { self.ipv6 }
    }
}

/// The query that counts requests per client IP, keeping those at or
/// above their family's floor, most first; with `only`, just those client
/// IPs, written as the logs wrote them. Built in one place and
/// golden-tested.
pub fn query_text(floors: Floors, scope: Option<&RequestMatch>, only: &[String]) -> String {
    let mut query = String::new();
    if let Some(scope) = scope {
        let _ = writeln!(query, "filter {}", scope_filter(scope));
        query.push_str("| ");
    }
    if !only.is_empty() {
        let quoted: Vec<String> = only.iter().map(|ip| format!("\"{ip}\"")).collect();
        let _ = writeln!(
            query,
            "filter httpRequest.clientIp in [{}]",
            quoted.join(", ")
        );
        query.push_str("| ");
    }
    query.push_str("stats count(*) as requests by httpRequest.clientIp\n");
    if floors.ipv4 == floors.ipv6 {
        let _ = writeln!(query, "| filter requests >= {}", floors.ipv4);
    } else {
        let _ = writeln!(
            query,
            "| filter (isValidIpV4(httpRequest.clientIp) and requests >= {}) \
             or (isValidIpV6(httpRequest.clientIp) and requests >= {})",
            floors.ipv4, floors.ipv6
        );
    }
    let _ = write!(query, "| sort requests desc\n| limit {MAX_ROWS}");
    query
}

/// The Insights filter that keeps the requests `scope` matches: the same
/// test as [`RequestMatch::matches`] on the record's fields. The host
/// header and labels sit in arrays, so they are matched in the raw
/// record, as WAF writes them.
pub fn scope_filter(scope: &RequestMatch) -> String {
    let mut clauses = Vec::new();
    match &scope.path {
        Some(PathMatch::Exact(path)) => clauses.push(format!("httpRequest.uri = \"{path}\"")),
        Some(PathMatch::Prefix(prefix)) => {
            clauses.push(format!("httpRequest.uri like /^{}/", regex_literal(prefix)));
        }
        None => {}
    }
    if let Some(method) = &scope.method {
        clauses.push(format!("httpRequest.httpMethod = \"{method}\""));
    }
    if let Some(country) = &scope.country {
        clauses.push(format!("httpRequest.country = \"{country}\""));
    }
    if let Some(action) = &scope.action {
        clauses.push(format!("action = \"{action}\""));
    }
    if let Some(host) = &scope.host {
        clauses.push(format!(
            "@message like /(?i)\"name\":\"host\",\"value\":\"{}\"/",
            regex_literal(host)
        ));
    }
    if let Some(label) = &scope.label {
        clauses.push(format!(
            "@message like /\"labels\":\\[[^\\]]*\"name\":\"{}\"/",
            regex_literal(label)
        ));
    }
    clauses.join(" and ")
}

/// `text` as a regular expression that matches it literally: every ASCII
/// punctuation character escaped (policy validation admits no others).
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `ips` in groups whose query text fits [`MAX_QUERY_LENGTH`] with `scope`.
fn fitting_chunks(ips: Vec<String>, scope: Option<&RequestMatch>) -> Vec<Vec<String>> {
    let room = MAX_QUERY_LENGTH - query_text(Floors::both(1), scope, &["".to_owned()]).len();
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut used = room;
    for ip in ips {
        // The address, its quotes, and ", " before it.
        let cost = ip.len() + 4;
        if used + cost > room {
            chunks.push(Vec::new());
            used = 0;
        }
        used += cost;
        chunks.last_mut().expect("a chunk was pushed").push(ip);
    }
    chunks
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

/// One region's log groups that one query can name.
#[derive(Debug, Clone)]
struct Partition {
    client: Client,
    region: String,
    log_groups: Vec<String>,
}

/// One query to run.
#[derive(Debug, Clone)]
struct Query {
    partition: usize,
    client: Client,
    region: String,
    log_groups: Vec<String>,
    slice: Slice,
    /// The requests the slice counts, when it has a scope.
    scope: Option<RequestMatch>,
    floors: Floors,
    /// Only these client IPs (the second pass), or all.
    only: Vec<String>,
    start_seconds: i64,
    end_seconds: i64,
}

/// What one query counts: a window, over all requests or those of one
/// tier match (its bit in the count spec's scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Slice {
    window_seconds: u32,
    scope: Option<u32>,
}

/// Rows of one finished query.
struct QueryResult {
    partition: usize,
    slice: Slice,
    /// Each client IP, as the logs wrote it, and its requests.
    rows: Vec<(IpAddr, String, u32)>,
    bytes_scanned: u64,
    malformed_rows: u64,
}

impl QueryResult {
    /// Whether Insights' row limit may have cut the result.
    fn truncated(&self) -> bool {
        self.rows.len() + self.malformed_rows as usize >= MAX_ROWS
    }
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
            .query_string(query_text(self.floors, self.scope.as_ref(), &self.only))
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
            let text = field("httpRequest.clientIp");
            let ip = text.and_then(|v| v.parse::<IpAddr>().ok());
            let requests = field("requests").and_then(|v| v.parse::<u32>().ok());
            match (text, ip, requests) {
                (Some(text), Some(ip), Some(requests)) => {
                    rows.push((ip, text.to_owned(), requests))
                }
                _ => malformed_rows += 1,
            }
        }
        QueryResult {
            partition: self.partition,
            slice: self.slice,
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

impl CloudWatchInsightsSource {
    /// Every region's log groups, in queries of at most 50 groups.
    fn partitions(&self) -> Vec<Partition> {
        self.regions
            .iter()
            .flat_map(|region| {
                region
                    .log_groups
                    .chunks(MAX_GROUPS_PER_QUERY)
                    .map(|groups| Partition {
                        client: region.client.clone(),
                        region: region.region.clone(),
                        log_groups: groups.to_vec(),
                    })
            })
            .collect()
    }

    /// Runs `queries`, at most `max_concurrent_queries` at once; the first
    /// error stops the rest (their guards stop their Insights queries).
    async fn run_all(&self, queries: Vec<Query>) -> Result<Vec<QueryResult>, SourceError> {
        let mut tasks = JoinSet::new();
        for query in queries {
            let (slots, polling) = (self.queries.clone(), self.polling);
            tasks.spawn(async move {
                let _slot = slots
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                query.run(polling).await
            });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            results.push(done.expect("query task panicked")?);
        }
        Ok(results)
    }
}

/// The second pass: per partition and window, the candidates (every IP
/// some partition returned in the first pass) that this partition did not
/// return. A partition returned every IP of a family whose floor was 1,
/// unless truncated.
fn second_pass_queries(
    first: &[QueryResult],
    partitions: &[Partition],
    floors: &BTreeMap<Slice, Floors>,
    spec: &CountSpec,
) -> Vec<Query> {
    let end_seconds = spec.end_ms().div_euclid(1000);
    let mut queries = Vec::new();
    for (&slice, &slice_floors) in floors {
        let results: Vec<&QueryResult> = first.iter().filter(|r| r.slice == slice).collect();
        let candidates: BTreeMap<IpAddr, BTreeSet<&str>> = results
            .iter()
            .flat_map(|r| &r.rows)
            .fold(BTreeMap::new(), |mut all, (ip, text, _)| {
                all.entry(*ip).or_default().insert(text.as_str());
                all
            });
        let scope = slice.scope.map(|bit| spec.scopes()[bit as usize].clone());
        for result in results {
            let returned: HashSet<IpAddr> = result.rows.iter().map(|(ip, _, _)| *ip).collect();
            let missing: Vec<String> = candidates
                .iter()
                .filter(|(ip, _)| {
                    !returned.contains(ip) && (slice_floors.of(**ip) > 1 || result.truncated())
                })
                .flat_map(|(_, texts)| texts.iter().map(|t| (*t).to_owned()))
                .collect();
            let partition = &partitions[result.partition];
            for only in fitting_chunks(missing, scope.as_ref()) {
                queries.push(Query {
                    partition: result.partition,
                    client: partition.client.clone(),
                    region: partition.region.clone(),
                    log_groups: partition.log_groups.clone(),
                    slice,
                    scope: scope.clone(),
                    floors: Floors::both(1),
                    only,
                    start_seconds: end_seconds - i64::from(slice.window_seconds),
                    end_seconds,
                });
            }
        }
    }
    queries
}

/// The first pass's floors for `slice` over `shares` partitions: per
/// family, the lowest floor of the keys that read the slice (a total at the
/// floor is at least its share of it in some partition), or 1 where a key
/// is wider than one address; `None` when no key reads the slice.
fn first_pass_floors(spec: &CountSpec, slice: Slice, shares: u32) -> Option<Floors> {
    let used: Vec<_> = spec
        .keys()
        .iter()
        .filter(|key| key.scope.as_ref().and_then(|s| spec.scope_bit(s)) == slice.scope)
        .map(|key| (key.prefixes, spec.floor(key, slice.window_seconds)))
        .filter(|&(_, floor)| floor != NOT_READ)
        .collect();
    let family = |per_address: fn(&Prefixes) -> bool| {
        used.iter()
            .map(|(key, floor)| {
                if per_address(key) {
                    floor.div_ceil(shares)
                } else {
                    1
                }
            })
            .min()
    };
    Some(Floors {
        ipv4: family(|k| k.ipv4 == 32)?,
        ipv6: family(|k| k.ipv6 == 128)?,
    })
}

/// Adds a pass's rows to the counts and its work to the stats.
fn add_results(counter: &mut TrafficCounter, results: &[QueryResult]) -> Stats {
    let mut stats = Stats::default();
    for result in results {
        if result.truncated() {
            let lowest = result.rows.last().map_or(0, |&(_, _, n)| n);
            tracing::warn!(
                window_seconds = result.slice.window_seconds,
                lowest,
                "Logs Insights returned {MAX_ROWS} rows: IPs at {lowest} requests may be missing"
            );
        }
        for &(ip, _, requests) in &result.rows {
            counter.add_requests(
                ip,
                result.slice.window_seconds,
                requests,
                result.slice.scope,
            );
        }
        stats.records += result.rows.len() as u64;
        stats.malformed += result.malformed_rows;
        stats.bytes += result.bytes_scanned;
        stats.truncated_queries += u64::from(result.truncated());
    }
    stats
}

impl LogSource for CloudWatchInsightsSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let end_seconds = spec.end_ms().div_euclid(1000);
        let partitions = self.partitions();
        let shares = partitions.len().max(1) as u32;
        let scopes = std::iter::once(None).chain((0..spec.scopes().len() as u32).map(Some));
        let slices = scopes.flat_map(|scope| {
            spec.windows().iter().map(move |&window_seconds| Slice {
                window_seconds,
                scope,
            })
        });
        let floors: BTreeMap<Slice, Floors> = slices
            .filter_map(|slice| Some((slice, first_pass_floors(spec, slice, shares)?)))
            .collect();
        let mut first = Vec::new();
        for (index, partition) in partitions.iter().enumerate() {
            for (&slice, &floors) in &floors {
                first.push(Query {
                    partition: index,
                    client: partition.client.clone(),
                    region: partition.region.clone(),
                    log_groups: partition.log_groups.clone(),
                    slice,
                    scope: slice.scope.map(|bit| spec.scopes()[bit as usize].clone()),
                    floors,
                    only: Vec::new(),
                    start_seconds: end_seconds - i64::from(slice.window_seconds),
                    end_seconds,
                });
            }
        }
        let first = self.run_all(first).await?;
        let mut counter = TrafficCounter::new(spec.clone());
        let stats = add_results(&mut counter, &first);
        counter.add_stats(stats);
        if partitions.len() > 1 {
            let second = second_pass_queries(&first, &partitions, &floors, spec);
            let queries = second.len() as u64;
            let second = self.run_all(second).await?;
            let extra = add_results(&mut counter, &second);
            counter.add_stats(Stats {
                // The second pass refines the counts of rows already read.
                records: 0,
                second_pass: SecondPass {
                    queries,
                    rows: extra.records,
                    bytes: extra.bytes,
                },
                ..extra
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
