//! A Redis Cluster, reached two ways.
//!
//! The `redis` crate's cluster connection owns correctness: topology,
//! `MOVED` and `ASK`, failover, reconnects. It serves each request from a
//! task of its own, and on two cores the extra hops cost about as much as
//! the round trip itself (BENCHMARKS.md). So a check first goes straight to
//! the primary that owns its slot, over a multiplexed connection to that
//! node, by a slot table read from `CLUSTER SLOTS`. Whatever that path
//! cannot settle for sure (a redirect, a cluster that is down or failing
//! over, a node with no connection) goes to the library's connection, and
//! the table is read again in the background.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisResult, ScriptInvocation, ServerErrorKind, Value};

use super::fallback::{NODE_BACKOFF, SLOTS};

/// Opens a connection to one node, given its `host:port`, with the
/// cluster's scheme, credentials and CA.
pub(crate) type NodeConnector = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = RedisResult<MultiplexedConnection>> + Send>>
        + Send
        + Sync,
>;

/// The library's connection, and the direct routes beside it.
#[derive(Clone)]
pub(crate) struct ClusterRoutes {
    cluster: ClusterConnection,
    direct: Arc<Direct>,
}

struct Direct {
    table: ArcSwap<SlotTable>,
    refreshing: AtomicBool,
    connect: NodeConnector,
    /// Nodes whose direct connection failed: connected afresh at the next
    /// refresh (a multiplexed connection that broke stays broken, and the
    /// node may come back at the same address).
    broken: parking_lot::Mutex<Vec<String>>,
    /// When the last refresh started: one every [`NODE_BACKOFF`] at most,
    /// however many checks fail meanwhile.
    last_refresh: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// Which primary serves each slot, and a connection to each.
#[derive(Default)]
struct SlotTable {
    /// Per slot, an index into `nodes`; [`UNKNOWN`] or [`UNREACHABLE`].
    owner: Vec<u16>,
    nodes: Vec<(String, MultiplexedConnection)>,
}

/// A slot whose primary the table does not know: the library's path.
const UNKNOWN: u16 = u16::MAX;
/// A slot whose primary could not be connected to at the last refresh:
/// checks fail at once (and fall back) instead of waiting on it.
const UNREACHABLE: u16 = u16::MAX - 1;

/// Where a check for a slot goes.
enum Route<'a> {
    Direct(&'a (String, MultiplexedConnection)),
    Unreachable,
    Library,
}

impl SlotTable {
    /// Where a check for `slot` goes.
    fn route(&self, slot: u16) -> Route<'_> {
        match self.owner.get(usize::from(slot)).copied() {
            Some(UNREACHABLE) => Route::Unreachable,
            Some(owner) => self
                .nodes
                .get(usize::from(owner))
                .map_or(Route::Library, Route::Direct),
            None => Route::Library,
        }
    }
}

impl ClusterRoutes {
    /// Reads the slot table once before the first check.
    pub async fn new(cluster: ClusterConnection, connect: NodeConnector) -> ClusterRoutes {
        let routes = ClusterRoutes {
            cluster,
            direct: Arc::new(Direct {
                table: ArcSwap::from_pointee(SlotTable::default()),
                refreshing: AtomicBool::new(true),
                connect,
                broken: parking_lot::Mutex::default(),
                last_refresh: parking_lot::Mutex::default(),
            }),
        };
        routes.refresh().await;
        routes
    }

    /// Runs the script for a key in `slot`: at its primary directly, else
    /// (and after any answer that proves it did not run) through the
    /// library's cluster connection.
    pub async fn invoke(
        &mut self,
        slot: u16,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<Vec<i64>> {
        let direct = match self.direct.table.load().route(slot) {
            Route::Direct(node) => Some(node.clone()),
            Route::Unreachable => {
                self.refresh_in_background();
                let unreachable = (ErrorKind::Io, "the slot's primary could not be reached");
                return Err(RedisError::from(unreachable));
            }
            Route::Library => None,
        };
        if let Some((address, mut connection)) = direct {
            match invocation.invoke_async(&mut connection).await {
                Err(error) if not_run_here(&error) => {}
                Err(error) => {
                    // It may have run: asking again could charge twice.
                    if error.is_io_error() || error.is_connection_dropped() {
                        self.direct.broken.lock().push(address);
                    }
                    self.refresh_in_background();
                    return Err(error);
                }
                answer => return answer,
            }
        }
        self.refresh_in_background();
        invocation.invoke_async(&mut self.cluster).await
    }

    fn refresh_in_background(&self) {
        {
            let mut last = self.direct.last_refresh.lock();
            if last.is_some_and(|at| at.elapsed() < NODE_BACKOFF) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if !self.direct.refreshing.swap(true, Ordering::AcqRel) {
            let routes = self.clone();
            tokio::spawn(async move { routes.refresh().await });
        }
    }

    /// Reads `CLUSTER SLOTS` through the library's connection (which has
    /// followed any failover) and connects to primaries it had no
    /// connection to. A failure keeps the old table: the library's path
    /// still serves every check.
    async fn refresh(&self) {
        let mut cluster = self.cluster.clone();
        let slots = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut cluster)
            .await;
        if let Ok(slots) = slots {
            let old = self.direct.table.load_full();
            let broken = std::mem::take(&mut *self.direct.broken.lock());
            let mut known: HashMap<&str, &MultiplexedConnection> = old
                .nodes
                .iter()
                .filter(|(address, _)| !broken.contains(address))
                .map(|(a, c)| (a.as_str(), c))
                .collect();
            let mut table = SlotTable {
                owner: vec![UNKNOWN; SLOTS],
                nodes: Vec::new(),
            };
            let mut unreachable: Vec<String> = Vec::new();
            for (start, end, address) in primaries(&slots) {
                let index = match table.nodes.iter().position(|(a, _)| *a == address) {
                    Some(index) => index as u16,
                    None if unreachable.contains(&address) => UNREACHABLE,
                    None => {
                        let connection = match known.remove(address.as_str()) {
                            Some(connection) => Some(connection.clone()),
                            None => (self.direct.connect)(address.clone()).await.ok(),
                        };
                        match connection {
                            Some(connection) => {
                                table.nodes.push((address, connection));
                                (table.nodes.len() - 1) as u16
                            }
                            None => {
                                unreachable.push(address);
                                UNREACHABLE
                            }
                        }
                    }
                };
                for slot in start..=end.min(SLOTS as u16 - 1) {
                    table.owner[usize::from(slot)] = index;
                }
            }
            self.direct.table.store(Arc::new(table));
        }
        self.direct.refreshing.store(false, Ordering::Release);
    }
}

/// Errors a node gives without running the script: safe to send elsewhere.
fn not_run_here(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    )
}

/// `(first slot, last slot, "host:port")` of each range's primary in a
/// `CLUSTER SLOTS` reply.
fn primaries(reply: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Value::Int(start), Value::Int(end), Value::Array(primary)) =
                (fields.first()?, fields.get(1)?, fields.get(2)?)
            else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Value::Int(port) = primary.get(1)? else {
                return None;
            };
            // An unknown endpoint ("?") or none: the library's path serves it.
            if host.is_empty() || host == "?" {
                return None;
            }
            Some((
                u16::try_from(*start).ok()?,
                u16::try_from(*end).ok()?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_become_primary_ranges() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("localhost"), Value::Int(7000), bulk("id1")]),
                Value::Array(vec![bulk("localhost"), Value::Int(7003), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk("?"), Value::Int(7001)]),
            ]),
        ]);
        assert_eq!(
            primaries(&reply),
            vec![(0, 5460, "localhost:7000".to_owned())]
        );
    }
}
