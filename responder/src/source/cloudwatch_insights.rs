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
//!   in [...]`, in chunks that fit a query; where that takes more than
//!   [`MAX_CANDIDATE_QUERIES`] queries, as for a botnet, one count of every
//!   address of the partition, split like any other, keeps just those).
//!   Each candidate's count is then
//!   the exact sum over all partitions. With one partition, or a floor of
//!   0 or 1, the first pass is exact and no second pass runs.
//! - **Exact at any cardinality.** A query returns at most its row limit
//!   (`row_limit`, default and most 100,000). Each query sorts by requests,
//!   so a cut result still holds every IP above its lowest count. A cut
//!   result whose rows a key needs is split by address: into IPv4 and
//!   IPv6, then each subnet into its two halves (`isIpv4InSubnet`,
//!   `isIpv6InSubnet`), until no part is cut. The parts count disjoint
//!   addresses, so their rows together are the partition's. Splitting stops
//!   at `max_queries_per_cycle`; a part still cut is reported in the
//!   stats ([`crate::traffic::CutCount`]), and the cycle is incomplete.
//! - At most `max_concurrent_queries` run at once (the account limit is 30
//!   in the API reference, 100 in newer guides).
//! - A query past its deadline, or whose caller gave up, is stopped with
//!   StopQuery so it does not keep scanning (and costing).
//! - Bytes scanned are reported; [`estimated_cost_usd`] prices them.
//!
//! - **Prefix keys.** Rows are per address and are summed into their keys
//!   here; a floor per address is only sound where the key is the address,
//!   so for a family whose key is wider (IPv6 by default) the first pass
//!   keeps every address (floor 1).
//! - **A cut result with only prefix keys** in a family (say more than
//!   100,000 addresses of one /64) is counted again by prefix, exactly, in
//!   that partition: one query groups the addresses by their [`Head`], the
//!   leading groups that cover the longest prefix key, as the logs wrote
//!   them; Insights cannot cut a `::`-compressed IPv6 address to its /64,
//!   so a second query counts per address the few written with `::`
//!   inside the head. Those rows, not the cut ones, feed the family's
//!   prefix keys. Each address lands in exactly one of the two, whatever
//!   its text. These queries are split like the first pass's when cut. The
//!   distinct addresses of a prefix counted this way are Insights'
//!   `count_distinct` (approximate at high cardinality) in the partition
//!   that saw the most: a lower bound on the union, reported as "at least".
//!   (An IPv4-mapped IPv6 address, which WAF does not write, would be left
//!   out of IPv4 prefix keys in a cut partition.)
//!
//! **Windows.** A window is `end − W < timestamp ≤ end`, in ms, as for
//! every other source: StartQuery's bounds are whole seconds and inclusive,
//! so they take the seconds around the window and each query filters the
//! record's own `timestamp`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::types::QueryStatus;
use floodgate_rules::policy::{Aggregation, PathMatch, Prefixes, RequestMatch};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{LogSource, SourceError};
use crate::aws::{RegionLogs, describe_error};
use crate::traffic::{CountSpec, CutCount, NOT_READ, SecondPass, Stats, Traffic, TrafficCounter};

/// The most rows a query may return: the highest `limit` the Logs
/// Insights query syntax allows, and the default row limit.
pub const MAX_ROWS: usize = floodgate_rules::policy::INSIGHTS_MAX_ROWS as usize;
/// How many queries a count may run before it stops splitting cut
/// results, unless the policy says otherwise.
pub const DEFAULT_MAX_QUERIES: usize = floodgate_rules::policy::INSIGHTS_MAX_QUERIES as usize;
/// The second pass names a partition's missing candidates in at most this
/// many queries (a few hundred addresses each); past it, it counts the
/// partition whole: at botnet scale, a few queries instead of hundreds.
pub const MAX_CANDIDATE_QUERIES: usize = 4;
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

/// What narrows a query besides what its rows are: the window, a tier's
/// match, the addresses, and the row limit.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The window's start, ms, exclusive.
    pub start_ms: i64,
    /// The window's end, ms, inclusive.
    pub end_ms: i64,
    /// The requests a tier's `match` keeps; `None` for all.
    pub scope: Option<&'a RequestMatch>,
    /// One family's addresses in this subnet (a `/0`: the whole family);
    /// `None` for every address.
    pub subnet: Option<IpNet>,
    /// The most rows.
    pub limit: usize,
}

