//! Shared by the tests of the layer on local state: a service that answers
//! at once, a call answered in one poll, and the independent model the
//! property tests check the layer against.

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tower::Service;

/// A service that answers "ok" at once.
pub fn ok_service()
-> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Unpin + Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<()>| std::future::ready(Ok(Response::new("ok".to_owned()))))
}

/// Calls `service`; the inner service is ready at once, so one poll answers.
pub fn answer_now<S, B>(service: &mut S, request: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let mut future = std::pin::pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("the layer answers at once");
    };
    response
}

/// One GCRA limit as a token bucket in nanoseconds of credit: refilled one
/// nanosecond per nanosecond up to `interval × burst`, drained by `interval
/// × cost` per admitted request.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub interval: u64,
    pub capacity: u64,
    pub credit: u64,
    pub at: u64,
}

impl Bucket {
    pub fn refill(&mut self, now: u64) {
        self.credit = (self.credit + (now - self.at)).min(self.capacity);
        self.at = now;
    }
}

/// Full buckets for limits given as (interval in ns, burst).
pub fn buckets(limits: &[(u64, u64)]) -> Vec<Bucket> {
    limits
        .iter()
        .map(|&(interval, burst)| Bucket {
            interval,
            capacity: interval * burst,
            credit: interval * burst,
            at: 0,
        })
        .collect()
}
