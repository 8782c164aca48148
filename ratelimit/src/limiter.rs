//! The decision for one request: find its key, resolve its limits from the
//! current policy, check them all, count, log, and build the answer.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use floodgate_rules::policy::Quotas;
use governor::clock::{Clock, Reference};
use http::{Response, StatusCode};
use metrics::Counter;
use time::OffsetDateTime;

use crate::client_ip::ClientIp;
use crate::gcra::{Verdict, ceil_seconds};
use crate::key::{Key, RequestHead, TenantKey};
use crate::observe::{Event, EventLog};
use crate::policy::{CompiledAt, CompiledPolicy, KeyHasher};
use crate::response::{self, RateHeaders};
use crate::store::Store;

/// What to do with a request that carries no tenant key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// Charge it to its client address on the anonymous plan.
    #[default]
    Anonymous,
    /// Refuse it with 401 (gRPC `UNAUTHENTICATED`).
    Unauthorized,
    /// Refuse it with 400 (gRPC `INVALID_ARGUMENT`).
    BadRequest,
}

/// The layer's settings, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub missing_key: MissingKey,
    pub client_ip: ClientIp,
    pub headers: bool,
    pub shadow: bool,
}

/// The policy and the clock it is compiled against; shared with
/// [`crate::RateLimitHandle`] for reloads.
pub(crate) struct PolicyCell {
    pub policy: ArcSwap<CompiledPolicy>,
    pub hasher: KeyHasher,
    /// Reads the limiter's clock in nanoseconds since the layer was built.
    pub nanos: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl PolicyCell {
    /// Compiles `quotas` as of `wall` (the real wall clock when `None`) and
    /// swaps it in. Keys whose limits are unchanged keep their state.
    pub fn reload(&self, quotas: &Quotas, wall: Option<OffsetDateTime>) {
        let at = CompiledAt {
            wall: wall.unwrap_or_else(crate::clock::wall_now),
            nanos: (self.nanos)(),
        };
        let compiled = CompiledPolicy::compile(quotas, &self.hasher, at);
        self.policy.store(Arc::new(compiled));
    }
}

/// What the layer does with one request.
pub(crate) enum Decision {
    /// Pass it to the inner service, adding these headers to its response.
    Pass(Option<RateHeaders>),
    /// Answer it with this response.
    Reject(Box<Response<Bytes>>),
}

/// Everything the request path needs, shared by every clone of the service.
pub(crate) struct Limiter<K, C: Clock> {
    pub key: K,
    pub settings: Settings,
    pub clock: C,
    pub start: C::Instant,
    pub cell: Arc<PolicyCell>,
    pub store: Arc<Store>,
    pub events: EventLog<C>,
    pub unidentified: Counter,
}

impl<K: TenantKey, C: Clock> Limiter<K, C> {
    /// Decides what happens to the request with head `head`.
    pub fn decide(&self, head: RequestHead<'_>) -> Decision {
        let key = match self.key.key(head) {
            Some(key) => key,
            None => match self.settings.missing_key {
                MissingKey::Anonymous => self.anonymous_key(head),
                MissingKey::Unauthorized => {
                    return self.unidentified(head, StatusCode::UNAUTHORIZED);
                }
                MissingKey::BadRequest => return self.unidentified(head, StatusCode::BAD_REQUEST),
            },
        };
        let now = self.clock.now().duration_since(self.start).as_u64();
        let policy = self.cell.policy.load();
        let hash = self.cell.hasher.hash(&key);
        let resolved = policy.resolve(&key, hash, now);
        let set = resolved.set;
        if resolved.unknown_plan {
            let plan = match key {
                Key::Tenant { plan, .. } => plan.unwrap_or_default(),
                _ => "",
            };
            self.events.emit(Event::UnknownPlan { plan, key: &key });
        }
        let checked = self.store.check(hash, set.fingerprint, &set.limits, now);
        let Verdict::Refuse { wait, limit } = checked.verdict else {
            set.counters.allowed.increment(1);
            let headers = self.settings.headers;
            return Decision::Pass(
                headers.then(|| RateHeaders::new(set, &checked.tats, now, None)),
            );
        };
        let retry_after = ceil_seconds(wait).max(1);
        let shadow = set.shadow || self.settings.shadow;
        self.events.emit(Event::OverLimit {
            plan: &set.label,
            key: &key,
            retry_after_seconds: retry_after,
            shadow,
            overflow: checked.overflow,
        });
        let headers = self
            .settings
            .headers
            .then(|| RateHeaders::new(set, &checked.tats, now, Some((limit, retry_after))));
        if shadow {
            set.counters.shadowed.increment(1);
            return Decision::Pass(headers);
        }
        set.counters.limited.increment(1);
        let grpc = response::is_grpc(head.headers);
        Decision::Reject(Box::new(response::too_many_requests(
            &set.label,
            retry_after,
            headers,
            grpc,
        )))
    }

    /// The client-address key for a request without a tenant. Without a peer
    /// address every such request shares one key: fail closed, and say so.
    fn anonymous_key<'r>(&self, head: RequestHead<'r>) -> Key<'r> {
        self.settings.client_ip.key(head).unwrap_or_else(|| {
            self.events.emit(Event::NoPeerAddress);
            Key::Ip(std::net::Ipv6Addr::UNSPECIFIED.into())
        })
    }

    fn unidentified(&self, head: RequestHead<'_>, status: StatusCode) -> Decision {
        self.unidentified.increment(1);
        let grpc = response::is_grpc(head.headers);
        Decision::Reject(Box::new(response::unidentified(status, grpc)))
    }
}
