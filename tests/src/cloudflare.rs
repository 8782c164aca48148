//! A fake of the Cloudflare Lists API, for tests: Cloudflare has no
//! emulator. It keeps to the documented contract and nothing more; each
//! route names the page it follows. All pages are under
//! developers.cloudflare.com/api/resources/rules/subresources/lists/.
//!
//! - Every answer is the v4 envelope: `success`, `errors` (`code`,
//!   `message`), `messages`, `result`, and `result_info` on paged reads.
//! - Item writes are asynchronous: they answer an `operation_id` and take
//!   effect when the operation completes, which the fake makes happen on
//!   the `pending_polls + 1`-th status poll. While one is pending, another
//!   write answers 429 (the Lists API page: "If a write operation is still
//!   being processed … you will receive a 429 HTTP status code").
//! - Items across the account's lists are capped (10,000 by default), and
//!   an IP item is an IPv4 address or range /8–/32 or an IPv6 range
//!   /4–/64; an operation breaking either rule fails, as the API's do.
//! - Faults a test asks for: 429s with `Retry-After`, 5xx answers, and a
//!   failed operation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A fault the fake answers the next matching request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with this `Retry-After`, in seconds.
    RateLimited {
        /// Seconds.
        retry_after: u32,
    },
    /// 503 with an error envelope.
    Unavailable,
    /// The next bulk operation fails with this error.
    FailOperation(String),
}

/// One item of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeItem {
    /// The item's id.
    pub id: String,
    /// The address or range, as written.
    pub ip: String,
    /// Its comment.
    pub comment: String,
}

#[derive(Debug)]
struct FakeList {
    id: String,
    name: String,
    kind: String,
    items: Vec<FakeItem>,
}

#[derive(Debug)]
enum Change {
    Append(Vec<FakeItem>),
    Replace(Vec<FakeItem>),
    Delete(Vec<String>),
}

#[derive(Debug)]
struct Operation {
    id: String,
    list: String,
    change: Option<Change>,
    polls_left: u32,
    status: &'static str,
    error: Option<String>,
}

/// A request the fake answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The JSON body, or `Null`.
    pub body: Value,
}

#[derive(Debug)]
struct FakeState {
    account: String,
    token: String,
    lists: Vec<FakeList>,
    operations: Vec<Operation>,
    faults: VecDeque<Fault>,
    requests: Vec<Recorded>,
    /// Items a page holds at most, below the caller's `per_page`.
    page_size: usize,
    pending_polls: u32,
    max_items: usize,
    next_id: u64,
}

impl FakeState {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", self.next_id)
    }

    fn pending(&self) -> bool {
        self.operations
            .iter()
            .any(|o| matches!(o.status, "pending" | "running"))
    }
}

type Shared = Arc<Mutex<FakeState>>;

/// The fake, serving on a loopback port from a thread of its own (so
/// async and blocking tests alike can use it) until dropped.
pub struct FakeCloudflare {
    state: Shared,
    server: crate::Served,
}

impl FakeCloudflare {
    /// Starts a fake of account `account`, which accepts `token`.
    pub fn start(account: &str, token: &str) -> FakeCloudflare {
        let state = Arc::new(Mutex::new(FakeState {
            account: account.to_owned(),
            token: token.to_owned(),
            lists: Vec::new(),
            operations: Vec::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            page_size: 500,
            pending_polls: 1,
            max_items: 10_000,
            next_id: 0,
        }));
        let server = crate::Served::start(routes(state.clone()));
        FakeCloudflare { state, server }
    }

    /// The base URL to give `api_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/client/v4", self.server.port)
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().expect("fake state"))
    }

    /// Adds a list of `kind` holding `ips`; returns its id.
    pub fn add_list(&self, name: &str, kind: &str, ips: &[&str]) -> String {
        self.with(|s| {
            let id = s.id();
            let items = ips
                .iter()
                .map(|ip| FakeItem {
                    id: s.id(),
                    ip: (*ip).to_owned(),
                    comment: String::new(),
                })
                .collect();
            s.lists.push(FakeList {
                id: id.clone(),
                name: name.to_owned(),
                kind: kind.to_owned(),
                items,
            });
            id
        })
    }

    /// Adds an item to list `name`, as an operator would in the dashboard.
    pub fn add_item(&self, name: &str, ip: &str, comment: &str) {
        self.with(|s| {
            let id = s.id();
            let list = s
                .lists
                .iter_mut()
                .find(|l| l.name == name)
                .expect("the list exists");
            list.items.push(FakeItem {
                id,
                ip: ip.to_owned(),
                comment: comment.to_owned(),
            });
        })
    }

    /// The items of list `name`, sorted by address text; `None` without it.
    pub fn items(&self, name: &str) -> Option<Vec<FakeItem>> {
        self.with(|s| {
            let list = s.lists.iter().find(|l| l.name == name)?;
            let mut items = list.items.clone();
            items.sort_by(|a, b| a.ip.cmp(&b.ip));
            Some(items)
        })
    }

    /// The addresses of list `name`, sorted.
    pub fn ips(&self, name: &str) -> Vec<String> {
        let items = self.items(name).unwrap_or_default();
        items.into_iter().map(|i| i.ip).collect()
    }

    /// Answers the next requests with `faults`, in order.
    pub fn inject(&self, faults: &[Fault]) {
        self.with(|s| s.faults.extend(faults.iter().cloned()));
    }

    /// Pages hold at most `size` items.
    pub fn set_page_size(&self, size: usize) {
        self.with(|s| s.page_size = size.max(1));
    }

    /// The account holds at most `max` items across its lists.
    pub fn set_max_items(&self, max: usize) {
        self.with(|s| s.max_items = max);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.with(|s| s.requests.clear());
    }
}

