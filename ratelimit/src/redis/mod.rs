//! The Redis backend: one limit shared by every instance.
//!
//! - **One round trip per check.** A Lua script ([`SCRIPT`], sent as EVALSHA
//!   and loaded on NOSCRIPT) runs GCRA for all of a plan's limits on the
//!   server's `TIME` and charges them only if all admit. Each call carries
//!   the tenant's limits, so plans, overrides and reloads work unchanged.
//! - **Deployments.** One server, or a Redis Cluster through a cluster
//!   client (slot routing, `MOVED`/`ASK` followed, the topology refreshed
//!   after a failover); either over TLS (`rediss://`, the system's roots or
//!   a private CA) and with an ACL user ([`connection`]).
//! - **Near-cache.** A tenant Redis refused is refused locally, without a
//!   round trip, until the time Redis said it may retry ([`near_cache`]).
//! - **Failure.** Each check has a time budget. A check that times out or
//!   fails is decided by a local limiter at `quota / expected_instances`:
//!   no request waits on a dead Redis. With one server, every check falls
//!   back while its connection is down, and a background task reconnects.
//!   In a cluster only the failing node's slots fall back, each for a
//!   moment before Redis is asked again. Every local decision is counted by
//!   reason and warned about at most every few seconds ([`fallback`]). This
//!   is where limits loosen: while Redis is out, N instances admit up to
//!   N / `expected_instances` times the quota.
//! - **Keys.** `floodgate:{t:<tenant>}`, `floodgate:{i:<ip>}` or
//!   `floodgate:{s:<sha1 of an API key>}`, the same in every instance; the
//!   hash tag puts a tenant's plan and class states in one cluster slot, as
//!   the script needs. Keys expire once every limit has refilled, so Redis
//!   holds only active tenants.

//!
//! All of it is behind the `redis` cargo feature (on by default): a service
//! built without it compiles no Redis client and no TLS, and a policy that
//! asks for Redis is then an error at build time
//! ([`BuildError::RedisDisabled`]).

#[cfg(feature = "redis")]
mod backend;
#[cfg(feature = "redis")]
mod cluster;
#[cfg(feature = "redis")]
mod connection;
#[cfg(not(feature = "redis"))]
mod disabled;
#[cfg(feature = "redis")]
mod fallback;
#[cfg(feature = "redis")]
mod near_cache;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use floodgate_rules::policy::{QuotaBackend, Quotas};

#[cfg(feature = "redis")]
pub(crate) use backend::RedisBackend;
#[cfg(not(feature = "redis"))]
pub(crate) use disabled::RedisBackend;

/// Counts checks decided locally, by `reason`.
pub const FALLBACK_TOTAL: &str = "floodgate_ratelimit_backend_fallback_total";

/// The GCRA script the backend runs.
pub const SCRIPT: &str = include_str!("gcra.lua");

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
    /// The server, or a cluster's seed nodes: `redis://host:port[/db]`, or
    /// `rediss://…` for TLS.
    pub urls: Vec<String>,
    /// Whether `urls` are seeds of a Redis Cluster.
    pub cluster: bool,
    /// The ACL user, if not `default`.
    pub username: Option<String>,
    /// The password, if Redis needs one.
    pub password: Option<String>,
    /// PEM certificates to trust instead of the system's roots (a private CA).
    pub tls_ca: Option<Vec<u8>>,
    /// How long one check may take before this instance decides locally.
    pub timeout: Duration,
    /// Instances sharing the limit: each enforces `quota / expected_instances`
    /// while Redis is unreachable.
    pub expected_instances: NonZeroU32,
}

impl RedisSettings {
    /// One server at `url`, with the policy's defaults: no credentials, a
    /// 5 ms budget per check, one instance.
    pub fn node(url: impl Into<String>) -> RedisSettings {
        RedisSettings::with_urls(vec![url.into()], false)
    }

    /// A Redis Cluster reached through `seeds` (any of its nodes), with the
    /// defaults of [`RedisSettings::node`].
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisSettings {
        RedisSettings::with_urls(seeds.into_iter().map(Into::into).collect(), true)
    }

    fn with_urls(urls: Vec<String>, cluster: bool) -> RedisSettings {
        let timeout = floodgate_rules::policy::DEFAULT_REDIS_TIMEOUT_MS;
        RedisSettings {
            urls,
            cluster,
            username: None,
            password: None,
            tls_ca: None,
            timeout: Duration::from_millis(u64::from(timeout)),
            expected_instances: NonZeroU32::MIN,
        }
    }

    /// What log lines and errors call this Redis: its first URL.
    #[cfg(feature = "redis")]
    fn endpoint(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("urls", &self.urls)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(Vec::len))
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
    /// The private CA's file could not be read.
    #[error("quotas.redis.tls_ca_file: cannot read {}: {source}", path.display())]
    TlsCaFile {
        /// The file the policy names.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Redis answered in a way that retrying cannot fix: TLS, credentials,
    /// or a cluster where the settings say one server (or the reverse).
    #[error("Redis at {endpoint}: {failure}")]
    Unusable {
        /// The URL (the first seed of a cluster).
        endpoint: String,
        /// What Redis or the handshake answered, and the fix where known.
        failure: String,
    },
    /// The policy asks for Redis, but this build has no `redis` feature.
    #[error(
        "quotas.backend \"redis\": floodgate-ratelimit was built without its `redis` feature; enable it, or use backend \"local\""
    )]
    RedisDisabled,
    /// The Redis backend starts a background task, which needs Tokio.
    #[error("the redis backend needs a Tokio runtime: build the layer inside one")]
    NoRuntime,
}

impl Backend {
    /// The backend the policy's `[quotas]` chooses, with the password read
    /// from the environment variable it names and the CA from its file.
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
        let tls_ca = match &redis.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| BuildError::TlsCaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Backend::Redis(RedisSettings {
            urls: redis.urls.clone(),
            cluster: redis.cluster,
            username: redis.username.clone(),
            password,
            tls_ca,
            timeout: Duration::from_millis(u64::from(redis.timeout_ms.get())),
            expected_instances: redis.expected_instances,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without the feature refuses a policy that asks for Redis,
    /// naming the feature (`scripts/test.sh` runs the library's tests
    /// without default features too).
    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_feature_a_redis_policy_is_a_build_error() {
        let text = "[quotas]\ndefault_plan = \"free\"\nbackend = \"redis\"\nredis = { url = \"redis://127.0.0.1:6379\" }\nplans = [{ name = \"free\", limits = [{ requests = 1, per_seconds = 1 }] }]\n";
        let today = time::macros::date!(2026 - 11 - 22);
        let policy = floodgate_rules::Policy::from_toml(text, "p.toml", today)
            .unwrap()
            .policy;
        let quotas = policy.quotas.unwrap();
        let error = crate::TenantRateLimitLayer::builder(&quotas)
            .build()
            .unwrap_err();
        assert!(matches!(error, BuildError::RedisDisabled), "{error:?}");
        assert!(error.to_string().contains("`redis` feature"), "{error}");
    }

    #[test]
    fn settings_never_print_the_password() {
        let settings = RedisSettings {
            password: Some("hunter2".to_owned()),
            ..RedisSettings::node("redis://10.0.0.5")
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"));
    }
}
