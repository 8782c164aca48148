//! The layer in a real axum server on 127.0.0.1, driven by a real HTTP client.

use crate::common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::routing::get;
use axum::{Router, ServiceExt};
use floodgate_ratelimit::{
    ClientIp, ForwardedHeader, MissingKey, TenantHeader, TenantRateLimitLayer,
};
use http::header::HeaderName;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const TWO_A_MINUTE: &str = r#"
[quotas]
default_plan = "free"
anonymous_plan = "anonymous"
plans = [
  { name = "free", limits = [{ requests = 2, per_seconds = 60 }] },
  { name = "anonymous", limits = [{ requests = 2, per_seconds = 60 }] },
]
"#;

const GENEROUS: &str = r#"
[quotas]
default_plan = "free"
anonymous_plan = "anonymous"
plans = [
  { name = "free", limits = [{ requests = 1000, per_seconds = 1 }] },
  { name = "anonymous", limits = [{ requests = 2, per_seconds = 60 }] },
]
"#;

fn tenant_header() -> TenantHeader {
    TenantHeader::new(HeaderName::from_static("x-tenant-id"))
}

/// Serves `app` on an ephemeral loopback port, with peer addresses recorded.
async fn serve<S>(app: S) -> SocketAddr
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response>
        + Clone
        + Send
        + Sync
        + 'static,
    S: tower::Service<axum::extract::Request, Error = std::convert::Infallible>,
    S::Future: Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
        SocketAddr,
    >(app);
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    addr
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn get_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(format!("http://{addr}/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    fetch(request.body(Empty::new()).unwrap()).await
}

/// Sends `request` with a fresh client and reads the whole answer.
async fn fetch(request: Request<Empty<bytes::Bytes>>) -> Answer {
    let client: Client<HttpConnector, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.headers.get(name).unwrap().to_str().unwrap()
}

#[tokio::test]
async fn the_third_request_gets_429_with_retry_after_ratelimit_fields_and_a_problem() {
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let tenant = [("x-tenant-id", "acme")];

    // By default the fields come once a limit runs low: not with half the
    // burst left, but with none.
    let first = get_with(addr, &tenant).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "ok");
    assert!(!first.headers.contains_key("ratelimit"));
    assert!(!first.headers.contains_key("ratelimit-policy"));
    let second = get_with(addr, &tenant).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(header(&second, "ratelimit-policy"), "\"free\";q=2;w=60");
    assert_eq!(header(&second, "ratelimit"), "\"free\";r=0;t=60");

    let refused = get_with(addr, &tenant).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert_eq!(retry_after, 30, "one request frees up every 30 s");
    assert_eq!(header(&refused, "ratelimit"), "\"free\";r=0;t=30");
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["title"], "Too Many Requests");
    assert_eq!(problem["plan"], "free");
    assert_eq!(problem["retry_after_seconds"], 30);

    let other = get_with(addr, &[("x-tenant-id", "globex")]).await;
    assert_eq!(other.status, StatusCode::OK, "tenants don't share limits");
}

#[tokio::test]
async fn with_its_body_type_kept_the_wrapped_router_goes_to_axum_serve_as_it_is() {
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .build()
        .unwrap()
        .keep_body_type();
    // No conversion layer: the responses are axum's own.
    let addr = serve(tower::ServiceBuilder::new().layer(layer).service(app())).await;
    let tenant = [("x-tenant-id", "acme")];
    // The second request spends the burst, so it carries the fields.
    for fields in [false, true] {
        let admitted = get_with(addr, &tenant).await;
        assert_eq!(
            (admitted.status, admitted.body.as_str()),
            (StatusCode::OK, "ok")
        );
        assert_eq!(admitted.headers.contains_key("ratelimit"), fields);
    }
    let refused = get_with(addr, &tenant).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    assert_eq!(
        header(&refused, "content-length"),
        refused.body.len().to_string()
    );
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["plan"], "free");
}

#[tokio::test]
async fn headers_can_be_switched_off_and_missing_keys_refused() {
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .headers(false)
        .missing_key(MissingKey::Unauthorized)
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let ok = get_with(addr, &[("x-tenant-id", "acme")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.headers.get("ratelimit").is_none());
    let anonymous = get_with(addr, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&anonymous, "content-type"),
        "application/problem+json"
    );
}