impl Frame<'_> {
    /// A frame over every request and address of the window.
    pub fn window(start_ms: i64, end_ms: i64) -> Frame<'static> {
        Frame {
            start_ms,
            end_ms,
            scope: None,
            subnet: None,
            limit: MAX_ROWS,
        }
    }

    /// The stages that keep the window's requests of the scope.
    fn requests(&self) -> Vec<String> {
        let mut stages = vec![format!(
            "filter timestamp > {} and timestamp <= {}",
            self.start_ms, self.end_ms
        )];
        if let Some(scope) = self.scope {
            stages.push(format!("filter {}", scope_filter(scope)));
        }
        stages
    }

    /// The stage that keeps the subnet's addresses, if the frame has one
    /// narrower than its family.
    fn subnet_filter(&self) -> Option<String> {
        let net = self.subnet?;
        let family = if net.addr().is_ipv4() { "4" } else { "6" };
        Some(if net.prefix_len() == 0 {
            format!("filter isValidIpV{family}(httpRequest.clientIp)")
        } else {
            format!("filter isIpv{family}InSubnet(httpRequest.clientIp, \"{net}\")")
        })
    }

    /// The stages after `stats`: most first, at most the limit.
    fn top(&self, stages: &mut Vec<String>) {
        stages.push("sort requests desc".to_owned());
        stages.push(format!("limit {}", self.limit));
    }
}

/// The query that counts requests per client IP, keeping those at or
/// above their family's floor, most first; with `only`, just those client
/// IPs, written as the logs wrote them. Built in one place and
/// golden-tested.
pub fn query_text(floors: Floors, frame: &Frame<'_>, only: &[String]) -> String {
    let mut stages = frame.requests();
    stages.extend(frame.subnet_filter());
    if !only.is_empty() {
        let quoted: Vec<String> = only.iter().map(|ip| format!("\"{ip}\"")).collect();
        stages.push(format!(
            "filter httpRequest.clientIp in [{}]",
            quoted.join(", ")
        ));
    }
    stages.push("stats count(*) as requests by httpRequest.clientIp".to_owned());
    if floors.ipv4 == floors.ipv6 {
        stages.push(format!("filter requests >= {}", floors.ipv4));
    } else {
        stages.push(format!(
            "filter (isValidIpV4(httpRequest.clientIp) and requests >= {}) \
             or (isValidIpV6(httpRequest.clientIp) and requests >= {})",
            floors.ipv4, floors.ipv6
        ));
    }
    frame.top(&mut stages);
    stages.join("\n| ")
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

/// The leading groups of a client address as the logs write it, in full:
/// IPv4 octets, or IPv6 hextets before any `::`. Insights can group rows by
/// this text, and each text names one prefix of `groups` × 8 (or 16) bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Head {
    /// IPv6 hextets, or IPv4 octets.
    pub ipv6: bool,
    /// How many.
    pub groups: u8,
}

impl Head {
    /// The fewest groups that cover a prefix of `length` bits, or `None`
    /// when that is the whole address (then rows per address are the keys).
    pub fn covering(ipv6: bool, length: u8) -> Option<Head> {
        let (bits, all) = if ipv6 { (16, 8) } else { (8, 4) };
        let groups = length.div_ceil(bits);
        (groups < all).then_some(Head { ipv6, groups })
    }

    /// The length of the prefix a head names.
    pub fn bits(&self) -> u8 {
        self.groups * if self.ipv6 { 16 } else { 8 }
    }

    /// The regular expression whose group `head` captures the head of an
    /// address that starts with it in full.
    pub fn pattern(&self) -> String {
        let (group, separator) = if self.ipv6 {
            ("[0-9a-fA-F]{1,4}", ":")
        } else {
            ("[0-9]{1,3}", "\\.")
        };
        let groups = vec![group; usize::from(self.groups)].join(separator);
        format!("^(?<head>{groups}){separator}")
    }

    /// The prefix a captured head names, or `None` if it is not one.
    pub fn net(&self, text: &str) -> Option<IpNet> {
        let (separator, radix, digits, bits, whole) = if self.ipv6 {
            (':', 16, 4, 16, 128)
        } else {
            ('.', 10, 3, 8, 32)
        };
        let parts: Vec<&str> = text.split(separator).collect();
        if parts.len() != usize::from(self.groups) {
            return None;
        }
        let mut value = 0u128;
        for part in parts {
            if !(1..=digits).contains(&part.len()) || !part.chars().all(|c| c.is_digit(radix)) {
                return None;
            }
            let group = u32::from_str_radix(part, radix)
                .ok()
                .filter(|&g| g < 1 << bits)?;
            value = value << bits | u128::from(group);
        }
        let length = self.groups * bits;
        let address = value << (whole - length);
        Some(if self.ipv6 {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(address), length).ok()?)
        } else {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(address as u32), length).ok()?)
        })
    }
}

