//! The Redis backend against a real Redis on 127.0.0.1:6379 (which
//! `scripts/test.sh` starts when none is running), and against Redis servers
//! and a delaying proxy that the tests start themselves.

use crate::common;
use crate::servers::{RedisServer, free_port};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate_ratelimit::{
    Backend, FALLBACK_TOTAL, REQUESTS_TOTAL, RateLimitHandle, RedisSettings, Tenant,
    TenantRateLimitLayer,
};
use floodgate_rules::policy::Quotas;
use http::{HeaderMap, Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A tenant id no earlier run has used: Redis outlives test runs.
pub(crate) fn fresh_tenant(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn redis_at(url: &str, timeout: Duration, expected_instances: u32) -> Backend {
    Backend::Redis(RedisSettings {
        timeout,
        expected_instances: NonZeroU32::new(expected_instances).unwrap(),
        ..RedisSettings::node(url)
    })
}

pub(crate) type Limited = floodgate_ratelimit::TenantRateLimit<
    tower::util::ServiceFn<fn(Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>>>,
    floodgate_ratelimit::TenantExtension,
    governor::clock::QuantaClock,
>;

pub(crate) fn ok(_: Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>> {
    std::future::ready(Ok(Response::new(())))
}

pub(crate) fn service(quotas: &Quotas, backend: Backend) -> (Limited, RateLimitHandle) {
    // Fields on every response: the tests read Redis's state from them.
    let layer = TenantRateLimitLayer::builder(quotas)
        .backend(backend)
        .headers(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = tower::service_fn(ok as fn(_) -> _);
    (layer.layer(inner), handle)
}

/// [`service`], once a first connection has been made or refused.
pub(crate) async fn connected_service(
    quotas: &Quotas,
    backend: Backend,
) -> Result<(Limited, RateLimitHandle), floodgate_ratelimit::BuildError> {
    let layer = TenantRateLimitLayer::builder(quotas)
        .backend(backend)
        .headers(true)
        .connect()
        .await?;
    let handle = layer.handle();
    let inner = tower::service_fn(ok as fn(_) -> _);
    Ok((layer.layer(inner), handle))
}

pub(crate) async fn send(service: &mut Limited, tenant: &str) -> (StatusCode, HeaderMap) {
    let mut request = Request::new(());
    request.extensions_mut().insert(Tenant::new(tenant));
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    (response.status(), response.headers().clone())
}

pub(crate) async fn admitted(service: &mut Limited, tenant: &str, requests: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..requests {
        if send(service, tenant).await.0 == StatusCode::OK {
            admitted += 1;
        }
    }
    admitted
}

pub(crate) async fn wait_until_connected(handle: &RateLimitHandle, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.redis_connected() != Some(connected) {
        assert!(
            Instant::now() < deadline,
            "the backend never became connected={connected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 50 a second with bursts of 10.
const SHARED_PLAN: &str = r#"
[quotas]
default_plan = "shared"
plans = [{ name = "shared", limits = [{ requests = 50, per_seconds = 1, burst = 10 }] }]
"#;

/// Four instances hammer one tenant for `seconds`; returns what they
/// admitted in all, and the time it took.
async fn four_instances(backend: impl Fn() -> Backend, tenant: &str, seconds: f64) -> (usize, f64) {
    let quotas = common::quotas(SHARED_PLAN);
    let mut instances = Vec::new();
    for _ in 0..4 {
        let (service, handle) = service(&quotas, backend());
        if handle.redis_connected().is_some() {
            wait_until_connected(&handle, true).await;
        }
        instances.push(service);
    }
    let started = Instant::now();
    let tasks: Vec<_> = instances
        .into_iter()
        .map(|mut service| {
            let tenant = tenant.to_owned();
            tokio::spawn(async move {
                let mut admitted = 0;
                while started.elapsed().as_secs_f64() < seconds {
                    if send(&mut service, &tenant).await.0 == StatusCode::OK {
                        admitted += 1;
                    }
                    tokio::task::yield_now().await;
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    (total, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_share_one_limit_through_redis_and_admit_four_times_without() {
    let budget = Duration::from_millis(250);
    let tenant = fresh_tenant("shared");
    let (shared, elapsed) = four_instances(|| redis_at(REDIS, budget, 4), &tenant, 2.0).await;
    // GCRA: the burst, plus one per 20 ms of the time the test ran.
    let bound = 10 + (50.0 * elapsed).ceil() as usize;
    assert!(shared <= bound, "admitted {shared}, GCRA allows {bound}");
    assert!(
        shared * 10 >= bound * 8,
        "admitted {shared}: the limit, not far less ({bound})"
    );

    let (local, elapsed) = four_instances(|| Backend::Local, &fresh_tenant("local"), 2.0).await;
    let local_bound = 10 + (50.0 * elapsed).ceil() as usize;
    assert!(
        local > 3 * local_bound,
        "four local limiters admit about 4× one limit: {local} vs {local_bound}"
    );
    println!(
        "through Redis: {shared} (bound {bound}); local only: {local} (one limit {local_bound})"
    );
}

#[tokio::test]
async fn plans_overrides_headers_and_reload_work_as_with_the_local_backend() {
    let tenant = fresh_tenant("plain");
    let vip = fresh_tenant("vip");
    let text = format!(
        r#"
[quotas]
default_plan = "free"
plans = [
  {{ name = "free", limits = [{{ requests = 2, per_seconds = 60 }}] }},
  {{ name = "big", limits = [{{ requests = 100, per_seconds = 60 }}] }},
]

[[quotas.overrides]]
tenant = "{vip}"
plan = "big"
reason = "test"
owner = "test"
expires = 2099-01-01
"#
    );
    let (mut service, handle) = service(
        &common::quotas(&text),
        redis_at(REDIS, Duration::from_millis(250), 1),
    );
    wait_until_connected(&handle, true).await;

    let (status, headers) = send(&mut service, &tenant).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["ratelimit"], "\"free\";r=1;t=30");
    assert_eq!(send(&mut service, &tenant).await.0, StatusCode::OK);
    let (status, headers) = send(&mut service, &tenant).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(
        admitted(&mut service, &vip, 20).await,
        20,
        "the override's plan applies"
    );

    handle.reload(&common::quotas(
        &text.replace("requests = 2,", "requests = 5,"),
    ));
    assert_eq!(
        admitted(&mut service, &tenant, 10).await,
        5,
        "new limits start afresh in Redis too"
    );
}

/// The fallback counter by reason; the debugging recorder hands out
/// increments since the last snapshot, so this adds them up.
pub(crate) struct Fallbacks {
    snapshotter: Snapshotter,
    by_reason: BTreeMap<String, u64>,
}

impl Fallbacks {
    pub(crate) fn new(recorder: &DebuggingRecorder) -> Fallbacks {
        Fallbacks {
            snapshotter: recorder.snapshotter(),
            by_reason: BTreeMap::new(),
        }
    }

    /// Checks decided locally so far, by reason.
    pub(crate) fn by_reason(&mut self) -> &BTreeMap<String, u64> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (key, DebugValue::Counter(count)) = (key.key(), value) else {
                continue;
            };
            if key.name() != FALLBACK_TOTAL || count == 0 {
                continue;
            }
            let reason = key
                .labels()
                .find(|l| l.key() == "reason")
                .expect("a reason label");
            *self.by_reason.entry(reason.value().to_owned()).or_default() += count;
        }
        &self.by_reason
    }

    pub(crate) fn total(&mut self) -> u64 {
        self.by_reason().values().sum()
    }
}

#[tokio::test]
async fn through_redis_the_default_sends_the_fields_near_the_limit_and_on_refusals() {
    let quotas = common::quotas(EIGHT_A_MINUTE);
    let layer = TenantRateLimitLayer::builder(&quotas)
        .backend(redis_at(REDIS, Duration::from_millis(250), 1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service: Limited = layer.layer(tower::service_fn(ok as fn(_) -> _));
    wait_until_connected(&handle, true).await;
    let tenant = fresh_tenant("near");

    // Eight a minute: 10% of the burst is under one request, so only the
    // request that spends the burst carries the fields.
    for _ in 0..7 {
        let (status, headers) = send(&mut service, &tenant).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("ratelimit"), "{headers:?}");
    }
    let (status, headers) = send(&mut service, &tenant).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["ratelimit-policy"], "\"free\";q=8;w=60");
    assert_eq!(headers["ratelimit"], "\"free\";r=0;t=60");
    let (status, headers) = send(&mut service, &tenant).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["ratelimit"], "\"free\";r=0;t=8");
    assert_eq!(
        handle.redis_connected(),
        Some(true),
        "Redis decided throughout"
    );
}

/// 8 a minute; with 4 instances expected, 2 a minute each while Redis is out.
const EIGHT_A_MINUTE: &str = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 8, per_seconds = 60 }] }]
"#;

#[tokio::test]
async fn with_redis_down_requests_flow_under_fallback_limits_until_it_is_back() {
    let port = free_port();
    let recorder = DebuggingRecorder::new();
    let mut fallbacks = Fallbacks::new(&recorder);
    let (mut service, handle) = metrics::with_local_recorder(&recorder, || {
        let url = format!("redis://127.0.0.1:{port}");
        service(
            &common::quotas(EIGHT_A_MINUTE),
            redis_at(&url, Duration::from_millis(250), 4),
        )
    });
    assert_eq!(handle.redis_connected(), Some(false));
    let tenant = fresh_tenant("outage");
    assert_eq!(
        admitted(&mut service, &tenant, 10).await,
        2,
        "a quarter of the quota"
    );
    assert_eq!(fallbacks.total(), 10);
    let reasons: Vec<&String> = fallbacks.by_reason().keys().collect();
    assert!(
        reasons
            .iter()
            .all(|r| ["connecting", "refused"].contains(&r.as_str())),
        "counted as not connected: {reasons:?}"
    );

    let redis = RedisServer::start(port);
    wait_until_connected(&handle, true).await;
    let other = fresh_tenant("recovered");
    assert_eq!(
        admitted(&mut service, &other, 10).await,
        8,
        "Redis decides again"
    );
    assert_eq!(fallbacks.total(), 10, "no fallback once reconnected");

    // Redis dies mid-traffic: the next check fails over, and so do the rest.
    drop(redis);
    let after = fresh_tenant("after");
    assert_eq!(admitted(&mut service, &after, 10).await, 2);
    assert_eq!(fallbacks.total(), 20);
    assert_eq!(handle.redis_connected(), Some(false));
}

/// Forwards loopback TCP to Redis, holding each chunk for `delay_ms`.
async fn delaying_proxy(target: SocketAddr, delay_ms: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, delay_ms.clone()));
            tokio::spawn(pump(server_read, client_write, delay_ms.clone()));
        }
    });
    addr
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buffer = vec![0; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn a_slow_redis_trips_the_budget_and_the_instance_decides_locally() {
    let delay = Arc::new(AtomicU64::new(0));
    let proxy = delaying_proxy("127.0.0.1:6379".parse().unwrap(), delay.clone()).await;
    let recorder = DebuggingRecorder::new();
    let mut fallbacks = Fallbacks::new(&recorder);
    let (mut service, handle) = metrics::with_local_recorder(&recorder, || {
        let url = format!("redis://{proxy}");
        service(
            &common::quotas(EIGHT_A_MINUTE),
            redis_at(&url, Duration::from_millis(20), 4),
        )
    });
    wait_until_connected(&handle, true).await;
    let tenant = fresh_tenant("slow");
    assert_eq!(send(&mut service, &tenant).await.0, StatusCode::OK);
    assert_eq!(fallbacks.total(), 0);

    delay.store(200, Ordering::SeqCst);
    let (status, _) = send(&mut service, &tenant).await;
    assert_eq!(status, StatusCode::OK, "decided locally, not failed");
    assert_eq!(fallbacks.total(), 1, "the 20 ms budget tripped");
    assert_eq!(handle.redis_connected(), Some(false));
    // While Redis stays slow, checks go straight to the local limiter.
    admitted(&mut service, &tenant, 5).await;
    assert_eq!(fallbacks.total(), 6);
    assert_eq!(
        fallbacks.by_reason(),
        &BTreeMap::from([("timeout".to_owned(), 6)]),
        "each counted as a timeout: the reconnect's PING times out too"
    );
    assert_eq!(handle.redis_connected(), Some(false));

    delay.store(0, Ordering::SeqCst);
    wait_until_connected(&handle, true).await;
    let (status, headers) = send(&mut service, &fresh_tenant("fast-again")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["ratelimit"], "\"free\";r=7;t=8",
        "Redis decides again"
    );
    assert_eq!(fallbacks.total(), 6);
}

/// A generous plan, and an export class of 6 units an hour at 2 a request.
const EXPORT_CLASS: &str = r#"
[quotas]
default_plan = "free"

[[quotas.plans]]
name = "free"
limits = [{ requests = 100, per_seconds = 3600 }]
classes = { exports = [{ requests = 6, per_seconds = 3600 }] }

[[quotas.routes]]
class = "exports"
method = "POST"
path = "/v1/exports"
cost = 2
"#;

async fn send_to(
    service: &mut Limited,
    tenant: &str,
    method: &str,
    path: &str,
) -> (StatusCode, HeaderMap) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    request.extensions_mut().insert(Tenant::new(tenant));
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test]
async fn two_instances_share_a_class_budget_and_its_cost_through_redis() {
    let quotas = common::quotas(EXPORT_CLASS);
    let backend = || redis_at(REDIS, Duration::from_millis(500), 2);
    let (mut first, first_handle) = service(&quotas, backend());
    let (mut second, second_handle) = service(&quotas, backend());
    wait_until_connected(&first_handle, true).await;
    wait_until_connected(&second_handle, true).await;
    let tenant = fresh_tenant("exporter");
    let mut statuses = Vec::new();
    for i in 0..6 {
        let instance = if i % 2 == 0 { &mut first } else { &mut second };
        statuses.push(send_to(instance, &tenant, "POST", "/v1/exports").await.0);
    }
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(
        admitted, 3,
        "6 units at 2 an export, across both: {statuses:?}"
    );
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 3]);

    // The refusals charged nothing: the plan still admits plain requests,
    // and the plan's state counts the three exports at 2 units each.
    let (status, headers) = send_to(&mut first, &tenant, "GET", "/status").await;
    assert_eq!(status, StatusCode::OK);
    // An hour's 100 refill one every 36 s: none during the test.
    assert_eq!(headers["ratelimit"], "\"free\";r=93;t=252");
    let (status, headers) = send_to(&mut second, &tenant, "POST", "/v1/exports").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        headers["ratelimit-policy"],
        "\"free\";q=100;w=3600, \"free-exports\";q=6;w=3600"
    );
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .contains("\"free-exports\";r=0;t="),
        "{headers:?}"
    );

    // The class's state is a key of its own, in the tenant's Cluster slot.
    let client = redis::Client::open(REDIS).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let class_key = format!("floodgate:{{t:{tenant}}}:exports");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&class_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(exists, "{class_key}");
}

