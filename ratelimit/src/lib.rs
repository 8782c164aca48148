//! Per-tenant rate limits for tower services, with quotas from the Floodgate
//! policy file.
//!
//! [`TenantRateLimitLayer`] works with any `http` service: axum 0.8, tonic
//! and plain hyper. Each request is charged to a [`Key`] (a tenant set by
//! the service's auth layer, a header, or the client address), which gets
//! its plan's limits from `[quotas]`, or the limits of an override ops
//! approved. A plan may have several limits, and a request is charged only
//! when all of them admit it. A refused request gets a 429 with a
//! `Retry-After` of at least one second, the IETF RateLimit header fields and
//! an `application/problem+json` body, or for gRPC a `RESOURCE_EXHAUSTED`
//! status. The policy can be swapped at runtime with a [`RateLimitHandle`].
//!
//! A plan may also limit route classes on their own (`classes` in
//! `[quotas]`), checked together with the plan's limits, and a request may
//! cost more than one unit. A request's class and cost come from the
//! [`RouteClass`] extension the service sets, else from the policy's
//! `[[quotas.routes]]` path table (matched in order, without allocating),
//! else it has none and costs 1.
//!
//! Responses carry a [`RateLimitBody`] around the inner body by default.
//! With axum, [`TenantRateLimitLayer::keep_body_type`] keeps axum's own
//! `Body`, which `axum::serve` requires. [`HeaderMode`] picks which
//! responses carry the RateLimit fields: by default refusals and responses
//! near a limit, or every response with `.headers(true)`.
//!
//! # Examples
//!
//! ```
//! use floodgate_ratelimit::{Tenant, TenantRateLimitLayer};
//! use floodgate_rules::Policy;
//! use http::{Request, Response, StatusCode};
//! use std::convert::Infallible;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let text = r#"
//! [quotas]
//! default_plan = "free"
//! plans = [{ name = "free", limits = [{ requests = 2, per_seconds = 60 }] }]
//! "#;
//! let today = time::macros::date!(2026 - 11 - 22);
//! let policy = Policy::from_toml(text, "floodgate.toml", today).unwrap().policy;
//! let layer = TenantRateLimitLayer::builder(policy.quotas.as_ref().unwrap()).build().unwrap();
//! let mut service = layer.layer(tower::service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("ok")))
//! }));
//!
//! let mut statuses = Vec::new();
//! for _ in 0..3 {
//!     // The service's own auth layer would set this.
//!     let mut request = Request::new(String::new());
//!     request.extensions_mut().insert(Tenant::new("acme"));
//!     let response = service.ready().await.unwrap().call(request).await.unwrap();
//!     statuses.push(response.status());
//! }
//! assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
//! # }
//! ```
//!
//! ## With axum
//!
//! Both ways of adding a layer to a `Router` compile as written, with
//! [`TenantRateLimitLayer::keep_body_type`] (axum serves only its own
//! `Body`). Wrapping the whole `Router` is the cheaper of the two:
//! `Router::layer` wraps every route and clones the layered route per
//! request. The wrapped `Router` is a service over any request body, so
//! `into_make_service` needs to be told axum's `Request` once: that is the
//! one annotated line below.
//!
//! ```
//! use axum::{Router, extract::Request, routing::get};
//! use floodgate_ratelimit::{Tenant, TenantRateLimitLayer};
//! use http::StatusCode;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let text = "[quotas]\ndefault_plan = \"free\"\nplans = [{ name = \"free\", limits = [{ requests = 1, per_seconds = 60 }] }]\n";
//! # let policy = floodgate_rules::Policy::from_toml(text, "floodgate.toml", time::macros::date!(2026 - 11 - 22)).unwrap().policy;
//! let layer = TenantRateLimitLayer::builder(policy.quotas.as_ref().unwrap())
//!     .build()
//!     .unwrap()
//!     .keep_body_type();
//! let routes = || Router::new().route("/", get(|| async { "ok" }));
//!
//! // The whole Router wrapped, served by axum:
//! let app = layer.clone().layer(routes());
//! let _make_service = axum::ServiceExt::<Request>::into_make_service(app.clone());
//! // axum::serve(listener, _make_service).await
//!
//! // Or the layer added the way most axum code adds one:
//! let routed: Router = routes().layer(layer);
//!
//! // Both share the layer's limiter, so each is shown with its own tenant.
//! for (service, tenant) in [(app.boxed_clone(), "acme"), (routed.boxed_clone(), "globex")] {
//!     let mut statuses = Vec::new();
//!     for _ in 0..2 {
//!         let mut request = Request::new(axum::body::Body::empty());
//!         request.extensions_mut().insert(Tenant::new(tenant));
//!         statuses.push(service.clone().oneshot(request).await.unwrap().status());
//!     }
//!     assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
//! }
//! # }
//! ```

