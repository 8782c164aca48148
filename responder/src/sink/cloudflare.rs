//! A Cloudflare account-level IP list, written through the Lists API
//! (developers.cloudflare.com/waf/tools/lists/lists-api/endpoints/).
//!
//! Writing the list is: find it by name (Get lists, which also gives the
//! item counts of the account's other lists), read its items (cursor
//! pages), diff, and write only what changed with the bulk item
//! operations. Each of those is asynchronous: it answers an
//! `operation_id`, which is polled (Get bulk operation status) until it
//! completes or fails, before the next write.
//! - Additions only: Create list items (POST). Removals only: Delete list
//!   items (DELETE). Both: delete first, which frees room under the cap.
//! - An item whose comment must change (its tier, or its expiry hour) is
//!   rewritten by Update all list items (PUT): a replacement is atomic, so
//!   the address is never briefly unblocked.
//! - Limits, from the Lists pages: items across all of an account's lists
//!   are capped (10,000, or 500,000 on Enterprise; `max_items`); IP lists
//!   hold IPv4 addresses and ranges /8 to /32 and IPv6 ranges /4 to /64
//!   (developers.cloudflare.com/waf/tools/lists/custom-lists/). An IPv6
//!   address is blocked as its /64 only with `widen_ipv6`, and never when
//!   that /64 holds an allow-listed address; everything the list cannot
//!   hold is reported in the target's `left_out`, never dropped silently.
//! - Rate limits: a write while another is pending answers 429, and the
//!   API allows 1,000,000 item changes and 30,000 write requests per 12
//!   hours (developers.cloudflare.com/waf/tools/lists/lists-api/). 429s and
//!   5xx answers are retried after the `Retry-After` the API sends, or a
//!   doubling backoff without one.
//! - Each item's comment carries its tier and expiry, so an operator
//!   reading the list in the dashboard sees why an address is there. The
//!   expiry is rounded up to the hour: extending a block every cycle then
//!   rewrites its item at most once an hour.
//!
//! The list belongs to Floodgate, as its WAF IP sets do: an item added by
//! hand is removed by the next run.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use floodgate_rules::policy::CloudflareTarget as Config;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use ipnet::{IpNet, Ipv6Net};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiCalls, BlockNote, Changes, Contents, DesiredSets, LeftOut, TargetError, TargetReport,
    WafTarget,
};
use crate::failure::FailureKind;
use crate::http_client::{HttpsClient, https_client};

/// Attempts per API call before the target is reported failed.
pub const MAX_ATTEMPTS: u32 = 6;
/// Items per page when reading a list: the most Get list items returns.
const ITEMS_PER_PAGE: u32 = 500;
/// The longest a bulk operation may stay pending before the run gives up
/// on it (the next run reads the list again and converges).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest `Retry-After` honoured; past it the target fails this run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A request with no answer within this is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest IPv4 prefix an IP list holds.
const MIN_IPV4_PREFIX: u8 = 8;
/// The shortest and longest IPv6 prefixes an IP list holds.
const IPV6_PREFIXES: std::ops::RangeInclusive<u8> = 4..=64;

/// A Cloudflare IP list that the responder owns.
#[derive(Debug)]
pub struct CloudflareTarget {
    config: Config,
    /// The API token, from the variable `api_token_env` names.
    token: Result<String, TargetError>,
    /// Addresses the allow-list holds: an IPv6 address is never widened
    /// over one.
    allowed: Vec<IpNet>,
    client: Result<HttpsClient, TargetError>,
    /// First pause after a 429 without `Retry-After`, or a 5xx; doubles.
    backoff: Duration,
}

/// One item of the list as Get list items returns it.
#[derive(Debug, Clone, Deserialize)]
struct Item {
    id: String,
    ip: String,
    #[serde(default)]
    comment: Option<String>,
}

impl Item {
    /// The address or range the item holds.
    fn net(&self) -> Result<IpNet, TargetError> {
        parse_item(&self.ip).ok_or_else(|| {
            invalid(format!(
                "the list holds {:?}, which is not an IP item",
                self.ip
            ))
        })
    }
}

/// A list as Get lists returns it.
#[derive(Debug, Deserialize)]
struct List {
    id: String,
    name: String,
    kind: String,
    #[serde(default)]
    num_items: u64,
}

/// What one item should be.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    net: IpNet,
    comment: String,
    /// Lower is kept first when the list is short of room.
    rank: usize,
    /// An adopted block: an item already holding it keeps its comment.
    keeps_comment: bool,
}

