//! The layer around a plain tower service on governor's fake clock: time is
//! advanced, never slept.

use crate::common;
use crate::local;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use floodgate_ratelimit::{
    HeaderMode, MissingKey, PeerAddr, RateLimitBody, Tenant, TenantRateLimitLayer,
};
use governor::clock::FakeRelativeClock;
use http::{HeaderMap, Request, Response, StatusCode};
use local::{Bucket, answer_now, ok_service};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use proptest::prelude::*;
use tower::{Layer, Service};

/// Sends one request for `tenant`; the inner service is ready at once, so
/// one poll answers it.
fn send<S, B>(service: &mut S, tenant: &str) -> (StatusCode, HeaderMap)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    send_as(service, Tenant::new(tenant))
}

fn send_as<S, B>(service: &mut S, tenant: Tenant) -> (StatusCode, HeaderMap)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let mut request = Request::new(());
    request.extensions_mut().insert(tenant);
    send_request(service, request)
}

/// Sends `request`; one poll answers it.
fn send_request<S, B>(service: &mut S, request: Request<()>) -> (StatusCode, HeaderMap)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let response = answer_now(service, request);
    (response.status(), response.headers().clone())
}

/// The layer on the `[quotas]` of `text` around [`ok_service`], on a fake
/// clock the test moves.
fn on_fake_clock(
    text: &str,
) -> (
    impl Service<Request<()>, Response = Response<RateLimitBody<String>>, Error = Infallible>,
    FakeRelativeClock,
) {
    let clock = FakeRelativeClock::default();
    let layer = TenantRateLimitLayer::builder(&common::quotas(text))
        .clock(clock.clone())
        .build()
        .unwrap();
    (layer.layer(ok_service()), clock)
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[test]
fn retry_after_rounds_up_never_reads_zero_and_is_honoured() {
    // One request per 1.5 s: the wait after a refusal is at most 1.5 s.
    let text = r#"
[quotas]
default_plan = "slow"
plans = [{ name = "slow", limits = [{ requests = 2, per_seconds = 3, burst = 1 }] }]
"#;
    let (mut service, clock) = on_fake_clock(text);
    assert_eq!(send(&mut service, "acme").0, StatusCode::OK);
    clock.advance(Duration::from_millis(1_499));
    let (status, headers) = send(&mut service, "acme");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&headers), 1, "1 ms left reads as 1 s, not 0");
    clock.advance(Duration::from_millis(1));
    assert_eq!(send(&mut service, "acme").0, StatusCode::OK);
    let (_, headers) = send(&mut service, "acme");
    assert_eq!(retry_after(&headers), 2, "1.5 s rounds up to 2");
}

#[test]
fn quotas_made_in_code_limit_as_the_same_quotas_read_from_a_file() {
    use floodgate_rules::policy::{Limit, Plan, Quotas};
    use std::num::NonZeroU32;
    let n = |n| NonZeroU32::new(n).unwrap();
    let free = Plan::new(
        "free",
        vec![Limit::new(n(3), n(1)), Limit::new(n(4), n(86400))],
    )
    .unwrap();
    let partner = Plan::new("partner", vec![Limit::new(n(1), n(60))]).unwrap();
    let in_code = Quotas::new(free)
        .with_plan(partner)
        .unwrap()
        .with_anonymous_plan("partner")
        .unwrap();
    let from_file = common::quotas(
        r#"
[quotas]
default_plan = "free"
anonymous_plan = "partner"
plans = [
  { name = "free", limits = [{ requests = 3, per_seconds = 1 }, { requests = 4, per_seconds = 86400 }] },
  { name = "partner", limits = [{ requests = 1, per_seconds = 60 }] },
]
"#,
    );
    assert_eq!(in_code.plans(), from_file.plans());
    assert_eq!(in_code.anonymous_plan(), from_file.anonymous_plan());
    let clock = FakeRelativeClock::default();
    let layer = TenantRateLimitLayer::builder(&in_code)
        .clock(clock)
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    let statuses: Vec<u16> = (0..5)
        .map(|_| send(&mut service, "acme").0.as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Misused, the constructors say what is wrong.
    let plan = |name: &str| Plan::new(name, vec![Limit::new(n(1), n(1))]).unwrap();
    assert_eq!(
        Quotas::new(plan("free"))
            .with_plan(plan("free"))
            .unwrap_err()
            .to_string(),
        "there is already a plan named free"
    );
    assert!(
        Quotas::new(plan("free"))
            .with_anonymous_plan("gold")
            .is_err()
    );
    assert!(Plan::new("free plan", vec![Limit::new(n(1), n(1))]).is_err());
    assert!(Plan::new("free", Vec::new()).is_err());
}

#[test]
fn a_request_refused_by_the_daily_budget_does_not_spend_the_burst() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 3, per_seconds = 1 }, { requests = 4, per_seconds = 86400 }] }]
"#;
    let (mut service, clock) = on_fake_clock(text);
    let statuses: Vec<u16> = (0..5)
        .map(|_| send(&mut service, "acme").0.as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    clock.advance(Duration::from_secs(1));
    let (status, headers) = send(&mut service, "acme");
    assert_eq!(status, StatusCode::OK, "the daily budget had one left");
    assert_eq!(
        headers["ratelimit"], "\"free-1s\";r=2;t=1, \"free-86400s\";r=0;t=86399",
        "the refusals spent nothing of the per-second burst"
    );
}