//! ## Route classes from axum's matched route
//!
//! With `Router::layer`, the layer runs after routing, so a middleware added
//! after it (which runs first) can class requests by their matched route.
//! The path table in the policy needs none of this.
//!
//! ```
//! use axum::extract::{MatchedPath, Request};
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//! use axum::{Router, routing::post};
//! use floodgate_ratelimit::{RouteClass, Tenant, TenantRateLimitLayer};
//! use http::StatusCode;
//! use tower::ServiceExt;
//!
//! async fn classify(mut request: Request, next: Next) -> Response {
//!     let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
//!     if route == Some("/v1/exports/{id}") {
//!         // Exports have limits of their own, and cost 5 units of the plan's.
//!         request.extensions_mut().insert(RouteClass::named("exports").cost(5));
//!     }
//!     next.run(request).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let text = r#"
//! [quotas]
//! default_plan = "free"
//! plans = [{ name = "free", limits = [{ requests = 100, per_seconds = 60 }], classes = { exports = [{ requests = 10, per_seconds = 3600 }] } }]
//! "#;
//! # let policy = floodgate_rules::Policy::from_toml(text, "floodgate.toml", time::macros::date!(2026 - 11 - 22)).unwrap().policy;
//! let layer = TenantRateLimitLayer::builder(policy.quotas.as_ref().unwrap())
//!     .build()
//!     .unwrap()
//!     .keep_body_type();
//! let app: Router = Router::new()
//!     .route("/v1/exports/{id}", post(|| async { "queued" }))
//!     .layer(layer)
//!     .layer(middleware::from_fn(classify));
//!
//! let mut statuses = Vec::new();
//! for id in 0..3 {
//!     let mut request = Request::post(format!("/v1/exports/{id}"))
//!         .body(axum::body::Body::empty())
//!         .unwrap();
//!     request.extensions_mut().insert(Tenant::new("acme"));
//!     statuses.push(app.clone().oneshot(request).await.unwrap().status());
//! }
//! // 10 units an hour for exports, at 5 an export.
//! assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
//! # }
//! ```

mod body;
mod client_ip;
mod clock;
mod future;
mod gcra;
mod key;
mod layer;
mod limiter;
mod observe;
mod policy;
mod policy_cell;
mod redis;
mod response;
mod route;
mod service;
mod store;

pub use body::{KeepBody, RateLimitBody, ResponseBody, WrapBody};
pub use client_ip::{ClientIp, ForwardedHeader, PeerAddr};
pub use future::ResponseFuture;
pub use gcra::quota;
pub use key::{Key, RequestHead, Tenant, TenantExtension, TenantHeader, TenantKey, key_fn};
pub use layer::{Builder, DEFAULT_MAX_KEYS, RateLimitHandle, TenantRateLimitLayer};
pub use limiter::MissingKey;
pub use observe::REQUESTS_TOTAL;
pub use redis::{Backend, BuildError, FALLBACK_TOTAL, RedisSettings, SCRIPT};
pub use response::{HeaderMode, RATELIMIT, RATELIMIT_POLICY};
pub use route::RouteClass;
pub use service::TenantRateLimit;
