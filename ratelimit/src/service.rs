//! [`TenantRateLimit`], the service the layer wraps around another.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use http::{Request, Response};
use tower_service::Service;

use crate::body::{ResponseBody, WrapBody};
use crate::future::{ResponseFuture, passed};
use crate::key::{RequestHead, TenantKey};
use crate::limiter::{Decision, Limiter};
use crate::policy::CompiledPolicy;

/// Rate-limits requests per tenant before they reach `S`. A refused request
/// gets a response (429, or a gRPC status), never a service error. `R`
/// picks the responses' body type ([`ResponseBody`]).
pub struct TenantRateLimit<S, K, C: Clock, R = WrapBody> {
    inner: S,
    limiter: Arc<Limiter<K, C>>,
    body: PhantomData<fn() -> R>,
}

impl<S, K, C: Clock, R> TenantRateLimit<S, K, C, R> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter<K, C>>) -> Self {
        TenantRateLimit {
            inner,
            limiter,
            body: PhantomData,
        }
    }
}

impl<S: std::fmt::Debug, K, C: Clock, R> std::fmt::Debug for TenantRateLimit<S, K, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S: Clone, K, C: Clock, R> Clone for TenantRateLimit<S, K, C, R> {
    fn clone(&self) -> Self {
        TenantRateLimit::new(self.inner.clone(), Arc::clone(&self.limiter))
    }
}

impl<S, K, C, R, ReqBody, ResBody> Service<Request<ReqBody>> for TenantRateLimit<S, K, C, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    K: TenantKey,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
    ReqBody: Send + 'static,
    ResBody: 'static,
    S::Error: 'static,
    R: ResponseBody<ResBody>,
    R::Body: 'static,
{
    type Response = Response<R::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error, R>;

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

impl<S, K: TenantKey, C: Clock + Send + Sync + 'static, R> TenantRateLimit<S, K, C, R>
where
    C::Instant: Send + Sync,
{
    /// Decides `request` after Redis answers, then calls the inner service.
    #[inline(never)]
    fn ask_redis<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        policy: Arc<CompiledPolicy>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error, R>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: 'static,
        ReqBody: Send + 'static,
        ResBody: 'static,
        R: ResponseBody<ResBody>,
        R::Body: 'static,
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
                    Ok(passed::<ResBody, R>(inner.call(request).await?, headers))
                }
                Decision::Reject(response) => Ok((*response).map(R::rejection)),
                Decision::Remote(_) => unreachable!("decide_remote always decides"),
            }
        }))
    }
}
