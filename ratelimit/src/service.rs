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
use crate::policy::CompiledPolicy;

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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    K: TenantKey,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
    ReqBody: Send + 'static,
    ResBody: 'static,
    S::Error: 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Inlined into the caller: small enough once the Redis path is out of
    // line, and the request then isn't copied once more into this call.
    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.limiter.decide(&request) {
            Decision::Pass(headers) => ResponseFuture::inner(self.inner.call(request), headers),
            Decision::Reject(response) => ResponseFuture::rejected(response),
            Decision::Remote(policy) => self.ask_redis(request, policy),
        }
    }
}

impl<S, K: TenantKey, C: Clock + Send + Sync + 'static> TenantRateLimit<S, K, C>
where
    C::Instant: Send + Sync,
{
    /// Decides `request` after Redis answers, then calls the inner service.
    #[inline(never)]
    fn ask_redis<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        policy: Arc<CompiledPolicy>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: 'static,
        ReqBody: Send + 'static,
        ResBody: 'static,
    {
        // Redis answers later: take the service that poll_ready made ready,
        // and leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = Arc::clone(&self.limiter);
        ResponseFuture::remote(Box::pin(async move {
            let redis = limiter
                .redis
                .as_ref()
                .expect("only the Redis backend defers");
            let head = RequestHead::of(&request);
            match limiter.decide_remote(head, policy, redis).await {
                Decision::Pass(headers) => {
                    let mut response = inner.call(request).await?;
                    if let Some(headers) = headers {
                        (*headers).insert_into(response.headers_mut());
                    }
                    Ok(response.map(RateLimitBody::inner))
                }
                Decision::Reject(response) => Ok((*response).map(RateLimitBody::rejection)),
                Decision::Remote(_) => unreachable!("decide_remote always decides"),
            }
        }))
    }
}
