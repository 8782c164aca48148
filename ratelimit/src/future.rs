//! [`ResponseFuture`]: the inner service's response with the RateLimit
//! header fields added, or the layer's own rejection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::RateLimitBody;
use crate::response::RateHeaders;

/// The answer of a check that waits for Redis.
type Remote<B, E> = Pin<Box<dyn Future<Output = Result<Response<RateLimitBody<B>>, E>> + Send>>;

pin_project! {
    /// The future of [`crate::TenantRateLimit`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, B, E> {
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
            future: Remote<B, E>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(future: F, headers: Option<Box<RateHeaders>>) -> Self {
        ResponseFuture {
            state: State::Inner { future, headers },
        }
    }

    pub(crate) fn remote(future: Remote<B, E>) -> Self {
        ResponseFuture {
            state: State::Remote { future },
        }
    }

    pub(crate) fn rejected(response: Box<Response<Bytes>>) -> Self {
        ResponseFuture {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RateLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Inner { future, headers } => {
                let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                if let Some(headers) = headers.take() {
                    (*headers).insert_into(&mut parts.headers);
                }
                Poll::Ready(Ok(Response::from_parts(parts, RateLimitBody::inner(body))))
            }
            StateProjection::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok((*response).map(RateLimitBody::rejection)))
            }
            StateProjection::Remote { future } => future.as_mut().poll(cx),
        }
    }
}
