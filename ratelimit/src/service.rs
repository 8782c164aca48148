//! [`TenantRateLimit`], the service the layer wraps around another.

use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use http::{Request, Response};
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::future::ResponseFuture;
use crate::key::{RequestHead, TenantKey};
use crate::limiter::{Decision, Limiter};

/// Rate-limits requests per tenant before they reach `S`. A refused request
/// gets a response (429, or a gRPC status), never a service error.
pub struct TenantRateLimit<S, K, C: Clock> {
    inner: S,
    limiter: Arc<Limiter<K, C>>,
}

impl<S, K, C: Clock> TenantRateLimit<S, K, C> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter<K, C>>) -> Self {
        TenantRateLimit { inner, limiter }
    }
}

impl<S: Clone, K, C: Clock> Clone for TenantRateLimit<S, K, C> {
    fn clone(&self) -> Self {
        TenantRateLimit {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S, K, C, ReqBody, ResBody> Service<Request<ReqBody>> for TenantRateLimit<S, K, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: TenantKey,
    C: Clock,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.limiter.decide(RequestHead::of(&request)) {
            Decision::Pass(headers) => ResponseFuture::inner(self.inner.call(request), headers),
            Decision::Reject(response) => ResponseFuture::rejected(response),
        }
    }
}
