//! The response body: the inner service's, or the layer's own rejection.
//!
//! [`ResponseBody`] picks the body type of the layer's responses. The
//! default, [`WrapBody`], wraps any inner body in a [`RateLimitBody`].
//! [`KeepBody`] keeps the inner service's own body type, for types that can
//! be built from `Bytes` such as axum's `Body`: `axum::serve` then takes the
//! service as it is, with no conversion layer around it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's body, or the layer's rejection: a problem+json
    /// document, or nothing for gRPC.
    pub struct RateLimitBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        // Boxed, so the wrapper is no larger than the inner body where that
        // has a niche (axum's: 16 bytes), and a response through the layer
        // moves as cheaply as one without it.
        Rejection {
            data: Box<Bytes>,
        },
    }
}

impl<B> RateLimitBody<B> {
    pub(crate) fn inner(body: B) -> RateLimitBody<B> {
        RateLimitBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn rejection(data: Bytes) -> RateLimitBody<B> {
        RateLimitBody {
            kind: Kind::Rejection {
                data: Box::new(data),
            },
        }
    }
}

impl<B> Body for RateLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProjection::Inner { body } => body.poll_frame(cx),
            // The one frame, then the end.
            KindProjection::Rejection { data } if data.is_empty() => Poll::Ready(None),
            KindProjection::Rejection { data } => {
                Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut **data)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { data } => data.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { data } => SizeHint::with_exact(data.len() as u64),
        }
    }
}

/// The body type of the layer's responses, given the inner service's `B`.
pub trait ResponseBody<B> {
    /// The body of every response the layer returns.
    type Body;
    /// The body of a response from the inner service.
    fn inner(body: B) -> Self::Body;
    /// The body of the layer's own answer: a problem+json document, or
    /// nothing for gRPC.
    fn rejection(data: Bytes) -> Self::Body;
}

/// Responses carry a [`RateLimitBody`], whatever the inner body is: the
/// default.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrapBody;

impl<B> ResponseBody<B> for WrapBody {
    type Body = RateLimitBody<B>;

    #[inline]
    fn inner(body: B) -> RateLimitBody<B> {
        RateLimitBody::inner(body)
    }

    fn rejection(data: Bytes) -> RateLimitBody<B> {
        RateLimitBody::rejection(data)
    }
}

/// Responses keep the inner service's body type, and the layer builds its
/// own answers with `B::from(Bytes)`. Chosen with
/// [`crate::TenantRateLimitLayer::keep_body_type`].
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepBody;

impl<B: From<Bytes>> ResponseBody<B> for KeepBody {
    type Body = B;

    #[inline]
    fn inner(body: B) -> B {
        body
    }

    fn rejection(data: Bytes) -> B {
        B::from(data)
    }
}

/// Unwraps to axum's own body, where a wrapped body must become one (with
/// `.map_response(|response| response.map(Body::from))`). An admitted
/// response gives back the inner body as it was, where `IntoResponse` would
/// box the wrapper once more. A layer built for axum is simpler with
/// [`crate::TenantRateLimitLayer::keep_body_type`], which needs neither.
#[cfg(feature = "axum")]
impl From<RateLimitBody<axum::body::Body>> for axum::body::Body {
    fn from(body: RateLimitBody<axum::body::Body>) -> axum::body::Body {
        match body.kind {
            Kind::Inner { body } => body,
            Kind::Rejection { data } => axum::body::Body::from(*data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn wrapping_a_body_with_a_niche_adds_no_size() {
        // A larger wrapper makes every response through the layer a memcpy.
        let wrapped = std::mem::size_of::<RateLimitBody<axum::body::Body>>();
        assert_eq!(wrapped, std::mem::size_of::<axum::body::Body>());
    }

    #[tokio::test]
    async fn a_rejection_body_yields_its_data_once_then_ends() {
        let body = RateLimitBody::<axum::body::Body>::rejection(Bytes::from_static(b"{}"));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
        let empty = RateLimitBody::<axum::body::Body>::rejection(Bytes::new());
        assert!(empty.is_end_stream());
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn kept_bodies_pass_as_they_are_and_rejections_are_built_from_bytes() {
        let inner = <KeepBody as ResponseBody<axum::body::Body>>::inner("ok".into());
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "ok");
        let rejection: axum::body::Body = KeepBody::rejection(Bytes::from_static(b"{}"));
        assert_eq!(rejection.size_hint().exact(), Some(2));
        assert_eq!(rejection.collect().await.unwrap().to_bytes(), "{}");
    }

    #[tokio::test]
    async fn axum_gets_back_the_inner_body_or_the_rejection() {
        let inner = RateLimitBody::inner(axum::body::Body::from("ok"));
        let inner = axum::body::Body::from(inner);
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "ok");
        let rejection = RateLimitBody::<axum::body::Body>::rejection(Bytes::from_static(b"{}"));
        let rejection = axum::body::Body::from(rejection);
        assert_eq!(rejection.size_hint().exact(), Some(2));
        assert_eq!(rejection.collect().await.unwrap().to_bytes(), "{}");
    }
}
