//! The decision for one request: find its key, resolve its limits from the
//! current policy, check them all, count, log, and build the answer.

use std::sync::Arc;

use bytes::Bytes;
use governor::clock::{Clock, Reference};
use http::{HeaderMap, Request, Response, StatusCode};
use metrics::Counter;

use crate::client_ip::ClientIp;
use crate::gcra::{Verdict, ceil_seconds};
use crate::key::{Key, RequestHead, TenantKey};
use crate::observe::{Event, EventLog};
use crate::policy::{CompiledPolicy, LimitSet};
use crate::policy_cell::PolicyCell;
use crate::redis::RedisBackend;
use crate::response::{self, HeaderMode, RateHeaders};
use crate::route::{self, Class, RouteClass};
use crate::store::{Checked, Store};

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
    pub headers: HeaderMode,
    pub shadow: bool,
}

/// What the layer does with one request.
pub(crate) enum Decision {
    /// Pass it to the inner service, adding these headers to its response.
    Pass(Option<Box<RateHeaders>>),
    /// Answer it with this response.
    Reject(Box<Response<Bytes>>),
    /// Ask Redis first, under this policy: [`Limiter::decide_remote`].
    Remote(Arc<CompiledPolicy>),
}

/// Everything the request path needs, shared by every clone of the service.
pub(crate) struct Limiter<K, C: Clock> {
    pub key: K,
    pub settings: Settings,
    pub clock: C,
    pub start: C::Instant,
    pub cell: Arc<PolicyCell>,
    pub store: Arc<Store>,
    /// Set when the state lives in Redis; `store` is then unused.
    pub redis: Option<Arc<RedisBackend>>,
    pub events: EventLog<C>,
    pub unidentified: Counter,
}

impl<K, C: Clock> std::fmt::Debug for Limiter<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .field(
                "backend",
                &if self.redis.is_some() {
                    "redis"
                } else {
                    "local"
                },
            )
            .field("tracked_keys", &self.store.tracked_keys())
            .finish_non_exhaustive()
    }
}

impl<K: TenantKey, C: Clock> Limiter<K, C> {
    /// Decides what happens to `request`: at once for the local backend,
    /// and for Redis when the near-cache or the fallback can answer;
    /// otherwise [`Decision::Remote`].
    pub fn decide<B>(&self, request: &Request<B>) -> Decision {
        // Built here rather than by the caller: copying a just-built head
        // across the call reloads it wider than it was stored, which stalls.
        let head = RequestHead::of(request);
        // Used where it lies: moving a key out reloads its address in wider
        // pieces than it was stored, which stalls too.
        let key = self.key_of(head);
        let Some(key) = key.as_ref() else {
            return self.unidentified(head);
        };
        let now = self.now();
        let hash = self.cell.hasher.hash(key);
        self.cell.with(|policy| {
            let (set, cost) = self.resolve(policy, head, key, hash, now);
            let checked = match &self.redis {
                // The usual case, a plan's limits alone, in a smaller result.
                None if set.class.is_none() => {
                    let checked = self
                        .store
                        .check(hash, set.fingerprint, &set.limits, now, cost);
                    return self.settle(head.headers, key, set, checked, now);
                }
                None => self.store.check_set(hash, set, &set.limits, now, cost),
                Some(redis) => match redis.near_cache(hash, set, now, cost) {
                    Some(checked) => checked,
                    None if redis.connected() => return Decision::Remote(Arc::clone(policy)),
                    None => redis.fallback(hash, set, now, cost, redis.down_reason()),
                },
            };
            self.settle(head.headers, key, set, checked, now)
        })
    }

    /// Finishes a [`Decision::Remote`]: asks Redis, or decides locally if it
    /// does not answer within its budget. Never returns `Remote`.
    pub async fn decide_remote(
        &self,
        head: RequestHead<'_>,
        policy: Arc<CompiledPolicy>,
        redis: &Arc<RedisBackend>,
    ) -> Decision {
        let Some(key) = self.key_of(head) else {
            return self.unidentified(head);
        };
        let now = self.now();
        let hash = self.cell.hasher.hash(&key);
        let set = policy.resolve(&key, hash, now).set;
        // As `decide` classed it, which logged an unknown class already.
        let extension = head.extensions.get::<RouteClass>();
        let (set, _, cost) = policy.classify(head, extension, set);
        let checked = match redis.check(&key, hash, set, now, cost).await {
            Ok(checked) => checked,
            Err(reason) => redis.fallback(hash, set, now, cost, reason),
        };
        self.settle(head.headers, &key, set, checked, now)
    }

