//! Route classes and request cost through the layer, on governor's fake
//! clock: the path table, the [`RouteClass`] extension, overrides of class
//! limits, the RateLimit fields and the state a class costs.

use crate::common;
use crate::local;

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::time::Duration;

use floodgate_ratelimit::{RouteClass, Tenant, TenantRateLimitLayer};
use governor::clock::FakeRelativeClock;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use local::{Bucket, answer_now, buckets, ok_service};
use proptest::prelude::*;
use tower::{Layer, Service};

/// Plan limits, two route classes with limits (one of three limits, so its
/// state spans two slots), a cost-only route, and an override that raises
/// one tenant's exports.
const POLICY: &str = r#"
[quotas]
default_plan = "free"

[[quotas.plans]]
name = "free"
limits = [{ requests = 5, per_seconds = 1, burst = 3 }, { requests = 20, per_seconds = 60 }]
classes = { exports = [{ requests = 4, per_seconds = 10 }], reports = [{ requests = 4, per_seconds = 1, burst = 2 }, { requests = 10, per_seconds = 60 }, { requests = 2, per_seconds = 1, burst = 1 }] }

[[quotas.routes]]
class = "exports"
method = "POST"
path = "/v1/exports"
cost = 2

[[quotas.routes]]
class = "reports"
method = "GET"
path = "/v1/reports/*"

[[quotas.routes]]
class = "heavy"
path = "/v1/heavy"
cost = 3

[[quotas.overrides]]
tenant = "tenant-2"
classes = { exports = [{ requests = 8, per_seconds = 10 }] }
reason = "test"
owner = "test"
expires = 2099-01-01
"#;

/// (interval in ns, burst) of the plan's limits.
const PLAN: &[(u64, u64)] = &[(200_000_000, 3), (3_000_000_000, 20)];
const EXPORTS: &[(u64, u64)] = &[(2_500_000_000, 4)];
const EXPORTS_OF_TENANT_2: &[(u64, u64)] = &[(1_250_000_000, 8)];
const REPORTS: &[(u64, u64)] = &[(250_000_000, 2), (6_000_000_000, 10), (500_000_000, 1)];

/// The requests the model sends: how each is built, and the class and cost
/// the layer must charge it as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `GET /status`: no route, cost 1.
    Status,
    /// `POST /v1/exports`: exports, cost 2.
    Export,
    /// `GET /v1/reports/7`: reports, cost 1.
    Report,
    /// `GET /v1/heavy`: a class no plan limits, cost 3.
    Heavy,
    /// `GET /status` with the extension naming reports at cost 2.
    ReportByExtension,
    /// `POST /v1/exports` with an extension of no class and cost 2: the
    /// extension wins over the table.
    ExportUnclassedByExtension,
    /// `GET /status` with an extension naming a class the policy lacks.
    UnknownClass,
}