#[test]
fn near_limit_headers_come_only_once_a_limit_runs_low_and_on_refusals() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 10, per_seconds = 60 }, { requests = 1000, per_seconds = 86400 }] }]
"#;
    // Eleven requests at once for each percent: the statuses and the
    // RateLimit values they got.
    let send_eleven = |percent| {
        let layer = TenantRateLimitLayer::builder(&common::quotas(text))
            .clock(FakeRelativeClock::default())
            .headers(HeaderMode::NearLimit { percent })
            .build()
            .unwrap();
        let mut service = layer.layer(ok_service());
        (0..11)
            .map(|_| {
                let (status, headers) = send(&mut service, "acme");
                let state = headers
                    .get("ratelimit")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(state.is_some(), headers.contains_key("ratelimit-policy"));
                (status.as_u16(), state)
            })
            .collect::<Vec<_>>()
    };
    // The first response with the fields: after it, every one has them.
    for (percent, first) in [(0, 10), (20, 8), (100, 1), (255, 1)] {
        let sent = send_eleven(percent);
        let with_fields: Vec<bool> = sent.iter().map(|(_, state)| state.is_some()).collect();
        let expected: Vec<bool> = (1..=11).map(|n| n >= first).collect();
        assert_eq!(with_fields, expected, "at {percent}%");
        assert_eq!(sent[10].0, 429);
    }
    // After n requests: one per 6 s and one per 86.4 s are spent.
    let state = |n: u64| {
        let daily_reset = (n * 864).div_ceil(10);
        let (minute_left, daily_left) = (10 - n, 1000 - n);
        format!(
            "\"free-60s\";r={minute_left};t={}, \"free-86400s\";r={daily_left};t={daily_reset}",
            6 * n
        )
    };
    let sent = send_eleven(20);
    assert_eq!(sent[7], (200, Some(state(8))), "2 left of 10 is 20%");
    assert_eq!(sent[9], (200, Some(state(10))));
    let refused = sent[10].1.as_deref().unwrap();
    assert!(refused.starts_with("\"free-60s\";r=0;t=6, "), "{refused}");
}

#[test]
fn headers_true_and_false_are_always_and_never_and_near_limit_is_the_default() {
    assert_eq!(HeaderMode::from(true), HeaderMode::Always);
    assert_eq!(HeaderMode::from(false), HeaderMode::Never);
    assert_eq!(HeaderMode::default(), HeaderMode::NearLimit { percent: 10 });
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 1, per_seconds = 60 }] }]
"#;
    let layer = TenantRateLimitLayer::builder(&common::quotas(text))
        .headers(false)
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    for expected in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let (status, headers) = send(&mut service, "acme");
        assert_eq!(status, expected);
        assert!(!headers.contains_key("ratelimit"), "{headers:?}");
        assert!(!headers.contains_key("ratelimit-policy"), "{headers:?}");
    }
}

