//! `floodgate run` without `--once`: cycles on the policy's cron schedule,
//! never two at once, with `/healthz` and `/metrics` on a local port, until
//! SIGTERM or SIGINT.
//!
//! - A tick that finds the previous cycle still running is skipped and
//!   logged, and counted in `floodgate_responder_skipped_ticks_total`.
//! - On a signal the daemon stops scheduling, lets a running cycle finish
//!   (it saves the ledger as its last step) for up to [`SHUTDOWN_GRACE`],
//!   then exits 0.
//! - `/healthz` is a deep check: 200 only when the last cycle read its source,
//!   wrote every target and saved the ledger, and ended within three schedule
//!   periods, and found records in its window; 503 otherwise, with the
//!   reason. A window with no record, and none newer, is a stalled log
//!   feed until a cycle finds records again
//!   (`floodgate_responder_source_stale` is 1 meanwhile).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{Clock, rfc3339_from_ms, unix_ms};
use crate::cycle::CycleReport;

mod metrics;

use self::metrics::Metrics;

/// How long a running cycle may take to finish after a signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(120);

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleResult {
    /// Source read, every target converged, ledger saved.
    Success,
    /// Every target converged, but the source had no record in the
    /// window and none newer: the log feed may have stalled.
    Stale,
    /// Some target failed; the others were written.
    Partial,
    /// Nothing was applied: bad input, an unreadable source or ledger.
    Error,
}

/// The cron schedule and its jitter.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    jitter_seconds: u32,
}

impl Schedule {
    /// Parses a cron expression with seconds, as the policy validated it.
    pub fn new(expression: &str, jitter_seconds: u32) -> Result<Schedule, String> {
        let cron = cron::Schedule::from_str(expression)
            .map_err(|_| format!("\"{expression}\" is not a cron schedule"))?;
        Ok(Schedule {
            cron,
            jitter_seconds,
        })
    }

    /// The first tick after `now`.
    fn next_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let now = chrono::DateTime::from_timestamp(now.unix_timestamp(), now.nanosecond())?;
        let next = self.cron.after(&now).next()?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(next.timestamp_nanos_opt()?)).ok()
    }

    /// The gap between the next two ticks: how often cycles run.
    fn period(&self, now: OffsetDateTime) -> Duration {
        let first = self.next_after(now);
        let second = first.and_then(|f| self.next_after(f));
        match (first, second) {
            (Some(a), Some(b)) => (b - a).try_into().unwrap_or(Duration::from_secs(60)),
            _ => Duration::from_secs(60),
        }
    }

    /// A random delay up to the jitter.
    fn jitter(&self) -> Duration {
        if self.jitter_seconds == 0 {
            return Duration::ZERO;
        }
        let random = std::hash::RandomState::new().build_hasher().finish();
        Duration::from_millis(random % (u64::from(self.jitter_seconds) * 1000))
    }
}

/// What `/healthz` and `/metrics` report.
pub struct Health {
    inner: Mutex<HealthState>,
    metrics: Metrics,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Mutex::default(),
            metrics: Metrics::new(),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What `/healthz` decides on.
#[derive(Debug, Default)]
struct HealthState {
    running: bool,
    last_result: Option<CycleResult>,
    last_end_ms: Option<i64>,
    period: Duration,
}

impl Health {
    /// Whether a cycle may start now; marks it running if so.
    fn try_start(&self) -> bool {
        let mut state = self.inner.lock();
        if state.running {
            self.metrics.skipped.increment(1);
            return false;
        }
        state.running = true;
        self.metrics.running.set(1.0);
        true
    }

    fn finish(&self, result: CycleResult, end_ms: i64, took: Duration) {
        let mut state = self.inner.lock();
        state.running = false;
        state.last_result = Some(result);
        state.last_end_ms = Some(end_ms);
        let metrics = &self.metrics;
        metrics.running.set(0.0);
        metrics.last_duration.set(took.as_secs_f64());
        // An error read no source: it says nothing of the feed.
        if result != CycleResult::Error {
            let stale = result == CycleResult::Stale;
            metrics.source_stale.set(if stale { 1.0 } else { 0.0 });
        }
        let counted = match result {
            CycleResult::Success => {
                metrics.last_success().set(end_ms as f64 / 1000.0);
                0
            }
            CycleResult::Stale => 1,
            CycleResult::Partial => 2,
            CycleResult::Error => 3,
        };
        metrics.cycles[counted].increment(1);
    }

    fn running(&self) -> bool {
        self.inner.lock().running
    }

