//! Reaching Redis: one node or a cluster, plaintext or TLS, with an ACL
//! user; and what a failure means for the checks that meet it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, RedisError, ScriptInvocation,
    ServerErrorKind, TlsCertificates,
};

use super::cluster::{ClusterRoutes, NodeConnector};
use super::fallback::Reason;
use super::{BuildError, RedisSettings};

/// How long connecting may take, and an answer on a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A live connection; cheap to clone, as each check does.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One multiplexed connection to one server.
    Node(MultiplexedConnection),
    /// Connections to every primary, routed by slot: `MOVED` and `ASK`
    /// followed, the topology refreshed after a failover.
    Cluster(ClusterRoutes),
}

impl Connection {
    /// Runs the script for a key in `slot` (for one server, any), loading
    /// it first where the server answers NOSCRIPT.
    pub async fn invoke(
        &mut self,
        slot: u16,
        invocation: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<Vec<i64>> {
        match self {
            Connection::Node(connection) => invocation.invoke_async(connection).await,
            Connection::Cluster(routes) => routes.invoke(slot, invocation).await,
        }
    }
}

/// What a connection is made from.
pub(crate) struct Connector {
    client: Clients,
    /// How long a new connection's PING may take: a Redis too slow for
    /// checks is not worth connecting to.
    ping_budget: Duration,
}

// One per backend, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Clients {
    Node(Client),
    /// The library's cluster client, and how to reach one of its nodes.
    Cluster(ClusterClient, NodeConnector),
}

/// What every connection to this Redis carries: the ACL user, the
/// password, and the CA for TLS.
#[derive(Clone)]
struct Access {
    username: Option<String>,
    password: Option<String>,
    tls_ca: Option<Vec<u8>>,
}

impl Access {
    fn certificates(&self) -> Option<TlsCertificates> {
        self.tls_ca.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        })
    }

    /// A client for one server at `url`.
    fn client(&self, url: &str) -> redis::RedisResult<Client> {
        let mut info = url.into_connection_info()?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        info = info.set_redis_settings(redis);
        match self.certificates() {
            Some(certificates) => Client::build_with_tls(info, certificates),
            None => Client::open(info),
        }
    }

    /// Connects to a cluster node by its `host:port`, for the direct routes.
    fn node_connector(self, scheme: &'static str) -> NodeConnector {
        Arc::new(move |address: String| {
            let client = self.client(&format!("{scheme}://{address}"));
            Box::pin(async move {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CONNECT_TIMEOUT));
                client?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            })
        })
    }
}

/// Why connecting or a check failed, in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub reason: Reason,
    /// What Redis or the network said.
    pub detail: String,
}

impl Failure {
    pub fn of(error: &RedisError) -> Failure {
        Failure {
            reason: reason_of(error),
            detail: error.to_string(),
        }
    }

    /// Whether trying again cannot help: the settings must change.
    pub fn permanent(&self) -> bool {
        matches!(
            self.reason,
            Reason::Tls | Reason::Auth | Reason::Moved | Reason::NotCluster
        )
    }

    /// What to change, where the reason says.
    pub fn fix(&self) -> Option<&'static str> {
        Some(match self.reason {
            Reason::Tls => {
                "check the CA (tls_ca_file, or the system's roots) and that the URL's host name is in the server's certificate"
            }
            Reason::Auth => {
                "check username and the password in password_env, and that the ACL user may run EVALSHA, EVAL, SCRIPT LOAD, PING and the script's TIME, HMGET, HSET, DEL and PEXPIRE (and CLUSTER SLOTS in a cluster)"
            }
            Reason::Moved => "the server is a Redis Cluster node: set cluster = true",
            Reason::NotCluster => "the server is not in cluster mode: remove cluster = true",
            _ => return None,
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason.name())?;
        if let Some(fix) = self.fix() {
            write!(f, "; {fix}")?;
        }
        Ok(())
    }
}

/// The reason a Redis error gives a check to fall back.
pub(crate) fn reason_of(error: &RedisError) -> Reason {
    // The cluster client reports a seed it could not connect to as I/O,
    // naming the first error's kind in its text.
    let text = error.to_string();
    let auth = ["WRONGPASS", "NOAUTH", "NOPERM", "AuthenticationFailed"];
    if error.code().is_some_and(|code| auth.contains(&code))
        || auth.iter().any(|word| text.contains(word))
    {
        return Reason::Auth;
    }
    if text.contains("cluster support disabled") {
        return Reason::NotCluster;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            Reason::Auth
        }
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => Reason::Moved,
        ErrorKind::Server(
            ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown | ServerErrorKind::TryAgain,
        )
        | ErrorKind::ClusterConnectionNotFound => Reason::ClusterDown,
        ErrorKind::Io if is_tls(error) => Reason::Tls,
        ErrorKind::Io => Reason::Refused,
        _ => Reason::Error,
    }
}

