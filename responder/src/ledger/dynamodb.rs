//! The ledger in a DynamoDB table, shared by every responder and operator.
//!
//! A ledger can outgrow DynamoDB's 400 KB item limit (tens of thousands of
//! entries), so it is stored as a snapshot:
//!
//! - chunk items `pk = "ledger/<write id>/<n>"` hold the gzipped JSON, at
//!   most [`CHUNK_BYTES`] each, under a key no other writer uses;
//! - the meta item `pk = "ledger"` names the current write id, its chunk
//!   count and the `version`.
//!
//! A save writes its chunks first, then flips the meta item in a
//! transaction conditional on the version it planned from (and, with a
//! lease, on the lease still being ours under the same fence). Only then
//! does it delete the previous chunks. A reader that finds a chunk gone
//! read a meta item that has since been replaced, and starts again.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};

use super::{Ledger, LedgerError, LedgerState};
use crate::aws::describe_error;
use crate::lease::dynamodb::{
    LEASE_KEY, PARTITION_KEY, get_item, number, read_number, read_string,
};

/// The meta item's partition key.
pub const META_KEY: &str = "ledger";
/// The most gzipped bytes one chunk item holds: well under the 400 KB item
/// limit, with room for the key and attribute names.
pub const CHUNK_BYTES: usize = 350 * 1024;
/// Reads that restart because a save replaced the snapshot mid-read.
const LOAD_ATTEMPTS: u32 = 5;

/// The lease a save must still hold: its table, our holder id and fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease's table.
    pub table: String,
    /// Our holder id.
    pub holder: String,
    /// The fencing token we took the lease with.
    pub fence: u64,
}

/// The ledger in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbLedger {
    client: Client,
    table: String,
    fence: Option<Fence>,
}

/// Where the current snapshot is.
struct Meta {
    version: u64,
    write_id: String,
    chunks: u32,
}

impl DynamoDbLedger {
    /// The ledger in `table`; saves are not fenced.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDbLedger {
            client,
            table: table.into(),
            fence: None,
        }
    }

    /// Saves succeed only while `fence` is the lease's holder and fence.
    pub fn fenced_by(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Its client, for the lease in the same region.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A name for messages: `dynamodb://<table>`.
    pub fn label(&self) -> String {
        format!("dynamodb://{}", self.table)
    }

    fn store_error(&self, message: String) -> LedgerError {
        LedgerError::Store {
            path: self.label(),
            message,
        }
    }

    fn corrupt(&self, message: String) -> LedgerError {
        LedgerError::Corrupt {
            path: self.label(),
            message,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<HashMap<String, AttributeValue>>, LedgerError> {
        get_item(&self.client, &self.table, key)
            .await
            .map_err(|m| self.store_error(m))
    }

    async fn meta(&self) -> Result<Option<Meta>, LedgerError> {
        let Some(item) = self.get(META_KEY).await? else {
            return Ok(None);
        };
        let meta = || -> Result<Meta, String> {
            Ok(Meta {
                version: read_number(&item, "version")?,
                write_id: read_string(&item, "write_id")?,
                chunks: read_number(&item, "chunks")?,
            })
        };
        meta().map(Some).map_err(|m| self.corrupt(m))
    }

    /// The snapshot `meta` names; `None` when a chunk is gone (replaced).
    async fn snapshot(&self, meta: &Meta) -> Result<Option<Vec<u8>>, LedgerError> {
        let mut gzipped = Vec::new();
        for index in 0..meta.chunks {
            let Some(item) = self.get(&chunk_key(&meta.write_id, index)).await? else {
                return Ok(None);
            };
            let data = item
                .get("data")
                .and_then(|v| v.as_b().ok())
                .ok_or_else(|| self.corrupt(format!("chunk {index} has no data")))?;
            gzipped.extend_from_slice(data.as_ref());
        }
        Ok(Some(gzipped))
    }

    async fn put_chunk(&self, key: String, data: &[u8]) -> Result<(), LedgerError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(key))
            .item("data", AttributeValue::B(Blob::new(data)))
            .send()
            .await
            .map_err(|e| self.store_error(describe_error(&e)))?;
        Ok(())
    }

    /// Deletes a snapshot's chunks; a leftover only costs storage, so
    /// failures are logged, not returned.
    async fn delete_chunks(&self, write_id: &str, chunks: u32) {
        for index in 0..chunks {
            let key = chunk_key(write_id, index);
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(PARTITION_KEY, AttributeValue::S(key.clone()))
                .send()
                .await;
            if let Err(e) = deleted {
                tracing::warn!(table = %self.table, item = %key, error = %describe_error(&e), "could not delete an old ledger chunk");
            }
        }
    }

    /// Flips the meta item to the new snapshot, if the version and lease
    /// still are what this save expects.
    async fn flip(
        &self,
        state: &LedgerState,
        write_id: &str,
        chunks: u32,
    ) -> Result<(), LedgerError> {
        let expected = state.version.saturating_sub(1);
        let mut meta = Put::builder()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(META_KEY.to_owned()))
            .item("version", number(state.version))
            .item("write_id", AttributeValue::S(write_id.to_owned()))
            .item("chunks", number(chunks));
        meta = if expected == 0 {
            meta.condition_expression("attribute_not_exists(pk)")
        } else {
            meta.condition_expression("version = :expected")
                .expression_attribute_values(":expected", number(expected))
        };
        let mut items = Vec::new();
        if let Some(fence) = &self.fence {
            let check = ConditionCheck::builder()
                .table_name(&fence.table)
                .key(PARTITION_KEY, AttributeValue::S(LEASE_KEY.to_owned()))
                .condition_expression("holder = :holder AND fence = :fence")
                .expression_attribute_values(":holder", AttributeValue::S(fence.holder.clone()))
                .expression_attribute_values(":fence", number(fence.fence))
                .build()
                .expect("the condition check has a table, key and condition");
            items.push(TransactWriteItem::builder().condition_check(check).build());
        }
        let meta = meta.build().expect("the put has a table and item");
        items.push(TransactWriteItem::builder().put(meta).build());
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let Err(error) = sent else {
            return Ok(());
        };
        let failed_checks: Vec<bool> = match error.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
                .cancellation_reasons()
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect(),
            _ => return Err(self.store_error(describe_error(&error))),
        };
        if let Some(fence) = &self.fence
            && failed_checks.first() == Some(&true)
        {
            return Err(LedgerError::LeaseLost {
                path: self.label(),
                fence: fence.fence,
            });
        }
        let stored = self.meta().await?.map_or(0, |m| m.version);
        Err(LedgerError::Conflict {
            path: self.label(),
            stored,
            expected,
        })
    }
}