    #[inline]
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// The request's key; `None` when it has none and the layer refuses those.
    #[inline]
    fn key_of<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>> {
        if let Some(key) = self.key.key(head) {
            return Some(key);
        }
        match self.settings.missing_key {
            MissingKey::Anonymous => Some(self.anonymous_key(head)),
            MissingKey::Unauthorized | MissingKey::BadRequest => None,
        }
    }

    /// The set a request is checked against (its plan's, or its class's
    /// under its plan), and its cost.
    #[inline]
    fn resolve<'p>(
        &self,
        policy: &'p CompiledPolicy,
        head: RequestHead<'_>,
        key: &Key<'_>,
        hash: u64,
        now: u64,
    ) -> (&'p LimitSet, u64) {
        let resolved = policy.resolve(key, hash, now);
        if resolved.unknown_plan {
            let plan = match key {
                Key::Tenant { plan, .. } => plan.unwrap_or_default(),
                _ => "",
            };
            self.events.emit(Event::UnknownPlan { plan, key });
        }
        if !route::classes_in_use() {
            return (resolved.set, 1);
        }
        self.classify(policy, head, key, resolved.set)
    }

    /// The set and cost of a request that may have a route class.
    #[inline(never)]
    fn classify<'p>(
        &self,
        policy: &'p CompiledPolicy,
        head: RequestHead<'_>,
        key: &Key<'_>,
        set: &'p LimitSet,
    ) -> (&'p LimitSet, u64) {
        let extension = head.extensions.get::<RouteClass>();
        let (set, class, cost) = policy.classify(head, extension, set);
        if let Class::Unknown(class) = class {
            self.events.emit(Event::UnknownClass { class, key });
        }
        (set, cost)
    }

    /// Counts and answers a checked request.
    #[inline]
    fn settle<const N: usize>(
        &self,
        request_headers: &HeaderMap,
        key: &Key<'_>,
        set: &LimitSet,
        checked: Checked<N>,
        now: u64,
    ) -> Decision {
        let Verdict::Refuse { wait, limit } = checked.verdict else {
            set.counters.allowed.increment(1);
            let headers = self.settings.headers.on_pass(set, &checked.tats, now);
            return Decision::Pass(
                headers.then(|| RateHeaders::new(set, &checked.tats, now, None)),
            );
        };
        self.over_limit(request_headers, key, set, checked, now, (wait, limit))
    }

    /// Counts, logs and answers a request over limit `refused.1`, which frees
    /// up in `refused.0` nanoseconds.
    #[cold]
    fn over_limit<const N: usize>(
        &self,
        request_headers: &HeaderMap,
        key: &Key<'_>,
        set: &LimitSet,
        checked: Checked<N>,
        now: u64,
        (wait, limit): (u64, usize),
    ) -> Decision {
        let retry_after = ceil_seconds(wait).max(1);
        let shadow = set.shadow || self.settings.shadow;
        let class = set.class.as_ref().map(|c| &*c.name);
        self.events.emit(Event::OverLimit {
            plan: &set.label,
            class: class.unwrap_or_default(),
            key,
            retry_after_seconds: retry_after,
            shadow,
            overflow: checked.overflow,
        });
        let headers = self
            .settings
            .headers
            .on_refusal()
            .then(|| RateHeaders::new(set, &checked.tats, now, Some((limit, retry_after))));
        if shadow {
            set.counters.shadowed.increment(1);
            return Decision::Pass(headers);
        }
        set.counters.limited.increment(1);
        let grpc = response::is_grpc(request_headers);
        Decision::Reject(Box::new(response::too_many_requests(
            (&set.label, class),
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

    /// The answer to a request without a key, when the layer refuses those.
    #[cold]
    fn unidentified(&self, head: RequestHead<'_>) -> Decision {
        let status = match self.settings.missing_key {
            MissingKey::BadRequest => StatusCode::BAD_REQUEST,
            MissingKey::Unauthorized | MissingKey::Anonymous => StatusCode::UNAUTHORIZED,
        };
        self.unidentified.increment(1);
        let grpc = response::is_grpc(head.headers);
        Decision::Reject(Box::new(response::unidentified(status, grpc)))
    }
}