/// The prefix pass's query over `head`'s family: requests and distinct
/// addresses per head, over the addresses written with it in full; or,
/// `compressed`, requests per address over the others (IPv6 addresses with
/// `::` inside the head). Most first, as [`query_text`].
pub fn head_query_text(head: Head, frame: &Frame<'_>, compressed: bool) -> String {
    let mut stages = frame.requests();
    let family = if head.ipv6 { "6" } else { "4" };
    stages.push(format!("filter isValidIpV{family}(httpRequest.clientIp)"));
    if frame.subnet.is_some_and(|net| net.prefix_len() > 0) {
        stages.extend(frame.subnet_filter());
    }
    stages.push(format!("parse httpRequest.clientIp /{}/", head.pattern()));
    if compressed {
        stages.push("filter not ispresent(head)".to_owned());
        stages.push("stats count(*) as requests by httpRequest.clientIp".to_owned());
    } else {
        stages.push("filter ispresent(head)".to_owned());
        stages.push(
            "stats count(*) as requests, count_distinct(httpRequest.clientIp) as addresses by head"
                .to_owned(),
        );
    }
    frame.top(&mut stages);
    stages.join("\n| ")
}

/// `ips` in groups whose query text fits [`MAX_QUERY_LENGTH`] in `frame`,
/// of fewer than its row limit (so no result is, or looks, cut).
fn fitting_chunks(ips: Vec<String>, frame: &Frame<'_>) -> Vec<Vec<String>> {
    let room = MAX_QUERY_LENGTH - query_text(Floors::both(1), frame, &["".to_owned()]).len();
    let most = frame.limit.saturating_sub(1).max(1);
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut used = room;
    for ip in ips {
        // The address, its quotes, and ", " before it.
        let cost = ip.len() + 4;
        if used + cost > room || chunks.last().is_some_and(|chunk| chunk.len() == most) {
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
    max_rows: usize,
    max_queries: usize,
    max_candidate_queries: usize,
}

impl CloudWatchInsightsSource {
    /// Queries the given log groups with at most `max_concurrent_queries` in flight.
    pub fn new(regions: Vec<RegionLogs>, max_concurrent_queries: usize, polling: Polling) -> Self {
        CloudWatchInsightsSource {
            regions,
            queries: Arc::new(Semaphore::new(max_concurrent_queries.max(1))),
            polling,
            max_rows: MAX_ROWS,
            max_queries: DEFAULT_MAX_QUERIES,
            max_candidate_queries: MAX_CANDIDATE_QUERIES,
        }
    }

    /// Asks for at most `rows` rows a query (StartQuery's `limit`, at most
    /// [`MAX_ROWS`]), and treats a result that long as cut.
    pub fn with_max_rows(mut self, rows: usize) -> Self {
        self.max_rows = rows.clamp(1, MAX_ROWS);
        self
    }

    /// Stops splitting cut results once a count has run `queries` queries
    /// (the passes a count needs run whatever the budget).
    pub fn with_max_queries(mut self, queries: usize) -> Self {
        self.max_queries = queries;
        self
    }

    /// Counts a partition whole in the second pass, instead of naming its
    /// missing candidates, when naming them takes more than `queries`
    /// queries (default [`MAX_CANDIDATE_QUERIES`]).
    pub fn with_max_candidate_queries(mut self, queries: usize) -> Self {
        self.max_candidate_queries = queries;
        self
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
    rows: Rows,
    /// The addresses counted, as in [`Frame::subnet`].
    subnet: Option<IpNet>,
    /// StartQuery's `limit`.
    max_rows: usize,
    /// The window, ms: `start_ms < timestamp <= end_ms`.
    start_ms: i64,
    end_ms: i64,
}

/// What a query's rows are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rows {
    /// Client addresses at or above the floors; with `only`, just those
    /// (the second pass), as the logs wrote them.
    Addresses { floors: Floors, only: Vec<String> },
    /// Heads, with their requests and addresses (the prefix pass).
    Heads(Head),
    /// Client addresses of the head's family not written with it in full
    /// (the prefix pass).
    Compressed(Head),
    /// Every client address (floor 1), of which only these count: the
    /// second pass over a partition that lacks too many candidates to
    /// name them.
    Wanted(Arc<HashSet<IpAddr>>),
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
    query: Query,
    /// Each client IP, as the logs wrote it, and its requests.
    rows: Vec<(IpAddr, String, u32)>,
    /// Each head's prefix, requests and distinct addresses.
    heads: Vec<(IpNet, u32, u32)>,
    bytes_scanned: u64,
    /// Log events the query's filters matched (before its `stats`), when
    /// the service said.
    records_matched: Option<u64>,
    malformed_rows: u64,
}

/// [`Rows`], without the query's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addresses,
    Heads,
    Compressed,
    Wanted,
}

impl QueryResult {
    fn kind(&self) -> Kind {
        match self.query.rows {
            Rows::Addresses { .. } => Kind::Addresses,
            Rows::Heads(_) => Kind::Heads,
            Rows::Compressed(_) => Kind::Compressed,
            Rows::Wanted(_) => Kind::Wanted,
        }
    }

    /// Whether Insights' row limit may have cut the result.
    fn truncated(&self) -> bool {
        self.rows.len() + self.heads.len() + self.malformed_rows as usize >= self.query.max_rows
    }

    /// The fewest requests of a row: a cut result may miss rows with as
    /// many, never rows with more.
    fn lowest(&self) -> u32 {
        let rows = self.rows.iter().map(|&(_, _, n)| n);
        rows.chain(self.heads.iter().map(|&(_, n, _)| n))
            .min()
            .unwrap_or(0)
    }

    /// The address families the result counts: IPv6 or not.
    fn families(&self) -> Vec<bool> {
        match self.query.subnet {
            None => vec![false, true],
            Some(net) => vec![net.addr().is_ipv6()],
        }
    }

    /// Whether the result counts `ip`.
    fn covers(&self, ip: IpAddr) -> bool {
        self.query.subnet.is_none_or(|net| net.contains(&ip))
    }

    /// The result as one part of a count the row limit left cut.
    fn cut_count(&self) -> CutCount {
        CutCount {
            region: self.query.region.clone(),
            log_groups: self.query.log_groups.clone(),
            window_seconds: self.query.slice.window_seconds,
            scoped: self.query.slice.scope.is_some(),
            addresses: self
                .query
                .subnet
                .map_or_else(|| "all".to_owned(), |net| net.to_string()),
            lowest: self.lowest(),
        }
    }
}

impl Query {
    fn frame(&self) -> Frame<'_> {
        Frame {
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            scope: self.scope.as_ref(),
            subnet: self.subnet,
            limit: self.max_rows,
        }
    }

    fn text(&self) -> String {
        let frame = self.frame();
        match &self.rows {
            Rows::Addresses { floors, only } => query_text(*floors, &frame, only),
            Rows::Heads(head) => head_query_text(*head, &frame, false),
            Rows::Compressed(head) => head_query_text(*head, &frame, true),
            Rows::Wanted(_) => query_text(Floors::both(1), &frame, &[]),
        }
    }

    /// The same query over the two halves of its addresses (first IPv4
    /// and IPv6), or `None` where its rows cannot be narrowed further: a
    /// single address, or a head's own prefix.
    fn split(&self) -> Option<[Query; 2]> {
        let halves = match self.subnet {
            None => [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())],
            Some(net) => {
                let finest = match self.rows {
                    Rows::Heads(head) => head.bits(),
                    _ => net.max_prefix_len(),
                };
                if net.prefix_len() >= finest {
                    return None;
                }
                let mut halves = net.subnets(net.prefix_len() + 1).ok()?;
                [halves.next()?, halves.next()?]
            }
        };
        Some(halves.map(|half| Query {
            subnet: Some(half),
            ..self.clone()
        }))
    }

    fn error(&self, message: String) -> SourceError {
        SourceError::CloudWatch {
            region: self.region.clone(),
            log_group: self.log_groups.join(", "),
            message,
        }
    }

    async fn run(self, polling: Polling) -> Result<QueryResult, SourceError> {
        // StartQuery's bounds are whole seconds, inclusive: the seconds
        // around the window; the query's filter keeps the window itself.
        let started = self
            .client
            .start_query()
            .set_log_group_names(Some(self.log_groups.clone()))
            .start_time(self.start_ms.div_euclid(1000))
            .end_time((self.end_ms + 999).div_euclid(1000))
            .query_string(self.text())
            .limit(self.max_rows as i32)
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
        let mut intervals =
            crate::retry::doubling(polling.first_interval, polling.max_interval, false);
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
            let interval = intervals.next().unwrap_or(polling.max_interval);
            if tokio::time::Instant::now() + interval > give_up {
                return Err(self.error(format!(
                    "query {query_id} still running after {:?}; stopped it",
                    polling.deadline
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn parse(
        self,
        results: &aws_sdk_cloudwatchlogs::operation::get_query_results::GetQueryResultsOutput,
    ) -> QueryResult {
        let (mut rows, mut heads) = (Vec::new(), Vec::new());
        let mut malformed_rows = 0;
        for row in results.results() {
            let field = |name: &str| {
                row.iter()
                    .find(|f| f.field() == Some(name))
                    .and_then(|f| f.value())
            };
            let number = |name: &str| field(name).and_then(|v| v.parse::<u32>().ok());
            let requests = number("requests");
            let parsed = match &self.rows {
                Rows::Heads(head) => field("head")
                    .and_then(|text| head.net(text))
                    .zip(requests)
                    .zip(number("addresses"))
                    .map(|((net, requests), addresses)| heads.push((net, requests, addresses))),
                Rows::Addresses { .. } | Rows::Compressed(_) | Rows::Wanted(_) => {
                    field("httpRequest.clientIp")
                        .and_then(|text| Some((text, text.parse::<IpAddr>().ok()?)))
                        .zip(requests)
                        .map(|((text, ip), requests)| rows.push((ip, text.to_owned(), requests)))
                }
            };
            if parsed.is_none() {
                malformed_rows += 1;
            }
        }
        QueryResult {
            rows,
            heads,
            bytes_scanned: results
                .statistics()
                .map_or(0, |s| s.bytes_scanned().max(0.0) as u64),
            records_matched: results
                .statistics()
                .map(|s| s.records_matched().max(0.0) as u64),
            malformed_rows,
            query: self,
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
                        region: region.place.clone(),
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

    /// Runs `queries`, and in place of each result the row limit cut where
    /// it matters, the results of its halves, and so on, while the
    /// budget lasts. Returns the parts, which together count what the
    /// queries asked.
    async fn run_split(
        &self,
        passes: &Passes<'_>,
        queries: Vec<Query>,
        budget: &mut Budget,
    ) -> Result<Vec<QueryResult>, SourceError> {
        budget.run += queries.len();
        let mut parts = Vec::new();
        let mut pending = queries;
        while !pending.is_empty() {
            let mut halves = Vec::new();
            for result in self.run_all(std::mem::take(&mut pending)).await? {
                match passes.needs_split(&result).then(|| result.query.split()) {
                    Some(Some(split)) if budget.run + 2 <= self.max_queries => {
                        budget.run += 2;
                        budget.split += 2;
                        budget.bytes += result.bytes_scanned;
                        halves.extend(split);
                    }
                    _ => parts.push(result),
                }
            }
            pending = halves;
        }
        Ok(parts)
    }
}

/// The queries a count has run, against `max_queries_per_cycle`.
#[derive(Debug, Default)]
struct Budget {
    run: usize,
    /// Of those, the halves of cut results.
    split: usize,
    /// What the cut results scanned (halves replaced their rows).
    bytes: u64,
}

/// How the keys that read a slice count one address family.
#[derive(Debug, Clone, Copy, Default)]
struct Readers {
    /// Some key counts per address.
    per_address: bool,
    /// The longest prefix of the keys that count by prefix.
    longest_prefix: Option<u8>,
}

/// Whether `key` reads `slice`: it counts the slice's requests and some
/// tier reads its window.
fn reads(spec: &CountSpec, key: &Aggregation, slice: Slice) -> bool {
    key.scope.as_ref().and_then(|s| spec.scope_bit(s)) == slice.scope
        && spec.floor(key, slice.window_seconds) != NOT_READ
}

fn readers(spec: &CountSpec, slice: Slice, ipv6: bool) -> Readers {
    let mut readers = Readers::default();
    for key in spec.keys().iter().filter(|key| reads(spec, key, slice)) {
        let (length, whole) = if ipv6 {
            (key.prefixes.ipv6, 128)
        } else {
            (key.prefixes.ipv4, 32)
        };
        if length == whole {
            readers.per_address = true;
        } else {
            readers.longest_prefix = readers.longest_prefix.max(Some(length));
        }
    }
    readers
}

/// The first pass's floors for `slice` over `shares` partitions: per
/// family, the lowest floor of the keys that read the slice (a total at the
/// floor is at least its share of it in some partition), or 1 where a key
/// is wider than one address; `None` when no key reads the slice.
fn first_pass_floors(spec: &CountSpec, slice: Slice, shares: u32) -> Option<Floors> {
    let used: Vec<_> = spec
        .keys()
        .iter()
        .filter(|key| reads(spec, key, slice))
        .map(|key| (key.prefixes, spec.floor(key, slice.window_seconds)))
        .collect();
    let family = |whole: fn(&Prefixes) -> bool| {
        used.iter()
            .map(|(key, floor)| {
                if whole(key) {
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

/// What the first pass decided for the passes after it.
struct Passes<'a> {
    spec: &'a CountSpec,
    max_rows: usize,
    /// Past this many queries naming a partition's missing candidates,
    /// the partition is counted whole instead.
    max_candidate_queries: usize,
    floors: BTreeMap<Slice, Floors>,
    /// (partition, slice, IPv6): a family whose prefix keys the prefix
    /// pass counts in that partition, instead of the first pass's rows.
    by_head: BTreeSet<(usize, Slice, bool)>,
}

impl Passes<'_> {
    /// Whether a result is cut where splitting it repairs the cut: its
    /// prefix-pass rows, or first-pass rows some key needs per address (a
    /// family read only by prefix keys is repaired by the prefix pass).
    fn needs_split(&self, result: &QueryResult) -> bool {
        if !result.truncated() {
            return false;
        }
        match result.kind() {
            Kind::Heads | Kind::Compressed | Kind::Wanted => true,
            Kind::Addresses => result
                .families()
                .into_iter()
                .any(|ipv6| readers(self.spec, result.query.slice, ipv6).per_address),
        }
    }

    /// The prefix pass: for each first-pass part still cut, per family
    /// with prefix keys, its heads (and for IPv6, its compressed
    /// addresses), once per partition and window.
    fn prefix_queries(&mut self, first: &[QueryResult], partitions: &[Partition]) -> Vec<Query> {
        let mut queries = Vec::new();
        for result in first.iter().filter(|r| r.truncated()) {
            let (partition, slice) = (result.query.partition, result.query.slice);
            for ipv6 in result.families() {
                let Some(head) = readers(self.spec, slice, ipv6)
                    .longest_prefix
                    .and_then(|length| Head::covering(ipv6, length))
                else {
                    continue;
                };
                if !self.by_head.insert((partition, slice, ipv6)) {
                    continue;
                }
                let family = if ipv6 {
                    IpNet::V6(Ipv6Net::default())
                } else {
                    IpNet::V4(Ipv4Net::default())
                };
                let kinds = [Rows::Heads(head), Rows::Compressed(head)];
                for rows in kinds.into_iter().take(if ipv6 { 2 } else { 1 }) {
                    let mut query = self.query(partitions, partition, slice, rows);
                    query.subnet = Some(family);
                    queries.push(query);
                }
            }
        }
        queries
    }

    /// The second pass: per partition and window, the candidates (every IP
    /// some partition returned in the first pass) that this partition did
    /// not return, where its rows of that family may have left them out.
    fn second_pass_queries(&self, first: &[QueryResult], partitions: &[Partition]) -> Vec<Query> {
        let mut queries = Vec::new();
        for &slice in self.floors.keys() {
            let results: Vec<&QueryResult> =
                first.iter().filter(|r| r.query.slice == slice).collect();
            let candidates: BTreeMap<IpAddr, BTreeSet<&str>> = results
                .iter()
                .flat_map(|r| &r.rows)
                .fold(BTreeMap::new(), |mut all, (ip, text, _)| {
                    all.entry(*ip).or_default().insert(text.as_str());
                    all
                });
            let readers = [false, true].map(|ipv6| readers(self.spec, slice, ipv6));
            for partition in 0..partitions.len() {
                let parts: Vec<&QueryResult> = results
                    .iter()
                    .copied()
                    .filter(|r| r.query.partition == partition)
                    .collect();
                let returned: HashSet<IpAddr> = parts
                    .iter()
                    .flat_map(|r| r.rows.iter().map(|(ip, _, _)| *ip))
                    .collect();
                let missing: Vec<(&IpAddr, &BTreeSet<&str>)> = candidates
                    .iter()
                    .filter(|(ip, _)| {
                        !returned.contains(ip)
                            && parts.iter().filter(|r| r.covers(**ip)).any(|part| {
                                self.may_lack(part, **ip, readers[usize::from(ip.is_ipv6())])
                            })
                    })
                    .collect();
                let only_query = |only| {
                    let rows = Rows::Addresses {
                        floors: Floors::both(1),
                        only,
                    };
                    self.query(partitions, partition, slice, rows)
                };
                let texts = missing
                    .iter()
                    .flat_map(|(_, texts)| texts.iter().map(|t| (*t).to_owned()))
                    .collect();
                let chunks = fitting_chunks(texts, &only_query(Vec::new()).frame());
                if chunks.len() > self.max_candidate_queries {
                    // Too many to name (a botnet): count every address of
                    // the partition once, split as needed, and keep those.
                    let wanted = missing.iter().map(|(ip, _)| **ip).collect();
                    let rows = Rows::Wanted(Arc::new(wanted));
                    queries.push(self.query(partitions, partition, slice, rows));
                } else {
                    queries.extend(chunks.into_iter().map(only_query));
                }
            }
        }
        queries
    }

    /// Whether a first-pass part may lack `ip` (read by `readers`, its
    /// family's keys) where a key needs its rows: under its family's
    /// floor, or cut off by the row limit (unless only prefix keys read
    /// the family, and the prefix pass counts them).
    fn may_lack(&self, part: &QueryResult, ip: IpAddr, readers: Readers) -> bool {
        let slice = part.query.slice;
        let floor = self.floors[&slice].of(ip);
        let by_head = self
            .by_head
            .contains(&(part.query.partition, slice, ip.is_ipv6()));
        floor > 1 || (part.truncated() && (readers.per_address || !by_head))
    }

    /// Whether the row limit cut `result` in a way no later pass repairs:
    /// a family whose rows a key needs may have lost some.
    fn cut(&self, result: &QueryResult) -> bool {
        if !result.truncated() {
            return false;
        }
        let slice = result.query.slice;
        if result.kind() != Kind::Addresses || !self.floors.contains_key(&slice) {
            return true;
        }
        let floors = self.floors[&slice];
        result.families().into_iter().any(|ipv6| {
            let readers = readers(self.spec, slice, ipv6);
            let floor = if ipv6 { floors.ipv6 } else { floors.ipv4 };
            let by_head = self
                .by_head
                .contains(&(result.query.partition, slice, ipv6));
            (readers.per_address && result.lowest() >= floor)
                || (readers.longest_prefix.is_some() && !by_head)
        })
    }

    fn query(&self, partitions: &[Partition], partition: usize, slice: Slice, rows: Rows) -> Query {
        let end_ms = self.spec.end_ms();
        Query {
            partition,
            client: partitions[partition].client.clone(),
            region: partitions[partition].region.clone(),
            log_groups: partitions[partition].log_groups.clone(),
            slice,
            scope: slice
                .scope
                .map(|bit| self.spec.scopes()[bit as usize].clone()),
            rows,
            subnet: None,
            max_rows: self.max_rows,
            start_ms: end_ms - i64::from(slice.window_seconds) * 1000,
            end_ms,
        }
    }

    /// Adds a pass's rows to the keys they count for, and its work to the
    /// stats.
    fn add_results(&self, counter: &mut TrafficCounter, results: &[QueryResult]) -> Stats {
        let mut stats = Stats::default();
        for result in results {
            if self.cut(result) {
                let cut = result.cut_count();
                tracing::warn!(
                    region = cut.region,
                    window_seconds = cut.window_seconds,
                    addresses = cut.addresses,
                    lowest = cut.lowest,
                    rows = result.query.max_rows,
                    "Logs Insights returned its most rows and the query budget \
                     (max_queries_per_cycle) ran out before splitting repaired it: \
                     keys at {} requests or fewer may be missing",
                    cut.lowest
                );
                stats.incomplete.push(cut);
            }
            let (window, scope) = (result.query.slice.window_seconds, result.query.slice.scope);
            let (partition, slice) = (result.query.partition, result.query.slice);
            let wanted = match &result.query.rows {
                Rows::Wanted(wanted) => Some(wanted),
                _ => None,
            };
            let mut added = 0;
            for &(ip, _, requests) in &result.rows {
                if wanted.is_some_and(|wanted| !wanted.contains(&ip)) {
                    continue;
                }
                added += 1;
                let ipv6 = ip.to_canonical().is_ipv6();
                let whole = |prefixes: &Prefixes| {
                    if ipv6 {
                        prefixes.ipv6 == 128
                    } else {
                        prefixes.ipv4 == 32
                    }
                };
                if result.kind() == Kind::Compressed {
                    // Only prefix keys: the first pass counted the address.
                    if ipv6 {
                        counter.add_requests_where(ip, window, requests, scope, |p| !whole(p));
                    }
                } else if self.by_head.contains(&(partition, slice, ipv6)) {
                    counter.add_requests_where(ip, window, requests, scope, whole);
                } else {
                    counter.add_requests(ip, window, requests, scope);
                }
            }
            for &(net, requests, addresses) in &result.heads {
                counter.add_prefix_requests(net, window, requests, addresses, scope);
            }
            stats.records += (added + result.heads.len()) as u64;
            stats.malformed += result.malformed_rows;
            stats.bytes += result.bytes_scanned;
        }
        stats
    }
}

/// Records in each of the spec's windows: the `recordsMatched` of the
/// first pass's queries over all requests, whose address ranges (split or
/// not) hold every client once. Empty when no tier reads a window over all
/// requests, or the service gave no statistics (moto gives none).
fn records_per_window(spec: &CountSpec, first: &[QueryResult]) -> Vec<u64> {
    let per_window = spec.windows().iter().map(|&window_seconds| {
        let whole = Slice {
            window_seconds,
            scope: None,
        };
        let mut queries = first.iter().filter(|r| r.query.slice == whole).peekable();
        queries.peek()?;
        queries.map(|r| r.records_matched).sum::<Option<u64>>()
    });
    per_window.collect::<Option<Vec<u64>>>().unwrap_or_default()
}

impl LogSource for CloudWatchInsightsSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let partitions = self.partitions();
        let shares = partitions.len().max(1) as u32;
        let scopes = std::iter::once(None).chain((0..spec.scopes().len() as u32).map(Some));
        let slices = scopes.flat_map(|scope| {
            spec.windows().iter().map(move |&window_seconds| Slice {
                window_seconds,
                scope,
            })
        });
        let mut passes = Passes {
            spec,
            max_rows: self.max_rows,
            max_candidate_queries: self.max_candidate_queries,
            floors: slices
                .filter_map(|slice| Some((slice, first_pass_floors(spec, slice, shares)?)))
                .collect(),
            by_head: BTreeSet::new(),
        };
        let mut first = Vec::new();
        for partition in 0..partitions.len() {
            for (&slice, &floors) in &passes.floors {
                let rows = Rows::Addresses {
                    floors,
                    only: Vec::new(),
                };
                first.push(passes.query(&partitions, partition, slice, rows));
            }
        }
        let mut budget = Budget::default();
        let mut queries = first.len() as u64;
        let first = self.run_split(&passes, first, &mut budget).await?;
        let mut second = passes.prefix_queries(&first, &partitions);
        if partitions.len() > 1 {
            second.extend(passes.second_pass_queries(&first, &partitions));
        }
        let mut counter = TrafficCounter::new(spec.clone());
        let stats = passes.add_results(&mut counter, &first);
        counter.add_stats(stats);
        counter.stats_mut().in_windows = records_per_window(spec, &first);
        if !second.is_empty() {
            queries += second.len() as u64;
            let second_queries = second.len() as u64;
            let second = self.run_split(&passes, second, &mut budget).await?;
            let extra = passes.add_results(&mut counter, &second);
            counter.add_stats(Stats {
                // The second pass refines the counts of rows already read.
                records: 0,
                second_pass: SecondPass {
                    queries: second_queries,
                    rows: extra.records,
                    bytes: extra.bytes,
                },
                ..extra
            });
        }
        let mut incomplete = std::mem::take(&mut counter.stats_mut().incomplete);
        // A part the prefix pass cut twice (heads and compressed) is one part.
        incomplete.sort_by(|a, b| a.part().cmp(&b.part()).then(a.lowest.cmp(&b.lowest)));
        incomplete.dedup_by(|later, first| later.part() == first.part());
        counter.add_stats(Stats {
            incomplete,
            split_queries: budget.split as u64,
            queries: queries + budget.split as u64,
            // What the cut results scanned: billed, though halves replaced their rows.
            bytes: budget.bytes,
            ..Stats::default()
        });
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