fn routes(state: Shared) -> Router {
    Router::new()
        // "Get lists", "Create a list".
        .route(
            "/client/v4/accounts/{account}/rules/lists",
            get(get_lists).post(create_list),
        )
        // "Get list items", "Create list items", "Update all list items",
        // "Delete list items".
        .route(
            "/client/v4/accounts/{account}/rules/lists/{list}/items",
            get(get_items)
                .post(change_items)
                .put(change_items)
                .delete(change_items),
        )
        // "Get bulk operation status".
        .route(
            "/client/v4/accounts/{account}/rules/lists/bulk_operations/{operation}",
            get(get_operation),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

fn envelope(status: StatusCode, result: Value, info: Option<Value>) -> Response {
    let mut body = json!({ "success": true, "errors": [], "messages": [], "result": result });
    if let Some(info) = info {
        body["result_info"] = info;
    }
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null,
    });
    (status, axum::Json(body)).into_response()
}

/// Every request first: recorded, its token and account checked, and
/// answered with an injected fault when one is queued.
async fn gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return error(StatusCode::BAD_REQUEST, 10000, "unreadable body");
    };
    {
        let mut state = state.lock().expect("fake state");
        if let Some(answer) = check(&mut state, &parts.method, &parts.uri, &parts.headers, &body) {
            return answer;
        }
    }
    next.run(Request::from_parts(parts, body.into())).await
}

fn check(
    state: &mut FakeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    state.requests.push(Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    let bearer = format!("Bearer {}", state.token);
    let account = uri.path().split('/').nth(4).unwrap_or_default();
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str())
        || account != state.account
    {
        return Some(error(StatusCode::FORBIDDEN, 10000, "Authentication error"));
    }
    match state.faults.front() {
        Some(Fault::RateLimited { retry_after }) => {
            let retry_after = *retry_after;
            state.faults.pop_front();
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, 10013, "Rate limited");
            response
                .headers_mut()
                .insert("retry-after", retry_after.to_string().parse().unwrap());
            Some(response)
        }
        Some(Fault::Unavailable) => {
            state.faults.pop_front();
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                10000,
                "Service unavailable",
            ))
        }
        _ => None,
    }
}

async fn get_lists(State(state): State<Shared>) -> Response {
    let state = state.lock().expect("fake state");
    let lists: Vec<Value> = state.lists.iter().map(list_json).collect();
    envelope(StatusCode::OK, Value::Array(lists), None)
}

fn list_json(list: &FakeList) -> Value {
    json!({
        "id": list.id,
        "name": list.name,
        "kind": list.kind,
        "num_items": list.items.len(),
        "num_referencing_filters": 0,
        "description": "",
        "created_on": "2026-12-01T00:00:00Z",
        "modified_on": "2026-12-01T00:00:00Z",
    })
}

async fn create_list(State(state): State<Shared>, body: Bytes) -> Response {
    let mut state = state.lock().expect("fake state");
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 10026, "filter parse error");
    };
    let (Some(name), Some(kind)) = (request["name"].as_str(), request["kind"].as_str()) else {
        return error(StatusCode::BAD_REQUEST, 10001, "name and kind are required");
    };
    if state.lists.iter().any(|l| l.name == name) {
        return error(
            StatusCode::CONFLICT,
            10023,
            "a list with this name already exists",
        );
    }
    let id = state.id();
    let list = FakeList {
        id,
        name: name.to_owned(),
        kind: kind.to_owned(),
        items: Vec::new(),
    };
    let answer = list_json(&list);
    state.lists.push(list);
    envelope(StatusCode::OK, answer, None)
}

/// The value of `key` in a query string.
fn query<'q>(uri: &'q Uri, key: &str) -> Option<&'q str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

