//! Per-request cost of the layer around a no-op service, next to
//! tower_governor with the same quota and keys, and governor's own
//! `check_key`, with 1, 10k and 1M distinct clients (keyed by peer IP, the
//! key both layers support as is), each of them a known tenant: a busy key
//! both layers keep. `benches/paired.rs` also times keys that go idle at
//! once, and alternates the contenders. `floodgate` has the default headers
//! (the RateLimit fields only near a limit, which no client here comes to)
//! and `floodgate_headers` the fields on every response. `floodgate_classes`
//! has a route table of 50 patterns, of which each request matches the last,
//! and a class with limits of its own.
//!
//! ```text
//! cargo bench -p floodgate-ratelimit --bench layer
//! ```

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

// Shared with the paired bench, which uses the keys' quotas.
#[allow(dead_code)]
mod contenders;

use std::hint::black_box;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};

use axum::body::Body;
use contenders::{Keys, call, client, noop, request, warm};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use floodgate_ratelimit::{ClientIp, HeaderMode, TenantRateLimitLayer};
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use tower::{Layer, Service};

/// Measures the service `build` makes over `clients` keys, after touching
/// each key once.
fn measure<S, B>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    clients: usize,
    build: impl FnOnce() -> S,
) where
    S: Service<Request<Body>, Response = Response<B>>,
{
    let (mut next, mut build, mut service) = (0usize, Some(build), None);
    c.benchmark_group(group)
        .bench_function(BenchmarkId::new(name, clients), |b| {
            // Built and warmed inside, so a filtered-out benchmark costs
            // nothing and changes nothing: a route table, once compiled,
            // makes every layer in the process look for classes.
            let service = service.get_or_insert_with(|| {
                let mut service = build.take().expect("built once")();
                warm(&mut service, clients);
                service
            });
            b.iter_batched(
                || {
                    next = (next + 7_919) % clients;
                    request(client(next))
                },
                |request| black_box(call(service, request).status()),
                BatchSize::NumIterations(256),
            )
        });
}

fn layers(c: &mut Criterion) {
    for clients in [1, 10_000, 1_000_000] {
        let group = format!("layer/{clients}");
        measure(c, &group, "no_layer", clients, noop);
        let floodgate = || contenders::floodgate(clients, HeaderMode::default(), Keys::Busy);
        measure(c, &group, "floodgate", clients, floodgate);
        let with_headers = || contenders::floodgate(clients, HeaderMode::Always, Keys::Busy);
        measure(c, &group, "floodgate_headers", clients, with_headers);
        // Every request matches the last of 50 routes, and is charged to
        // its plan and its class.
        let classes = || contenders::floodgate_classes(clients, 50);
        measure(c, &group, "floodgate_classes", clients, classes);
        let tower_governor = || contenders::tower_governor(Keys::Busy);
        measure(c, &group, "tower_governor", clients, tower_governor);

        // The anchor: governor's keyed check alone, no tower, no key
        // extraction, on the same quota.
        let quota =
            Quota::per_minute(NonZeroU32::MIN).allow_burst(NonZeroU32::new(100_000_000).unwrap());
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
