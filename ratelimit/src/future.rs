//! [`ResponseFuture`]: the inner service's response with the RateLimit
//! header fields added, or the layer's own rejection.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, WrapBody};
use crate::response::RateHeaders;

/// The answer of a check that waits for Redis.
type Remote<Out, E> = Pin<Box<dyn Future<Output = Result<Response<Out>, E>> + Send>>;

pin_project! {
    /// The future of [`crate::TenantRateLimit`].
    pub struct ResponseFuture<F, B, E, R = WrapBody>
    where
        R: ResponseBody<B>,
    {
        #[pin]
        state: State<F, R::Body, E>,
        // The inner body and the choice of body type, which the state
        // names only through `R::Body`.
        body: PhantomData<fn(B) -> R>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, Out, E> {
        Inner {
            #[pin]
            future: F,
            headers: Option<Box<RateHeaders>>,
        },
        // Boxed: a rejection is the rare path, and a small future is cheap to move.
        Rejected {
            response: Option<Box<Response<Bytes>>>,
        },
        // The Redis backend: check, then call the inner service.
        Remote {
            future: Remote<Out, E>,
        },
    }
}

impl<F, B, E, R: ResponseBody<B>> ResponseFuture<F, B, E, R> {
    fn new(state: State<F, R::Body, E>) -> Self {
        ResponseFuture {
            state,
            body: PhantomData,
        }
    }

    pub(crate) fn inner(future: F, headers: Option<Box<RateHeaders>>) -> Self {
        Self::new(State::Inner { future, headers })
    }

    pub(crate) fn remote(future: Remote<R::Body, E>) -> Self {
        Self::new(State::Remote { future })
    }

    pub(crate) fn rejected(response: Box<Response<Bytes>>) -> Self {
        Self::new(State::Rejected {
            response: Some(response),
        })
    }
}

impl<F, B, E, R> Future for ResponseFuture<F, B, E, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: ResponseBody<B>,
{
    type Output = Result<Response<R::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Inner { future, headers } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(passed::<B, R>(response, headers.take())))
            }
            StateProjection::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok((*response).map(R::rejection)))
            }
            StateProjection::Remote { future } => future.as_mut().poll(cx),
        }
    }
}

/// The inner service's answer to a passed request, with `headers` added and
/// its body as `R` has it.
#[inline]
pub(crate) fn passed<B, R: ResponseBody<B>>(
    mut response: Response<B>,
    headers: Option<Box<RateHeaders>>,
) -> Response<R::Body> {
    if let Some(headers) = headers {
        (*headers).insert_into(response.headers_mut());
    }
    response.map(R::inner)
}
