//! The WAFv2 target against scripted WAF responses (`aws-smithy-mocks`):
//! the faults an emulator cannot produce on demand.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_wafv2::Client;
use aws_sdk_wafv2::operation::get_ip_set::{GetIPSetError, GetIpSetOutput};
use aws_sdk_wafv2::operation::list_ip_sets::ListIpSetsOutput;
use aws_sdk_wafv2::operation::update_ip_set::{UpdateIPSetError, UpdateIpSetOutput};
use aws_sdk_wafv2::types::error::{
    WafInternalErrorException, WafLimitsExceededException, WafNonexistentItemException,
    WafOptimisticLockException,
};
use aws_sdk_wafv2::types::{IpAddressVersion, IpSet, IpSetSummary};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use floodgate_responder::aws::retry_config;
use floodgate_responder::failure::FailureKind;
use floodgate_responder::sink::wafv2::Wafv2Target;
use floodgate_responder::sink::{DesiredSets, Outcome, TargetError, WafTarget, apply_all};
use floodgate_rules::policy::{Region, WafScope};
use ipnet::IpNet;

fn listed(id: &'static str) -> Rule {
    mock!(Client::list_ip_sets).then_output(move || {
        ListIpSetsOutput::builder()
            .ip_sets(
                IpSetSummary::builder()
                    .name("fg-v4")
                    .id(id)
                    .lock_token("t0")
                    .arn("arn")
                    .build(),
            )
            .next_marker("end")
            .build()
    })
}

fn set_with(addresses: &[&str], token: &str) -> GetIpSetOutput {
    let set = IpSet::builder()
        .name("fg-v4")
        .id("id-1")
        .arn("arn")
        .ip_address_version(IpAddressVersion::Ipv4)
        .set_addresses(Some(addresses.iter().map(|a| a.to_string()).collect()))
        .build()
        .unwrap();
    GetIpSetOutput::builder()
        .ip_set(set)
        .lock_token(token)
        .build()
}

fn target(rules: &[&Rule], region: &str) -> Wafv2Target {
    let client = mock_client!(aws_sdk_wafv2, RuleMode::MatchAny, rules, |c| c
        .retry_config(retry_config()));
    Wafv2Target::new(
        client,
        WafScope::Regional(Region::new(region).unwrap()),
        vec!["fg-v4".into()],
        vec![],
        false,
    )
    .with_backoff(Duration::from_millis(10))
}