impl Ledger for DynamoDbLedger {
    async fn load(&self) -> Result<LedgerState, LedgerError> {
        for _ in 0..LOAD_ATTEMPTS {
            let Some(meta) = self.meta().await? else {
                return Ok(LedgerState::default());
            };
            let Some(gzipped) = self.snapshot(&meta).await? else {
                continue;
            };
            let state = decode(&gzipped).map_err(|m| self.corrupt(m))?;
            if state.version != meta.version {
                return Err(self.corrupt(format!(
                    "the snapshot holds version {}, the meta item says {}",
                    state.version, meta.version
                )));
            }
            return Ok(state);
        }
        Err(self.store_error(format!(
            "the ledger was replaced {LOAD_ATTEMPTS} times while it was read; try again"
        )))
    }

    async fn save(&self, state: &LedgerState) -> Result<(), LedgerError> {
        let expected = state.version.saturating_sub(1);
        let previous = self.meta().await?;
        let stored = previous.as_ref().map_or(0, |m| m.version);
        if stored != expected {
            return Err(LedgerError::Conflict {
                path: self.label(),
                stored,
                expected,
            });
        }
        let write_id = format!("{}-{:016x}", state.version, random());
        let gzipped = encode(state);
        let chunks: Vec<&[u8]> = gzipped.chunks(CHUNK_BYTES).collect();
        let count = u32::try_from(chunks.len()).expect("fewer than 4 billion chunks");
        for (index, chunk) in (0..).zip(&chunks) {
            if let Err(error) = self.put_chunk(chunk_key(&write_id, index), chunk).await {
                self.delete_chunks(&write_id, index).await;
                return Err(error);
            }
        }
        if let Err(error) = self.flip(state, &write_id, count).await {
            self.delete_chunks(&write_id, count).await;
            return Err(error);
        }
        if let Some(previous) = previous {
            self.delete_chunks(&previous.write_id, previous.chunks)
                .await;
        }
        Ok(())
    }
}

fn chunk_key(write_id: &str, index: u32) -> String {
    format!("{META_KEY}/{write_id}/{index}")
}

/// A random number for write ids, from the standard library's hasher seed.
fn random() -> u64 {
    std::hash::RandomState::new().build_hasher().finish()
}

fn encode(state: &LedgerState) -> Vec<u8> {
    let json = serde_json::to_vec(state).expect("the ledger serializes");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&json).expect("writing to memory");
    gzip.finish().expect("writing to memory")
}

fn decode(gzipped: &[u8]) -> Result<LedgerState, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut json)
        .map_err(|e| format!("the snapshot does not unzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}
