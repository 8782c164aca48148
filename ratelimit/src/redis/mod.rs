//! The Redis backend: one limit shared by every instance.
//!
//! - **One round trip per check.** A Lua script ([`SCRIPT`], sent as EVALSHA
//!   and loaded on NOSCRIPT) runs GCRA for all of a plan's limits on the
//!   server's `TIME` and charges them only if all admit. Each call carries
//!   the tenant's limits, so plans, overrides and reloads work unchanged.
//! - **Near-cache.** A tenant Redis refused is refused locally, without a
//!   round trip, until the time Redis said it may retry. Nothing can free
//!   its quota sooner, so this admits nothing Redis would not: the
//!   near-cache causes no over-admission.
//! - **Failure.** Each check has a time budget. A check that times out or
//!   fails is decided by a local limiter at `quota / expected_instances`, and
//!   so is every check while the connection is down: no request waits on a
//!   dead Redis. A background task reconnects. This is where limits loosen:
//!   while Redis is out, N instances admit up to N / `expected_instances`
//!   times the quota, and a tenant keeps both what Redis admitted before the
//!   outage and what the local limiter admits during it.
//! - **Topology.** Keys are `floodgate:{t:<tenant>}`, `floodgate:{i:<ip>}`
//!   or `floodgate:{s:<sha1 of an API key>}`, the same in every instance and
//!   one slot each, so the backend works against Redis Cluster. Keys expire once every limit has
//!   refilled, so Redis holds only active tenants.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use floodgate_rules::policy::{QuotaBackend, Quotas};
use metrics::Counter;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

use crate::gcra::{Gcra, MAX_LIMITS_PER_REQUEST, Tats, Verdict};
use crate::key::Key;
use crate::policy::{IdentityHash, LimitSet, class_key};
use crate::store::{Checked, Store};

/// The GCRA script the backend runs.
pub const SCRIPT: &str = include_str!("gcra.lua");

/// Counts checks decided locally because Redis was down, slow or failing.
pub const FALLBACKS_TOTAL: &str = "floodgate_ratelimit_redis_fallbacks_total";

/// Where the layer keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// In this instance's memory.
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisSettings),
}

/// How to reach Redis, and what to do without it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` or `rediss://…`.
    pub url: String,
    /// The password, if Redis needs one.
    pub password: Option<String>,
    /// How long one check may take before this instance decides locally.
    pub timeout: Duration,
    /// Instances sharing the limit: each enforces `quota / expected_instances`
    /// while Redis is unreachable.
    pub expected_instances: NonZeroU32,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("expected_instances", &self.expected_instances)
            .finish()
    }
}

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Redis URL did not parse.
    #[error("quotas.redis.url: {0}")]
    RedisUrl(String),
    /// The policy names a password variable that is not set.
    #[error("quotas.redis.password_env: {0} is not set; export it with the Redis password")]
    PasswordMissing(String),
    /// The Redis backend starts a background task, which needs Tokio.
    #[error("the redis backend needs a Tokio runtime: build the layer inside one")]
    NoRuntime,
}

impl Backend {
    /// The backend the policy's `[quotas]` chooses, with the password read
    /// from the environment variable it names.
    pub fn from_quotas(quotas: &Quotas) -> Result<Backend, BuildError> {
        let QuotaBackend::Redis(redis) = quotas.backend() else {
            return Ok(Backend::Local);
        };
        let password = match &redis.password_env {
            Some(name) => {
                Some(std::env::var(name).map_err(|_| BuildError::PasswordMissing(name.clone()))?)
            }
            None => None,
        };
        Ok(Backend::Redis(RedisSettings {
            url: redis.url.clone(),
            password,
            timeout: Duration::from_millis(u64::from(redis.timeout_ms.get())),
            expected_instances: redis.expected_instances,
        }))
    }
}

/// The shared state of the Redis backend.
pub(crate) struct RedisBackend {
    client: Client,
    /// `None` while Redis is unreachable: checks then go straight to the
    /// fallback, and a background task reconnects.
    connection: ArcSwapOption<MultiplexedConnection>,
    reconnecting: AtomicBool,
    script: redis::Script,
    timeout: Duration,
    expected_instances: u64,
    near_cache: NearCache,
    fallback: Store,
    fallbacks: Counter,
}