    /// The deep check: `Ok` with a summary, or `Err` with the reason.
    pub fn check(&self, now_ms: i64) -> Result<String, String> {
        let state = self.inner.lock();
        let stale_after_ms = i64::try_from(state.period.as_millis() * 3).unwrap_or(i64::MAX);
        match (state.last_result, state.last_end_ms) {
            (None, _) | (_, None) => Err("no cycle has finished yet".to_owned()),
            (Some(CycleResult::Success), Some(end)) if now_ms - end <= stale_after_ms => {
                Ok(format!("last cycle succeeded at {}", rfc3339_from_ms(end)))
            }
            (Some(CycleResult::Success), Some(end)) => Err(format!(
                "the last cycle ended at {}, more than three schedule periods ago",
                rfc3339_from_ms(end)
            )),
            (Some(CycleResult::Stale), Some(end)) => Err(format!(
                "the last cycle, at {}, found no record in its window and none newer: \
                 is the log feed stalled? (the run report's newest_record says how old it is)",
                rfc3339_from_ms(end)
            )),
            (Some(CycleResult::Partial), Some(end)) => Err(format!(
                "the last cycle, at {}, could not write every target",
                rfc3339_from_ms(end)
            )),
            (Some(CycleResult::Error), Some(end)) => Err(format!(
                "the last cycle, at {}, failed before applying anything",
                rfc3339_from_ms(end)
            )),
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }

    /// Records what a cycle's report says (blocks in force, targets,
    /// offenders, what was read, the lease, phase durations) in the
    /// metrics.
    pub fn record(&self, report: &CycleReport) {
        self.metrics.record(report);
    }

    /// Records a fast pass's report in the metrics.
    pub fn record_fast(&self, report: &crate::fast::FastReport) {
        self.metrics.record_fast(report);
    }
}

/// Runs `cycle` on `schedule` until `shutdown` turns true, never two at
/// once; then waits up to [`SHUTDOWN_GRACE`] for a running cycle.
pub async fn schedule_loop<F, Fut>(
    schedule: &Schedule,
    clock: Arc<dyn Clock>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
    cycle: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = CycleResult> + Send + 'static,
{
    health.inner.lock().period = schedule.period(clock.now());
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let now = clock.now();
        let Some(next) = schedule.next_after(now) else {
            tracing::error!("the schedule has no next tick; stopping");
            break;
        };
        let wait = Duration::try_from(next - now).unwrap_or_default() + schedule.jitter();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        if !health.try_start() {
            tracing::warn!(tick = %rfc3339_from_ms(unix_ms(next)), "the previous cycle is still running; skipping this tick");
            continue;
        }
        let (health, clock, work) = (Arc::clone(&health), Arc::clone(&clock), cycle());
        running = Some(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let result = work.await;
            health.finish(result, unix_ms(clock.now()), started.elapsed());
        }));
    }
    if let Some(task) = running
        && health.running()
    {
        tracing::info!("signal received; letting the running cycle finish");
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            tracing::error!(
                "the running cycle did not finish within the grace period; abandoning it"
            );
        }
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /healthz or /metrics\n") })
        .with_state((health, clock));
    let stopped = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "the /healthz and /metrics server stopped");
    }
}

type ServerState = State<(Arc<Health>, Arc<dyn Clock>)>;