const KINDS: [Kind; 7] = [
    Kind::Status,
    Kind::Export,
    Kind::Report,
    Kind::Heavy,
    Kind::ReportByExtension,
    Kind::ExportUnclassedByExtension,
    Kind::UnknownClass,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelClass {
    Exports,
    Reports,
}

impl Kind {
    fn request(self, tenant: &str) -> Request<()> {
        let (method, path, extension) = match self {
            Kind::Status => (Method::GET, "/status", None),
            Kind::Export => (Method::POST, "/v1/exports", None),
            Kind::Report => (Method::GET, "/v1/reports/7?page=2", None),
            Kind::Heavy => (Method::DELETE, "/v1/heavy", None),
            Kind::ReportByExtension => (
                Method::GET,
                "/status",
                Some(RouteClass::named("reports").cost(2)),
            ),
            Kind::ExportUnclassedByExtension => (
                Method::POST,
                "/v1/exports",
                Some(RouteClass::default().cost(2)),
            ),
            Kind::UnknownClass => (Method::GET, "/status", Some(RouteClass::named("nope"))),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        request.extensions_mut().insert(Tenant::new(tenant));
        if let Some(extension) = extension {
            request.extensions_mut().insert(extension);
        }
        request
    }

    /// The class whose limits apply, and the cost.
    fn charge(self) -> (Option<ModelClass>, u64) {
        match self {
            Kind::Status | Kind::UnknownClass => (None, 1),
            Kind::Export => (Some(ModelClass::Exports), 2),
            Kind::Report => (Some(ModelClass::Reports), 1),
            Kind::Heavy => (None, 3),
            Kind::ReportByExtension => (Some(ModelClass::Reports), 2),
            Kind::ExportUnclassedByExtension => (None, 2),
        }
    }
}

/// One tenant in the model: its plan's buckets and each class's.
struct TenantModel {
    plan: Vec<Bucket>,
    exports: Vec<Bucket>,
    reports: Vec<Bucket>,
}

impl TenantModel {
    fn new(tenant: usize) -> TenantModel {
        let exports = if tenant == 2 {
            EXPORTS_OF_TENANT_2
        } else {
            EXPORTS
        };
        TenantModel {
            plan: buckets(PLAN),
            exports: buckets(exports),
            reports: buckets(REPORTS),
        }
    }

    /// Admits a request of `class` and `cost` at `now` if every bucket it
    /// draws on holds `cost` intervals, and only then drains them all.
    fn admit(&mut self, class: Option<ModelClass>, cost: u64, now: u64) -> bool {
        let class_buckets = match class {
            None => &mut [][..],
            Some(ModelClass::Exports) => &mut self.exports[..],
            Some(ModelClass::Reports) => &mut self.reports[..],
        };
        let all = self.plan.iter_mut().chain(class_buckets.iter_mut());
        let mut drawn: Vec<&mut Bucket> = all.collect();
        for bucket in drawn.iter_mut() {
            bucket.refill(now);
        }
        let admitted = drawn.iter().all(|b| b.credit >= b.interval * cost);
        if admitted {
            for bucket in drawn {
                bucket.credit -= bucket.interval * cost;
            }
        }
        admitted
    }
}

/// Sends `request`; the inner service is ready at once, so one poll answers.
fn send<S, B>(service: &mut S, request: Request<()>) -> (StatusCode, HeaderMap, B)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let (parts, body) = answer_now(service, request).into_parts();
    (parts.status, parts.headers, body)
}

fn layer_on(
    clock: &FakeRelativeClock,
    max_keys: usize,
) -> TenantRateLimitLayer<floodgate_ratelimit::TenantExtension, FakeRelativeClock> {
    TenantRateLimitLayer::builder(&common::quotas(POLICY))
        .clock(clock.clone())
        .max_keys(NonZeroUsize::new(max_keys).unwrap())
        .headers(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the mix of tenants, routes, extensions and pauses, the layer
    /// admits exactly what the bucket model admits: a class's limits and
    /// the plan's are charged together or not at all, by the request's cost.
    #[test]
    fn classes_and_costs_match_the_model(
        steps in prop::collection::vec((0usize..3, 0usize..KINDS.len(), 0u64..700), 1..300)
    ) {
        let clock = FakeRelativeClock::default();
        let mut service = layer_on(&clock, 10_000).layer(ok_service());
        let mut models: Vec<TenantModel> = (0..3).map(TenantModel::new).collect();
        let mut now = 0u64;
        for (tenant, kind, advance_ms) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            now += advance_ms * 1_000_000;
            let kind = KINDS[kind];
            let (class, cost) = kind.charge();
            let expected = models[tenant].admit(class, cost, now);
            let (status, ..) = send(&mut service, kind.request(&format!("tenant-{tenant}")));
            prop_assert_eq!(
                status == StatusCode::OK,
                expected,
                "tenant {} sent {:?} at {} ns",
                tenant,
                kind,
                now
            );
        }
    }
}

#[test]
fn a_class_request_reports_the_plan_and_class_limits_in_units() {
    let clock = FakeRelativeClock::default();
    let mut service = layer_on(&clock, 10_000).layer(ok_service());
    let (status, headers, _) = send(&mut service, Kind::Export.request("acme"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["ratelimit-policy"],
        "\"free-1s\";q=3;w=1, \"free-60s\";q=20;w=60, \"free-exports\";q=4;w=10"
    );
    // Two units of each: the burst of 3 has 1 left, the class 2 of 4.
    assert_eq!(
        headers["ratelimit"],
        "\"free-1s\";r=1;t=1, \"free-60s\";r=18;t=6, \"free-exports\";r=2;t=5"
    );
    // A plain request shows only the plan's limits.
    let (_, headers, _) = send(&mut service, Kind::Status.request("acme"));
    assert_eq!(
        headers["ratelimit"],
        "\"free-1s\";r=0;t=1, \"free-60s\";r=17;t=9"
    );
}

#[tokio::test]
async fn a_refusal_by_the_class_names_it_and_leaves_the_plan_uncharged() {
    let clock = FakeRelativeClock::default();
    let mut service = layer_on(&clock, 10_000).layer(ok_service());
    // Exports: 4 units, 2 a request. A second apart, so the plan's burst refills.
    for _ in 0..2 {
        assert_eq!(
            send(&mut service, Kind::Export.request("acme")).0,
            StatusCode::OK
        );
        clock.advance(Duration::from_secs(1));
    }
    let (status, headers, body) = send(&mut service, Kind::Export.request("acme"));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // 2 units of the class free up 2.5 s after the first export: in 3 s.
    assert_eq!(headers["retry-after"], "3");
    let body = body.collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains(r#""plan":"free","class":"exports""#),
        "{body}"
    );
    assert!(
        body.contains(r#"plan \"free\" for class \"exports\""#),
        "{body}"
    );
    // The plan was not charged for the refusal: its burst of 3 is whole.
    for _ in 0..3 {
        assert_eq!(
            send(&mut service, Kind::Status.request("acme")).0,
            StatusCode::OK
        );
    }
}

#[test]
fn an_override_of_class_limits_keeps_the_tenants_plan() {
    let clock = FakeRelativeClock::default();
    let mut service = layer_on(&clock, 10_000).layer(ok_service());
    let (_, headers, _) = send(&mut service, Kind::Export.request("tenant-2"));
    assert_eq!(
        headers["ratelimit-policy"],
        "\"free-1s\";q=3;w=1, \"free-60s\";q=20;w=60, \"free-exports\";q=8;w=10"
    );
}

#[test]
fn a_tenant_holds_state_only_for_the_classes_it_uses() {
    let clock = FakeRelativeClock::default();
    let layer = layer_on(&clock, 10_000);
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    send(&mut service, Kind::Status.request("acme"));
    assert_eq!(handle.tracked_keys(), 1, "the plan's two limits: one slot");
    send(&mut service, Kind::Heavy.request("acme"));
    assert_eq!(
        handle.tracked_keys(),
        1,
        "a class no plan limits holds nothing"
    );
    send(&mut service, Kind::Export.request("acme"));
    assert_eq!(
        handle.tracked_keys(),
        2,
        "exports' one limit: one slot more"
    );
    send(&mut service, Kind::Report.request("acme"));
    assert_eq!(
        handle.tracked_keys(),
        4,
        "reports' three limits: two slots more"
    );
}

#[test]
fn a_spray_of_keys_with_classes_stays_within_the_cap() {
    let clock = FakeRelativeClock::default();
    let layer = layer_on(&clock, 256);
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    let mut admitted = 0;
    for i in 0..5_000 {
        let (status, ..) = send(&mut service, Kind::Export.request(&format!("spray-{i}")));
        admitted += usize::from(status == StatusCode::OK);
    }
    assert!(handle.tracked_keys() <= handle.max_keys());
    // The keys that fit got their own budgets; the rest shared one overflow
    // budget of two exports.
    let fitted = handle.max_keys() / 2;
    assert!(
        admitted <= fitted + 2,
        "{admitted} admitted, {fitted} fitted"
    );
}

#[test]
fn a_class_keeps_its_state_across_a_reload_that_adds_another_class() {
    let clock = FakeRelativeClock::default();
    let layer = layer_on(&clock, 10_000);
    let handle = layer.handle();
    let mut service = layer.layer(ok_service());
    // Exports: 4 units, 2 an export; the plan's burst of 3 refills in 0.6 s.
    for _ in 0..2 {
        assert_eq!(
            send(&mut service, Kind::Export.request("acme")).0,
            StatusCode::OK
        );
        clock.advance(Duration::from_secs(1));
    }
    // A new class, sorted before exports, moves every class's index.
    let more = POLICY.replace(
        "classes = { exports",
        "classes = { archive = [{ requests = 1, per_seconds = 60 }], exports",
    );
    handle.reload(&common::quotas(&more));
    let (status, ..) = send(&mut service, Kind::Export.request("acme"));
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the exports spent before the reload count"
    );
}