#[tokio::test]
async fn with_redis_down_a_class_budget_falls_back_to_its_share() {
    // Nothing listens on the port: every check is decided locally, at
    // quota / 2 for each limit, the class's included.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let (mut service, handle) = service(
        &common::quotas(EXPORT_CLASS),
        redis_at(&url, Duration::from_millis(50), 2),
    );
    assert_eq!(handle.redis_connected(), Some(false));
    let tenant = fresh_tenant("exporter-outage");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            send_to(&mut service, &tenant, "POST", "/v1/exports")
                .await
                .0,
        );
    }
    // Half of 6 units is 3: one export of 2 fits, the second does not.
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, _) = send_to(&mut service, &tenant, "GET", "/status").await;
    assert_eq!(status, StatusCode::OK, "the plan's share is far from spent");
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_up_does_not_stop_the_service() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let quotas = common::quotas(EIGHT_A_MINUTE);
    let (mut service, handle) =
        connected_service(&quotas, redis_at(&url, Duration::from_millis(250), 4))
            .await
            .expect("a Redis that is down is no reason to refuse to start");
    assert_eq!(handle.redis_connected(), Some(false));
    let tenant = fresh_tenant("down-at-start");
    assert_eq!(
        admitted(&mut service, &tenant, 10).await,
        2,
        "a quarter of the quota"
    );
}

