//! The DynamoDB ledger against scripted DynamoDB responses
//! (`aws-smithy-mocks`): a conditional-write conflict at the exact moment a
//! test needs it, which the emulator cannot stage. The conflict must be
//! resolved by re-reading the ledger and planning again, never by
//! overwriting the other writer's save.

use std::io::Write;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput;
use aws_sdk_dynamodb::operation::get_item::{GetItemInput, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::error::TransactionCanceledException;
use aws_sdk_dynamodb::types::{AttributeValue, CancellationReason};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use floodgate_responder::ledger::dynamodb::DynamoDbLedger;
use floodgate_responder::ledger::{LedgerEntry, LedgerError, LedgerState, UpdateError, update};

fn entry(net: &str) -> LedgerEntry {
    LedgerEntry {
        net: net.parse().unwrap(),
        tier: "block".into(),
        first_seen_ms: 1,
        last_seen_ms: 1,
        blocked_at_ms: 1,
        expires_at_ms: 900_000,
        offences: 1,
        requests: 2000,
        addresses: 1,
        source: "test".into(),
        reason: "test".into(),
        suppressed_until_ms: None,
    }
}

fn gzipped(state: &LedgerState) -> Vec<u8> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&serde_json::to_vec(state).unwrap()).unwrap();
    gzip.finish().unwrap()
}

fn key_of(input: &GetItemInput) -> String {
    input.key().unwrap()["pk"].as_s().unwrap().clone()
}

fn meta_item(version: u64, write_id: &str) -> GetItemOutput {
    GetItemOutput::builder()
        .item("pk", AttributeValue::S("ledger".into()))
        .item("version", AttributeValue::N(version.to_string()))
        .item("write_id", AttributeValue::S(write_id.into()))
        .item("chunks", AttributeValue::N("1".into()))
        .build()
}

/// A GetItem of the meta item answering `answer`.
fn get_meta(answer: impl Fn() -> GetItemOutput + Send + Sync + 'static) -> Rule {
    mock!(Client::get_item)
        .match_requests(|r| key_of(r) == "ledger")
        .then_output(answer)
}

fn conflict() -> TransactWriteItemsError {
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .message("Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed]")
            .cancellation_reasons(
                CancellationReason::builder()
                    .code("ConditionalCheckFailed")
                    .build(),
            )
            .build(),
    )
}

#[tokio::test]
async fn a_conflicting_save_rereads_plans_again_and_keeps_the_other_writers_change() {
    // Another responder saved version 1 (blocking 192.0.2.1) between our
    // load (empty) and our save.
    let mut theirs = LedgerState {
        version: 1,
        ..LedgerState::default()
    };
    theirs
        .entries
        .insert("192.0.2.1/32".parse().unwrap(), entry("192.0.2.1/32"));
    let their_snapshot = gzipped(&theirs);
    let conditions = Arc::new(Mutex::new(Vec::new()));
    let seen = conditions.clone();
    let rules = [
        // Our first save: the meta item is absent, we write our chunk...
        get_meta(|| GetItemOutput::builder().build()),
        mock!(Client::put_item).then_output(|| PutItemOutput::builder().build()),
        // ...and the flip finds their version already there.
        mock!(Client::transact_write_items).then_error(conflict),
        get_meta(|| meta_item(1, "1-theirs")),
        mock!(Client::delete_item).then_output(|| DeleteItemOutput::builder().build()),
        // The re-read: their meta item and their chunk.
        get_meta(|| meta_item(1, "1-theirs")),
        mock!(Client::get_item)
            .match_requests(|r| key_of(r) == "ledger/1-theirs/0")
            .then_output(move || {
                GetItemOutput::builder()
                    .item("pk", AttributeValue::S("ledger/1-theirs/0".into()))
                    .item("data", AttributeValue::B(Blob::new(their_snapshot.clone())))
                    .build()
            }),
        // Our second save, planned from their version 1.
        get_meta(|| meta_item(1, "1-theirs")),
        mock!(Client::put_item).then_output(|| PutItemOutput::builder().build()),
        mock!(Client::transact_write_items).then_compute_output(move |request| {
            let put = request.transact_items()[0].put().unwrap();
            seen.lock().unwrap().push((
                put.condition_expression().map(str::to_owned),
                put.expression_attribute_values()
                    .and_then(|v| v.get(":expected"))
                    .and_then(|v| v.as_n().ok())
                    .cloned(),
            ));
            TransactWriteItemsOutput::builder().build()
        }),
        // Their chunk, now superseded, is deleted.
        mock!(Client::delete_item)
            .match_requests(|r| r.key().unwrap()["pk"].as_s().unwrap() == "ledger/1-theirs/0")
            .then_output(|| DeleteItemOutput::builder().build()),
    ];
    let rule_refs: Vec<&Rule> = rules.iter().collect();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, &rule_refs);
    let ledger = DynamoDbLedger::new(client, "floodgate-ledger");

    let mut planned_from = Vec::new();
    let saved = update(&ledger, LedgerState::default(), |state: LedgerState| {
        planned_from.push(
            state
                .entries
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
        let mut next = state.clone();
        next.version += 1;
        next.entries
            .insert("203.0.113.7/32".parse().unwrap(), entry("203.0.113.7/32"));
        async move { Ok::<_, LedgerError>((next.clone(), next)) }
    })
    .await
    .unwrap();

    // Planned twice: from our stale read, then from their save.
    assert_eq!(planned_from, vec![vec![], vec!["192.0.2.1/32".to_owned()]]);
    // What was saved keeps their block and adds ours, as version 2, on the
    // condition that version 1 is still the stored one.
    assert_eq!(saved.version, 2);
    assert_eq!(
        saved
            .entries
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["192.0.2.1/32", "203.0.113.7/32"]
    );
    assert_eq!(
        *conditions.lock().unwrap(),
        [(Some("version = :expected".to_owned()), Some("1".to_owned()))]
    );
    for (index, rule) in rules.iter().enumerate() {
        assert_eq!(rule.num_calls(), 1, "scripted call {index} was made once");
    }
}

#[tokio::test]
async fn a_save_gives_up_after_repeated_conflicts_and_says_so() {
    let rules = [
        get_meta(|| GetItemOutput::builder().build()),
        mock!(Client::put_item).then_output(|| PutItemOutput::builder().build()),
        mock!(Client::transact_write_items).then_error(conflict),
        mock!(Client::delete_item).then_output(|| DeleteItemOutput::builder().build()),
    ];
    let rule_refs: Vec<&Rule> = rules.iter().collect();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, &rule_refs);
    let ledger = DynamoDbLedger::new(client, "floodgate-ledger");
    // The meta item always reads as absent, yet every flip conflicts: a
    // writer that keeps winning. The loop must end, with the conflict.
    let mut attempts = 0;
    let result = update(&ledger, LedgerState::default(), |state: LedgerState| {
        attempts += 1;
        let mut next = state;
        next.version += 1;
        async move { Ok::<_, LedgerError>((next, ())) }
    })
    .await;
    assert!(
        matches!(
            result,
            Err(UpdateError::Save(LedgerError::Conflict { .. }, ()))
        ),
        "{result:?}"
    );
    assert_eq!(attempts, floodgate_responder::ledger::UPDATE_ATTEMPTS);
}