/// Why a call failed.
enum CallError {
    /// Worth another try after this pause.
    Retry(Duration, TargetError),
    /// Give up on this target for this run.
    Fatal(TargetError),
}

/// An answer that makes no sense, or a list the target cannot use.
fn invalid(detail: String) -> TargetError {
    TargetError::new(FailureKind::Invalid, detail)
}

impl CloudflareTarget {
    /// A target for `config` with `token`, the value of its
    /// `api_token_env` variable (`None` when unset: every call then fails
    /// and says so). `allowed` is every allow-listed address or range.
    pub fn new(config: Config, token: Option<String>, allowed: Vec<IpNet>) -> Self {
        let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            TargetError::new(
                FailureKind::Denied,
                format!(
                    "the API token variable {} is not set; set it to a token with the \
                     Account Filter Lists Edit permission",
                    config.api_token_env
                ),
            )
        });
        CloudflareTarget {
            config,
            token,
            allowed,
            client: https_client().map_err(|e| TargetError::new(FailureKind::Unavailable, e)),
            backoff: Duration::from_millis(500),
        }
    }

    /// Changes the first backoff (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    fn lists_path(&self) -> String {
        format!("/accounts/{}/rules/lists", self.config.account_id)
    }

    /// One API call, retried on 429 and 5xx: the envelope's `result` and
    /// `result_info`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(Value, Value), TargetError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut pauses = crate::retry::doubling(self.backoff, MAX_RETRY_AFTER, true);
        for attempt in 1..=MAX_ATTEMPTS {
            match self.call_once(&method, path, body.as_ref()).await {
                Ok(answer) => return Ok(answer),
                Err(CallError::Fatal(reason)) => return Err(reason.context(&what)),
                Err(CallError::Retry(wait, reason)) => {
                    if wait > MAX_RETRY_AFTER {
                        let secs = wait.as_secs();
                        return Err(TargetError::new(
                            reason.kind,
                            format!("{what}: {reason}; Retry-After {secs}s is past this run"),
                        ));
                    }
                    if attempt == MAX_ATTEMPTS {
                        return Err(TargetError::new(
                            reason.kind,
                            format!("{what}: {reason} ({MAX_ATTEMPTS} attempts)"),
                        ));
                    }
                    tracing::warn!(call = %what, %reason, attempt, "Cloudflare API call retried");
                    let pause = pauses.next().unwrap_or(MAX_RETRY_AFTER);
                    tokio::time::sleep(wait.max(pause)).await;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn call_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Value), CallError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| CallError::Fatal(e.clone()))?;
        let token = self
            .token
            .as_ref()
            .map_err(|e| CallError::Fatal(e.clone()))?;
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.config.api_url))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CallError::Fatal(invalid(format!("bad request: {e}"))))?;
        let retry = |reason: String| {
            CallError::Retry(
                Duration::ZERO,
                TargetError::new(FailureKind::Unavailable, reason),
            )
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
            .await
            .map_err(|_| retry(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
            .map_err(|e| retry(format!("{e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| retry(format!("the answer broke off: {e}")))?
            .to_bytes();
        let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let errors = api_errors(&envelope);
        let kind = FailureKind::from_http_status(status.as_u16(), retry_after);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after.unwrap_or_default();
            return Err(CallError::Retry(
                wait,
                TargetError::new(kind, format!("rate limited (429){errors}")),
            ));
        }
        if status.is_server_error() {
            return Err(CallError::Retry(
                retry_after.unwrap_or_default(),
                TargetError::new(kind, format!("{status}{errors}")),
            ));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(CallError::Fatal(TargetError::new(
                kind,
                format!(
                    "{status}{errors}; the token in {} needs the Account Filter Lists Edit \
                     permission on account {}",
                    self.config.api_token_env, self.config.account_id
                ),
            )));
        }
        if !status.is_success() || envelope.get("success") != Some(&Value::Bool(true)) {
            // A 200 whose envelope says it failed is a refused request.
            let kind = if status.is_success() {
                FailureKind::Invalid
            } else {
                kind
            };
            return Err(CallError::Fatal(TargetError::new(
                kind,
                format!("{status}{errors}"),
            )));
        }
        let result = envelope.get("result").cloned().unwrap_or(Value::Null);
        let info = envelope.get("result_info").cloned().unwrap_or(Value::Null);
        Ok((result, info))
    }

    /// The list's id, and how many items the account's other lists hold.
    /// A missing list is created when `create` and `create_missing` allow
    /// it; `None` when it is missing and may be created later.
    async fn find_list(
        &self,
        calls: &mut ApiCalls,
        create: bool,
    ) -> Result<Option<(String, u64)>, TargetError> {
        calls.list += 1;
        let (result, _) = self.call(Method::GET, &self.lists_path(), None).await?;
        let lists: Vec<List> = serde_json::from_value(result)
            .map_err(|e| invalid(format!("GET {}: unexpected answer: {e}", self.lists_path())))?;
        let name = self.config.list.as_str();
        let others = lists
            .iter()
            .filter(|l| l.name != name)
            .map(|l| l.num_items)
            .sum();
        if let Some(list) = lists.iter().find(|l| l.name == name) {
            if list.kind != "ip" {
                return Err(invalid(format!(
                    "the list {name} holds {} items, not IP addresses; name another list",
                    list.kind
                )));
            }
            return Ok(Some((list.id.clone(), others)));
        }
        if !self.config.create_missing {
            return Err(TargetError::new(
                FailureKind::NotFound,
                format!(
                    "account {} has no list named {name}; create it (kind IP) or set \
                     create_missing = true",
                    self.config.account_id
                ),
            ));
        }
        if !create {
            return Ok(None);
        }
        calls.create += 1;
        let body = json!({
            "name": name,
            "kind": "ip",
            "description": "Blocked by Floodgate; each item's comment gives its tier and expiry",
        });
        let (created, _) = self
            .call(Method::POST, &self.lists_path(), Some(body))
            .await?;
        let created: List = serde_json::from_value(created).map_err(|e| {
            invalid(format!(
                "POST {}: unexpected answer: {e}",
                self.lists_path()
            ))
        })?;
        tracing::info!(list = name, id = %created.id, "created the Cloudflare list");
        Ok(Some((created.id, others)))
    }

    /// Every item of list `id`, page by page.
    async fn items(&self, id: &str, calls: &mut ApiCalls) -> Result<Vec<Item>, TargetError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            calls.list += 1;
            let mut path = format!("{}/{id}/items?per_page={ITEMS_PER_PAGE}", self.lists_path());
            if let Some(cursor) = &cursor {
                let _ = write!(path, "&cursor={}", query_escape(cursor));
            }
            let (result, info) = self.call(Method::GET, &path, None).await?;
            let page: Vec<Item> = serde_json::from_value(result)
                .map_err(|e| invalid(format!("GET list items: unexpected answer: {e}")))?;
            items.extend(page);
            cursor = info
                .pointer("/cursors/after")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            if cursor.is_none() {
                return Ok(items);
            }
        }
    }

    /// Starts a bulk operation and waits for it to complete.
    async fn bulk(
        &self,
        method: Method,
        path: &str,
        body: Value,
        calls: &mut ApiCalls,
    ) -> Result<(), TargetError> {
        calls.update += 1;
        let (result, _) = self.call(method.clone(), path, Some(body)).await?;
        let Some(operation) = result.get("operation_id").and_then(Value::as_str) else {
            return Err(invalid(format!(
                "{method} list items: the answer has no operation_id"
            )));
        };
        let status_path = format!("{}/bulk_operations/{operation}", self.lists_path());
        let started = tokio::time::Instant::now();
        let mut pauses =
            crate::retry::doubling(Duration::from_millis(100), Duration::from_secs(2), false);
        loop {
            calls.get += 1;
            let (status, _) = self.call(Method::GET, &status_path, None).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") => {
                    let error = status
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(invalid(format!(
                        "bulk operation {operation} failed: {error}"
                    )));
                }
                Some("pending" | "running") if started.elapsed() < OPERATION_TIMEOUT => {
                    let pause = pauses.next().unwrap_or(Duration::from_secs(2));
                    tokio::time::sleep(pause).await;
                }
                Some("pending" | "running") => {
                    return Err(TargetError::new(
                        FailureKind::Unavailable,
                        format!(
                            "bulk operation {operation} still pending after {}s",
                            OPERATION_TIMEOUT.as_secs()
                        ),
                    ));
                }
                other => {
                    return Err(invalid(format!(
                        "bulk operation {operation}: unexpected status {other:?}"
                    )));
                }
            }
        }
    }

    /// The items `desired` asks for, and what the list cannot hold.
    fn wanted(&self, desired: &DesiredSets) -> (Vec<Wanted>, Vec<LeftOut>) {
        // Several IPv6 addresses widened to one /64 make one item: the most
        // severe one's tier and rank, the latest expiry.
        let mut merged: BTreeMap<IpNet, (usize, Option<&BlockNote>, i64)> = BTreeMap::new();
        let mut left_out = Vec::new();
        for &net in desired.nets() {
            let held = match self.holdable(net) {
                Ok(held) => held,
                Err(reason) => {
                    left_out.push(LeftOut { net, reason });
                    continue;
                }
            };
            let note = desired.notes.get(&net);
            let rank = note.map_or(usize::MAX, |n| n.rank);
            let expires = note.map_or(i64::MIN, |n| n.expires_at_ms);
            let entry = merged.entry(held).or_insert((rank, note, expires));
            if rank < entry.0 {
                (entry.0, entry.1) = (rank, note);
            }
            entry.2 = entry.2.max(expires);
        }
        let wanted = merged
            .into_iter()
            .map(|(net, (rank, note, expires_at_ms))| Wanted {
                net,
                comment: note.map_or_else(
                    || "floodgate".to_owned(),
                    |n| comment(&n.tier, expires_at_ms),
                ),
                rank,
                keeps_comment: note.is_some_and(|n| n.adopted),
            })
            .collect();
        (wanted, left_out)
    }

    /// `net` as the list can hold it, or why it cannot.
    fn holdable(&self, net: IpNet) -> Result<IpNet, String> {
        match net {
            IpNet::V4(v4) if v4.prefix_len() < MIN_IPV4_PREFIX => Err(format!(
                "Cloudflare IP lists hold IPv4 ranges of /{MIN_IPV4_PREFIX} to /32"
            )),
            IpNet::V4(_) => Ok(net),
            IpNet::V6(v6) if IPV6_PREFIXES.contains(&v6.prefix_len()) => Ok(net),
            IpNet::V6(v6) if v6.prefix_len() < *IPV6_PREFIXES.start() => {
                Err("Cloudflare IP lists hold IPv6 ranges of /4 to /64".to_owned())
            }
            IpNet::V6(_) if !self.config.widen_ipv6 => Err(
                "Cloudflare IP lists hold IPv6 ranges of /4 to /64; set widen_ipv6 = true \
                 to block such an address as its /64"
                    .to_owned(),
            ),
            IpNet::V6(v6) => {
                let wide = IpNet::V6(
                    Ipv6Net::new(v6.network(), 64)
                        .expect("64 is a valid prefix")
                        .trunc(),
                );
                match self
                    .allowed
                    .iter()
                    .find(|a| wide.contains(*a) || a.contains(&wide))
                {
                    Some(allowed) => Err(format!(
                        "its /64 {wide} holds the allow-listed {allowed}, so it is not widened"
                    )),
                    None => Ok(wide),
                }
            }
        }
    }

    /// Makes the list hold `desired`; returns what changed.
    async fn converge(
        &self,
        desired: &DesiredSets,
        calls: &mut ApiCalls,
        left_out: &mut Vec<LeftOut>,
    ) -> Result<Changes, TargetError> {
        let (list_id, others) = self
            .find_list(calls, true)
            .await?
            .expect("a missing list was created");
        let current = self.items(&list_id, calls).await?;
        let (mut wanted, cannot_hold) = self.wanted(desired);
        left_out.extend(cannot_hold);
        let room = usize::try_from(u64::from(self.config.max_items).saturating_sub(others))
            .unwrap_or(usize::MAX);
        if wanted.len() > room {
            wanted.sort_by_key(|w| w.rank);
            for w in wanted.split_off(room) {
                left_out.push(LeftOut {
                    net: w.net,
                    reason: format!(
                        "the account's lists are full: {others} items in other lists, \
                         max_items = {}",
                        self.config.max_items
                    ),
                });
            }
        }
        let mut held: HashMap<IpNet, &Item> = HashMap::new();
        for item in &current {
            held.insert(item.net()?, item);
        }
        // An adopted block's item says what its operator wrote: kept until
        // the block offends again and the responder has a reason to speak.
        for w in wanted.iter_mut().filter(|w| w.keeps_comment) {
            if let Some(item) = held.get(&w.net) {
                w.comment = item.comment.clone().unwrap_or_default();
            }
        }
        let wanted_nets: HashMap<IpNet, &Wanted> = wanted.iter().map(|w| (w.net, w)).collect();
        let removed: Vec<(IpNet, &Item)> = held
            .iter()
            .filter(|(net, _)| !wanted_nets.contains_key(net))
            .map(|(net, item)| (*net, *item))
            .collect();
        let added: Vec<&Wanted> = wanted
            .iter()
            .filter(|w| !held.contains_key(&w.net))
            .collect();
        let rewritten = wanted.iter().any(|w| {
            held.get(&w.net)
                .is_some_and(|item| item.comment.as_deref().unwrap_or_default() != w.comment)
        });
        let changes = Changes {
            added: added.len(),
            removed: removed.iter().map(|(net, _)| *net).collect(),
            created: 0,
        };
        let items_path = format!("{}/{list_id}/items", self.lists_path());
        if rewritten {
            let all: Vec<Value> = wanted.iter().map(item_body).collect();
            self.bulk(Method::PUT, &items_path, Value::Array(all), calls)
                .await?;
            return Ok(changes);
        }
        if !removed.is_empty() {
            let ids: Vec<Value> = removed.iter().map(|(_, i)| json!({ "id": i.id })).collect();
            self.bulk(Method::DELETE, &items_path, json!({ "items": ids }), calls)
                .await?;
        }
        if !added.is_empty() {
            let body: Vec<Value> = added.iter().map(|w| item_body(w)).collect();
            self.bulk(Method::POST, &items_path, Value::Array(body), calls)
                .await?;
        }
        Ok(changes)
    }
}