#[tokio::test]
async fn a_spoofed_leftmost_forwarded_for_does_not_escape_the_limit() {
    // The test client's 127.0.0.1 plays the trusted load balancer.
    let trusted = ["127.0.0.1/32".parse().unwrap()];
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .client_ip(ClientIp::behind_proxies(
            &trusted,
            ForwardedHeader::XForwardedFor,
        ))
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let mut statuses = Vec::new();
    for spoof in 1..=4 {
        let xff = format!("6.6.6.{spoof}, 203.0.113.9");
        let answer = get_with(addr, &[("x-forwarded-for", &xff)]).await;
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "charged to 203.0.113.9 every time"
    );
    let other = get_with(addr, &[("x-forwarded-for", "6.6.6.6, 203.0.113.10")]).await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "a different real client has its own limit"
    );
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_for_is_ignored() {
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .build()
        .unwrap();
    let addr = serve(app().layer(layer)).await;
    let mut statuses = Vec::new();
    for client in 1..=3 {
        let xff = format!("203.0.113.{client}");
        statuses.push(
            get_with(addr, &[("x-forwarded-for", &xff)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "all charged to the peer 127.0.0.1"
    );
}

#[tokio::test]
async fn a_reload_mid_traffic_applies_new_limits_and_keeps_unchanged_state() {
    // Fields on every response, to read the plan the last request met.
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .headers(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;

    // An anonymous client exhausts its plan, which the reload leaves alone.
    for _ in 0..2 {
        assert_eq!(get_with(addr, &[]).await.status, StatusCode::OK);
    }
    // Traffic for acme runs throughout the reload.
    let reloaded = Arc::new(AtomicBool::new(false));
    let ok_after_reload = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (reloaded, ok_after_reload) = (reloaded.clone(), ok_after_reload.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..60 {
                let answer = get_with(addr, &[("x-tenant-id", "acme")]).await;
                if reloaded.load(Ordering::SeqCst) && answer.status == StatusCode::OK {
                    ok_after_reload.fetch_add(1, Ordering::SeqCst);
                }
                statuses.push(answer.status);
            }
            statuses
        })
    };
    while get_with(addr, &[("x-tenant-id", "acme")]).await.status == StatusCode::OK {}
    handle.reload(&common::quotas(GENEROUS));
    reloaded.store(true, Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(
        ok_after_reload.load(Ordering::SeqCst) > 0,
        "the new plan admits acme"
    );
    let last = get_with(addr, &[("x-tenant-id", "acme")]).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(header(&last, "ratelimit-policy"), "\"free\";q=1000;w=1");
    assert_eq!(
        get_with(addr, &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the anonymous plan did not change, so its state survived the reload"
    );
}

#[tokio::test]
async fn a_key_spray_stays_under_the_cap_and_shares_one_budget() {
    let layer = TenantRateLimitLayer::builder(&common::quotas(TWO_A_MINUTE))
        .key(tenant_header())
        .max_keys(NonZeroUsize::new(1_000).unwrap())
        .build()
        .unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let mut admitted = 0;
    let sprayed = 5_000;
    for i in 0..sprayed {
        let tenant = format!("spray-{i}");
        if get_with(addr, &[("x-tenant-id", &tenant)]).await.status == StatusCode::OK {
            admitted += 1;
        }
    }
    assert!(handle.tracked_keys() <= handle.max_keys());
    assert_eq!(handle.max_keys(), 1_000);
    // Every tracked key's first request, plus the overflow state's burst of 2.
    assert_eq!(
        admitted,
        handle.tracked_keys() + 2,
        "{admitted} of {sprayed} admitted"
    );
}

/// Exports: 2 units an hour, by the path table. Reports: 4 units an hour,
/// by the class the service sets from axum's matched route.
const CLASSED: &str = r#"
[quotas]
default_plan = "free"

[[quotas.plans]]
name = "free"
limits = [{ requests = 100, per_seconds = 3600 }]
classes = { exports = [{ requests = 2, per_seconds = 3600 }], reports = [{ requests = 4, per_seconds = 3600 }] }

[[quotas.routes]]
class = "exports"
method = "POST"
path = "/v1/exports/*"
"#;

/// The service's own middleware: a report costs 2, whatever its id.
async fn classify_by_route(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>();
    if route.is_some_and(|route| route.as_str() == "/v1/reports/{id}") {
        let class = floodgate_ratelimit::RouteClass::named("reports").cost(2);
        request.extensions_mut().insert(class);
    }
    next.run(request).await
}

async fn send_with(addr: SocketAddr, method: &str, path: &str, tenant: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-tenant-id", tenant)
        .body(Empty::new())
        .unwrap();
    fetch(request).await
}

#[tokio::test]
async fn route_classes_come_from_the_path_table_or_the_matched_route() {
    use axum::routing::post;
    let layer = TenantRateLimitLayer::builder(&common::quotas(CLASSED))
        .key(tenant_header())
        .headers(true)
        .build()
        .unwrap()
        .keep_body_type();
    // Router::layer runs the rate limit inside routing, where the matched
    // route is known; the classifying middleware, added after it, runs first.
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/v1/exports/{id}", post(|| async { "exported" }))
        .route("/v1/reports/{id}", get(|| async { "report" }))
        .layer(layer)
        .layer(axum::middleware::from_fn(classify_by_route));
    let addr = serve(app).await;

    let exports: Vec<StatusCode> = statuses_of(addr, "POST", "/v1/exports/", "acme", 3).await;
    assert_eq!(
        exports,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let reports = statuses_of(addr, "GET", "/v1/reports/", "acme", 3).await;
    assert_eq!(
        reports,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "4 units at 2 a report"
    );
    let refused = send_with(addr, "GET", "/v1/reports/9", "acme").await;
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(
        (problem["plan"].as_str(), problem["class"].as_str()),
        (Some("free"), Some("reports"))
    );
    // The plan itself is far from spent; other tenants have their own classes.
    assert_eq!(
        send_with(addr, "GET", "/", "acme").await.status,
        StatusCode::OK
    );
    let other = send_with(addr, "POST", "/v1/exports/1", "globex").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(
        header(&other, "ratelimit-policy"),
        "\"free\";q=100;w=3600, \"free-exports\";q=2;w=3600"
    );
}

/// Sends `count` requests to `prefix` followed by their number.
async fn statuses_of(
    addr: SocketAddr,
    method: &str,
    prefix: &str,
    tenant: &str,
    count: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for i in 0..count {
        let answer = send_with(addr, method, &format!("{prefix}{i}"), tenant).await;
        statuses.push(answer.status);
    }
    statuses
}