/// Whether an I/O error came from the TLS handshake.
fn is_tls(error: &RedisError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        source = current.source();
    }
    let text = error.to_string();
    text.contains("certificate") || text.contains("TLS") || text.contains("tls")
}

impl Connector {
    pub fn new(settings: &RedisSettings) -> Result<Connector, BuildError> {
        let tls = settings.urls.iter().any(|url| url.starts_with("rediss://"));
        if tls {
            install_crypto_provider();
        }
        let invalid = |error: RedisError| BuildError::RedisUrl(error.to_string());
        let ping_budget = settings.timeout.max(Duration::from_millis(100));
        let access = Access {
            username: settings.username.clone(),
            password: settings.password.clone(),
            tls_ca: settings.tls_ca.clone(),
        };
        if settings.cluster {
            let mut builder = ClusterClientBuilder::new(settings.urls.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CONNECT_TIMEOUT)
                .retries(3);
            if let Some(username) = &access.username {
                builder = builder.username(username);
            }
            if let Some(password) = &access.password {
                builder = builder.password(password);
            }
            if let Some(certificates) = access.certificates() {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(invalid)?;
            let scheme = if tls { "rediss" } else { "redis" };
            return Ok(Connector {
                client: Clients::Cluster(client, access.node_connector(scheme)),
                ping_budget,
            });
        }
        let [url] = settings.urls.as_slice() else {
            return Err(BuildError::RedisUrl(
                "a standalone Redis takes one URL; several are a cluster's seeds (cluster = true)"
                    .to_owned(),
            ));
        };
        Ok(Connector {
            client: Clients::Node(access.client(url).map_err(invalid)?),
            ping_budget,
        })
    }

    /// Connects and proves the connection: a PING (on every node of a
    /// cluster), and for a standalone client, that the server is no cluster
    /// node (whose other slots would answer `MOVED`).
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let attempt = async {
            match &self.client {
                Clients::Node(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(CONNECT_TIMEOUT));
                    let mut connection = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| Failure::of(&e))?;
                    ping(&mut connection, self.ping_budget).await?;
                    refuse_cluster_node(&mut connection).await?;
                    Ok(Connection::Node(connection))
                }
                Clients::Cluster(client, connect_node) => {
                    let mut connection = client
                        .get_async_connection()
                        .await
                        .map_err(|e| Failure::of(&e))?;
                    ping(&mut connection, self.ping_budget).await?;
                    let routes = ClusterRoutes::new(connection, Arc::clone(connect_node)).await;
                    Ok(Connection::Cluster(routes))
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                reason: Reason::Timeout,
                detail: format!("no connection within {:?}", CONNECT_TIMEOUT * 2),
            }),
        }
    }
}

async fn ping(
    connection: &mut impl redis::aio::ConnectionLike,
    budget: Duration,
) -> Result<(), Failure> {
    let ping = redis::cmd("PING");
    match tokio::time::timeout(budget, ping.query_async::<String>(connection)).await {
        Ok(answer) => answer.map(drop).map_err(|e| Failure::of(&e)),
        Err(_) => Err(Failure {
            reason: Reason::Timeout,
            detail: format!("no PING answer within {budget:?}"),
        }),
    }
}

/// A cluster node answers a standalone client for its own slots only;
/// `INFO cluster` tells. A user not allowed `INFO` skips the check: a
/// `MOVED` answer still names the problem when it comes.
async fn refuse_cluster_node(connection: &mut MultiplexedConnection) -> Result<(), Failure> {
    let info = redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(connection)
        .await;
    match info {
        Ok(text) if text.contains("cluster_enabled:1") => Err(Failure {
            reason: Reason::Moved,
            detail: "the server runs in cluster mode".to_owned(),
        }),
        _ => Ok(()),
    }
}

/// rustls needs one crypto provider for the process. This crate builds
/// with aws-lc-rs; a service that installed its own keeps it.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one first, which serves.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}