impl WafTarget for CloudflareTarget {
    fn label(&self) -> String {
        format!(
            "cloudflare {}/{}",
            self.config.account_id,
            self.config.list.as_str()
        )
    }

    async fn read(&self) -> Result<Contents, TargetError> {
        let mut calls = ApiCalls::default();
        // Reading never creates the list: until the first write it is empty.
        let Some((list_id, _)) = self.find_list(&mut calls, false).await? else {
            return Ok(Contents {
                nets: Vec::new(),
                calls,
            });
        };
        let items = self.items(&list_id, &mut calls).await?;
        let nets = items.iter().map(Item::net).collect::<Result<_, _>>()?;
        Ok(Contents { nets, calls })
    }

    fn expected(&self, desired: &DesiredSets) -> (Vec<IpNet>, Vec<LeftOut>) {
        let (wanted, left_out) = self.wanted(desired);
        (wanted.into_iter().map(|w| w.net).collect(), left_out)
    }

    async fn apply(&self, desired: &DesiredSets) -> TargetReport {
        let mut calls = ApiCalls::default();
        let mut left_out = Vec::new();
        let changes = self.converge(desired, &mut calls, &mut left_out).await;
        // One line per reason: an allow-listed address inside a /64 can
        // leave dozens of ranges out for the same cause.
        for left in super::left_out_by_reason(&left_out) {
            tracing::warn!(target = %self.label(), left_out = %left, "not in the Cloudflare list");
        }
        TargetReport::of(self.label(), changes, calls, left_out)
    }
}