#[test]
fn a_ratelimit_value_longer_than_its_stack_buffer_is_whole() {
    // Four limits on a plan with the longest name: over 300 bytes of value.
    let name = "p".repeat(64);
    let text = format!(
        r#"
[quotas]
default_plan = "{name}"
plans = [{{ name = "{name}", limits = [
    {{ requests = 9999999, per_seconds = 1 }}, {{ requests = 9999999, per_seconds = 60 }},
    {{ requests = 9999999, per_seconds = 3600 }}, {{ requests = 9999999, per_seconds = 86400 }},
] }}]
"#
    );
    let layer = TenantRateLimitLayer::builder(&common::quotas(&text))
        .clock(FakeRelativeClock::default())
        .headers(true)
        .build()
        .unwrap();
    let (status, headers) = send(&mut layer.layer(ok_service()), "acme");
    assert_eq!(status, StatusCode::OK);
    let expected = [(1, 1), (60, 1), (3600, 1), (86400, 1)]
        .map(|(window, reset)| format!("\"{name}-{window}s\";r=9999998;t={reset}"))
        .join(", ");
    assert!(expected.len() > 300, "{}", expected.len());
    assert_eq!(headers["ratelimit"], expected.as_str());
}

#[test]
fn an_override_applies_until_the_end_of_its_day_then_the_plan_does() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [
  { name = "free", limits = [{ requests = 1, per_seconds = 60 }] },
  { name = "enterprise", limits = [{ requests = 1000, per_seconds = 60 }] },
]

[[quotas.overrides]]
tenant = "acme"
plan = "enterprise"
reason = "contract"
owner = "sales"
expires = 2026-12-15
"#;
    let clock = FakeRelativeClock::default();
    let layer = TenantRateLimitLayer::builder(&common::quotas(text))
        .clock(clock.clone())
        .wall_clock_at(time::macros::datetime!(2026-12-15 23:59 UTC))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    for _ in 0..10 {
        assert_eq!(send(&mut service, "acme").0, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(60));
    let (_, headers) = send(&mut service, "acme");
    assert_eq!(headers["ratelimit-policy"], "\"free\";q=1;w=60");
    assert_eq!(send(&mut service, "acme").0, StatusCode::TOO_MANY_REQUESTS);
}

/// Counter values by (plan, outcome).
fn outcomes(snapshotter: &Snapshotter) -> HashMap<(String, String), u64> {
    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(count) = value else {
            continue;
        };
        let label = |name: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap()
        };
        counts.insert((label("plan"), label("outcome")), count);
    }
    counts
}

#[test]
fn shadow_plans_let_over_limit_requests_through_and_count_them() {
    let text = r#"
[quotas]
default_plan = "trial"
plans = [
  { name = "trial", limits = [{ requests = 2, per_seconds = 60 }], shadow = true },
  { name = "paid", limits = [{ requests = 2, per_seconds = 60 }] },
]
"#;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TenantRateLimitLayer::builder(&common::quotas(text))
            .clock(FakeRelativeClock::default())
            .build()
            .unwrap()
    });
    let mut service = layer.layer(ok_service());
    let statuses: Vec<u16> = (0..5)
        .map(|_| send(&mut service, "acme").0.as_u16())
        .collect();
    assert_eq!(statuses, [200; 5]);
    let globex = || Tenant::new("globex").with_plan("paid");
    let statuses: Vec<u16> = (0..3)
        .map(|_| send_as(&mut service, globex()).0.as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let counts = outcomes(&snapshotter);
    let count = |plan: &str, outcome: &str| counts[&(plan.to_owned(), outcome.to_owned())];
    assert_eq!(count("trial", "allowed"), 2);
    assert_eq!(count("trial", "shadowed"), 3);
    assert_eq!(count("paid", "allowed"), 2);
    assert_eq!(count("paid", "limited"), 1);
}

#[test]
fn global_shadow_mode_overrides_every_plan() {
    let text = r#"
[quotas]
default_plan = "paid"
plans = [{ name = "paid", limits = [{ requests = 1, per_seconds = 60 }] }]
"#;
    let layer = TenantRateLimitLayer::builder(&common::quotas(text))
        .clock(FakeRelativeClock::default())
        .shadow(true)
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service());
    let (status, headers) = (0..3).map(|_| send(&mut service, "acme")).last().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["ratelimit"], "\"paid\";r=0;t=60",
        "clients still see they are over"
    );
}

const MODEL_PLAN: &str = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 5, per_seconds = 1, burst = 3 }, { requests = 20, per_seconds = 60 }] }]
"#;
/// (interval in ns, burst) of each limit of [`MODEL_PLAN`].
const MODEL_LIMITS: &[(u64, u64)] = &[(200_000_000, 3), (3_000_000_000, 20)];

/// Four limits: their TATs span two of the store's slots.
const FOUR_LIMIT_PLAN: &str = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [
  { requests = 5, per_seconds = 1, burst = 3 },
  { requests = 20, per_seconds = 60 },
  { requests = 25, per_seconds = 150 },
  { requests = 30, per_seconds = 360 },
] }]
"#;
const FOUR_LIMITS: &[(u64, u64)] = &[
    (200_000_000, 3),
    (3_000_000_000, 20),
    (6_000_000_000, 25),
    (12_000_000_000, 30),
];

