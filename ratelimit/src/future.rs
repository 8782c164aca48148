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

pin_project! {
    /// The future of [`crate::TenantRateLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
            headers: Option<RateHeaders>,
        },
        // Boxed: a rejection is the rare path, and a small future is cheap to move.
        Rejected {
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F, headers: Option<RateHeaders>) -> Self {
        ResponseFuture {
            state: State::Inner { future, headers },
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

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RateLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Inner { future, headers } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(headers) = headers.take() {
                    headers.insert_into(response.headers_mut());
                }
                Poll::Ready(Ok(response.map(RateLimitBody::inner)))
            }
            StateProjection::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok((*response).map(RateLimitBody::rejection)))
            }
        }
    }
}