fn desired(addresses: &[&str]) -> DesiredSets {
    DesiredSets {
        ipv4: vec![
            addresses
                .iter()
                .map(|a| a.parse::<IpNet>().unwrap())
                .collect(),
        ],
        ipv6: vec![],
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_lock_token_is_refreshed_and_rediffed() {
    let list = listed("id-1");
    // The second read sees a foreign write: 192.0.2.9 appeared.
    let get = mock!(Client::get_ip_set)
        .sequence()
        .output(|| set_with(&["192.0.2.1/32"], "t1"))
        .output(|| set_with(&["192.0.2.1/32", "192.0.2.9/32"], "t2"))
        .build();
    let update = mock!(Client::update_ip_set)
        .sequence()
        .error(|| {
            UpdateIPSetError::WafOptimisticLockException(
                WafOptimisticLockException::builder()
                    .message("stale")
                    .build(),
            )
        })
        .output(|| UpdateIpSetOutput::builder().next_lock_token("t3").build())
        .build();
    let report = target(&[&list, &get, &update], "eu-west-1")
        .apply(&desired(&["192.0.2.1/32", "203.0.113.66/32"]))
        .await;
    // Re-diffed against the fresh addresses: +1 (our attacker), -1 (the foreign entry).
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 1
        }
    );
    assert_eq!(
        (report.calls.list, report.calls.get, report.calls.update),
        (1, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn waf_limits_back_off_and_retry() {
    let list = listed("id-1");
    let get = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let update = mock!(Client::update_ip_set)
        .sequence()
        .error(|| {
            UpdateIPSetError::WafLimitsExceededException(
                WafLimitsExceededException::builder()
                    .message("slow down")
                    .build(),
            )
        })
        .times(2)
        .output(|| UpdateIpSetOutput::builder().next_lock_token("t2").build())
        .build();
    let report = target(&[&list, &get, &update], "eu-west-1")
        .apply(&desired(&["203.0.113.66/32"]))
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(update.num_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_lock_conflict_that_never_clears_fails_the_target_not_the_run() {
    let list = listed("id-1");
    let get = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let update = mock!(Client::update_ip_set).then_error(|| {
        UpdateIPSetError::WafOptimisticLockException(
            WafOptimisticLockException::builder()
                .message("stale")
                .build(),
        )
    });
    let report = target(&[&list, &get, &update], "eu-west-1")
        .apply(&desired(&["203.0.113.66/32"]))
        .await;
    match report.outcome {
        Outcome::Failed(reason) => {
            assert!(
                reason.detail.contains("lock conflict after 6 attempts"),
                "{reason}"
            );
            assert_eq!(reason.kind, FailureKind::Conflict);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(update.num_calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_set_is_looked_up_again() {
    // The cached id is gone (the set was recreated): GetIPSet says so once.
    let list = mock!(Client::list_ip_sets)
        .sequence()
        .output(|| {
            ListIpSetsOutput::builder()
                .ip_sets(IpSetSummary::builder().name("fg-v4").id("old").build())
                .build()
        })
        .output(|| {
            ListIpSetsOutput::builder()
                .ip_sets(IpSetSummary::builder().name("fg-v4").id("new").build())
                .build()
        })
        .build();
    let gone = mock!(Client::get_ip_set)
        .match_requests(|r| r.id() == Some("old"))
        .then_error(|| {
            GetIPSetError::WafNonexistentItemException(
                WafNonexistentItemException::builder()
                    .message("gone")
                    .build(),
            )
        });
    let fresh = mock!(Client::get_ip_set)
        .match_requests(|r| r.id() == Some("new"))
        .then_output(|| set_with(&[], "t1"));
    let update = mock!(Client::update_ip_set)
        .match_requests(|r| r.id() == Some("new") && r.lock_token() == Some("t1"))
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t2").build());
    let report = target(&[&list, &gone, &fresh, &update], "eu-west-1")
        .apply(&desired(&["203.0.113.66/32"]))
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(list.num_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_region_failing_never_stops_the_others() {
    let (list_a, list_b, list_c) = (listed("id-1"), listed("id-1"), listed("id-1"));
    let get_a = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let get_b = mock!(Client::get_ip_set).then_output(|| set_with(&["203.0.113.66/32"], "t1"));
    let get_c = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let ok_a = mock!(Client::update_ip_set)
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t2").build());
    let broken = mock!(Client::update_ip_set).then_error(|| {
        UpdateIPSetError::WafInternalErrorException(
            WafInternalErrorException::builder()
                .message("WAF is down in this region")
                .build(),
        )
    });
    let targets = vec![
        Arc::new(target(&[&list_a, &get_a, &ok_a], "us-east-1")),
        Arc::new(target(&[&list_b, &get_b], "eu-west-1")),
        Arc::new(target(&[&list_c, &get_c, &broken], "ap-southeast-2")),
    ];
    let reports = apply_all(targets, &desired(&["203.0.113.66/32"]), 2).await;
    let outcomes: Vec<(String, String)> = reports
        .iter()
        .map(|r| (r.target.clone(), r.outcome.to_string()))
        .collect();
    assert_eq!(
        outcomes[0],
        (
            "wafv2 regional/us-east-1".to_owned(),
            "updated +1 −0".to_owned()
        )
    );
    // Already converged: no write at all.
    assert_eq!(
        outcomes[1],
        (
            "wafv2 regional/eu-west-1".to_owned(),
            "unchanged".to_owned()
        )
    );
    assert_eq!(reports[1].calls.update, 0);
    assert_eq!(outcomes[2].0, "wafv2 regional/ap-southeast-2");
    assert!(
        outcomes[2]
            .1
            .starts_with("failed: UpdateIPSet fg-v4: WafInternalErrorException [WAFInternalErrorException]: WAF is down"),
        "{}",
        outcomes[2].1
    );
}

/// A GetIPSet that fails with the error `code` and `message`, as AWS sends
/// them, read through a target: the error the target reports.
async fn read_failing_with(code: &'static str, message: &'static str) -> TargetError {
    let failing = mock!(Client::get_ip_set).then_error(move || {
        GetIPSetError::generic(
            aws_sdk_wafv2::error::ErrorMetadata::builder()
                .code(code)
                .message(message)
                .build(),
        )
    });
    target(&[&listed("id-1"), &failing], "eu-west-1")
        .read()
        .await
        .unwrap_err()
}

/// The kind of each failure reaches the cycle: denied credentials and a
/// missing set are not worth retrying; an outage is.
#[tokio::test(start_paused = true)]
async fn a_failure_says_what_kind_it_is() {
    let report = read_failing_with(
        "AccessDeniedException",
        "not authorized to perform wafv2:GetIPSet",
    )
    .await;
    assert_eq!(report.kind, FailureKind::Denied);
    assert!(
        report
            .detail
            .starts_with("GetIPSet fg-v4: AccessDeniedException: not authorized"),
        "{report}"
    );
    assert!(!report.kind.is_transient());

    let report = read_failing_with(
        "ExpiredTokenException",
        "The security token included in the request is expired",
    )
    .await;
    assert_eq!(report.kind, FailureKind::Denied);
    assert!(
        report
            .detail
            .ends_with("refresh it (aws sso login, or new keys)"),
        "{report}"
    );

    let report = read_failing_with("WAFInternalErrorException", "WAF is down in this region").await;
    assert_eq!(report.kind, FailureKind::Unavailable);
    assert!(report.kind.is_transient());

    let empty = mock!(Client::list_ip_sets).then_output(|| ListIpSetsOutput::builder().build());
    let missing = target(&[&empty], "eu-west-1").read().await.unwrap_err();
    assert_eq!(missing.kind, FailureKind::NotFound);
    assert!(
        missing.detail.contains("create_missing = true"),
        "{missing}"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_by_the_shared_retry_policy() {
    let list = listed("id-1");
    let get = mock!(Client::get_ip_set)
        .sequence()
        .http_status(
            400,
            Some(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into()),
        )
        .times(2)
        .output(|| set_with(&["203.0.113.66/32"], "t1"))
        .build();
    let report = target(&[&list, &get], "eu-west-1")
        .apply(&desired(&["203.0.113.66/32"]))
        .await;
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert_eq!(get.num_calls(), 3);
}

/// A guard that lets through the first `allowed` writes, then refuses:
/// a lease lost part way through a cycle.
struct LeaseLostAfter {
    allowed: std::sync::atomic::AtomicUsize,
}

impl floodgate_responder::sink::WriteGuard for LeaseLostAfter {
    async fn may_write(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            return Err("the lease is no longer ours".to_owned());
        }
        self.allowed.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn no_target_is_written_once_the_guard_refuses() {
    let (list_a, list_b) = (listed("id-1"), listed("id-1"));
    let get_a = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let get_b = mock!(Client::get_ip_set).then_output(|| set_with(&[], "t1"));
    let update_a = mock!(Client::update_ip_set)
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t2").build());
    let update_b = mock!(Client::update_ip_set)
        .then_output(|| UpdateIpSetOutput::builder().next_lock_token("t2").build());
    let targets = vec![
        Arc::new(target(&[&list_a, &get_a, &update_a], "us-east-1")),
        Arc::new(target(&[&list_b, &get_b, &update_b], "eu-west-1")),
    ];
    // One at a time, so the first target is written before the lease is lost.
    let guard = Arc::new(LeaseLostAfter { allowed: 1.into() });
    let reports = floodgate_responder::sink::apply_all_guarded(
        targets,
        &desired(&["203.0.113.66/32"]),
        1,
        guard,
    )
    .await;
    assert_eq!(
        reports[0].outcome,
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(
        reports[1].outcome,
        Outcome::Failed(TargetError::new(
            FailureKind::Fenced,
            "not written: the lease is no longer ours"
        ))
    );
    assert_eq!(reports[1].calls.total(), 0);
    assert_eq!(
        (list_b.num_calls(), get_b.num_calls(), update_b.num_calls()),
        (0, 0, 0),
        "the refused target saw no call at all"
    );
}
