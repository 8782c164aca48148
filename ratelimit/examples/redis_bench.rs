//! Checks per second and latency per check through the layer with the
//! Redis backend: client tasks on loopback (2, or `FLOODGATE_BENCH_TASKS`),
//! each sending one request at a time for a random one of 1,000 tenants.
//!
//! ```text
//! cargo run --release -p floodgate-ratelimit --example redis_bench -- [SECONDS] [REDIS_URL]
//! cargo run --release -p floodgate-ratelimit --example redis_bench -- SECONDS --cluster SEED_URL...
//! cargo run --release -p floodgate-ratelimit --example redis_bench -- --print-script
//! ```
//!
//! `scripts/bench-redis.sh` runs it next to `redis-benchmark` on the same script.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use floodgate_ratelimit::{Backend, RedisSettings, SCRIPT, Tenant, TenantRateLimitLayer};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

/// A limit no tenant reaches: every check is a full GCRA write in Redis.
const POLICY: &str = r#"
[quotas]
default_plan = "bench"
plans = [{ name = "bench", limits = [{ requests = 1000000, per_seconds = 1 }] }]
"#;

/// Client tasks, each with one request in flight (`FLOODGATE_BENCH_TASKS`,
/// default 2): match it to the ceiling's concurrency.
fn tasks() -> u64 {
    std::env::var("FLOODGATE_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}
const TENANTS: u64 = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--print-script") {
        print!("{SCRIPT}");
        return;
    }
    let seconds: f64 = args.first().map_or(5.0, |s| s.parse().expect("seconds"));
    let cluster = args.get(1).map(String::as_str) == Some("--cluster");
    let mut urls: Vec<String> = args
        .iter()
        .skip(if cluster { 2 } else { 1 })
        .cloned()
        .collect();
    if urls.is_empty() {
        urls.push("redis://127.0.0.1:6379".to_owned());
    }
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(run(seconds, urls, cluster));
    let fallbacks: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == floodgate_ratelimit::FALLBACK_TOTAL)
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(count) => count,
            _ => 0,
        })
        .sum();
    println!("checks decided without Redis: {fallbacks}");
}

async fn run(seconds: f64, mut urls: Vec<String>, cluster: bool) {
    let quotas = common::quotas(POLICY);
    let settings = if cluster {
        RedisSettings::cluster(urls)
    } else {
        RedisSettings::node(urls.remove(0))
    };
    let backend = Backend::Redis(RedisSettings {
        timeout: Duration::from_millis(100),
        ..settings
    });
    let layer = TenantRateLimitLayer::builder(&quotas)
        .backend(backend)
        .headers(false)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let handle = layer.handle();
    let service = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.redis_connected() != Some(true) {
        assert!(Instant::now() < deadline, "Redis did not answer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let tasks: Vec<_> = (0..tasks())
        .map(|task| {
            let mut service = service.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ task;
                while started.elapsed().as_secs_f64() < seconds {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let mut request = Request::new(());
                    let tenant = format!("bench-{}", state % TENANTS);
                    request.extensions_mut().insert(Tenant::new(tenant));
                    let sent = Instant::now();
                    let response = service.ready().await.unwrap().call(request).await.unwrap();
                    latencies.push(sent.elapsed());
                    assert_eq!(response.status(), StatusCode::OK);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "floodgate through Redis: {:.0} checks/s over {elapsed:.1} s; p50 {:?}, p99 {:?}, max {:?}; redis connected throughout: {}",
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1],
        handle.redis_connected() == Some(true),
    );
}
