//! `floodgate run --once`: one responder cycle. Detect offenders in the
//! policy's log source, plan blocks against the ledger, apply them to every
//! target, save the ledger, report.
//!
//! Exit codes: 0 when every target converged, 1 when the input or
//! configuration is unusable (nothing is applied or saved), 2 when some
//! target failed (the others were written and the ledger saved; the next
//! cycle retries).

use std::sync::Arc;

use floodgate_rules::Policy;
use floodgate_rules::policy::Target;
use serde::Serialize;

use super::{CliError, PolicyArgs, RunArgs, Status, load_policy, write_stdout};
use crate::clock::{Stopwatch, clock_at, unix_ms};
use crate::daemon::{CycleResult, Health, Schedule, schedule_loop};
use crate::detect::{count_spec, detect};
use crate::lease::{ConfiguredLease, Standing};
use crate::ledger::{ConfiguredLedger, Ledger, LedgerError, LedgerState, UpdateError, update};
use crate::plan::{BlockPlan, Capacity, WAF_IP_SET_CAPACITY, adopt, plan};
use crate::source::{ConfiguredSource, LogSource};
use crate::target::{
    ConfiguredTarget, Outcome, TargetReport, Unguarded, WafTarget, WriteGuard, apply_all_guarded,
};

/// The run report, printed as JSON with `--format json`.
#[derive(Debug, Serialize)]
struct RunReport {
    mode: &'static str,
    /// When the cycle started (its `now`), RFC 3339.
    started: String,
    records: u64,
    malformed: u64,
    offenders_per_tier: Vec<(String, usize)>,
    added: Vec<String>,
    extended: usize,
    expired: Vec<String>,
    held_back: Vec<String>,
    dropped: Vec<String>,
    suppressed: Vec<String>,
    adopted: Vec<String>,
    /// With a lease: where this cycle stood with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseLine>,
    targets: Vec<TargetLine>,
    api_calls: u32,
    /// Bytes the source read, or Logs Insights scanned.
    bytes_read: u64,
    /// With Logs Insights: what scanning `bytes_read` cost, in US dollars.
    insights_estimated_cost_usd: Option<f64>,
    phases: Vec<Phase>,
    seconds: f64,
}

/// How long one phase of a cycle took.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Phase {
    phase: &'static str,
    seconds: f64,
}

impl Phase {
    /// Ends the phase `watch` timed, and starts the next.
    fn end(phase: &'static str, watch: &mut Stopwatch) -> Phase {
        let seconds = watch.elapsed().as_secs_f64();
        *watch = Stopwatch::start();
        Phase { phase, seconds }
    }
}

#[derive(Debug, Serialize)]
struct TargetLine {
    target: String,
    outcome: String,
}

