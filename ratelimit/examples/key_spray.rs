//! Memory under a key spray: sends requests from N distinct clients (random
//! IPv4 addresses and tenant ids) through the layer with a cap on tracked
//! keys, and reports resident memory, tracked keys and bytes per key.
//!
//! ```text
//! cargo run --release -p floodgate-ratelimit --example key_spray -- 10000000 1000000
//! ```
//!
//! Arguments: keys to spray (default 10M), the key cap (default 1M). Exits
//! 1 if resident memory grows past the cap's budget of 128 bytes a key.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroUsize;
use std::task::{Context, Poll, Waker};

use floodgate_ratelimit::{Tenant, TenantRateLimitLayer};
use http::{Request, Response};
use tower::{Layer, Service};

const POLICY: &str = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 10, per_seconds = 1 }, { requests = 10000, per_seconds = 86400 }] }]
"#;

/// Resident memory in bytes, from /proc.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn argument(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .map(|a| a.replace('_', "").parse().expect("a whole number"))
        .unwrap_or(default)
}

fn main() {
    let keys = argument(1, 10_000_000);
    let cap = argument(2, 1_000_000);
    let quotas = common::quotas(POLICY);
    let layer = TenantRateLimitLayer::builder(&quotas)
        .max_keys(NonZeroUsize::new(cap).expect("a cap above 0"))
        .headers(false)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let mut send = |id: String| {
        let mut request = Request::new(());
        request.extensions_mut().insert(Tenant::new(id));
        let mut future = std::pin::pin!(service.call(request));
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(Ok(response)) => response.status(),
            _ => unreachable!("the no-op service answers at once"),
        }
    };

    // Bytes per key: fill to half the cap and compare resident memory.
    let before = resident_bytes();
    let half = cap / 2;
    for i in 0..half {
        send(format!("tenant-{i}"));
    }
    let per_key = (resident_bytes() - before) as f64 / handle.tracked_keys() as f64;
    println!(
        "tracked {} keys: {per_key:.1} bytes per key",
        handle.tracked_keys()
    );

    // The spray: distinct ids, far more than the cap.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..keys {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        send(format!("{state:x}"));
    }
    let grown = resident_bytes().saturating_sub(before);
    let budget = cap as u64 * 128;
    println!(
        "after {keys} sprayed keys: {} tracked (cap {}), resident +{:.1} MiB (budget {:.1} MiB)",
        handle.tracked_keys(),
        handle.max_keys(),
        grown as f64 / 1048576.0,
        budget as f64 / 1048576.0,
    );
    if handle.tracked_keys() > handle.max_keys() || grown > budget {
        eprintln!("error: memory grew past the cap");
        std::process::exit(1);
    }
}