/// Every `floodgate_…` series name a Grafana dashboard's panels query.
fn dashboard_series(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("floodgate_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// Every series the middleware's Grafana dashboard
/// (infra/dashboards/ratelimit.json) queries is one the layer serves once
/// it has decided requests: by plan and outcome, and the Redis backend's
/// fallbacks (Redis is down here, so every check falls back).
#[tokio::test]
async fn the_rate_limit_dashboard_queries_only_series_the_layer_serves() {
    let port = free_port();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (mut service, _handle) = metrics::with_local_recorder(&recorder, || {
        let url = format!("redis://127.0.0.1:{port}");
        service(
            &common::quotas(EIGHT_A_MINUTE),
            redis_at(&url, Duration::from_millis(250), 4),
        )
    });
    admitted(&mut service, &fresh_tenant("dashboard"), 3).await;
    let served: std::collections::BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| key.key().name().to_owned())
        .collect();
    let dashboard =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/dashboards/ratelimit.json");
    let queried = dashboard_series(&dashboard);
    assert_eq!(
        queried,
        [REQUESTS_TOTAL, FALLBACK_TOTAL]
            .map(str::to_owned)
            .into_iter()
            .collect(),
        "the dashboard draws both of the layer's series"
    );
    for name in &queried {
        assert!(served.contains(name), "{name} is not served: {served:?}");
    }
}
