//! The Redis backend itself: connecting, one script call per check, the
//! near-cache and the local fallback (see the module above for what each
//! does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::connection::{Connection, Connector, Failure};
use super::fallback::{self, Fallbacks, Reason, SlotBackoff};
use super::near_cache::{NearCache, near_cache_key};
use super::{BuildError, RedisSettings, SCRIPT};
use crate::gcra::{Gcra, MAX_LIMITS_PER_REQUEST, Tats, Verdict};
use crate::key::Key;
use crate::policy::LimitSet;
use crate::store::{Checked, Store};

/// The shared state of the Redis backend.
pub(crate) struct RedisBackend {
    connector: Connector,
    endpoint: String,
    /// `None` while Redis is unreachable: checks then go straight to the
    /// fallback, and a background task reconnects.
    connection: ArcSwapOption<Connection>,
    reconnecting: AtomicBool,
    /// Why checks fall back while there is no connection: the last
    /// connection failure's [`Reason`].
    down_reason: AtomicU8,
    /// In a cluster, the slots whose node failed a moment ago.
    slots: Option<SlotBackoff>,
    script: redis::Script,
    timeout: Duration,
    expected_instances: u64,
    near_cache: NearCache,
    fallback: Store,
    fallbacks: Fallbacks,
}

impl RedisBackend {
    /// Connects in the background; checks fall back until connected.
    pub fn start(settings: &RedisSettings, max_keys: usize) -> Result<Arc<Self>, BuildError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let backend = Arc::new(RedisBackend::new(settings, max_keys)?);
        handle.spawn(Arc::clone(&backend).reconnect());
        Ok(backend)
    }

    /// Connects first: Redis answering in a way no retry can fix (TLS,
    /// credentials, cluster mode) is an error. Redis merely unreachable is
    /// not: checks fall back while a background task reconnects.
    pub async fn connect(
        settings: &RedisSettings,
        max_keys: usize,
    ) -> Result<Arc<Self>, BuildError> {
        let backend = Arc::new(RedisBackend::new(settings, max_keys)?);
        match backend.connector.connect().await {
            Ok(connection) => {
                backend.connected_with(connection);
                Ok(backend)
            }
            Err(failure) if failure.permanent() => Err(BuildError::Unusable {
                endpoint: backend.endpoint.clone(),
                failure: failure.to_string(),
            }),
            Err(failure) => {
                backend.down(&failure);
                tokio::spawn(Arc::clone(&backend).reconnect());
                Ok(backend)
            }
        }
    }

    fn new(settings: &RedisSettings, max_keys: usize) -> Result<Self, BuildError> {
        Ok(RedisBackend {
            connector: Connector::new(settings)?,
            endpoint: settings.endpoint().to_owned(),
            connection: ArcSwapOption::empty(),
            reconnecting: AtomicBool::new(true),
            down_reason: AtomicU8::new(Reason::Connecting.to_index()),
            slots: settings.cluster.then(SlotBackoff::new),
            script: redis::Script::new(SCRIPT),
            timeout: settings.timeout,
            expected_instances: u64::from(settings.expected_instances.get()),
            near_cache: NearCache::new(max_keys),
            fallback: Store::new(max_keys),
            fallbacks: Fallbacks::new(),
        })
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

    /// Asks Redis about `key`, whose local hash is `hash`; when it could
    /// not answer in time, why.
    pub async fn check(
        self: &Arc<Self>,
        key: &Key<'_>,
        hash: u64,
        set: &LimitSet,
        now: u64,
        cost: u64,
    ) -> Result<Checked, Reason> {
        let Some(connection) = self.connection.load_full() else {
            return Err(self.down_reason());
        };
        let tenant_key = redis_key(key);
        let slot = self.slots.as_ref().map(|_| fallback::slot(&tenant_key));
        if let (Some(slots), Some(slot)) = (&self.slots, slot)
            && slots.active(slot, now)
        {
            return Err(Reason::NodeBackoff);
        }
        let mut connection = Connection::clone(&connection);
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
        let answer = tokio::time::timeout(
            self.timeout,
            connection.invoke(slot.unwrap_or(0), &invocation),
        );
        let failure = match answer.await {
            Ok(Ok(values)) => {
                if let (Some(slots), Some(slot)) = (&self.slots, slot) {
                    slots.answered(slot);
                }
                return self.answered(&values, hash, set, now, cost);
            }
            Ok(Err(error)) => Failure::of(&error),
            Err(_) => Failure {
                reason: Reason::Timeout,
                detail: format!("no answer within {:?}", self.timeout),
            },
        };
        match (&self.slots, slot) {
            // The cluster client reconnects and refreshes on its own; only
            // this slot's node is in doubt.
            (Some(slots), Some(slot)) => slots.failed(slot, now),
            _ => self.lost(&failure),
        }
        Err(failure.reason)
    }

    /// Reads the script's reply, and remembers a refusal in the near-cache.
    fn answered(
        &self,
        values: &[i64],
        hash: u64,
        set: &LimitSet,
        now: u64,
        cost: u64,
    ) -> Result<Checked, Reason> {
        let checked = parse_reply(values, set.limits.len(), now).ok_or(Reason::Error)?;
        if let Verdict::Refuse { wait, .. } = checked.verdict {
            let until = now.saturating_add(wait);
            let (key, fingerprint) = near_cache_key(hash, set);
            self.near_cache
                .insert(key, (until, cost), fingerprint, checked);
        }
        Ok(checked)
    }

    /// Why checks fall back while there is no connection.
    pub fn down_reason(&self) -> Reason {
        Reason::from_index(self.down_reason.load(Ordering::Relaxed))
    }

    /// Decides locally at `quota / expected_instances`, and counts why.
    pub fn fallback(
        &self,
        hash: u64,
        set: &LimitSet,
        now: u64,
        cost: u64,
        reason: Reason,
    ) -> Checked {
        self.fallbacks.count(reason, &self.endpoint);
        let mut scaled = [Gcra::default(); MAX_LIMITS_PER_REQUEST];
        for (slot, limit) in scaled.iter_mut().zip(&set.limits) {
            *slot = limit.shared_by(self.expected_instances);
        }
        let limits = &scaled[..set.limits.len()];
        self.fallback.check_set(hash, set, limits, now, cost)
    }

    /// Drops the connection after a failure and reconnects in the background;
    /// logs once per incident.
    fn lost(self: &Arc<Self>, failure: &Failure) {
        self.down_reason
            .store(failure.reason.to_index(), Ordering::Relaxed);
        if self.connection.swap(None).is_some() {
            tracing::error!(
                endpoint = self.endpoint,
                reason = failure.reason.name(),
                detail = %failure,
                "Redis rate-limit backend unavailable; deciding locally at quota / expected_instances until it is back"
            );
        }
        if !self.reconnecting.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).reconnect());
        }
    }

    fn connected_with(&self, connection: Connection) {
        self.connection.store(Some(Arc::new(connection)));
        self.reconnecting.store(false, Ordering::Release);
        tracing::info!(
            endpoint = self.endpoint,
            "Redis rate-limit backend connected"
        );
    }

    /// A connection attempt failed: checks fall back for its reason, and a
    /// new kind of failure is logged once (with the fix, where one is known).
    fn down(&self, failure: &Failure) {
        let reason = failure.reason.to_index();
        if self.down_reason.swap(reason, Ordering::Relaxed) != reason {
            tracing::error!(
                endpoint = self.endpoint,
                reason = failure.reason.name(),
                detail = %failure,
                "cannot connect to the Redis rate-limit backend; deciding locally at quota / expected_instances"
            );
        }
    }

    /// Connects with backoff.
    async fn reconnect(self: Arc<Self>) {
        let mut delay = Duration::from_millis(20);
        loop {
            match self.connector.connect().await {
                Ok(connection) => return self.connected_with(connection),
                Err(failure) => self.down(&failure),
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
pub(super) fn parse_reply(values: &[i64], limits: usize, now: u64) -> Option<Checked> {
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
}