async fn get_items(
    State(state): State<Shared>,
    Path((_account, list)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let state = state.lock().expect("fake state");
    let per_page = query(&uri, "per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(25);
    if per_page > 500 {
        return error(
            StatusCode::BAD_REQUEST,
            10001,
            "per_page must be at most 500",
        );
    }
    let page_size = per_page.min(state.page_size);
    // The cursor is opaque to callers; here it is an offset.
    let start = query(&uri, "cursor")
        .and_then(|c| c.strip_prefix("after-"))
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let Some(list) = state.lists.iter().find(|l| l.id == list) else {
        return error(StatusCode::NOT_FOUND, 10000, "list not found");
    };
    let page: Vec<Value> = list
        .items
        .iter()
        .skip(start)
        .take(page_size)
        .map(|i| {
            json!({
                "id": i.id, "ip": i.ip, "comment": i.comment,
                "created_on": "2026-12-01T00:00:00Z", "modified_on": "2026-12-01T00:00:00Z",
            })
        })
        .collect();
    let end = start + page.len();
    let cursors = if end < list.items.len() {
        json!({ "before": format!("after-{start}"), "after": format!("after-{end}") })
    } else {
        json!({ "before": format!("after-{start}") })
    };
    envelope(
        StatusCode::OK,
        Value::Array(page),
        Some(json!({ "cursors": cursors })),
    )
}

async fn change_items(
    State(state): State<Shared>,
    Path((_account, list)): Path<(String, String)>,
    method: Method,
    body: Bytes,
) -> Response {
    let mut state = state.lock().expect("fake state");
    if state.pending() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            10013,
            "another bulk operation is pending",
        );
    }
    if !state.lists.iter().any(|l| l.id == list) {
        return error(StatusCode::NOT_FOUND, 10000, "list not found");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 10026, "the body is not JSON");
    };
    let mut new_items = |value: &Value| -> Option<Vec<FakeItem>> {
        value
            .as_array()?
            .iter()
            .map(|item| {
                Some(FakeItem {
                    id: state.id(),
                    ip: item["ip"].as_str()?.to_owned(),
                    comment: item["comment"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    };
    let change = match method {
        Method::POST => new_items(&request).map(Change::Append),
        Method::PUT => new_items(&request).map(Change::Replace),
        _ => request["items"].as_array().and_then(|items| {
            let ids: Option<Vec<String>> = items
                .iter()
                .map(|i| i["id"].as_str().map(str::to_owned))
                .collect();
            ids.map(Change::Delete)
        }),
    };
    let Some(change) = change else {
        return error(StatusCode::BAD_REQUEST, 10001, "malformed items");
    };
    let id = state.id();
    let error = match state.faults.front() {
        Some(Fault::FailOperation(reason)) => {
            let reason = reason.clone();
            state.faults.pop_front();
            Some(reason)
        }
        _ => None,
    };
    let polls_left = state.pending_polls;
    state.operations.push(Operation {
        id: id.clone(),
        list,
        change: Some(change),
        polls_left,
        status: "pending",
        error,
    });
    envelope(StatusCode::OK, json!({ "operation_id": id }), None)
}

async fn get_operation(
    State(state): State<Shared>,
    Path((_account, operation)): Path<(String, String)>,
) -> Response {
    let mut guard = state.lock().expect("fake state");
    let state = &mut *guard;
    let Some(op) = state.operations.iter_mut().find(|o| o.id == operation) else {
        return error(StatusCode::NOT_FOUND, 10000, "operation not found");
    };
    if op.status == "pending" && op.polls_left > 0 {
        op.polls_left -= 1;
        op.status = if op.polls_left == 0 {
            "running"
        } else {
            "pending"
        };
    } else if matches!(op.status, "pending" | "running") {
        let change = op.change.take().expect("a change until completed");
        let list_id = op.list.clone();
        let failure = op.error.clone().or_else(|| {
            let others: usize = state
                .lists
                .iter()
                .filter(|l| l.id != list_id)
                .map(|l| l.items.len())
                .sum();
            let list = state.lists.iter_mut().find(|l| l.id == list_id)?;
            let mut items = list.items.clone();
            match change {
                Change::Append(new) => items.extend(new),
                Change::Replace(new) => items = new,
                Change::Delete(ids) => items.retain(|i| !ids.contains(&i.id)),
            }
            if let Some(bad) = items.iter().find(|i| !valid_ip_item(&i.ip)) {
                return Some(format!("{} is not a valid IP list item", bad.ip));
            }
            if others + items.len() > state.max_items {
                return Some("the account's list item limit is exceeded".to_owned());
            }
            list.items = items;
            None
        });
        let op = state
            .operations
            .iter_mut()
            .find(|o| o.id == operation)
            .expect("found above");
        (op.status, op.error) = match failure {
            Some(reason) => ("failed", Some(reason)),
            None => ("completed", None),
        };
    }
    let op = state
        .operations
        .iter()
        .find(|o| o.id == operation)
        .expect("found above");
    let mut result = json!({ "id": op.id, "status": op.status });
    if let Some(error) = &op.error {
        result["error"] = json!(error);
    }
    if op.status == "completed" {
        result["completed"] = json!("2026-12-01T00:00:00Z");
    }
    envelope(StatusCode::OK, result, None)
}

/// An IP list item: an IPv4 address, an IPv4 range /8–/32, or an IPv6
/// range /4–/64 (the custom lists page).
fn valid_ip_item(ip: &str) -> bool {
    match ip.split_once('/') {
        None => ip.parse::<std::net::Ipv4Addr>().is_ok(),
        Some((address, prefix)) => match (address.parse::<std::net::IpAddr>(), prefix.parse()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(prefix)) => (8..=32).contains(&prefix),
            (Ok(std::net::IpAddr::V6(_)), Ok(prefix)) => (4..=64).contains(&prefix),
            _ => false,
        },
    }
}