impl RedisBackend {
    /// Starts connecting in the background; checks fall back until connected.
    pub fn start(settings: &RedisSettings, max_keys: usize) -> Result<Arc<Self>, BuildError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let mut info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| BuildError::RedisUrl(e.to_string()))?;
        if let Some(password) = &settings.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let client = Client::open(info).map_err(|e| BuildError::RedisUrl(e.to_string()))?;
        let backend = Arc::new(RedisBackend {
            client,
            connection: ArcSwapOption::empty(),
            reconnecting: AtomicBool::new(true),
            script: redis::Script::new(SCRIPT),
            timeout: settings.timeout,
            expected_instances: u64::from(settings.expected_instances.get()),
            near_cache: NearCache::new(max_keys),
            fallback: Store::new(max_keys),
            fallbacks: metrics::counter!(FALLBACKS_TOTAL),
        });
        handle.spawn(Arc::clone(&backend).reconnect());
        Ok(backend)
    }

    /// Whether checks currently go to Redis.
    pub fn connected(&self) -> bool {
        self.connection.load().is_some()
    }

    /// The near-cache's answer for a tenant Redis refused recently under
    /// the same limits, a request costing at least as much.
    pub fn near_cache(&self, hash: u64, set: &LimitSet, now: u64, cost: u64) -> Option<Checked> {
        let (key, fingerprint) = near_cache_key(hash, set);
        self.near_cache.get(key, fingerprint, now, cost)
    }

    /// Asks Redis about `key`, whose local hash is `hash`; `None` when it
    /// could not answer in time.
    pub async fn check(
        self: &Arc<Self>,
        key: &Key<'_>,
        hash: u64,
        set: &LimitSet,
        now: u64,
        cost: u64,
    ) -> Option<Checked> {
        let connection = self.connection.load_full()?;
        let mut connection = MultiplexedConnection::clone(&connection);
        let tenant_key = redis_key(key);
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(cost);
        let (plan, class) = set
            .limits
            .split_at(set.class.as_ref().map_or(set.limits.len(), |c| c.split));
        invocation.key(&tenant_key).arg(set.fingerprint.to_string());
        script_limits(&mut invocation, plan);
        if let Some(part) = &set.class {
            // The same hash tag: one Cluster slot for the plan and its classes.
            invocation
                .key(format!("{tenant_key}:{}", part.name))
                .arg(part.fingerprint.to_string());
            script_limits(&mut invocation, class);
        }
        let answer = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection));
        let values: Vec<i64> = match answer.await {
            Ok(Ok(values)) => values,
            Ok(Err(error)) => {
                self.lost(&error.to_string());
                return None;
            }
            Err(_) => {
                self.lost(&format!("no answer within {:?}", self.timeout));
                return None;
            }
        };
        let checked = parse_reply(&values, set.limits.len(), now)?;
        if let Verdict::Refuse { wait, .. } = checked.verdict {
            let until = now.saturating_add(wait);
            let (key, fingerprint) = near_cache_key(hash, set);
            self.near_cache
                .insert(key, (until, cost), fingerprint, checked);
        }
        Some(checked)
    }

    /// Decides locally at `quota / expected_instances`.
    pub fn fallback(&self, hash: u64, set: &LimitSet, now: u64, cost: u64) -> Checked {
        self.fallbacks.increment(1);
        let mut scaled = [Gcra::default(); MAX_LIMITS_PER_REQUEST];
        for (slot, limit) in scaled.iter_mut().zip(&set.limits) {
            *slot = limit.shared_by(self.expected_instances);
        }
        let limits = &scaled[..set.limits.len()];
        self.fallback.check_set(hash, set, limits, now, cost)
    }

    /// Drops the connection after a failure and reconnects in the background;
    /// logs once per incident.
    fn lost(self: &Arc<Self>, reason: &str) {
        if self.connection.swap(None).is_some() {
            tracing::error!(
                reason,
                "Redis rate-limit backend unavailable; deciding locally at quota / expected_instances until it is back"
            );
        }
        if !self.reconnecting.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).reconnect());
        }
    }

    /// Connects with backoff, and proves the connection with a PING.
    async fn reconnect(self: Arc<Self>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let mut delay = Duration::from_millis(20);
        loop {
            let attempt = self
                .client
                .get_multiplexed_async_connection_with_config(&config);
            if let Ok(Ok(mut connection)) =
                tokio::time::timeout(Duration::from_secs(2), attempt).await
            {
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut connection);
                let budget = self.timeout.max(Duration::from_millis(100));
                if let Ok(Ok(_)) = tokio::time::timeout(budget, answer).await {
                    self.connection.store(Some(Arc::new(connection)));
                    self.reconnecting.store(false, Ordering::Release);
                    tracing::info!("Redis rate-limit backend connected");
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// The key's state in Redis: the same in every instance, so not the
/// per-process hash. `{…}` is the Cluster hash tag, so every key is one slot.
/// A secret (an API key) is stored as its SHA-1, never as itself.
fn redis_key(key: &Key<'_>) -> String {
    match key {
        Key::Tenant { id, .. } => format!("floodgate:{{t:{id}}}"),
        Key::Ip(ip) => format!("floodgate:{{i:{ip}}}"),
        Key::Secret(secret) => {
            let digest = sha1_smol::Sha1::from(secret).digest();
            format!("floodgate:{{s:{digest}}}")
        }
    }
}

/// The near-cache's key and fingerprint for a request against `set`: a
/// class's refusals are kept apart from its plan's.
fn near_cache_key(hash: u64, set: &LimitSet) -> (u64, u64) {
    match &set.class {
        None => (hash, set.fingerprint),
        Some(class) => (class_key(hash, class), set.fingerprint ^ class.fingerprint),
    }
}

/// Adds one key's limits to the script's arguments: their count, then each
/// one's interval and tolerance in microseconds.
fn script_limits(invocation: &mut redis::ScriptInvocation<'_>, limits: &[Gcra]) {
    invocation.arg(limits.len());
    for limit in limits {
        let interval = (limit.interval / 1000).max(1);
        let burst = limit.tolerance / limit.interval;
        invocation.arg(interval).arg(interval * burst);
    }
}

/// Turns the script's reply into a check result on the local clock.
fn parse_reply(values: &[i64], limits: usize, now: u64) -> Option<Checked> {
    let micros = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1000);
    let (&admitted, rest) = values.split_first()?;
    let (&wait, rest) = rest.split_first()?;
    let (&refused, aheads) = rest.split_first()?;
    if aheads.len() != limits {
        return None;
    }
    let mut tats: Tats = [0; MAX_LIMITS_PER_REQUEST];
    for (tat, &ahead) in tats.iter_mut().zip(aheads) {
        *tat = now.saturating_add(micros(ahead));
    }
    let verdict = if admitted == 1 {
        Verdict::Admit
    } else {
        Verdict::Refuse {
            wait: micros(wait).max(1),
            limit: usize::try_from(refused).ok()?,
        }
    };
    Some(Checked {
        verdict,
        tats,
        overflow: false,
    })
}

/// A refusal Redis gave: until when, for what cost, under which limits,
/// and its answer.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    until: u64,
    cost: u64,
    fingerprint: u64,
    checked: Checked,
}

/// Refusals by key hash.
type Refusals = HashMap<u64, Refusal, IdentityHash>;

/// Tenants Redis refused, until the time it said they may retry.
struct NearCache {
    shards: Vec<Mutex<Refusals>>,
    shard_capacity: usize,
}

impl NearCache {
    const SHARDS: usize = 16;

    fn new(max_keys: usize) -> NearCache {
        NearCache {
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
            shard_capacity: (max_keys / Self::SHARDS).max(1),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<Refusals> {
        &self.shards[(hash >> 32) as usize % Self::SHARDS]
    }

    fn get(&self, hash: u64, fingerprint: u64, now: u64, cost: u64) -> Option<Checked> {
        let mut shard = self.shard(hash).lock();
        let refusal = *shard.get(&hash)?;
        // Expired, or the limits changed (a reload): Redis decides again.
        if refusal.until <= now || refusal.fingerprint != fingerprint {
            shard.remove(&hash);
            return None;
        }
        // A cheaper request may fit sooner.
        if cost < refusal.cost {
            return None;
        }
        let Verdict::Refuse { limit, .. } = refusal.checked.verdict else {
            return None;
        };
        Some(Checked {
            verdict: Verdict::Refuse {
                wait: refusal.until - now,
                limit,
            },
            ..refusal.checked
        })
    }

    /// Remembers a refusal; a full shard first forgets expired ones, and
    /// skips the entry if that frees nothing (the cache is an optimisation).
    fn insert(&self, hash: u64, (until, cost): (u64, u64), fingerprint: u64, checked: Checked) {
        let Verdict::Refuse { wait, .. } = checked.verdict else {
            return;
        };
        let mut shard = self.shard(hash).lock();
        if shard.len() >= self.shard_capacity {
            let now = until.saturating_sub(wait);
            shard.retain(|_, refusal| refusal.until > now);
            if shard.len() >= self.shard_capacity {
                return;
            }
        }
        let refusal = Refusal {
            until,
            cost,
            fingerprint,
            checked,
        };
        shard.insert(hash, refusal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_becomes_tats_on_the_local_clock() {
        let reply = parse_reply(&[1, 0, -1, 100, 2_000], 2, 5_000).unwrap();
        assert_eq!(reply.verdict, Verdict::Admit);
        assert_eq!(reply.tats[..2], [105_000, 2_005_000]);
        let refused = parse_reply(&[0, 30, 1, 10, 20], 2, 0).unwrap();
        assert_eq!(
            refused.verdict,
            Verdict::Refuse {
                wait: 30_000,
                limit: 1
            }
        );
        assert!(parse_reply(&[1, 0, -1, 5], 2, 0).is_none(), "one TAT short");
    }

    #[test]
    fn the_near_cache_answers_until_the_retry_time_only() {
        let cache = NearCache::new(1_000);
        let refused = parse_reply(&[0, 2, 0, 5], 1, 0).unwrap();
        cache.insert(7, (2_000, 1), 42, refused);
        assert!(
            cache.get(7, 43, 500, 1).is_none(),
            "other limits: ask Redis"
        );
        cache.insert(7, (2_000, 3), 42, refused);
        assert!(
            cache.get(7, 42, 500, 2).is_none(),
            "a cheaper request: ask Redis"
        );
        assert_eq!(
            cache.get(7, 42, 500, 3).unwrap().verdict,
            Verdict::Refuse {
                wait: 1_500,
                limit: 0
            }
        );
        assert!(cache.get(7, 42, 2_000, 3).is_none());
        assert!(
            cache.get(7, 42, 500, 3).is_none(),
            "expired entries are dropped"
        );
    }

    #[test]
    fn redis_keys_are_stable_tagged_and_never_hold_a_secret() {
        let tenant = Key::Tenant {
            id: "acme",
            plan: Some("pro"),
        };
        assert_eq!(redis_key(&tenant), "floodgate:{t:acme}");
        let ip = Key::Ip("2001:db8::".parse().unwrap());
        assert_eq!(redis_key(&ip), "floodgate:{i:2001:db8::}");
        let secret = redis_key(&Key::Secret(b"sk_live_123"));
        assert!(secret.starts_with("floodgate:{s:") && !secret.contains("sk_live"));
        assert_eq!(secret.len(), "floodgate:{s:}".len() + 40);
    }

    #[test]
    fn settings_never_print_the_password() {
        let settings = RedisSettings {
            url: "redis://10.0.0.5".to_owned(),
            password: Some("hunter2".to_owned()),
            timeout: Duration::from_millis(5),
            expected_instances: NonZeroU32::MIN,
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
