//! Alerts: a generic JSON POST (Slack-compatible: it carries `text`) to the
//! webhook `[alerts] webhook_url_env` names, when a cycle sees
//!
//! - an address crossing an observe tier,
//! - the circuit breaker tripping,
//! - a target failing `target_failure_cycles` cycles in a row,
//! - an allow-listed address reaching a block tier (its exception may need
//!   review).
//!
//! Each alert has a key; one already sent within `repeat_minutes` is not
//! sent again, so an ongoing attack does not page every minute. What was
//! sent when, and each target's failure streak, live in `alerts.json` beside
//! the ledger. A failed POST is logged and never fails the cycle.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use floodgate_rules::Policy;
use floodgate_rules::policy::{Alerts, TierAction};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::detect::Offender;
use crate::plan::BlockPlan;
use crate::sink::{Outcome, TargetReport};

/// The file alert state is kept in, inside `[responder] state_dir`.
pub const ALERTS_FILE: &str = "alerts.json";

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    /// An address reached an observe tier.
    ObserveTier {
        /// The address.
        ip: String,
        /// The tier.
        tier: String,
        /// Its requests in the tier's window.
        requests: u32,
    },
    /// More new blocks than `max_new_blocks_per_run`: only the worst were applied.
    CircuitBreaker {
        /// New blocks held back.
        held_back: usize,
    },
    /// A target failed this many cycles in a row.
    TargetFailing {
        /// The target.
        target: String,
        /// Cycles in a row.
        cycles: u32,
        /// The last failure.
        error: String,
    },
    /// An allow-listed address reached a block tier.
    AllowListedOverBlockTier {
        /// The address.
        ip: String,
        /// The exception that spared it.
        exception: String,
        /// Who answers for the exception.
        owner: String,
        /// The tier it reached.
        tier: String,
        /// Its requests in the tier's window.
        requests: u32,
    },
}

impl Alert {
    /// What makes two alerts the same, for repeats.
    fn key(&self) -> String {
        match self {
            Alert::ObserveTier { ip, tier, .. } => format!("observe/{tier}/{ip}"),
            Alert::CircuitBreaker { .. } => "circuit-breaker".to_owned(),
            Alert::TargetFailing { target, .. } => format!("target/{target}"),
            Alert::AllowListedOverBlockTier { ip, .. } => format!("allow-listed/{ip}"),
        }
    }

    /// One line for people.
    pub fn text(&self) -> String {
        match self {
            Alert::ObserveTier { ip, tier, requests } => {
                format!("{ip} crossed observe tier {tier} ({requests} requests)")
            }
            Alert::CircuitBreaker { held_back } => format!(
                "circuit breaker tripped: {held_back} new blocks held back; check the tiers and the logs"
            ),
            Alert::TargetFailing {
                target,
                cycles,
                error,
            } => format!("{target} failed {cycles} cycles in a row: {error}"),
            Alert::AllowListedOverBlockTier {
                ip,
                exception,
                owner,
                tier,
                requests,
            } => format!(
                "allow-listed {ip} reached block tier {tier} ({requests} requests); exception {exception} (owner {owner}) may need review"
            ),
        }
    }
}

/// What was sent when, and each target's failure streak.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AlertState {
    /// Alert key → when it was last sent, ms since the epoch.
    pub sent_ms: BTreeMap<String, i64>,
    /// Target → failed cycles in a row.
    pub failures: BTreeMap<String, u32>,
}

impl AlertState {
    /// Reads `alerts.json` from `dir`; a missing or unreadable file starts afresh.
    pub fn load(dir: &Path) -> AlertState {
        std::fs::read(dir.join(ALERTS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes `alerts.json` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        crate::atomic_file::write_atomically(dir, ALERTS_FILE, &bytes)
    }
}

/// The alerts a cycle raises; updates the failure streaks in `state`.
pub fn raise(
    policy: &Policy,
    alerts: &Alerts,
    offenders: &[Offender],
    planned: &BlockPlan,
    reports: &[TargetReport],
    state: &mut AlertState,
    now_ms: i64,
) -> Vec<Alert> {
    let mut raised = Vec::new();
    for offender in offenders {
        let ip = offender.key_text();
        // An exception keeps its address below the block tiers; say when
        // the traffic would have reached one without it.
        if let Some(index) = offender.allow_entry {
            let reached = policy.tiers.iter().rev().find(|t| {
                matches!(t.action, TierAction::Block(_)) && offender.requests >= t.requests.get()
            });
            if let Some(tier) = reached {
                let entry = &policy.allow.entries()[index];
                raised.push(Alert::AllowListedOverBlockTier {
                    ip,
                    exception: entry.cidr.to_string(),
                    owner: entry.owner.clone(),
                    tier: tier.name.to_string(),
                    requests: offender.requests,
                });
            }
            continue;
        }
        let Some(tier) = offender.tier.as_ref().and_then(|t| policy.tier(t.as_str())) else {
            continue;
        };
        // An address already blocked dropping to an observe tier is not news.
        let blocked = planned
            .ledger
            .entries
            .get(&offender.net)
            .is_some_and(|e| e.is_active(now_ms));
        if matches!(tier.action, TierAction::Observe) && !blocked {
            raised.push(Alert::ObserveTier {
                ip,
                tier: tier.name.to_string(),
                requests: offender.requests,
            });
        }
    }
    if !planned.held_back.is_empty() {
        raised.push(Alert::CircuitBreaker {
            held_back: planned.held_back.len(),
        });
    }
    for report in reports {
        match &report.outcome {
            Outcome::Failed(error) => {
                let cycles = state.failures.entry(report.target.clone()).or_default();
                *cycles += 1;
                if *cycles >= alerts.target_failure_cycles.get() {
                    raised.push(Alert::TargetFailing {
                        target: report.target.clone(),
                        cycles: *cycles,
                        error: error.to_string(),
                    });
                }
            }
            _ => {
                state.failures.remove(&report.target);
            }
        }
    }
    raised
}

/// Drops alerts sent within the repeat window, and records the rest as sent.
pub fn deduplicate(
    raised: Vec<Alert>,
    alerts: &Alerts,
    state: &mut AlertState,
    now_ms: i64,
) -> Vec<Alert> {
    let window_ms = i64::from(alerts.repeat_minutes.get()) * 60_000;
    state.sent_ms.retain(|_, sent| now_ms - *sent < window_ms);
    raised
        .into_iter()
        .filter(|alert| {
            let fresh = !state.sent_ms.contains_key(&alert.key());
            if fresh {
                state.sent_ms.insert(alert.key(), now_ms);
            }
            fresh
        })
        .collect()
}

/// The webhook's body: Slack reads `text`; other receivers get `alerts`.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    alerts: &'a [Alert],
}

/// POSTs `alerts` to `url`, within 10 s.
pub async fn send(url: &str, alerts: &[Alert]) -> Result<(), String> {
    let text = alerts
        .iter()
        .map(Alert::text)
        .collect::<Vec<_>>()
        .join("\n");
    let body = serde_json::to_vec(&Payload {
        text: format!("Floodgate: {text}"),
        alerts,
    })
    .expect("alerts serialize");
    let client = crate::http_client::https_client()?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad webhook URL: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the webhook answered {}", response.status()));
    }
    Ok(())
}