/// Sends `steps` (tenant, milliseconds to advance first) through the layer
/// on `plan` and checks that it admits exactly what a token bucket per limit
/// admits, and never more than burst + elapsed / interval per limit in any
/// stretch of time.
fn matches_the_model(
    plan: &str,
    limits: &[(u64, u64)],
    steps: Vec<(usize, u64)>,
) -> Result<(), TestCaseError> {
    let (mut service, clock) = on_fake_clock(plan);
    let mut models: Vec<Vec<Bucket>> = (0..3).map(|_| local::buckets(limits)).collect();
    let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 3];
    let mut now = 0u64;
    for (tenant, advance_ms) in steps {
        clock.advance(Duration::from_millis(advance_ms));
        now += advance_ms * 1_000_000;
        let model = &mut models[tenant];
        model.iter_mut().for_each(|b| b.refill(now));
        let expected = model.iter().all(|b| b.credit >= b.interval);
        if expected {
            model.iter_mut().for_each(|b| b.credit -= b.interval);
        }
        let status = send(&mut service, &format!("tenant-{tenant}")).0;
        prop_assert_eq!(
            status == StatusCode::OK,
            expected,
            "tenant {} at {} ns",
            tenant,
            now
        );
        if expected {
            admitted[tenant].push(now);
        }
    }
    for times in &admitted {
        for (i, start) in times.iter().enumerate() {
            for (j, end) in times.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                for &(interval, burst) in limits {
                    prop_assert!(count <= burst + (end - start) / interval);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn admissions_match_the_model_and_stay_within_the_gcra_bound(
        steps in prop::collection::vec((0usize..3, 0u64..400), 1..300)
    ) {
        matches_the_model(MODEL_PLAN, MODEL_LIMITS, steps)?;
    }

    #[test]
    fn four_limits_split_over_two_slots_match_the_model(
        steps in prop::collection::vec((0usize..3, 0u64..1500), 1..300)
    ) {
        matches_the_model(FOUR_LIMIT_PLAN, FOUR_LIMITS, steps)?;
    }
}

#[test]
fn a_request_without_a_key_gets_the_configured_answer() {
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 5, per_seconds = 1 }] }]
"#;
    let quotas = common::quotas(text);
    let keyless = |missing_key| {
        let layer = TenantRateLimitLayer::builder(&quotas)
            .missing_key(missing_key)
            .build()
            .unwrap();
        let mut service = layer.layer(ok_service());
        // No tenant, and a peer address for the anonymous plan to key on.
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.7:4000".parse().unwrap()));
        send_request(&mut service, request).0
    };
    assert_eq!(keyless(MissingKey::Anonymous), StatusCode::OK);
    assert_eq!(keyless(MissingKey::Unauthorized), StatusCode::UNAUTHORIZED);
    assert_eq!(keyless(MissingKey::BadRequest), StatusCode::BAD_REQUEST);
}

/// The builder, the layer and the service print what they are set to, so
/// they can sit in a service's own `#[derive(Debug)]` state.
#[test]
fn the_builder_layer_and_service_say_what_they_are_in_debug() {
    #[derive(Debug, Clone)]
    struct Inner;
    let text = r#"
[quotas]
default_plan = "free"
plans = [{ name = "free", limits = [{ requests = 1, per_seconds = 60 }] }]
"#;
    let builder = TenantRateLimitLayer::builder(&common::quotas(text)).headers(true);
    let printed = format!("{builder:?}");
    assert!(printed.starts_with("Builder {"), "{printed}");
    assert!(printed.contains("headers: Always"), "{printed}");
    assert!(printed.contains("max_keys: 1000000"), "{printed}");

    let layer = builder.build().unwrap();
    let mut service = layer.layer(ok_service());
    send(&mut service, "acme");
    let printed = format!("{layer:?}");
    assert!(printed.starts_with("TenantRateLimitLayer {"), "{printed}");
    assert!(printed.contains("backend: \"local\""), "{printed}");
    assert!(printed.contains("tracked_keys: 1"), "{printed}");

    let printed = format!("{:?}", layer.layer(Inner));
    assert!(
        printed.starts_with("TenantRateLimit { inner: Inner"),
        "{printed}"
    );
}