/// Runs one cycle, or with no `--once` cycles on the policy's schedule.
pub(super) fn run(args: &RunArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let policy = with_overrides(loaded.policy, args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if args.once {
        return runtime.block_on(cycle(args, &policy));
    }
    if args.policy.now.is_some() {
        return Err(CliError::Input(
            "--now places one cycle in time; use it with --once".to_owned(),
        ));
    }
    runtime.block_on(daemon(args, policy))
}

/// The policy with `--role` and `--holder-id` applied.
fn with_overrides(mut policy: Policy, args: &RunArgs) -> Result<Policy, CliError> {
    use floodgate_rules::policy::Role;
    match args.role.as_deref() {
        Some("standby") => policy.responder.role = Role::Standby,
        Some(_) => policy.responder.role = Role::Primary,
        None => {}
    }
    if let Some(id) = &args.holder_id {
        let Some(lease) = policy.responder.lease.as_mut() else {
            return Err(CliError::Input(
                "--holder-id names this responder in the lease, but the policy has no [responder] lease".to_owned(),
            ));
        };
        if !floodgate_rules::policy::is_holder_id(id) {
            return Err(CliError::Input(format!(
                "--holder-id \"{id}\": use 1 to 128 letters, digits, '_', '-', '.', ':' or '@'"
            )));
        }
        lease.holder_id = id.clone();
    }
    if policy.responder.role == Role::Standby && policy.responder.lease.is_none() {
        return Err(CliError::Input(
            "a standby needs [responder] lease: without one it cannot tell when the primary is down".to_owned(),
        ));
    }
    Ok(policy)
}

/// Cycles on `[responder] schedule` until SIGTERM or SIGINT; exit 0.
async fn daemon(args: &RunArgs, policy: Policy) -> Result<Status, CliError> {
    let responder = &policy.responder;
    let schedule =
        Schedule::new(&responder.schedule, responder.jitter_seconds).map_err(CliError::Input)?;
    let listener = tokio::net::TcpListener::bind(responder.listen)
        .await
        .map_err(|e| CliError::Input(format!("responder.listen {}: {e}", responder.listen)))?;
    tracing::info!(schedule = %responder.schedule, listen = %responder.listen, "responder daemon started");
    let clock: Arc<dyn crate::clock::Clock> = Arc::from(clock_at(None));
    let health = Arc::new(Health::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::daemon::serve(
        listener,
        Arc::clone(&health),
        Arc::clone(&clock),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        crate::daemon::signal().await;
        let _ = stop.send(true);
    });
    let policy = Arc::new(policy);
    let format = args.format;
    let cycle = || {
        let policy = Arc::clone(&policy);
        async move {
            let args = RunArgs {
                policy: PolicyArgs {
                    config: std::path::PathBuf::new(),
                    now: None,
                },
                once: true,
                format,
                role: None,
                holder_id: None,
            };
            match cycle(&args, &policy).await {
                Ok(Status::Success) => CycleResult::Success,
                Ok(_) => CycleResult::Partial,
                Err(error) => {
                    tracing::error!(%error, "cycle failed; nothing was applied");
                    CycleResult::Error
                }
            }
        }
    };
    schedule_loop(&schedule, clock, health, shutdown, cycle).await;
    server.abort();
    tracing::info!("responder daemon stopped");
    Ok(Status::Success)
}

/// A cycle up to its plan: everything `run` and `plan` share. Nothing has
/// been written yet.
pub(super) struct Prepared {
    pub started: Stopwatch,
    pub now_ms: i64,
    /// How long each phase took, in order.
    pub phases: Vec<Phase>,
    pub stats: crate::traffic::Stats,
    pub offenders: Vec<crate::detect::Offender>,
    pub targets: Vec<Arc<ConfiguredTarget>>,
    pub adopted: Vec<ipnet::IpNet>,
    /// The ledger, and its state as loaded (with anything adopted).
    pub ledger: ConfiguredLedger,
    pub loaded: LedgerState,
    pub planned: BlockPlan,
}

/// Reads the logs, detects, loads the ledger (adopting what the sets hold
/// when it is empty) and plans. Fails before anything is written.
pub(super) async fn prepare(args: &PolicyArgs, policy: &Policy) -> Result<Prepared, CliError> {
    let started = Stopwatch::start();
    let now_ms = unix_ms(clock_at(args.now).now());
    let source_config = policy
        .source
        .as_ref()
        .ok_or_else(|| CliError::Input("the policy has no [source]: nothing to read".to_owned()))?;
    if policy.targets.is_empty() {
        return Err(CliError::Input(
            "the policy has no [[targets]]: nowhere to block".to_owned(),
        ));
    }
    let widest = policy
        .tiers
        .iter()
        .map(|t| t.window_seconds.get())
        .max()
        .ok_or_else(|| CliError::Input("the policy has no [[tiers]]".to_owned()))?;

    // Everything that can fail on bad input happens before anything is written.
    let source = ConfiguredSource::from_config(source_config).await?;
    let mut phases = Vec::new();
    let mut phase = Stopwatch::start();
    let traffic = source
        .count(&count_spec(policy, now_ms, widest).map_err(crate::source::SourceError::from)?)
        .await?;
    let stats = traffic.stats();
    if stats.records > 0 && stats.records == stats.malformed {
        return Err(CliError::Input(format!(
            "no usable WAF log records: all {} lines are malformed",
            stats.malformed
        )));
    }
    phases.push(Phase::end("read", &mut phase));
    let offenders = detect(&traffic, policy, widest);
    phases.push(Phase::end("detect", &mut phase));
    let store = ConfiguredLedger::from_policy(policy).await;
    let mut ledger = store.load().await?;
    let targets = shared_targets(policy).await;
    // With no ledger (first run, or a lost state file), take in what the
    // sets already hold, so no active attacker is unblocked. With a ledger,
    // the sets are not read twice: apply's own read and diff remove
    // anything the ledger does not explain.
    let adopted = if ledger.entries.is_empty() {
        let mut found = Vec::new();
        for target in &targets {
            found.extend(
                target
                    .read()
                    .await
                    .map_err(|e| CliError::Input(format!("{}: {e}", target.label())))?,
            );
        }
        found.sort();
        found.dedup();
        adopt(&mut ledger, &found, policy, now_ms)
    } else {
        Vec::new()
    };

    phases.push(Phase::end("ledger", &mut phase));
    let planned = plan_cycle(&offenders, policy, &ledger, now_ms);
    phases.push(Phase::end("plan", &mut phase));
    Ok(Prepared {
        started,
        now_ms,
        phases,
        stats,
        offenders,
        targets,
        adopted,
        ledger: store,
        loaded: ledger,
        planned,
    })
}

/// A cycle's plan for `offenders` against `ledger`.
fn plan_cycle(
    offenders: &[crate::detect::Offender],
    policy: &Policy,
    ledger: &LedgerState,
    now_ms: i64,
) -> BlockPlan {
    plan(
        offenders,
        policy,
        ledger,
        now_ms,
        &source_label(policy),
        capacity(policy),
    )
}

async fn cycle(args: &RunArgs, policy: &Policy) -> Result<Status, CliError> {
    let Prepared {
        started,
        now_ms,
        mut phases,
        stats,
        offenders,
        targets,
        adopted,
        ledger,
        loaded,
        planned,
    } = prepare(&args.policy, policy).await?;
    let ledger_label = ledger.label();
    let mut phase = Stopwatch::start();
    let lease = ConfiguredLease::from_policy(policy, &ledger);
    // The lease is about who writes now, so it runs on the real clock even
    // when `--now` replays another time.
    let clock = clock_at(None);
    let standing = match &lease {
        Some(lease) => {
            let standing = lease.acquire(unix_ms(clock.now())).await?;
            phases.push(Phase::end("lease", &mut phase));
            Some(standing)
        }
        None => None,
    };
    let replan = |state: &LedgerState| Ok(plan_cycle(&offenders, policy, state, now_ms));
    let mut lease_lost = None;
    let applied = match (&lease, &standing) {
        (Some(lease), Some(Standing::Holding { fence, .. })) => {
            let ledger = ledger.fenced_by(lease.fence(*fence));
            let guard = Arc::new(lease.guard(*fence, clock));
            apply(policy, &ledger, loaded, targets, guard, planned, replan).await
        }
        // A standby (or a primary waiting for a handback): plan only.
        (Some(_), Some(Standing::Waiting { .. })) => Ok((planned, Vec::new())),
        _ => {
            apply(
                policy,
                &ledger,
                loaded,
                targets,
                Arc::new(Unguarded),
                planned,
                replan,
            )
            .await
        }
    };
    let (planned, reports) = match applied {
        Ok(done) => done,
        Err(UpdateError::Save(error @ LedgerError::LeaseLost { .. }, (planned, reports))) => {
            tracing::error!(%error, "lost the lease mid-cycle; stopped writing");
            lease_lost = Some(error);
            (planned, reports)
        }
        Err(UpdateError::Save(error, _)) => return Err(error.into()),
        Err(UpdateError::Attempt(error)) => return Err(error),
    };
    phases.push(Phase::end("apply", &mut phase));
    let waiting = matches!(standing, Some(Standing::Waiting { .. }));
    if !waiting {
        // Only the lease holder alerts, so a pair does not alert twice.
        crate::alert::notify(policy, &offenders, &planned, &reports, now_ms).await;
    }

    let failed = lease_lost.is_some()
        || reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)));
    let text = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    let report = RunReport {
        mode: if waiting {
            "standby"
        } else if planned.observe_only {
            "observe"
        } else {
            "enforce"
        },
        started: crate::clock::rfc3339_from_ms(now_ms),
        records: stats.records,
        malformed: stats.malformed,
        offenders_per_tier: policy
            .tiers
            .iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    offenders
                        .iter()
                        .filter(|o| o.tier.as_ref() == Some(&t.name))
                        .count(),
                )
            })
            .collect(),
        added: text(&planned.added),
        extended: planned.extended.len(),
        expired: text(&planned.expired),
        held_back: text(&planned.held_back),
        dropped: text(&planned.dropped),
        suppressed: text(&planned.suppressed),
        adopted: text(&adopted),
        lease: standing
            .as_ref()
            .map(|s| LeaseLine::new(s, lease_lost.as_ref())),
        api_calls: reports.iter().map(|r| r.calls.total()).sum(),
        targets: reports
            .iter()
            .map(|r| TargetLine {
                target: r.target.clone(),
                outcome: r.outcome.to_string(),
            })
            .collect(),
        bytes_read: stats.bytes,
        insights_estimated_cost_usd: uses_insights(policy)
            .then(|| crate::source::cloudwatch_insights::estimated_cost_usd(stats.bytes)),
        phases,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(report = %serde_json::to_string(&report).expect("reports serialize"), "run finished");
    let output = match args.format {
        super::Format::Json => {
            serde_json::to_string_pretty(&report).expect("reports serialize") + "\n"
        }
        super::Format::Table => summary(&report, policy, &ledger_label),
    };
    write_stdout(&output)?;
    Ok(if failed {
        Status::Partial
    } else {
        Status::Success
    })
}

