//! Per-request cost of the layer around a no-op service, next to
//! tower_governor with the same quota and keys, and governor's own
//! `check_key`, with 1, 10k and 1M distinct clients (keyed by peer IP, the
//! key both layers support as is).
//!
//! ```text
//! cargo bench -p floodgate-ratelimit --bench layer
//! ```

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use floodgate_ratelimit::{ClientIp, DEFAULT_MAX_KEYS, TenantRateLimitLayer};
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;

/// A limit no benchmark reaches: one request per nanosecond, bursts of 10⁹.
const POLICY: &str = r#"
[quotas]
default_plan = "bench"
plans = [{ name = "bench", limits = [{ requests = 1000000000, per_seconds = 1 }] }]
"#;

fn noop() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<Body>| std::future::ready(Ok(Response::new(Body::empty()))))
}

fn client(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 + i as u32);
    SocketAddr::new(IpAddr::V4(ip), 443)
}

fn request(addr: SocketAddr) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

/// Calls and polls once: every service here answers at once.
fn call<S, B>(service: &mut S, request: Request<Body>) -> Response<B>
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

/// Measures `service` over `clients` keys, after touching each key once.
fn measure<S, B>(c: &mut Criterion, group: &str, name: &str, clients: usize, mut service: S)
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    let (mut next, mut warm) = (0usize, false);
    c.benchmark_group(group)
        .bench_function(BenchmarkId::new(name, clients), |b| {
            // Warm up inside, so a filtered-out benchmark costs nothing.
            if !warm {
                for i in 0..clients {
                    let response = call(&mut service, request(client(i)));
                    assert!(response.status().is_success(), "{name} refused a warm-up");
                }
                warm = true;
            }
            b.iter_batched(
                || {
                    next = (next + 7_919) % clients;
                    request(client(next))
                },
                |request| black_box(call(&mut service, request).status()),
                BatchSize::NumIterations(256),
            )
        });
}

/// The default cap, or room for every client with headroom for the spread
/// over shards.
fn max_keys(clients: usize) -> NonZeroUsize {
    DEFAULT_MAX_KEYS.max(NonZeroUsize::new(clients * 2).unwrap())
}

fn layers(c: &mut Criterion) {
    let quotas = common::quotas(POLICY);
    for clients in [1, 10_000, 1_000_000] {
        let group = format!("layer/{clients}");
        measure(c, &group, "no_layer", clients, noop());

        let ours = TenantRateLimitLayer::builder(&quotas)
            .key(ClientIp::peer_only())
            .max_keys(max_keys(clients))
            .headers(false)
            .build()
            .unwrap();
        measure(c, &group, "floodgate", clients, ours.layer(noop()));

        let with_headers = TenantRateLimitLayer::builder(&quotas)
            .key(ClientIp::peer_only())
            .max_keys(max_keys(clients))
            .build()
            .unwrap();
        measure(
            c,
            &group,
            "floodgate_headers",
            clients,
            with_headers.layer(noop()),
        );

        let config = GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor(PeerIpKeyExtractor)
            .finish()
            .unwrap();
        let theirs = GovernorLayer::new(Arc::new(config));
        measure(c, &group, "tower_governor", clients, theirs.layer(noop()));

        // The anchor: governor's keyed check alone, no tower, no key extraction.
        let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
        let limiter = RateLimiter::<IpAddr, _, _>::dashmap(quota);
        let (mut next, mut warm) = (0usize, false);
        c.benchmark_group(&group).bench_function(
            BenchmarkId::new("governor_check_key", clients),
            |b| {
                if !warm {
                    for i in 0..clients {
                        limiter.check_key(&client(i).ip()).unwrap();
                    }
                    warm = true;
                }
                b.iter(|| {
                    next = (next + 7_919) % clients;
                    black_box(limiter.check_key(&client(next).ip()))
                })
            },
        );
    }
}

/// Every key stays busy for a day after one request.
const BUSY_FOR_A_DAY: &str = r#"
[quotas]
default_plan = "daily"
plans = [{ name = "daily", limits = [{ requests = 1, per_seconds = 86400 }] }]
"#;

/// A full sweep over 1M busy keys (nothing to evict, so every key is
/// visited): the request path only ever sweeps one shard, so its longest
/// pause is this time divided by the shard count, printed alongside.
fn sweep(c: &mut Criterion) {
    let quotas = common::quotas(BUSY_FOR_A_DAY);
    let layer = TenantRateLimitLayer::builder(&quotas)
        .key(ClientIp::peer_only())
        .max_keys(NonZeroUsize::new(1_100_000).unwrap())
        .headers(false)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(noop());
    let mut warm = false;
    c.bench_function("sweep/1000000", |b| {
        if !warm {
            for i in 0..1_000_000 {
                call(&mut service, request(client(i)));
            }
            println!(
                "{} keys in {} shards",
                handle.tracked_keys(),
                handle.shards()
            );
            warm = true;
        }
        b.iter(|| handle.evict_idle())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = layers, sweep
}
criterion_main!(benches);
