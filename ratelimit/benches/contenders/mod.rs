//! The services both layer benches compare: a no-op service alone, wrapped
//! in Floodgate's layer, and wrapped in tower_governor with the same quota,
//! all keyed by peer IP (the key both layers support as is).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::ConnectInfo;
use floodgate_ratelimit::{ClientIp, DEFAULT_MAX_KEYS, HeaderMode, TenantRateLimitLayer};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;

/// What the benchmark's quota, which no request ever reaches, does to a key
/// between its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// One request a minute, bursts of 10⁸: each request keeps its key busy
    /// for another minute, so both layers keep every key's state for the
    /// whole run. This is the known tenant of the goal.
    Busy,
    /// One request a nanosecond: a key is idle a nanosecond after each
    /// request. Floodgate's store drops idle keys as it sweeps and takes
    /// them back on their next request; governor keeps every key forever.
    IdleAtOnce,
}

impl Keys {
    /// The `[quotas]` of this quota.
    fn policy(self) -> &'static str {
        match self {
            Keys::Busy => {
                r#"
[quotas]
default_plan = "bench"
plans = [{ name = "bench", limits = [{ requests = 1, per_seconds = 60, burst = 100000000 }] }]
"#
            }
            Keys::IdleAtOnce => {
                r#"
[quotas]
default_plan = "bench"
plans = [{ name = "bench", limits = [{ requests = 1000000000, per_seconds = 1 }] }]
"#
            }
        }
    }

    /// The name the benches print.
    pub fn name(self) -> &'static str {
        match self {
            Keys::Busy => "busy keys",
            Keys::IdleAtOnce => "keys idle at once",
        }
    }
}

/// The service every contender wraps: answers at once, with an empty body.
pub fn noop()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<Body>| std::future::ready(Ok(Response::new(Body::empty()))))
}

/// Floodgate's layer around [`noop`], keyed by peer IP, sending the
/// RateLimit header fields as `headers` says, with room for `clients` keys.
pub fn floodgate(
    clients: usize,
    headers: HeaderMode,
    keys: Keys,
) -> impl Service<Request<Body>, Response = Response<impl Sized>> {
    floodgate_on(keys.policy(), max_keys(clients), headers)
}

/// Floodgate's layer on the `[quotas]` of `policy` around [`noop`], keyed
/// by peer IP.
fn floodgate_on(
    policy: &str,
    max_keys: NonZeroUsize,
    headers: HeaderMode,
) -> impl Service<Request<Body>, Response = Response<impl Sized + use<>>> + use<> {
    let layer = TenantRateLimitLayer::builder(&crate::common::quotas(policy))
        .key(ClientIp::peer_only())
        .max_keys(max_keys)
        .headers(headers)
        .build()
        .unwrap();
    layer.layer(noop())
}

/// [`floodgate`] with the busy quota, on a policy with `routes` route
/// patterns of which every request (to `/`) matches only the last, whose
/// class has a limit of its own as loose as the plan's.
pub fn floodgate_classes(
    clients: usize,
    routes: usize,
) -> impl Service<Request<Body>, Response = Response<impl Sized>> {
    let mut policy = String::from(
        r#"
[quotas]
default_plan = "bench"
plans = [{ name = "bench", limits = [{ requests = 1, per_seconds = 60, burst = 100000000 }], classes = { all = [{ requests = 1, per_seconds = 60, burst = 100000000 }] } }]
"#,
    );
    for i in 1..routes {
        let route = format!(
            "\n[[quotas.routes]]\nclass = \"other\"\nmethod = \"POST\"\npath = \"/v1/resource-{i}/*\"\n"
        );
        policy.push_str(&route);
    }
    policy.push_str("\n[[quotas.routes]]\nclass = \"all\"\npath = \"/**\"\n");
    // Each key holds a slot for its plan and one for its class.
    floodgate_on(&policy, max_keys(clients * 2), HeaderMode::default())
}

/// tower_governor around [`noop`] with the same quota, keyed by peer IP.
pub fn tower_governor(keys: Keys) -> impl Service<Request<Body>, Response = Response<Body>> {
    let mut config = GovernorConfigBuilder::default();
    match keys {
        Keys::Busy => config.per_second(60).burst_size(100_000_000),
        Keys::IdleAtOnce => config.per_nanosecond(1).burst_size(1_000_000_000),
    };
    let config = config.key_extractor(PeerIpKeyExtractor).finish().unwrap();
    GovernorLayer::new(Arc::new(config)).layer(noop())
}

/// The default cap, or room for every client with headroom for the spread
/// over shards.
fn max_keys(clients: usize) -> NonZeroUsize {
    DEFAULT_MAX_KEYS.max(NonZeroUsize::new(clients * 2).unwrap())
}

/// The address of client number `i`.
pub fn client(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 + i as u32);
    SocketAddr::new(IpAddr::V4(ip), 443)
}

/// A request from `addr`, as axum's server would hand it over.
pub fn request(addr: SocketAddr) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

/// Calls and polls once: every service here answers at once. Never inlined,
/// so `scripts/bench-instructions.sh` can count what one call costs.
#[inline(never)]
pub fn call<S, B>(service: &mut S, request: Request<Body>) -> Response<B>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    let mut future = std::pin::pin!(service.call(request));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(response)) => response,
        _ => panic!("a no-op service answers at once"),
    }
}

/// Sends one request from each of `clients` clients, so every key exists.
pub fn warm<S, B>(service: &mut S, clients: usize)
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    for i in 0..clients {
        let response = call(service, request(client(i)));
        assert!(response.status().is_success(), "refused a warm-up request");
    }
}
