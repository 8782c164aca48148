//! Rejection events through `tracing`, rate-limited. In a test binary of
//! its own: tracing caches each event's interest process-wide, so a test
//! running beside others that have no subscriber could miss its events.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodgate_ratelimit::{Tenant, TenantRateLimitLayer};
use governor::clock::FakeRelativeClock;
use http::{Request, Response};
use tower::{Layer, Service};

fn send<S, B>(service: &mut S, tenant: &str)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let mut request = Request::new(());
    request.extensions_mut().insert(Tenant::new(tenant));
    let mut future = std::pin::pin!(service.call(request));
    let poll = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(poll, Poll::Ready(Ok(_))),
        "the layer answers at once"
    );
}

/// Collects what the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber that writes plain text here, and what it will write.
    fn subscriber() -> (Captured, impl tracing::Subscriber + Send + Sync) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (captured, subscriber)
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn rejection_events_are_rate_limited_and_report_what_they_held_back() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 1, per_seconds = 60 }] }]
"#;
    let quotas = common::quotas(text);
    let (captured, subscriber) = Captured::subscriber();
    let clock = FakeRelativeClock::default();
    let layer = TenantRateLimitLayer::builder(&quotas)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..1_001 {
            send(&mut service, "acme");
        }
        clock.advance(Duration::from_secs(1));
        send(&mut service, "acme");
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("over its rate limit"))
        .collect();
    assert_eq!(events.len(), 21, "a burst of 20, then one after a second");
    assert!(events[0].contains("key=tenant acme") && events[0].contains("plan=\"free\""));
    assert!(events[20].contains("suppressed=980"), "{}", events[20]);
}

#[cfg(feature = "redis")]
#[test]
fn checks_decided_without_redis_warn_once_with_the_reason_and_the_endpoint() {
    use floodgate_ratelimit::{Backend, RedisSettings};
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 1000, per_seconds = 60 }] }]
"#;
    let quotas = common::quotas(text);
    // Nothing listens on the port: every check is decided locally.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let layer = TenantRateLimitLayer::builder(&quotas)
        .backend(Backend::Redis(RedisSettings::node(&url)))
        .build()
        .unwrap();
    let mut service = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    let (captured, subscriber) = Captured::subscriber();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..200 {
            send(&mut service, &format!("tenant-{i}"));
        }
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("decided locally"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for 200 checks: {text}");
    assert!(
        warnings[0].contains("reason=\"connecting\"") && warnings[0].contains(&url),
        "{}",
        warnings[0]
    );
}
