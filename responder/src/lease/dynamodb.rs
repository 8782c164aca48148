//! The lease as one DynamoDB item, `pk = "lease"`, swapped with a
//! conditional put on its `revision`.
//!
//! It may share the ledger's table: the ledger's items have other keys.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use floodgate_rules::policy::Role;

use super::{LeaseError, LeaseRecord, LeaseStore};
use crate::aws::describe_error;

/// The partition key attribute of the ledger and lease table.
pub const PARTITION_KEY: &str = "pk";
/// The lease item's partition key.
pub const LEASE_KEY: &str = "lease";

/// The lease in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbLease {
    client: Client,
    table: String,
}

impl DynamoDbLease {
    /// The lease item in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDbLease {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn error(&self, message: String) -> LeaseError {
        LeaseError {
            table: self.table.clone(),
            message,
        }
    }
}

impl LeaseStore for DynamoDbLease {
    async fn read(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        let item = get_item(&self.client, &self.table, LEASE_KEY)
            .await
            .map_err(|m| self.error(m))?;
        item.map(|item| record_from_item(&item).map_err(|m| self.error(m)))
            .transpose()
    }

    async fn replace(
        &self,
        expected: Option<&LeaseRecord>,
        next: &LeaseRecord,
    ) -> Result<bool, LeaseError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_record(next)));
        let put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(current) => put
                .condition_expression("revision = :revision")
                .expression_attribute_values(":revision", number(current.revision)),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error(describe_error(&e))),
        }
    }
}

/// The item whose partition key is `key`, read consistently.
pub(crate) async fn get_item(
    client: &Client,
    table: &str,
    key: &str,
) -> Result<Option<HashMap<String, AttributeValue>>, String> {
    let got = client
        .get_item()
        .table_name(table)
        .key(PARTITION_KEY, AttributeValue::S(key.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| describe_error(&e))?;
    Ok(got.item)
}

/// A DynamoDB number.
pub(crate) fn number(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Reads a number attribute.
pub(crate) fn read_number<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<T, String> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the item has no number {name}"))
}

/// Reads a string attribute.
pub(crate) fn read_string(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<String, String> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or_else(|| format!("the item has no string {name}"))
}

fn item_from_record(record: &LeaseRecord) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        (
            PARTITION_KEY.to_owned(),
            AttributeValue::S(LEASE_KEY.to_owned()),
        ),
        (
            "holder".to_owned(),
            AttributeValue::S(record.holder.clone()),
        ),
        (
            "role".to_owned(),
            AttributeValue::S(record.role.as_str().to_owned()),
        ),
        ("fence".to_owned(), number(record.fence)),
        ("expires_at_ms".to_owned(), number(record.expires_at_ms)),
        ("handback_at_ms".to_owned(), number(record.handback_at_ms)),
        ("revision".to_owned(), number(record.revision)),
    ]);
    if let Some(primary) = &record.handback_to {
        item.insert("handback_to".to_owned(), AttributeValue::S(primary.clone()));
    }
    item
}

fn record_from_item(item: &HashMap<String, AttributeValue>) -> Result<LeaseRecord, String> {
    let role = match read_string(item, "role")?.as_str() {
        "primary" => Role::Primary,
        "standby" => Role::Standby,
        other => return Err(format!("the lease has an unknown role \"{other}\"")),
    };
    Ok(LeaseRecord {
        holder: read_string(item, "holder")?,
        role,
        fence: read_number(item, "fence")?,
        expires_at_ms: read_number(item, "expires_at_ms")?,
        handback_to: read_string(item, "handback_to").ok(),
        handback_at_ms: read_number(item, "handback_at_ms")?,
        revision: read_number(item, "revision")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_round_trip_through_an_item() {
        let record = LeaseRecord {
            holder: "standby-1".into(),
            role: Role::Standby,
            fence: 7,
            expires_at_ms: 1_790_000_000_000,
            handback_to: Some("primary-1".into()),
            handback_at_ms: 1_789_999_990_000,
            revision: 42,
        };
        assert_eq!(record_from_item(&item_from_record(&record)), Ok(record));
    }
}
