//! [`TenantRateLimitLayer`], its builder, and the [`RateLimitHandle`] that
//! swaps the policy at runtime.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;

use floodgate_rules::policy::Quotas;
use governor::clock::{Clock, QuantaClock, Reference};
use time::OffsetDateTime;
use tower_layer::Layer;

use crate::body::{KeepBody, WrapBody};
use crate::client_ip::ClientIp;
use crate::key::{TenantExtension, TenantKey};
use crate::limiter::{Limiter, MissingKey, Settings};
use crate::observe::{Counters, EventLog};
use crate::policy::{CompiledAt, CompiledPolicy, KeyHasher};
use crate::policy_cell::PolicyCell;
use crate::redis::{Backend, BuildError, RedisBackend};
use crate::response::HeaderMode;
use crate::service::TenantRateLimit;
use crate::store::Store;

/// The default cap on tracked keys: about 70 MB of state at most.
pub const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::new(1_000_000).expect("non-zero");

/// Applies per-tenant limits from the policy's `[quotas]` to a service.
///
/// Cloning is cheap: clones share the limiter state and the policy. `R`
/// picks the responses' body type: a [`crate::RateLimitBody`] by default,
/// or the inner service's own after [`TenantRateLimitLayer::keep_body_type`].
pub struct TenantRateLimitLayer<K = TenantExtension, C: Clock = QuantaClock, R = WrapBody> {
    limiter: Arc<Limiter<K, C>>,
    body: PhantomData<fn() -> R>,
}

impl<K, C: Clock, R> Clone for TenantRateLimitLayer<K, C, R> {
    fn clone(&self) -> Self {
        TenantRateLimitLayer {
            limiter: Arc::clone(&self.limiter),
            body: PhantomData,
        }
    }
}

impl<K, C: Clock, R> std::fmt::Debug for TenantRateLimitLayer<K, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl TenantRateLimitLayer {
    /// Starts a layer enforcing `quotas`, keyed by the [`crate::Tenant`]
    /// extension, with anonymous requests charged to their peer address.
    pub fn builder(quotas: &Quotas) -> Builder<TenantExtension, QuantaClock> {
        Builder {
            quotas: quotas.clone(),
            key: TenantExtension,
            clock: QuantaClock::default(),
            wall: None,
            settings: Settings {
                missing_key: MissingKey::default(),
                client_ip: ClientIp::default(),
                headers: HeaderMode::default(),
                shadow: false,
            },
            max_keys: DEFAULT_MAX_KEYS,
            backend: None,
        }
    }
}

impl<K, C: Clock> TenantRateLimitLayer<K, C> {
    /// Responses keep the inner service's body type `B`, and the layer's own
    /// answers are built with `B::from(Bytes)`. For axum's `Body`, which
    /// `axum::serve` requires, this saves a conversion layer around the
    /// rate limit, and about 230 instructions a request.
    pub fn keep_body_type(self) -> TenantRateLimitLayer<K, C, KeepBody> {
        TenantRateLimitLayer {
            limiter: self.limiter,
            body: PhantomData,
        }
    }
}

impl<K, C: Clock, R> TenantRateLimitLayer<K, C, R> {
    /// A handle that reloads the policy and reads the limiter's size.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            cell: Arc::clone(&self.limiter.cell),
            store: Arc::clone(&self.limiter.store),
            redis: self.limiter.redis.clone(),
        }
    }
}

impl<S, K, C: Clock, R> Layer<S> for TenantRateLimitLayer<K, C, R> {
    type Service = TenantRateLimit<S, K, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantRateLimit::new(inner, Arc::clone(&self.limiter))
    }
}

/// Settings for a [`TenantRateLimitLayer`]; every one has a default.
pub struct Builder<K, C> {
    quotas: Quotas,
    key: K,
    clock: C,
    wall: Option<OffsetDateTime>,
    settings: Settings,
    max_keys: NonZeroUsize,
    backend: Option<Backend>,
}

