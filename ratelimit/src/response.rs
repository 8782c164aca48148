//! What the layer answers: RateLimit header fields (IETF draft 10) on every
//! response, and for a refused request a 429 with `Retry-After` and an
//! `application/problem+json` body, or for gRPC a `RESOURCE_EXHAUSTED` status.
//!
//! For a GCRA limit, `q` is the burst and `w` the seconds the burst refills
//! in (the policy's `requests` and `per_seconds` when burst = requests); `r`
//! is how many requests would be admitted now and `t` the seconds until the
//! limit is full again. On a refusal the refusing limit's `t` is the
//! `Retry-After` value, so `Retry-After` is never earlier than `t`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::gcra::ceil_seconds;
use crate::policy::LimitSet;

/// `RateLimit-Policy`: each limit's quota and window.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each limit's remaining requests and reset.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC's `RESOURCE_EXHAUSTED`.
const GRPC_RESOURCE_EXHAUSTED: &str = "8";
const GRPC_UNAUTHENTICATED: &str = "16";
const GRPC_INVALID_ARGUMENT: &str = "3";

/// Which responses carry the RateLimit header fields.
///
/// `.headers(true)` and `.headers(false)` on the builder mean
/// [`HeaderMode::Always`] and [`HeaderMode::Never`]. The default is
/// `NearLimit { percent: 10 }`: the fields reach every client that comes
/// close to a limit, and a tenant far from its limits costs the layer about
/// what it costs with them off (on every response they take about 3% of a
/// small service's throughput; BENCHMARKS.md, "End to end").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// Every response the layer passes or refuses, as GitHub's API does.
    Always,
    /// Refused and shadowed responses, and responses where some limit has
    /// at most `percent` percent of its burst left. Draft 10 (section 6.2)
    /// names this for servers concerned with performance: while a tenant is
    /// far from its limits, the layer costs about what it costs with the
    /// fields off. Clients must not expect the fields on every response
    /// (section 7), and a percent above 100 acts as 100.
    NearLimit {
        /// The share of a limit's burst left at or below which the fields
        /// are sent: 0 sends them only once a limit is spent.
        percent: u8,
    },
    /// No response.
    Never,
}

impl Default for HeaderMode {
    fn default() -> HeaderMode {
        HeaderMode::NearLimit { percent: 10 }
    }
}

impl From<bool> for HeaderMode {
    fn from(enabled: bool) -> HeaderMode {
        if enabled {
            HeaderMode::Always
        } else {
            HeaderMode::Never
        }
    }
}

impl HeaderMode {
    /// Whether a refused or shadowed request gets the fields: in every
    /// mode but `Never`, as its refusing limit is spent.
    pub(crate) fn on_refusal(self) -> bool {
        self != HeaderMode::Never
    }

    /// Whether a passed request whose key has `tats` under `set` at `now`
    /// gets the fields.
    #[inline]
    pub(crate) fn on_pass<const N: usize>(self, set: &LimitSet, tats: &[u64; N], now: u64) -> bool {
        match self {
            HeaderMode::Always => true,
            HeaderMode::Never => false,
            // In time rather than requests, which needs no division: a limit
            // with p% of its burst left has its TAT (100 - p)% of the
            // burst's window ahead of now.
            HeaderMode::NearLimit { percent } => {
                let spent = u128::from(100u8.saturating_sub(percent));
                set.limits.iter().zip(tats).any(|(limit, &tat)| {
                    u128::from(tat.saturating_sub(now)) * 100 >= u128::from(limit.tolerance) * spent
                })
            }
        }
    }
}

/// Bytes of a `RateLimit` value built without a heap buffer: enough for two
/// limits of any plan (names of up to 86 bytes and numbers of up to 20
/// digits); longer values move to the heap.
const STATE_ON_STACK: usize = 272;

/// The two RateLimit header values of one response.
#[derive(Debug, Clone)]
pub(crate) struct RateHeaders {
    policy: HeaderValue,
    state: HeaderValue,
}

impl RateHeaders {
    /// The header values for `set` with the key's TATs at `now`; `refused`
    /// is the refusing limit and its Retry-After in seconds. Boxed: by
    /// default most responses carry no fields, and the decision and the
    /// future that carry them are cheaper to move small.
    pub fn new<const N: usize>(
        set: &LimitSet,
        tats: &[u64; N],
        now: u64,
        refused: Option<(usize, u64)>,
    ) -> Box<Self> {
        // Written on the stack, then copied into one allocation of the exact
        // length: a heap `Vec` costs an allocation of its own, and `Bytes`
        // another for its shared header when the `Vec` has spare capacity.
        let mut stack = StackBuffer::new();
        write_state(set, tats, now, refused, |piece| stack.push(piece));
        let state = match stack.as_slice() {
            Some(state) => HeaderValue::from_bytes(state),
            None => {
                let mut state = Vec::new();
                write_state(set, tats, now, refused, |piece| {
                    state.extend_from_slice(piece)
                });
                HeaderValue::from_maybe_shared(Bytes::from(state))
            }
        };
        Box::new(RateHeaders {
            policy: set.policy_header.clone(),
            state: state.expect("names are header-safe"),
        })
    }

    pub fn insert_into(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy);
        headers.insert(RATELIMIT, self.state);
    }
}

