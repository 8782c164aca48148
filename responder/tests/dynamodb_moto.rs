//! The DynamoDB ledger and lease against moto: real SDK calls, real
//! conditional writes and transactions.

use floodgate_responder::clock::{Clock, ManualClock};
use floodgate_responder::lease::dynamodb::DynamoDbLease;
use floodgate_responder::lease::{Contender, LeaseGuard, LeaseStore, Standing, acquire};
use floodgate_responder::ledger::dynamodb::{DynamoDbLedger, Fence};
use floodgate_responder::ledger::{Ledger, LedgerEntry, LedgerError, LedgerState, update};
use floodgate_responder::sink::WriteGuard;
use floodgate_rules::policy::Role;
use floodgate_tests::MotoServer;

const REGION: &str = "eu-west-1";
const TABLE: &str = "floodgate-ledger";

async fn moto_with_table() -> MotoServer {
    let moto = MotoServer::start();
    moto.create_ledger_table(REGION, TABLE).await;
    moto
}

fn ledger(moto: &MotoServer) -> DynamoDbLedger {
    DynamoDbLedger::new(moto.dynamodb_client(REGION), TABLE)
}

fn entry(index: u32) -> LedgerEntry {
    let net = format!(
        "10.{}.{}.{}/32",
        index >> 16,
        (index >> 8) & 255,
        index & 255
    );
    LedgerEntry {
        net: net.parse().unwrap(),
        tier: "block".into(),
        first_seen_ms: i64::from(index) * 7919,
        last_seen_ms: i64::from(index) * 104_729,
        blocked_at_ms: i64::from(index) * 1_299_709,
        expires_at_ms: 1_790_000_000_000 + i64::from(index) * 15_485_863,
        offences: index % 7 + 1,
        requests: index.wrapping_mul(2_654_435_761) % 100_000,
        addresses: 1,
        source: "eu-west-1/aws-waf-logs-app".into(),
        reason: format!("{} requests in 300 s", index.wrapping_mul(40_503)),
        suppressed_until_ms: None,
    }
}

fn with_entries(version: u64, entries: impl IntoIterator<Item = u32>) -> LedgerState {
    let mut state = LedgerState {
        version,
        ..LedgerState::default()
    };
    for e in entries.into_iter().map(entry) {
        state.entries.insert(e.net, e);
    }
    state
}

/// Every item in the table, by key.
async fn keys(moto: &MotoServer) -> Vec<String> {
    let scanned = moto
        .dynamodb_client(REGION)
        .scan()
        .table_name(TABLE)
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = scanned
        .items()
        .iter()
        .map(|item| item["pk"].as_s().unwrap().clone())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_ledger_larger_than_an_item_is_saved_in_chunks_and_read_back_whole() {
    let moto = moto_with_table().await;
    let ledger = ledger(&moto);
    assert_eq!(ledger.load().await.unwrap(), LedgerState::default());

    // 150,000 entries gzip to well over one 350 KB chunk.
    let big = with_entries(1, 0..150_000);
    ledger.save(&big).await.unwrap();
    let stored = keys(&moto).await;
    let chunks = stored.iter().filter(|k| k.starts_with("ledger/1-")).count();
    assert!(chunks >= 2, "one item cannot hold it: {stored:?}");
    assert_eq!(ledger.load().await.unwrap(), big);

    // The next save replaces the snapshot and deletes the old chunks.
    let small = with_entries(2, 0..10);
    ledger.save(&small).await.unwrap();
    let stored = keys(&moto).await;
    assert_eq!(stored.len(), 2, "the meta item and one chunk: {stored:?}");
    assert!(stored[1].starts_with("ledger/2-"), "{stored:?}");
    assert_eq!(ledger.load().await.unwrap(), small);
}

#[tokio::test]
async fn a_stale_writer_is_refused_and_update_keeps_both_writers_changes() {
    let moto = moto_with_table().await;
    let (ours, theirs) = (ledger(&moto), ledger(&moto));
    let stale = ours.load().await.unwrap();
    // They save first.
    let mut their_state = theirs.load().await.unwrap();
    their_state.version += 1;
    their_state.entries.insert(entry(1).net, entry(1));
    theirs.save(&their_state).await.unwrap();

    // Our save, planned from the stale read, is refused...
    let mut planned = stale.clone();
    planned.version += 1;
    planned.entries.insert(entry(2).net, entry(2));
    let refused = ours.save(&planned).await.unwrap_err();
    assert!(
        matches!(
            refused,
            LedgerError::Conflict {
                stored: 1,
                expected: 0,
                ..
            }
        ),
        "{refused}"
    );
    // ...and nothing of it was stored, not even its chunks.
    assert_eq!(ours.load().await.unwrap(), their_state);
    assert_eq!(keys(&moto).await.len(), 2);

    // Through update, our change is made again on their state.
    let saved = update(&ours, stale, |state: LedgerState| {
        let mut next = state;
        next.version += 1;
        next.entries.insert(entry(2).net, entry(2));
        async move { Ok::<_, LedgerError>((next.clone(), next)) }
    })
    .await
    .unwrap();
    assert_eq!(saved, with_entries(2, [1, 2]));
    assert_eq!(ours.load().await.unwrap(), saved);
}

const TTL_MS: i64 = 60_000;
const SKEW_MS: i64 = 5_000;

fn contender(holder_id: &str, role: Role) -> Contender<'_> {
    Contender {
        holder_id,
        role,
        ttl_ms: TTL_MS,
        skew_ms: SKEW_MS,
    }
}