/// Raises, deduplicates and sends a cycle's alerts; never fails the cycle.
pub async fn notify(
    policy: &Policy,
    offenders: &[Offender],
    planned: &BlockPlan,
    reports: &[TargetReport],
    now_ms: i64,
) {
    let Some(alerts) = &policy.alerts else {
        return;
    };
    let dir = &policy.responder.state_dir;
    let mut state = AlertState::load(dir);
    let raised = raise(
        policy, alerts, offenders, planned, reports, &mut state, now_ms,
    );
    let fresh = deduplicate(raised, alerts, &mut state, now_ms);
    if !fresh.is_empty() {
        match std::env::var(&alerts.webhook_url_env) {
            Ok(url) => {
                if let Err(error) = send(&url, &fresh).await {
                    tracing::error!(%error, alerts = fresh.len(), "could not post alerts to the webhook");
                }
            }
            Err(_) => tracing::error!(
                variable = %alerts.webhook_url_env,
                alerts = fresh.len(),
                "alerts not sent: the webhook URL variable is not set"
            ),
        }
    }
    if let Err(error) = state.save(dir) {
        tracing::error!(%error, "could not save the alert state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn alerts(repeat_minutes: u32, target_failure_cycles: u32) -> Alerts {
        Alerts {
            webhook_url_env: "HOOK".to_owned(),
            repeat_minutes: NonZeroU32::new(repeat_minutes).unwrap(),
            target_failure_cycles: NonZeroU32::new(target_failure_cycles).unwrap(),
        }
    }

    #[test]
    fn an_alert_repeats_only_after_its_window() {
        let config = alerts(60, 3);
        let mut state = AlertState::default();
        let breaker = || vec![Alert::CircuitBreaker { held_back: 7 }];
        assert_eq!(deduplicate(breaker(), &config, &mut state, 0).len(), 1);
        assert!(deduplicate(breaker(), &config, &mut state, 59 * 60_000).is_empty());
        assert_eq!(
            deduplicate(breaker(), &config, &mut state, 60 * 60_000).len(),
            1
        );
    }

    #[test]
    fn a_target_alerts_after_n_failed_cycles_and_a_success_resets_it() {
        let policy = Policy::from_toml("", "p.toml", time::macros::date!(2026 - 11 - 22))
            .unwrap()
            .policy;
        let config = alerts(60, 2);
        let planned = crate::plan::plan(
            &[],
            &policy,
            &Default::default(),
            0,
            "t",
            crate::plan::Capacity {
                ipv4_sets: 1,
                ipv6_sets: 1,
                per_set: 10,
            },
        );
        let report = |outcome: Outcome| TargetReport {
            target: "wafv2 eu-west-1".to_owned(),
            outcome,
            calls: Default::default(),
            left_out: Vec::new(),
            removed: Vec::new(),
        };
        let failed = || {
            vec![report(Outcome::Failed(crate::sink::TargetError::new(
                crate::failure::FailureKind::Throttled { retry_after: None },
                "throttled",
            )))]
        };
        let mut state = AlertState::default();
        assert!(raise(&policy, &config, &[], &planned, &failed(), &mut state, 0).is_empty());
        let second = raise(&policy, &config, &[], &planned, &failed(), &mut state, 0);
        assert_eq!(second.len(), 1);
        assert!(
            second[0]
                .text()
                .contains("failed 2 cycles in a row: throttled")
        );
        let ok = vec![report(Outcome::Unchanged)];
        raise(&policy, &config, &[], &planned, &ok, &mut state, 0);
        assert!(raise(&policy, &config, &[], &planned, &failed(), &mut state, 0).is_empty());
    }
}