/// Every target of the policy, shareable across the tasks that write them.
pub(super) async fn shared_targets(policy: &Policy) -> Vec<Arc<ConfiguredTarget>> {
    ConfiguredTarget::from_policy(policy)
        .await
        .into_iter()
        .map(Arc::new)
        .collect()
}

/// What [`apply`] wrote: the plan it wrote and each target's outcome.
pub(super) type Applied = (BlockPlan, Vec<TargetReport>);

/// Writes `planned` to every target (asking `guard` before each) and saves
/// the ledger. When the save finds that someone else saved since `loaded`
/// was read, it plans again with `replan` on the fresh ledger and writes
/// again. In observe mode it writes and saves nothing.
pub(super) async fn apply<G: WriteGuard>(
    policy: &Policy,
    ledger: &ConfiguredLedger,
    loaded: LedgerState,
    targets: Vec<Arc<ConfiguredTarget>>,
    guard: Arc<G>,
    planned: BlockPlan,
    mut replan: impl FnMut(&LedgerState) -> Result<BlockPlan, CliError>,
) -> Result<Applied, UpdateError<Applied, CliError>> {
    if planned.observe_only {
        return Ok((planned, Vec::new()));
    }
    let concurrency = policy.responder.concurrency.get() as usize;
    let mut first = Some(planned);
    update(ledger, loaded, |state| {
        let planned = match first.take() {
            Some(planned) => Ok(planned),
            None => replan(&state),
        };
        let (targets, guard) = (targets.clone(), guard.clone());
        async move {
            let planned = planned?;
            let reports = apply_all_guarded(targets, &planned.desired(), concurrency, guard).await;
            Ok((planned.ledger.clone(), (planned, reports)))
        }
    })
    .await
}