/// An item's comment: `floodgate: <tier> until <expiry, to the hour> UTC`.
fn comment(tier: &str, expires_at_ms: i64) -> String {
    let until = time::OffsetDateTime::from_unix_timestamp(hour_up(expires_at_ms) / 1000)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:00",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour()
            )
        })
        .unwrap_or_else(|_| "?".to_owned());
    format!("floodgate: {tier} until {until} UTC")
}

/// `ms` rounded up to the next whole hour.
fn hour_up(ms: i64) -> i64 {
    const HOUR: i64 = 3_600_000;
    ms.div_euclid(HOUR) * HOUR + if ms.rem_euclid(HOUR) == 0 { 0 } else { HOUR }
}

fn item_body(wanted: &Wanted) -> Value {
    json!({ "ip": item_text(wanted.net), "comment": wanted.comment })
}

/// How an item is written: an IPv4 address bare, anything else as CIDR.
fn item_text(net: IpNet) -> String {
    match net {
        IpNet::V4(v4) if v4.prefix_len() == 32 => v4.addr().to_string(),
        _ => net.to_string(),
    }
}

/// An item's `ip`: an address (IPv4 /32, IPv6 /128) or a range.
fn parse_item(ip: &str) -> Option<IpNet> {
    if let Ok(net) = ip.parse::<IpNet>() {
        return Some(net.trunc());
    }
    let addr: IpAddr = ip.parse().ok()?;
    Some(IpNet::from(addr))
}

/// The Cloudflare API's error list, as ": code message; …", or nothing.
fn api_errors(envelope: &Value) -> String {
    let Some(errors) = envelope.get("errors").and_then(Value::as_array) else {
        return String::new();
    };
    let text: Vec<String> = errors
        .iter()
        .map(|e| {
            let code = e.get("code").map(Value::to_string).unwrap_or_default();
            let message = e.get("message").and_then(Value::as_str).unwrap_or_default();
            format!("{code} {message}").trim().to_owned()
        })
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.join("; "))
    }
}

/// A cursor made safe for a query string.
fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            escaped.push(byte as char);
        } else {
            let _ = write!(escaped, "%{byte:02X}");
        }
    }
    escaped
}