impl<K, C> std::fmt::Debug for Builder<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("quotas", &self.quotas)
            .field("settings", &self.settings)
            .field("max_keys", &self.max_keys)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl<K: TenantKey, C: Clock + Clone + Send + Sync + 'static> Builder<K, C> {
    /// Reads the tenant with `key` instead of the [`crate::Tenant`] extension.
    pub fn key<K2: TenantKey>(self, key: K2) -> Builder<K2, C> {
        Builder {
            quotas: self.quotas,
            key,
            clock: self.clock,
            wall: self.wall,
            settings: self.settings,
            max_keys: self.max_keys,
            backend: self.backend,
        }
    }

    /// How requests without a key are treated (default: anonymous plan by
    /// client address).
    pub fn missing_key(mut self, missing_key: MissingKey) -> Self {
        self.settings.missing_key = missing_key;
        self
    }

    /// How the client address of anonymous requests is found (default: the
    /// peer address, forwarding headers ignored).
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.settings.client_ip = client_ip;
        self
    }

    /// Which responses carry the RateLimit header fields (default:
    /// `HeaderMode::NearLimit { percent: 10 }`, refusals and responses near
    /// a limit): `true` for every response, `false` for none, or a
    /// [`HeaderMode`].
    pub fn headers(mut self, mode: impl Into<HeaderMode>) -> Self {
        self.settings.headers = mode.into();
        self
    }

    /// Lets every over-limit request through, counted and logged, whatever
    /// the plan says (default: only plans with `shadow = true`).
    pub fn shadow(mut self, enabled: bool) -> Self {
        self.settings.shadow = enabled;
        self
    }

    /// The most keys tracked at once (default [`DEFAULT_MAX_KEYS`]). Past
    /// it, new keys share one overflow state per plan. A key on a plan of
    /// three or four limits counts twice.
    pub fn max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Runs on `clock`, such as governor's `FakeRelativeClock` in tests.
    pub fn clock<C2: Clock + Clone + Send + Sync + 'static>(self, clock: C2) -> Builder<K, C2> {
        Builder {
            quotas: self.quotas,
            key: self.key,
            clock,
            wall: self.wall,
            settings: self.settings,
            max_keys: self.max_keys,
            backend: self.backend,
        }
    }

    /// Keeps the state in `backend` instead of where the policy's
    /// `[quotas] backend` says (by default, in this instance's memory).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Evaluates override expiry as if built at `wall` (tests and replays).
    pub fn wall_clock_at(mut self, wall: OffsetDateTime) -> Self {
        self.wall = Some(wall);
        self
    }

    /// The layer. With the Redis backend, call it inside a Tokio runtime:
    /// it starts connecting in the background, and checks are decided
    /// locally until it is connected. [`Builder::connect`] finds a Redis
    /// that can never be used at start-up instead.
    pub fn build(self) -> Result<TenantRateLimitLayer<K, C>, BuildError> {
        let redis = match self.chosen_backend()? {
            Backend::Local => None,
            Backend::Redis(settings) => Some(RedisBackend::start(&settings, self.max_keys.get())?),
        };
        Ok(self.build_with(redis))
    }

    /// The layer, once a first connection to Redis has been tried: an
    /// answer no retry can fix is an error (a certificate the CA does not
    /// sign or a host name it does not name, a wrong password or ACL user,
    /// a cluster where the settings say one server or the reverse). A Redis
    /// that is merely down is not: the layer starts, decides locally and
    /// reconnects in the background. With the local backend, the same as
    /// [`Builder::build`].
    pub async fn connect(self) -> Result<TenantRateLimitLayer<K, C>, BuildError> {
        let redis = match self.chosen_backend()? {
            Backend::Local => None,
            Backend::Redis(settings) => {
                Some(RedisBackend::connect(&settings, self.max_keys.get()).await?)
            }
        };
        Ok(self.build_with(redis))
    }

    /// The backend set on the builder, else the policy's.
    fn chosen_backend(&self) -> Result<Backend, BuildError> {
        match &self.backend {
            Some(backend) => Ok(backend.clone()),
            None => Backend::from_quotas(&self.quotas),
        }
    }

    fn build_with(self, redis: Option<Arc<RedisBackend>>) -> TenantRateLimitLayer<K, C> {
        let start = self.clock.now();
        let hasher = KeyHasher::default();
        let at = CompiledAt {
            wall: self.wall.unwrap_or_else(crate::clock::wall_now),
            nanos: 0,
        };
        let policy = CompiledPolicy::compile(&self.quotas, &hasher, at);
        let clock = self.clock.clone();
        let nanos = Box::new(move || clock.now().duration_since(start).as_u64());
        let cell = PolicyCell::new(policy, hasher, nanos);
        let limiter = Limiter {
            key: self.key,
            settings: self.settings,
            events: EventLog::new(&self.clock),
            clock: self.clock,
            start,
            cell: Arc::new(cell),
            store: Arc::new(Store::new(self.max_keys.get())),
            redis,
            unidentified: Counters::unidentified(),
        };
        TenantRateLimitLayer {
            limiter: Arc::new(limiter),
            body: PhantomData,
        }
    }
}

/// Reloads the policy of a running layer and reports on its state.
#[derive(Clone)]
pub struct RateLimitHandle {
    cell: Arc<PolicyCell>,
    store: Arc<Store>,
    redis: Option<Arc<RedisBackend>>,
}

impl RateLimitHandle {
    /// Swaps in new quotas without a restart. Requests in flight finish
    /// under the old ones; tenants whose limits are unchanged keep their state.
    pub fn reload(&self, quotas: &Quotas) {
        self.cell.reload(quotas, None);
    }

    /// [`RateLimitHandle::reload`], evaluating override expiry as of `wall`.
    pub fn reload_at(&self, quotas: &Quotas, wall: OffsetDateTime) {
        self.cell.reload(quotas, Some(wall));
    }

    /// With the Redis backend, whether checks go to Redis now (`false`
    /// while it is unreachable and checks are decided locally); `None` with
    /// the local backend.
    pub fn redis_connected(&self) -> Option<bool> {
        self.redis.as_ref().map(|redis| redis.connected())
    }

    /// How many keys have state now; a key on a plan of three or four
    /// limits counts twice.
    pub fn tracked_keys(&self) -> usize {
        self.store.tracked_keys()
    }

    /// The most keys tracked at once.
    pub fn max_keys(&self) -> usize {
        self.store.capacity()
    }

    /// How many shards the state is split into. A sweep for idle keys
    /// locks one shard at a time, so its longest pause is one shard's.
    pub fn shards(&self) -> usize {
        self.store.shards()
    }

    /// Drops every idle key now, one shard at a time (the layer also does
    /// this incrementally as requests arrive).
    pub fn evict_idle(&self) {
        self.store.evict_idle((self.cell.nanos)());
    }
}

impl std::fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}