/// Where a cycle stood with the lease.
#[derive(Debug, Serialize)]
struct LeaseLine {
    /// `held` (this cycle applied under it), `waiting` (planned only) or
    /// `lost` (it ended mid-cycle; the ledger was not saved).
    state: &'static str,
    /// The holder: us when held, else who has it (empty if nobody).
    holder: String,
    /// Our fence, when held or lost.
    fence: Option<u64>,
    /// When the holder's lease ends, RFC 3339.
    expires: String,
    /// Why it was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl LeaseLine {
    fn new(standing: &Standing, lost: Option<&LedgerError>) -> LeaseLine {
        let (state, holder, fence, expires_at_ms) = match standing {
            Standing::Holding {
                fence,
                expires_at_ms,
            } => ("held", String::new(), Some(*fence), *expires_at_ms),
            Standing::Waiting {
                holder,
                expires_at_ms,
            } => ("waiting", holder.clone(), None, *expires_at_ms),
        };
        LeaseLine {
            state: if lost.is_some() { "lost" } else { state },
            holder,
            fence,
            expires: crate::clock::rfc3339_from_ms(expires_at_ms),
            error: lost.map(ToString::to_string),
        }
    }

    fn describe(&self) -> String {
        match (self.state, self.fence) {
            ("held", Some(fence)) => format!("held (fence {fence}) until {}", self.expires),
            ("waiting", _) if self.holder.is_empty() => "waiting: nobody holds it".to_owned(),
            ("waiting", _) => format!(
                "waiting: held by {} until {}; planning only",
                self.holder, self.expires
            ),
            _ => format!(
                "lost mid-cycle: {}",
                self.error.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// Whether the source is Logs Insights, which is billed by bytes scanned.
fn uses_insights(policy: &Policy) -> bool {
    matches!(
        &policy.source,
        Some(floodgate_rules::policy::LogSourceConfig::CloudWatch {
            api: floodgate_rules::policy::CloudWatchApi::Insights,
            ..
        })
    )
}

/// Where the offenders were seen, for the ledger.
fn source_label(policy: &Policy) -> String {
    match &policy.source {
        Some(floodgate_rules::policy::LogSourceConfig::CloudWatch { log_groups, .. }) => log_groups
            .iter()
            .map(|g| format!("{}/{}", g.region, g.name))
            .collect::<Vec<_>>()
            .join(","),
        _ => "files".to_owned(),
    }
}

/// Room in the sets: the fewest sets any target declares, per family.
pub(super) fn capacity(policy: &Policy) -> Capacity {
    let sets = |family: fn(&floodgate_rules::policy::Wafv2Target) -> usize| {
        policy
            .targets
            .iter()
            .filter_map(|t| {
                if let Target::Wafv2(w) = t {
                    Some(family(w))
                } else {
                    None
                }
            })
            .min()
            .unwrap_or(1)
    };
    Capacity {
        ipv4_sets: sets(|w| w.ipv4_sets.len()),
        ipv6_sets: sets(|w| w.ipv6_sets.len()),
        per_set: WAF_IP_SET_CAPACITY,
    }
}

/// A short summary for people.
fn summary(report: &RunReport, policy: &Policy, ledger: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "read {} records ({} malformed) in {:.2} s; mode {}\n",
        report.records, report.malformed, report.seconds, report.mode
    ));
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| format!("{} {:.2} s", p.phase, p.seconds))
        .collect();
    out.push_str(&format!("phases: {}\n", phases.join(", ")));
    if let Some(cost) = report.insights_estimated_cost_usd {
        out.push_str(&format!(
            "Logs Insights scanned {} bytes: about ${cost:.4}\n",
            report.bytes_read
        ));
    }
    let tiers: Vec<String> = report
        .offenders_per_tier
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    out.push_str(&format!("offenders per tier: {}\n", tiers.join(", ")));
    out.push_str(&format!(
        "blocks: {} added, {} extended, {} expired, {} held back by the circuit breaker, {} dropped for room, {} suppressed by an unblock, {} adopted\n",
        report.added.len(),
        report.extended,
        report.expired.len(),
        report.held_back.len(),
        report.dropped.len(),
        report.suppressed.len(),
        report.adopted.len()
    ));
    for target in &report.targets {
        out.push_str(&format!("  {}: {}\n", target.target, target.outcome));
    }
    for target in &policy.targets {
        if let Target::File { dir } = target {
            out.push_str(&format!("IP set files in {}\n", dir.display()));
        }
    }
    if let Some(lease) = &report.lease {
        out.push_str(&format!("lease: {}\n", lease.describe()));
    }
    out.push_str(&format!("ledger: {ledger}\n"));
    out
}