#[tokio::test]
async fn a_save_fenced_by_a_lease_that_was_taken_over_is_refused() {
    let moto = moto_with_table().await;
    let lease = DynamoDbLease::new(moto.dynamodb_client(REGION), TABLE);
    let (primary, standby) = (
        contender("primary", Role::Primary),
        contender("standby", Role::Standby),
    );
    let t0 = 1_790_000_000_000;
    let Standing::Holding { fence, .. } = acquire(&lease, &primary, t0).await.unwrap() else {
        panic!("nobody held the lease");
    };
    assert_eq!(fence, 1);
    let fence_of = |holder: &str, fence| Fence {
        table: TABLE.into(),
        holder: holder.into(),
        fence,
    };
    // While it holds the lease, the primary's fenced saves go through.
    let primary_ledger = ledger(&moto).fenced_by(fence_of("primary", 1));
    primary_ledger.save(&with_entries(1, [1])).await.unwrap();

    // The standby waits while the lease is live, then takes it.
    let waiting = acquire(&lease, &standby, t0 + TTL_MS).await.unwrap();
    assert_eq!(
        waiting,
        Standing::Waiting {
            holder: "primary".into(),
            expires_at_ms: t0 + TTL_MS
        }
    );
    let took = acquire(&lease, &standby, t0 + TTL_MS + SKEW_MS + 1)
        .await
        .unwrap();
    assert!(
        matches!(took, Standing::Holding { fence: 2, .. }),
        "{took:?}"
    );

    // Back from a pause, the primary may not write to a target any more;
    // the standby may.
    let clock_at = |ms: i64| -> Box<dyn Clock> {
        Box::new(ManualClock::new(
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap(),
        ))
    };
    let now = t0 + TTL_MS + SKEW_MS + 2;
    let primary_guard = LeaseGuard::new(lease.clone(), &primary, 1, clock_at(now));
    let refused = primary_guard.may_write().await.unwrap_err();
    assert!(refused.contains("no longer ours"), "{refused}");
    let standby_guard = LeaseGuard::new(lease.clone(), &standby, 2, clock_at(now));
    standby_guard.may_write().await.unwrap();
    // Nor may the standby, once too little of its own lease is left.
    let late = LeaseGuard::new(lease.clone(), &standby, 2, clock_at(now + TTL_MS - SKEW_MS));
    let refused = late.may_write().await.unwrap_err();
    assert!(refused.contains("ends too soon"), "{refused}");

    // The primary, back from a pause, tries to save under fence 1.
    let refused = primary_ledger
        .save(&with_entries(2, [1, 2]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, LedgerError::LeaseLost { fence: 1, .. }),
        "{refused}"
    );
    assert_eq!(ledger(&moto).load().await.unwrap(), with_entries(1, [1]));
    // The standby's saves, under fence 2, go through.
    let standby_ledger = ledger(&moto).fenced_by(fence_of("standby", 2));
    standby_ledger.save(&with_entries(2, [1, 3])).await.unwrap();
}

#[tokio::test]
async fn only_one_of_two_racing_lease_writes_wins() {
    let moto = moto_with_table().await;
    let lease = DynamoDbLease::new(moto.dynamodb_client(REGION), TABLE);
    let (a, b) = (contender("a", Role::Primary), contender("b", Role::Primary));
    let t0 = 1_790_000_000_000;
    acquire(&lease, &a, t0).await.unwrap();
    // Both read the lapsed lease, then both try to take it.
    let later = t0 + TTL_MS + SKEW_MS + 1;
    let seen = lease.read().await.unwrap().unwrap();
    let by_a = floodgate_responder::lease::next_record(Some(&seen), &a, later).unwrap();
    let by_b = floodgate_responder::lease::next_record(Some(&seen), &b, later).unwrap();
    assert!(lease.replace(Some(&seen), &by_b).await.unwrap());
    assert!(!lease.replace(Some(&seen), &by_a).await.unwrap());
    assert_eq!(lease.read().await.unwrap().unwrap(), by_b);
    // A first take is conditional too.
    let fresh = floodgate_responder::lease::next_record(None, &a, t0).unwrap();
    assert!(!lease.replace(None, &fresh).await.unwrap());
}