/// Writes the `RateLimit` value for `set` piece by piece into `out`. By
/// hand: `write!` costs more than the rest of the request path.
#[inline(always)]
fn write_state<const N: usize>(
    set: &LimitSet,
    tats: &[u64; N],
    now: u64,
    refused: Option<(usize, u64)>,
    mut out: impl FnMut(&[u8]),
) {
    let mut digits = itoa::Buffer::new();
    for (i, (limit, name)) in set.limits.iter().zip(&set.names).enumerate() {
        if i > 0 {
            out(b", ");
        }
        // The refusing limit resets when the request would be admitted;
        // what it has left is less than the request cost, though it may be
        // more than nothing.
        let (remaining, reset) = match refused {
            Some((limit_index, retry_after)) if limit_index == i => {
                (limit.remaining(tats[i], now), retry_after)
            }
            _ => (
                limit.remaining(tats[i], now),
                ceil_seconds(tats[i].saturating_sub(now)),
            ),
        };
        out(b"\"");
        out(name.as_bytes());
        out(b"\";r=");
        out(digits.format(remaining).as_bytes());
        out(b";t=");
        out(digits.format(reset).as_bytes());
    }
}

/// A fixed buffer on the stack that notes when a write did not fit.
struct StackBuffer {
    bytes: [u8; STATE_ON_STACK],
    len: usize,
    overflowed: bool,
}

impl StackBuffer {
    fn new() -> Self {
        StackBuffer {
            bytes: [0; STATE_ON_STACK],
            len: 0,
            overflowed: false,
        }
    }

    #[inline(always)]
    fn push(&mut self, piece: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + piece.len()) {
            Some(free) => {
                free.copy_from_slice(piece);
                self.len += piece.len();
            }
            None => self.overflowed = true,
        }
    }

    /// What was written, or `None` if some of it did not fit.
    fn as_slice(&self) -> Option<&[u8]> {
        (!self.overflowed).then(|| &self.bytes[..self.len])
    }
}

/// Whether the request is gRPC, which wants its status in `grpc-status`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a refused request, over the limits of `plan` and, for a
/// request of a route class its plan limits, `class`.
pub(crate) fn too_many_requests(
    (plan, class): (&str, Option<&str>),
    retry_after_seconds: u64,
    rate: Option<Box<RateHeaders>>,
    grpc: bool,
) -> Response<Bytes> {
    let of_class = class
        .map(|c| format!(" for class \"{c}\""))
        .unwrap_or_default();
    let detail = format!(
        "over the rate limit of plan \"{plan}\"{of_class}; retry after {retry_after_seconds} s"
    );
    let mut response = if grpc {
        grpc_status(GRPC_RESOURCE_EXHAUSTED, &detail)
    } else {
        let class_field = class
            .map(|c| format!(r#","class":"{c}""#))
            .unwrap_or_default();
        let body = format!(
            r#"{{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"{detail}","plan":"{plan}"{class_field},"retry_after_seconds":{retry_after_seconds}}}"#,
            detail = detail.replace('"', "\\\""),
        );
        problem(StatusCode::TOO_MANY_REQUESTS, body)
    };
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    if let Some(rate) = rate {
        (*rate).insert_into(response.headers_mut());
    }
    response
}

/// The answer to a request with no key, when the layer is told to refuse those.
pub(crate) fn unidentified(status: StatusCode, grpc: bool) -> Response<Bytes> {
    let detail = "the request carries no tenant key";
    if grpc {
        let code = if status == StatusCode::UNAUTHORIZED {
            GRPC_UNAUTHENTICATED
        } else {
            GRPC_INVALID_ARGUMENT
        };
        return grpc_status(code, detail);
    }
    let title = status.canonical_reason().unwrap_or("Client Error");
    let body = format!(
        r#"{{"type":"about:blank","title":"{title}","status":{},"detail":"{detail}"}}"#,
        status.as_u16()
    );
    problem(status, body)
}

fn problem(status: StatusCode, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A trailers-only gRPC response: HTTP 200 with the status in the headers.
fn grpc_status(code: &'static str, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from_static(code));
    // Printable ASCII but '%' needs no percent-encoding in grpc-message.
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert(GRPC_MESSAGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limit_set;
    use floodgate_rules::policy::Limit;
    use proptest::prelude::*;
    use std::num::NonZeroU32;

    fn limit(requests: u32, per_seconds: u32) -> Limit {
        let n = |v: u32| NonZeroU32::new(v.max(1)).unwrap();
        Limit {
            requests: n(requests),
            per_seconds: n(per_seconds),
            burst: n(requests),
        }
    }

    proptest! {
        /// Short values are built on the stack and long ones on the heap;
        /// both must read as `write!` would have written them.
        #[test]
        fn the_ratelimit_value_reads_as_formatted_text(
            name in "[a-z0-9_-]{1,64}",
            // Up to a plan's limits and a class's.
            limits in proptest::collection::vec((1u32..10_000_000, 1u32..100_000), 1..=8),
            leads in proptest::collection::vec(0u64..200_000_000_000_000, 8),
            now in 0u64..1_000_000_000_000,
        ) {
            let limits: Vec<Limit> = limits.into_iter().map(|(r, w)| limit(r, w)).collect();
            let set = limit_set(&name, &limits, false);
            let tats: crate::gcra::Tats = std::array::from_fn(|i| now + leads[i]);
            let expected: Vec<String> = set
                .limits
                .iter()
                .zip(&set.names)
                .enumerate()
                .map(|(i, (limit, name))| {
                    let reset = ceil_seconds(tats[i] - now);
                    format!("\"{name}\";r={};t={reset}", limit.remaining(tats[i], now))
                })
                .collect();
            let headers = RateHeaders::new(&set, &tats, now, None);
            prop_assert_eq!(headers.state.to_str().unwrap(), expected.join(", "));
        }
    }
}
