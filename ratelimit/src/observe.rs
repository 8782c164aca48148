//! Counters per plan through the `metrics` facade, and `tracing` events on
//! rejection that are themselves rate-limited, so an attack can't flood the
//! logs.
//!
//! Counter: `floodgate_ratelimit_requests_total{plan, outcome}` with outcome
//! `allowed`, `shadowed` (over the limit, let through in shadow mode),
//! `limited` or, with plan `none`, `unidentified` (no key, rejected). A
//! request of a route class its plan limits is counted with a `class` label
//! too.
//! Handles are registered when the policy is compiled, so install the
//! metrics recorder before building the layer.

use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use metrics::{Counter, Label};

use crate::key::Key;
use std::num::NonZeroU32;

/// The counter every outcome is counted in.
pub const REQUESTS_TOTAL: &str = "floodgate_ratelimit_requests_total";

/// One plan's counters.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub allowed: Counter,
    pub shadowed: Counter,
    pub limited: Counter,
}

impl Counters {
    pub fn new(plan: &str) -> Counters {
        Counters::labelled(vec![Label::new("plan", plan.to_owned())])
    }

    /// The counters of requests of `class` under `plan`.
    pub fn with_class(plan: &str, class: &str) -> Counters {
        Counters::labelled(vec![
            Label::new("plan", plan.to_owned()),
            Label::new("class", class.to_owned()),
        ])
    }

    /// One counter per outcome, each with `labels` and its outcome.
    fn labelled(labels: Vec<Label>) -> Counters {
        let counter = |outcome: &'static str| {
            let mut labels = labels.clone();
            labels.push(Label::new("outcome", outcome));
            metrics::counter!(REQUESTS_TOTAL, labels)
        };
        Counters {
            allowed: counter("allowed"),
            shadowed: counter("shadowed"),
            limited: counter("limited"),
        }
    }

    pub fn unidentified() -> Counter {
        metrics::counter!(REQUESTS_TOTAL, "plan" => "none", "outcome" => "unidentified")
    }
}

/// What the layer logs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event<'a> {
    /// A request over its limit: refused, or let through in shadow mode.
    OverLimit {
        plan: &'a str,
        /// The route class, or "" for none.
        class: &'a str,
        key: &'a Key<'a>,
        retry_after_seconds: u64,
        shadow: bool,
        overflow: bool,
    },
    /// A request named a plan the policy doesn't have; it got the default.
    UnknownPlan { plan: &'a str, key: &'a Key<'a> },
    /// The service named a route class the policy doesn't have; the request
    /// was charged to its plan alone.
    UnknownClass { class: &'a str, key: &'a Key<'a> },
    /// A request had no key and no peer address to fall back on.
    NoPeerAddress,
}

/// Emits [`Event`]s at most ten a second with bursts of 20, and reports how
/// many it held back with the next one it lets out.
#[derive(Debug)]
pub(crate) struct EventLog<C: Clock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    suppressed: AtomicU64,
}

impl<C: Clock> EventLog<C> {
    pub fn new(clock: &C) -> EventLog<C>
    where
        C: Clone,
    {
        let quota = Quota::per_second(NonZeroU32::new(10).expect("ten"))
            .allow_burst(NonZeroU32::new(20).expect("twenty"));
        EventLog {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn emit(&self, event: Event<'_>) {
        if self.limiter.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        match event {
            Event::OverLimit {
                plan,
                class,
                key,
                retry_after_seconds,
                shadow,
                overflow,
            } => tracing::warn!(
                plan,
                class,
                key = %key,
                retry_after_seconds,
                shadow,
                overflow,
                suppressed,
                "request over its rate limit"
            ),
            Event::UnknownPlan { plan, key } => tracing::warn!(
                plan,
                key = %key,
                suppressed,
                "request names a plan the policy lacks; the default plan applies"
            ),
            Event::UnknownClass { class, key } => tracing::warn!(
                class,
                key = %key,
                suppressed,
                "request names a route class the policy lacks; only its plan's limits apply"
            ),
            Event::NoPeerAddress => tracing::error!(
                suppressed,
                "request has no key and no peer address; insert PeerAddr or use axum's ConnectInfo"
            ),
        }
    }
}