/// 200 with a summary when the last cycle is recent and succeeded, else 503
/// with the reason.
async fn healthz(State((health, clock)): ServerState) -> (StatusCode, String) {
    match health.check(unix_ms(clock.now())) {
        Ok(summary) => (StatusCode::OK, format!("ok: {summary}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn prometheus(State((health, _)): ServerState) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        health.metrics(),
    )
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Wall time that moves with tokio's (paused) clock.
    struct TokioClock {
        base: OffsetDateTime,
        start: tokio::time::Instant,
    }

    impl Clock for TokioClock {
        fn now(&self) -> OffsetDateTime {
            self.base + self.start.elapsed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_during_a_running_cycle_is_skipped_and_cycles_never_overlap() {
        let schedule = Schedule::new("* * * * * *", 0).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            base: time::macros::datetime!(2026-11-22 00:00:00.5 UTC),
            start: tokio::time::Instant::now(),
        });
        let health = Arc::new(Health::default());
        let (stop, shutdown) = watch::channel(false);
        let concurrent = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let cycle = {
            let (concurrent, most) = (Arc::clone(&concurrent), Arc::clone(&most));
            move || {
                let (concurrent, most) = (Arc::clone(&concurrent), Arc::clone(&most));
                async move {
                    let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Each cycle takes 2.5 ticks.
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    concurrent.fetch_sub(1, Ordering::SeqCst);
                    CycleResult::Success
                }
            }
        };
        let looping = tokio::spawn({
            let (clock, health) = (Arc::clone(&clock), Arc::clone(&health));
            async move { schedule_loop(&schedule, clock, health, shutdown, cycle).await }
        });
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        stop.send(true).unwrap();
        looping.await.unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two cycles at once");
        let metrics = health.metrics();
        // Ticks fall 0.5 s, 1.5 s, ... 9.5 s in. Cycles start at 0.5, 3.5, 6.5
        // and 9.5 s (the last finishes after the stop); the 6 ticks between
        // are skipped.
        assert!(
            metrics.contains("floodgate_responder_cycles_total{result=\"success\"} 4"),
            "{metrics}"
        );
        assert!(
            metrics.contains("floodgate_responder_skipped_ticks_total 6"),
            "{metrics}"
        );
        assert_eq!(
            concurrent.load(Ordering::SeqCst),
            0,
            "the last cycle finished before exit"
        );
    }

    #[test]
    fn health_wants_a_recent_successful_cycle() {
        let health = Health::default();
        health.inner.lock().period = Duration::from_secs(60);
        assert!(health.check(0).unwrap_err().contains("no cycle"));
        assert!(health.try_start());
        health.finish(CycleResult::Success, 1_000, Duration::from_millis(5));
        assert!(health.check(60_000).is_ok());
        assert!(
            health
                .check(182_000)
                .unwrap_err()
                .contains("three schedule periods")
        );
        assert!(health.try_start());
        health.finish(CycleResult::Partial, 2_000, Duration::from_millis(5));
        assert!(health.check(3_000).unwrap_err().contains("every target"));
        assert!(health.try_start());
        health.finish(CycleResult::Stale, 4_000, Duration::from_millis(5));
        assert!(
            health
                .check(5_000)
                .unwrap_err()
                .contains("log feed stalled")
        );
        assert!(
            health
                .metrics()
                .contains("floodgate_responder_source_stale 1\n")
        );
        // Records again: healthy, and the gauge falls back.
        assert!(health.try_start());
        health.finish(CycleResult::Success, 6_000, Duration::from_millis(5));
        assert!(health.check(7_000).is_ok());
        assert!(
            health
                .metrics()
                .contains("floodgate_responder_source_stale 0\n")
        );
    }

    #[test]
    fn metrics_keep_their_names_and_the_last_success_appears_with_the_first() {
        let health = Health::default();
        let before = health.metrics();
        for line in [
            "# TYPE floodgate_responder_cycles_total counter",
            "floodgate_responder_cycles_total{result=\"success\"} 0",
            "floodgate_responder_cycles_total{result=\"stale\"} 0",
            "floodgate_responder_cycles_total{result=\"partial\"} 0",
            "floodgate_responder_source_stale 0",
            "floodgate_responder_cycles_total{result=\"error\"} 0",
            "# HELP floodgate_responder_skipped_ticks_total Ticks skipped because a cycle was still running.",
            "floodgate_responder_skipped_ticks_total 0",
            "# TYPE floodgate_responder_cycle_running gauge",
            "floodgate_responder_cycle_running 0",
            "floodgate_responder_last_cycle_duration_seconds 0",
        ] {
            assert!(before.lines().any(|l| l == line), "{line:?} in:\n{before}");
        }
        assert!(!before.contains("last_success"), "{before}");

        assert!(health.try_start());
        assert!(!health.try_start(), "a second start is a skipped tick");
        assert!(
            health
                .metrics()
                .contains("floodgate_responder_cycle_running 1\n")
        );
        health.finish(
            CycleResult::Success,
            1_795_168_800_250,
            Duration::from_millis(1500),
        );
        let after = health.metrics();
        for line in [
            "floodgate_responder_cycles_total{result=\"success\"} 1",
            "floodgate_responder_skipped_ticks_total 1",
            "floodgate_responder_cycle_running 0",
            "floodgate_responder_last_cycle_duration_seconds 1.5",
            "# TYPE floodgate_responder_last_success_timestamp_seconds gauge",
            "floodgate_responder_last_success_timestamp_seconds 1795168800.25",
        ] {
            assert!(after.lines().any(|l| l == line), "{line:?} in:\n{after}");
        }
    }

    #[test]
    fn the_period_is_the_gap_between_ticks() {
        let schedule = Schedule::new("0 */5 * * * *", 0).unwrap();
        let now = time::macros::datetime!(2026-11-22 00:01:00 UTC);
        assert_eq!(schedule.period(now), Duration::from_secs(300));
    }
}
