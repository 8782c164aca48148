//! One responder cycle, run from its parts: read the log source, detect
//! offenders, load the ledger, plan, take the lease, write every target and
//! save the ledger, alert, and report.
//!
//! No printing and no exit codes here: `floodgate run --once` and the daemon
//! both call [`run`] and format the [`CycleReport`] it returns; `floodgate
//! plan` stops after [`prepare`]; `floodgate block` and `unblock` write
//! through [`apply`].
//!
//! Everything that can fail on bad input fails before anything is written.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use floodgate_rules::Policy;
use floodgate_rules::policy::{CloudWatchApi, LogSourceConfig, Target};
use ipnet::IpNet;
use serde::Serialize;

use crate::aws::Aws;
use crate::clock::{Clock, Stopwatch, rfc3339_from_ms, unix_ms};
use crate::detect::{Offender, count_spec, detect};
use crate::lease::{ConfiguredLease, LeaseError, Standing};
use crate::ledger::{ConfiguredLedger, Ledger, LedgerError, LedgerState, UpdateError, update};
use crate::plan::{BlockPlan, Capacity, adopt, plan};
use crate::sink::{
    ApiCalls, ConfiguredTarget, Outcome, TargetError, TargetReport, Unguarded, WafTarget,
    WriteGuard, apply_all_guarded,
};
use crate::source::{ConfiguredSource, LogSource, SourceError};
use crate::traffic::{CutCount, SecondPass, Stats, Traffic};

/// What a cycle runs on.
pub struct Parts<'p, S> {
    /// The policy: tiers, allow-list, safety limits.
    pub policy: &'p Policy,
    /// Where the WAF logs are read.
    pub source: S,
    /// Where blocks are recorded.
    pub ledger: ConfiguredLedger,
    /// Where blocks are written.
    pub targets: Vec<Arc<ConfiguredTarget>>,
    /// With a primary and a standby: who may write.
    pub lease: Option<ConfiguredLease>,
    /// When the cycle is: the real time, or a replayed one (`--now`).
    pub clock: Arc<dyn Clock>,
    /// The lease is about who writes now, so it always runs on the real
    /// time, even when `clock` replays another.
    pub lease_clock: Arc<dyn Clock>,
    /// Taken from loading the ledger to saving it, so a cycle and a fast
    /// pass never write the same targets at once.
    pub writes: Writes,
}

/// The turn to write the targets and the ledger: one cycle or fast pass
/// at a time within a process.
pub type Writes = Arc<tokio::sync::Mutex<()>>;

/// What outlives a cycle in the daemon: the AWS credentials (each
/// account's role session); the targets, with their clients and the IP
/// set ids they have looked up, so a cycle does not look them up again;
/// the ledger's and the lease's client; an AWS source's clients. Their
/// connections are kept from cycle to cycle.
#[derive(Debug)]
pub struct Resident {
    /// AWS clients' settings and credentials.
    pub aws: Aws,
    /// Every target of the policy.
    pub targets: Vec<Arc<ConfiguredTarget>>,
    /// Whose turn it is to write.
    pub writes: Writes,
    /// Where blocks are recorded.
    pub ledger: ConfiguredLedger,
    /// With a primary and a standby: who may write.
    pub lease: Option<ConfiguredLease>,
    /// The source, when it reads AWS (S3, CloudWatch Logs); a files source
    /// lists its paths again each cycle, for the files that appeared.
    aws_source: Option<ConfiguredSource>,
}

impl Resident {
    /// The parts of `policy` that last longer than a cycle.
    pub async fn from_policy(policy: &Policy) -> Resident {
        let aws = Aws::from_policy(policy).await;
        // Shared by the tasks that write them, and kept across cycles.
        let targets = ConfiguredTarget::from_policy(&aws, policy)
            .into_iter()
            .map(Arc::new)
            .collect();
        let ledger = ConfiguredLedger::from_policy(policy).await;
        let lease = ConfiguredLease::from_policy(policy, &ledger);
        let aws_source = match &policy.source {
            None | Some(LogSourceConfig::Files { .. }) => None,
            Some(config) => ConfiguredSource::from_config(&aws, config).ok(),
        };
        Resident {
            aws,
            targets,
            writes: Writes::default(),
            ledger,
            lease,
            aws_source,
        }
    }
}

impl<'p> Parts<'p, ()> {
    /// The parts `policy` configures for writing, without a source (a
    /// fast pass reads none), with the targets of `resident`, at `clock`'s
    /// time.
    pub fn for_writing(
        policy: &'p Policy,
        resident: &Resident,
        clock: Arc<dyn Clock>,
        lease_clock: Arc<dyn Clock>,
    ) -> Result<Self, CycleError> {
        if policy.targets.is_empty() {
            return Err(CycleError::NoTargets);
        }
        widest_window(policy)?;
        Ok(Parts {
            policy,
            source: (),
            ledger: resident.ledger.clone(),
            targets: resident.targets.clone(),
            lease: resident.lease.clone(),
            clock,
            lease_clock,
            writes: Arc::clone(&resident.writes),
        })
    }
}

impl<'p> Parts<'p, ConfiguredSource> {
    /// The parts `policy` configures, with the targets and AWS clients of
    /// `resident`, for a cycle at `clock`'s time.
    pub fn from_policy(
        policy: &'p Policy,
        resident: &Resident,
        clock: Arc<dyn Clock>,
        lease_clock: Arc<dyn Clock>,
    ) -> Result<Self, CycleError> {
        let config = policy.source.as_ref().ok_or(CycleError::NoSource)?;
        let parts = Parts::for_writing(policy, resident, clock, lease_clock)?;
        let source = match &resident.aws_source {
            Some(source) => source.clone(),
            None => ConfiguredSource::from_config(&resident.aws, config)?,
        };
        Ok(Parts {
            policy,
            source,
            ledger: parts.ledger,
            targets: parts.targets,
            lease: parts.lease,
            clock: parts.clock,
            lease_clock: parts.lease_clock,
            writes: parts.writes,
        })
    }
}

/// Why a cycle could not run. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The policy has no `[source]`.
    #[error("the policy has no [source]: nothing to read")]
    NoSource,
    /// The policy has no `[[targets]]`.
    #[error("the policy has no [[targets]]: nowhere to block")]
    NoTargets,
    /// The policy has no `[[tiers]]`.
    #[error("the policy has no [[tiers]]")]
    NoTiers,
    /// The source could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Every line read was malformed: the wrong files, or logs of the
    /// other format.
    #[error("{}", crate::source::all_malformed(*format, *malformed))]
    AllMalformed {
        /// The malformed lines.
        malformed: u64,
        /// The format they were read as.
        format: floodgate_rules::policy::LogFormat,
    },
    /// The ledger could not be read or saved.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The lease could not be read or written.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// The report of one cycle: what `floodgate run --format json` prints.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CycleReport {
    /// [`crate::JSON_VERSION`].
    pub version: u32,
    /// `enforce`, `observe` (nothing written) or `standby` (not holding the
    /// lease; nothing written).
    pub mode: &'static str,
    /// When the cycle ran (its `now`), RFC 3339.
    pub started: String,
    /// Records read.
    pub records: u64,
    /// Lines that were not WAF log records.
    pub malformed: u64,
    /// Records inside the widest tier window.
    pub records_in_window: u64,
    /// Records inside each tier window, narrowest first. Empty when the
    /// source cannot tell: Logs Insights counts from its queries'
    /// `recordsMatched` statistic, which an emulator may not give.
    pub records_per_window: Vec<WindowRecords>,
    /// The newest record the source read, RFC 3339; with none inside the
    /// window, the newest it holds. Left out when it holds none, or when
    /// Logs Insights counted a window that had records (its counts carry
    /// no timestamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_record: Option<String>,
    /// How long before the cycle's time (`started`) `newest_record` was
    /// written, in whole seconds; negative for a record after it (a clock,
    /// or `--now`, behind the logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_record_age_seconds: Option<i64>,
    /// No record inside the window, and none newer than it: a log feed
    /// that stopped looks like a quiet day otherwise.
    pub stale: bool,
    /// Parts of the count that Logs Insights' row limit left cut, when the
    /// query budget (`max_queries_per_cycle`) ran out before splitting
    /// repaired them: keys there may be counted short, so the cycle exits
    /// 2. Empty when every count is exact.
    pub incomplete: Vec<CutCount>,
    /// What read the logs: `files`, `s3`, `insights` (Logs Insights) or
    /// `events` (raw CloudWatch Logs events).
    pub source: &'static str,
    /// Offenders per tier, in the policy's tier order.
    pub offenders_per_tier: Vec<TierOffenders>,
    /// Clients inside an allow-list entry that reached a tier and were not
    /// blocked, and their requests in the report window: what the
    /// allow-list let through.
    pub allow_listed: AllowListed,
    /// Blocks in force in the ledger after the cycle, per tier in the
    /// policy's order (then `manual` and any tier no longer in it).
    pub blocks_in_force: Vec<TierBlocks>,
    /// New blocks.
    pub added: Vec<String>,
    /// Blocks extended because the offender is still active.
    pub extended: Vec<String>,
    /// Blocks that ended since the last cycle.
    pub expired: Vec<String>,
    /// New blocks the circuit breaker held back.
    pub held_back: Vec<String>,
    /// Active blocks left out for lack of room in the sets.
    pub dropped: Vec<String>,
    /// Offenders an operator's unblock keeps unblocked.
    pub suppressed: Vec<String>,
    /// What the sets held while the ledger was empty, taken in.
    pub adopted: Vec<String>,
    /// With a lease: where this cycle stood with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseLine>,
    /// Each target's outcome.
    pub targets: Vec<TargetLine>,
    /// API calls the targets made.
    pub api_calls: u32,
    /// Bytes the source read, or Logs Insights scanned.
    pub bytes_read: u64,
    /// With Logs Insights: what scanning `bytes_read` cost, in US dollars.
    pub insights_estimated_cost_usd: Option<f64>,
    /// With Logs Insights: the queries the count ran, every pass and split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insights_queries: Option<u64>,
    /// With Logs Insights over several regions or log-group chunks: the
    /// second pass that made each count exact (its bytes are in
    /// `bytes_read` and the cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insights_second_pass: Option<SecondPass>,
    /// With Logs Insights: queries run over halves of a result the row
    /// limit cut, to count it exactly (their bytes are in `bytes_read`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insights_split_queries: Option<u64>,
    /// With S3: the objects read, and those skipped because they could not
    /// be fetched or decoded (each is logged with its key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_objects: Option<ObjectCounts>,
    /// How long each phase took, in order.
    pub phases: Vec<Phase>,
    /// How long the cycle took.
    pub seconds: f64,
}

impl CycleReport {
    /// Whether every target converged and the ledger was saved (or, in
    /// observe mode or as a standby, whether nothing needed writing).
    pub fn converged(&self) -> bool {
        let lost = self.lease.as_ref().is_some_and(|l| l.error.is_some());
        !lost && !self.targets.iter().any(|t| t.failure.is_some())
    }

    /// Whether the cycle did all it should: every target converged and
    /// every count was exact.
    pub fn complete(&self) -> bool {
        self.converged() && self.incomplete.is_empty()
    }
}

/// How long one phase of a cycle took.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Phase {
    /// `read`, `detect`, `ledger`, `plan`, `lease` or `apply`.
    pub phase: &'static str,
    /// Its duration.
    pub seconds: f64,
}

/// The phases of a cycle as they end.
#[derive(Debug)]
pub struct Phases {
    done: Vec<Phase>,
    watch: Stopwatch,
}

impl Phases {
    pub(crate) fn start() -> Self {
        Phases {
            done: Vec::new(),
            watch: Stopwatch::start(),
        }
    }

    /// Ends the running phase as `phase`, and starts the next.
    fn end(&mut self, phase: &'static str) {
        let seconds = self.watch.elapsed().as_secs_f64();
        self.watch = Stopwatch::start();
        self.done.push(Phase { phase, seconds });
    }
}

/// How many blocks of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TierBlocks {
    /// The tier's name, or `manual`.
    pub tier: String,
    /// Blocks (addresses and ranges).
    pub blocks: usize,
}

/// What the allow-list let through in a cycle.
#[derive(Debug, Clone, Copy, Default, Serialize, schemars::JsonSchema)]
pub struct AllowListed {
    /// Clients inside an allow-list entry that reached a tier and were not
    /// blocked: an observe tier, or under the entry's own threshold.
    pub offenders: usize,
    /// Their requests in the report window.
    pub requests: u64,
}

/// The offenders inside an allow-list entry that no block tier took.
fn allow_listed(policy: &Policy, offenders: &[Offender]) -> AllowListed {
    let blocks = |tier: &floodgate_rules::policy::TierName| {
        policy.tiers.iter().any(|t| &t.name == tier && t.blocks())
    };
    let spared = offenders
        .iter()
        .filter(|o| o.allow_entry.is_some() && !o.tier.as_ref().is_some_and(blocks));
    spared.fold(AllowListed::default(), |total, o| AllowListed {
        offenders: total.offenders + 1,
        requests: total.requests + u64::from(o.requests),
    })
}

/// How many offenders reached one tier.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TierOffenders {
    /// The tier's name.
    pub tier: String,
    /// Offenders whose most severe tier it is.
    pub offenders: usize,
}

/// One target's outcome, for the report.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TargetLine {
    /// The target's label.
    pub target: String,
    /// The `[[accounts]]` entry it is reached through; absent for the
    /// responder's own account (and for targets outside AWS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// For people: `unchanged`, `created N empty sets`, `updated +a −r` or
    /// `failed: reason`.
    pub outcome: String,
    /// For scripts: `unchanged`, `created`, `updated` or `failed`.
    pub state: &'static str,
    /// Addresses and ranges written into its sets.
    pub added: usize,
    /// Addresses and ranges removed from its sets.
    pub removed: usize,
    /// Addresses the target cannot hold, as `address: why`, one line per
    /// reason (`a, b and 62 more: why` when several share it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Addresses removed from its sets that the ledger never recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strangers_removed: Vec<String>,
    /// The entries its sets hold after the cycle, per tier of the block
    /// each comes from: after aggregation, so neighbouring blocks merged
    /// into one range count once, and a range the allow-list was cut out
    /// of counts once per piece. `null` when it failed, or when nothing
    /// was written (observe mode, a standby).
    pub held: Option<Vec<TierBlocks>>,
    /// For a failed target, the kind of failure: `throttled`,
    /// `unavailable`, `denied`, `not_found`, `invalid`, `conflict` or
    /// `fenced`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<&'static str>,
}

/// Where a cycle stood with the lease.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LeaseLine {
    /// `held` (this cycle applied under it), `waiting` (planned only) or
    /// `lost` (it ended mid-cycle; the ledger was not saved).
    pub state: &'static str,
    /// The holder: us when held, else who has it (empty if nobody).
    pub holder: String,
    /// Our fence, when held or lost.
    pub fence: Option<u64>,
    /// When the holder's lease ends, RFC 3339; `null` when nobody holds it.
    pub expires: Option<String>,
    /// Why it was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LeaseLine {
    pub(crate) fn new(standing: &Standing, me: &str, lost: Option<&LedgerError>) -> LeaseLine {
        let (state, holder, fence, expires_at_ms) = match standing {
            Standing::Holding {
                fence,
                expires_at_ms,
            } => ("held", me.to_owned(), Some(*fence), *expires_at_ms),
            Standing::Waiting {
                holder,
                expires_at_ms,
            } => ("waiting", holder.clone(), None, *expires_at_ms),
        };
        LeaseLine {
            state: if lost.is_some() { "lost" } else { state },
            holder,
            fence,
            expires: (expires_at_ms > 0).then(|| rfc3339_from_ms(expires_at_ms)),
            error: lost.map(ToString::to_string),
        }
    }
}

/// A cycle up to its plan: everything `run` and `floodgate plan` share.
/// Nothing has been written.
#[derive(Debug)]
pub struct Prepared {
    /// The cycle's time, ms since the epoch.
    pub now_ms: i64,
    /// The phases so far.
    pub phases: Phases,
    /// What the source read.
    pub stats: Stats,
    /// Whether the window had records, and if not, how old the newest is.
    pub freshness: Freshness,
    /// Every counted client, with the tier it reached.
    pub offenders: Vec<Offender>,
    /// What the sets held while the ledger was empty, taken in.
    pub adopted: Vec<IpNet>,
    /// Targets whose sets could not be read for adoption, and why: this
    /// cycle writes nothing to them and reports them failed.
    pub unread: Vec<(String, TargetError)>,
    /// API calls made reading the sets to adopt them.
    pub read_calls: ApiCalls,
    /// The ledger as loaded, with anything adopted ([`run`] hands it on
    /// to the write).
    pub loaded: LedgerState,
    /// The plan against it (likewise handed on).
    pub planned: BlockPlan,
    /// What found the offenders.
    pub origin: Origin,
    /// The turn to write, held from loading the ledger until the write
    /// ends (taken then) or this is dropped.
    pub turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// What found a plan's offenders.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The log source, in a cycle.
    Logs,
    /// The fast tiers' rate-based rules, with the reason each new block's
    /// ledger entry gives.
    RateRules(BTreeMap<IpNet, String>),
}

/// Runs one cycle.
pub async fn run<S: LogSource>(parts: Parts<'_, S>) -> Result<CycleReport, CycleError> {
    let started = Stopwatch::start();
    let mut prepared = prepare(&parts).await?;
    let standing = take_lease(&parts, &mut prepared.phases).await?;
    let applied = apply_as(&parts, standing.as_ref(), &mut prepared).await?;
    // Alerts and the report need no turn: a fast pass may write meanwhile.
    prepared.turn.take();
    prepared.phases.end("apply");
    let waiting = matches!(standing, Some(Standing::Waiting { .. }));
    if !waiting {
        // Only the lease holder alerts, so a pair does not alert twice.
        crate::alert::notify(
            parts.policy,
            &prepared.offenders,
            &applied.planned,
            &applied.reports,
            prepared.now_ms,
        )
        .await;
    }
    let me = parts.lease.as_ref().map_or("", |l| l.holder_id.as_str());
    Ok(report(
        parts.policy,
        prepared,
        standing.as_ref().map(|s| (s, me)),
        applied,
        started,
    ))
}

/// Reads the source, detects, loads the ledger (adopting what the sets
/// hold when it is empty) and plans. Writes nothing.
pub async fn prepare<S: LogSource>(parts: &Parts<'_, S>) -> Result<Prepared, CycleError> {
    let policy = parts.policy;
    let widest = widest_window(policy)?;
    let now_ms = unix_ms(parts.clock.now());
    let mut phases = Phases::start();
    let traffic = read(parts, now_ms, widest).await?;
    let stats = traffic.stats().clone();
    let freshness = freshness(parts, &stats, traffic.spec().windows(), now_ms).await;
    phases.end("read");
    let offenders = detect(&traffic, policy, widest);
    phases.end("detect");
    let turn = Arc::clone(&parts.writes).lock_owned().await;
    let LoadedLedger {
        ledger: loaded,
        adopted,
        unread,
        calls: read_calls,
    } = load_ledger(parts, now_ms).await?;
    phases.end("ledger");
    let planned = plan_against(&offenders, policy, &loaded, now_ms, &Origin::Logs);
    phases.end("plan");
    Ok(Prepared {
        now_ms,
        phases,
        stats,
        freshness,
        offenders,
        adopted,
        unread,
        read_calls,
        loaded,
        planned,
        origin: Origin::Logs,
        turn: Some(turn),
    })
}

/// Whether the source's records reach the windows.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// Records inside the widest window.
    pub in_window: u64,
    /// Records inside each tier window, narrowest first; empty when the
    /// source cannot tell (Logs Insights without query statistics).
    pub per_window: Vec<WindowRecords>,
    /// The newest record the source read; with none inside the window,
    /// the newest it holds (asked for).
    pub newest_ms: Option<i64>,
    /// None inside the window, and none newer than `[responder]
    /// stale_after_minutes` (default the window).
    pub stale: bool,
}

/// How many records fell inside one tier window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WindowRecords {
    /// The window's length.
    pub window_seconds: u32,
    /// Records inside it.
    pub records: u64,
}

/// Counts the records inside each window; with none there, asks the source
/// for its newest record and warns when the feed seems to have stopped.
async fn freshness<S: LogSource>(
    parts: &Parts<'_, S>,
    stats: &Stats,
    windows: &[u32],
    now_ms: i64,
) -> Freshness {
    let per_window: Vec<WindowRecords> = windows
        .iter()
        .zip(&stats.in_windows)
        .map(|(&window_seconds, &records)| WindowRecords {
            window_seconds,
            records,
        })
        .collect();
    let in_window = per_window.last().map_or(
        stats.records.saturating_sub(stats.outside_window),
        |widest| widest.records,
    );
    if in_window > 0 {
        return Freshness {
            in_window,
            per_window,
            newest_ms: stats.newest_ms,
            stale: false,
        };
    }
    let newest_ms = match stats.newest_ms {
        Some(newest) => Some(newest),
        None => parts.source.newest_timestamp().await.ok().flatten(),
    };
    let widest = windows.last().copied().unwrap_or_default();
    let window_ms = i64::from(widest) * 1000;
    let stale_after_ms = parts
        .policy
        .responder
        .stale_after_minutes
        .map_or(window_ms, |minutes| i64::from(minutes.get()) * 60_000);
    match newest_ms {
        Some(newest) => tracing::warn!(
            newest = %rfc3339_from_ms(newest),
            minutes_before_the_window = (now_ms - window_ms - newest).max(0) / 60_000,
            "no record in the window: is the log feed stalled, or the clock (--now) wrong?"
        ),
        None => tracing::warn!("the source holds no records: is the log feed stalled?"),
    }
    Freshness {
        in_window,
        per_window,
        newest_ms,
        stale: newest_ms.is_none_or(|newest| newest <= now_ms - stale_after_ms),
    }
}

/// The longest tier window: how far back the source is read.
fn widest_window(policy: &Policy) -> Result<u32, CycleError> {
    policy
        .tiers
        .iter()
        .map(|t| t.window_seconds.get())
        .max()
        .ok_or(CycleError::NoTiers)
}

/// Counts the source's requests per window ending at `now_ms`.
async fn read<S: LogSource>(
    parts: &Parts<'_, S>,
    now_ms: i64,
    widest: u32,
) -> Result<Traffic, CycleError> {
    let spec = count_spec(parts.policy, now_ms, widest).map_err(SourceError::from)?;
    let traffic = parts.source.count(&spec).await?;
    let stats = traffic.stats();
    if stats.records == 0 && stats.malformed > 0 {
        return Err(CycleError::AllMalformed {
            malformed: stats.malformed,
            format: parts
                .policy
                .source
                .as_ref()
                .and_then(LogSourceConfig::format)
                .unwrap_or_default(),
        });
    }
    Ok(traffic)
}

/// The ledger as a cycle starts from.
struct LoadedLedger {
    ledger: LedgerState,
    /// What the sets held that the ledger did not, taken in.
    adopted: Vec<IpNet>,
    /// Targets that could not be read for adoption, and why.
    unread: Vec<(String, TargetError)>,
    /// API calls the adoption reads made.
    calls: ApiCalls,
}

/// Loads the ledger. With no ledger (first run, or a lost state file), it
/// takes in what the sets already hold, so no active attacker is unblocked;
/// with one, the sets are not read twice: apply's own read and diff remove
/// anything the ledger does not explain. A target that cannot be read then
/// fails alone: it is remembered in the ledger as unadopted, written
/// nothing, and read again (and adopted from) on the next cycle.
async fn load_ledger<S>(parts: &Parts<'_, S>, now_ms: i64) -> Result<LoadedLedger, CycleError> {
    let mut ledger = parts.ledger.load().await?;
    let labels: Vec<String> = parts.targets.iter().map(|t| t.label()).collect();
    // A target renamed or removed since has nothing left to adopt.
    ledger.unadopted.retain(|label| labels.contains(label));
    let first_run = ledger.entries.is_empty();
    let mut calls = ApiCalls::default();
    let mut found = Vec::new();
    let mut unread = Vec::new();
    for (target, label) in parts.targets.iter().zip(labels) {
        if !first_run && !ledger.unadopted.contains(&label) {
            continue;
        }
        match target.read().await {
            Ok(contents) => {
                found.extend(contents.nets);
                calls += contents.calls;
                ledger.unadopted.remove(&label);
            }
            Err(error) => {
                tracing::error!(target = %label, %error, "cannot read the target's sets to adopt what they hold; writing nothing to it this cycle");
                ledger.unadopted.insert(label.clone());
                unread.push((label, error));
            }
        }
    }
    found.sort();
    found.dedup();
    let found = crate::plan::unknown_entries(&ledger, &found);
    let reason = match first_run {
        true => "found in an IP set while the ledger was empty",
        false => {
            "found in a target's sets when they could first be read after the ledger was empty"
        }
    };
    let adopted = adopt(&mut ledger, &found, parts.policy, now_ms, reason);
    Ok(LoadedLedger {
        ledger,
        adopted,
        unread,
        calls,
    })
}

/// The plan for `offenders`, found by `origin`, against `ledger`.
pub(crate) fn plan_against(
    offenders: &[Offender],
    policy: &Policy,
    ledger: &LedgerState,
    now_ms: i64,
    origin: &Origin,
) -> BlockPlan {
    let source = match origin {
        Origin::Logs => source_label(policy),
        Origin::RateRules(_) => crate::fast::RATE_RULE.to_owned(),
    };
    let mut planned = plan(
        offenders,
        policy,
        ledger,
        now_ms,
        &source,
        Capacity::of(policy),
    );
    if let Origin::RateRules(reasons) = origin {
        for net in &planned.added {
            if let (Some(entry), Some(reason)) =
                (planned.ledger.entries.get_mut(net), reasons.get(net))
            {
                entry.reason.clone_from(reason);
            }
        }
    }
    planned
}

/// Takes or renews the lease, when there is one.
pub(crate) async fn take_lease<S>(
    parts: &Parts<'_, S>,
    phases: &mut Phases,
) -> Result<Option<Standing>, CycleError> {
    let Some(lease) = &parts.lease else {
        return Ok(None);
    };
    let standing = lease.acquire(unix_ms(parts.lease_clock.now())).await?;
    phases.end("lease");
    Ok(Some(standing))
}

/// What a cycle wrote, and whether it lost the lease doing so.
pub(crate) struct Written {
    pub(crate) planned: BlockPlan,
    pub(crate) reports: Vec<TargetReport>,
    pub(crate) lease_lost: Option<LedgerError>,
}

/// Writes the plan: under the lease's fence when it holds one, unguarded
/// without a lease, and not at all while waiting for the lease.
pub(crate) async fn apply_as<S>(
    parts: &Parts<'_, S>,
    standing: Option<&Standing>,
    prepared: &mut Prepared,
) -> Result<Written, CycleError> {
    let (policy, now_ms) = (parts.policy, prepared.now_ms);
    let (offenders, origin) = (&prepared.offenders, &prepared.origin);
    let unadopted = prepared.loaded.unadopted.clone();
    let replan = |state: &LedgerState| {
        let mut planned = plan_against(offenders, policy, state, now_ms, origin);
        // Someone saved since: still remember what this cycle could not read.
        planned.ledger.unadopted.extend(unadopted.iter().cloned());
        Ok(planned)
    };
    let loaded = std::mem::take(&mut prepared.loaded);
    let planned = std::mem::take(&mut prepared.planned);
    // A target whose sets could not be read for adoption is written nothing:
    // its blocks the ledger does not know would be removed as strangers.
    let targets: Vec<_> = parts
        .targets
        .iter()
        .filter(|t| !loaded.unadopted.contains(&t.label()))
        .cloned()
        .collect();
    let applied = match (&parts.lease, standing) {
        (Some(lease), Some(Standing::Holding { fence, .. })) => {
            let ledger = parts.ledger.clone().fenced_by(lease.fence(*fence));
            let clock = Box::new(Arc::clone(&parts.lease_clock));
            let guard = Arc::new(lease.guard(*fence, clock));
            apply(policy, &ledger, loaded, targets, guard, planned, replan).await
        }
        // A standby (or a primary waiting for a handback): plan only.
        (Some(_), Some(Standing::Waiting { .. })) => Ok((planned, Vec::new())),
        _ => {
            let guard = Arc::new(Unguarded);
            apply(
                policy,
                &parts.ledger,
                loaded,
                targets,
                guard,
                planned,
                replan,
            )
            .await
        }
    };
    let unread = |mut reports: Vec<TargetReport>| {
        if !matches!(standing, Some(Standing::Waiting { .. })) {
            reports.extend(prepared.unread.iter().map(|(target, error)| {
                TargetReport::of(
                    target.clone(),
                    Err(error.clone()),
                    ApiCalls::default(),
                    Vec::new(),
                )
            }));
        }
        // In the policy's order, as every report lists its targets.
        let labels: Vec<String> = parts.targets.iter().map(|t| t.label()).collect();
        reports.sort_by_key(|r| labels.iter().position(|l| *l == r.target));
        reports
    };
    match applied {
        Ok((planned, reports)) => Ok(Written {
            planned,
            reports: unread(reports),
            lease_lost: None,
        }),
        Err(UpdateError::Save(error @ LedgerError::LeaseLost { .. }, (planned, reports))) => {
            tracing::error!(%error, "lost the lease mid-cycle; stopped writing");
            Ok(Written {
                planned,
                reports: unread(reports),
                lease_lost: Some(error),
            })
        }
        Err(UpdateError::Save(error, _)) => Err(error.into()),
        Err(UpdateError::Attempt(error)) => Err(error),
    }
}

/// What [`apply`] wrote: the plan it wrote and each target's outcome.
pub type Applied = (BlockPlan, Vec<TargetReport>);

/// Writes `planned` to every target (asking `guard` before each) and saves
/// the ledger. When the save finds that someone else saved since `loaded`
/// was read, it plans again with `replan` on the fresh ledger and writes
/// again. In observe mode it writes and saves nothing.
pub async fn apply<G: WriteGuard, E>(
    policy: &Policy,
    ledger: &ConfiguredLedger,
    loaded: LedgerState,
    targets: Vec<Arc<ConfiguredTarget>>,
    guard: Arc<G>,
    planned: BlockPlan,
    mut replan: impl FnMut(&LedgerState) -> Result<BlockPlan, E>,
) -> Result<Applied, UpdateError<Applied, E>> {
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

/// The report of a finished cycle.
fn report(
    policy: &Policy,
    prepared: Prepared,
    lease: Option<(&Standing, &str)>,
    written: Written,
    started: Stopwatch,
) -> CycleReport {
    let standing = lease.map(|(standing, _)| standing);
    let Written {
        planned,
        reports,
        lease_lost,
    } = written;
    let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    let offenders = &prepared.offenders;
    let stats = prepared.stats;
    let wrote_nothing = planned.observe_only || matches!(standing, Some(Standing::Waiting { .. }));
    CycleReport {
        mode: match standing {
            Some(Standing::Waiting { .. }) => "standby",
            _ if planned.observe_only => "observe",
            _ => "enforce",
        },
        version: crate::JSON_VERSION,
        started: rfc3339_from_ms(prepared.now_ms),
        records: stats.records,
        malformed: stats.malformed,
        records_in_window: prepared.freshness.in_window,
        records_per_window: prepared.freshness.per_window.clone(),
        newest_record: prepared.freshness.newest_ms.map(rfc3339_from_ms),
        newest_record_age_seconds: prepared
            .freshness
            .newest_ms
            .map(|newest| (prepared.now_ms - newest).div_euclid(1000)),
        stale: prepared.freshness.stale,
        incomplete: stats.incomplete.clone(),
        offenders_per_tier: policy
            .tiers
            .iter()
            .map(|t| {
                let reached = offenders
                    .iter()
                    .filter(|o| o.tier.as_ref() == Some(&t.name));
                TierOffenders {
                    tier: t.name.to_string(),
                    offenders: reached.count(),
                }
            })
            .collect(),
        source: policy
            .source
            .as_ref()
            .map_or("files", LogSourceConfig::kind),
        allow_listed: allow_listed(policy, offenders),
        blocks_in_force: by_tier(
            policy,
            planned
                .ledger
                .active(prepared.now_ms)
                .map(|e| e.tier.as_str()),
        ),
        added: text(&held_somewhere(&planned, &reports)),
        extended: text(&planned.extended),
        expired: text(&planned.expired),
        held_back: text(&planned.held_back),
        dropped: text(&planned.dropped),
        suppressed: text(&planned.suppressed),
        adopted: text(&prepared.adopted),
        lease: lease.map(|(s, me)| LeaseLine::new(s, me, lease_lost.as_ref())),
        // Every call of the cycle: the adoption reads, then the writes.
        api_calls: prepared.read_calls.total()
            + reports.iter().map(|r| r.calls.total()).sum::<u32>(),
        targets: target_lines(policy, &planned, &reports, wrote_nothing),
        bytes_read: stats.bytes,
        insights_estimated_cost_usd: uses_insights(policy)
            .then(|| crate::source::cloudwatch_insights::estimated_cost_usd(stats.bytes)),
        insights_queries: uses_insights(policy).then_some(stats.queries),
        insights_second_pass: uses_insights(policy).then_some(stats.second_pass),
        insights_split_queries: uses_insights(policy).then_some(stats.split_queries),
        s3_objects: matches!(policy.source, Some(LogSourceConfig::S3(_))).then_some(ObjectCounts {
            read: stats.objects,
            skipped: stats.skipped_objects,
        }),
        phases: prepared.phases.done,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Counts per tier name, in the policy's tier order, then other names
/// (`manual`, a tier since removed) in name order; tiers with none left out.
/// Each target's line in a report; `wrote_nothing` when the plan was not
/// written (observe mode, a standby).
pub(crate) fn target_lines(
    policy: &Policy,
    planned: &BlockPlan,
    reports: &[TargetReport],
    wrote_nothing: bool,
) -> Vec<TargetLine> {
    let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    reports
        .iter()
        .map(|r| TargetLine {
            target: r.target.clone(),
            account: policy
                .targets
                .iter()
                .find(|t| t.to_string() == r.target)
                .and_then(Target::account)
                .map(ToString::to_string),
            outcome: r.outcome.to_string(),
            state: r.outcome.state(),
            added: match r.outcome {
                Outcome::Updated { added, .. } => added,
                _ => 0,
            },
            removed: r.removed.len(),
            left_out: crate::sink::left_out_by_reason(&r.left_out),
            strangers_removed: text(&crate::plan::unknown_entries(&planned.ledger, &r.removed)),
            failure: match &r.outcome {
                Outcome::Failed(error) => Some(error.kind.name()),
                _ => None,
            },
            held: (!wrote_nothing && !matches!(r.outcome, Outcome::Failed(_)))
                .then(|| held_by_tier(policy, planned, r)),
        })
        .collect()
}

fn by_tier<'t>(policy: &Policy, tiers: impl Iterator<Item = &'t str>) -> Vec<TierBlocks> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for tier in tiers {
        *counts.entry(tier).or_default() += 1;
    }
    let mut out: Vec<TierBlocks> = policy
        .tiers
        .iter()
        .filter_map(|t| {
            let blocks = counts.remove(t.name.as_str())?;
            Some(TierBlocks {
                tier: t.name.to_string(),
                blocks,
            })
        })
        .collect();
    out.extend(counts.into_iter().map(|(tier, blocks)| TierBlocks {
        tier: tier.to_owned(),
        blocks,
    }));
    out
}

/// What a target's sets hold after its write, per tier: the plan's sets
/// less what it left out.
fn held_by_tier(policy: &Policy, planned: &BlockPlan, report: &TargetReport) -> Vec<TierBlocks> {
    let left_out: HashSet<IpNet> = report.left_out.iter().map(|l| l.net).collect();
    let held = planned
        .nets()
        .filter(|net| !left_out.contains(net))
        .filter_map(|net| planned.notes.get(net).map(|note| note.tier.as_str()));
    by_tier(policy, held)
}

/// The plan's additions that some target holds now: an addition every
/// target left out (a Cloudflare list that cannot hold it, say) was not
/// written anywhere. A failed target counts as holding it: the next cycle
/// writes it there.
fn held_somewhere(planned: &BlockPlan, reports: &[TargetReport]) -> Vec<IpNet> {
    // The usual case: no target left anything out, so every addition is held.
    if reports.iter().all(|r| r.left_out.is_empty()) {
        return planned.added.clone();
    }
    let left_out: Vec<HashSet<IpNet>> = reports
        .iter()
        .map(|r| r.left_out.iter().map(|l| l.net).collect())
        .collect();
    let pieces: Vec<IpNet> = planned.nets().copied().collect();
    planned
        .added
        .iter()
        .copied()
        .filter(|added| {
            // The sets hold an addition as pieces (the allow-list cut out).
            let mine: Vec<IpNet> = pieces
                .iter()
                .copied()
                .filter(|p| added.contains(p))
                .collect();
            mine.is_empty()
                || left_out
                    .iter()
                    .any(|skipped| mine.iter().any(|p| !skipped.contains(p)))
        })
        .collect()
}

/// S3 objects a cycle read and skipped.
#[derive(Debug, Clone, Copy, serde::Serialize, schemars::JsonSchema)]
pub struct ObjectCounts {
    /// Objects read whole.
    pub read: u64,
    /// Objects skipped.
    pub skipped: u64,
}

/// Whether the source is Logs Insights, which is billed by bytes scanned.
fn uses_insights(policy: &Policy) -> bool {
    matches!(
        &policy.source,
        Some(LogSourceConfig::CloudWatch {
            api: CloudWatchApi::Insights,
            ..
        })
    )
}

/// Where the offenders were seen, for the ledger.
fn source_label(policy: &Policy) -> String {
    match &policy.source {
        Some(LogSourceConfig::Files { .. }) | None => "files".to_owned(),
        Some(source) => source.locations().join(","),
    }
}

/// A report with every part, for the unit tests of what reads reports.
#[cfg(test)]
pub(crate) mod test_report {
    use super::*;

    /// A report with every part a cycle can have: Logs Insights and S3
    /// counts (one source would not have both), a lease, and a target that
    /// failed after one that wrote.
    pub(crate) fn report(holder: &str, held: usize) -> CycleReport {
        let target = |name: &str, failure: Option<&'static str>| TargetLine {
            target: name.to_owned(),
            account: None,
            outcome: String::new(),
            state: if failure.is_some() {
                "failed"
            } else {
                "updated"
            },
            added: 0,
            removed: 0,
            left_out: Vec::new(),
            strangers_removed: Vec::new(),
            held: failure.is_none().then(|| {
                vec![TierBlocks {
                    tier: "block".to_owned(),
                    blocks: held,
                }]
            }),
            failure,
        };
        CycleReport {
            version: 1,
            mode: "enforce",
            started: String::new(),
            records: 10,
            malformed: 1,
            records_in_window: 9,
            records_per_window: Vec::new(),
            newest_record: None,
            newest_record_age_seconds: None,
            stale: false,
            incomplete: Vec::new(),
            source: "insights",
            offenders_per_tier: vec![TierOffenders {
                tier: "block".to_owned(),
                offenders: 2,
            }],
            allow_listed: AllowListed::default(),
            blocks_in_force: (held > 0)
                .then(|| TierBlocks {
                    tier: "block".to_owned(),
                    blocks: held,
                })
                .into_iter()
                .collect(),
            added: Vec::new(),
            extended: Vec::new(),
            expired: Vec::new(),
            held_back: Vec::new(),
            dropped: Vec::new(),
            suppressed: Vec::new(),
            adopted: Vec::new(),
            lease: Some(LeaseLine {
                state: "held",
                holder: holder.to_owned(),
                fence: Some(7),
                expires: None,
                error: None,
            }),
            targets: vec![target("eu", None), target("us", Some("throttled"))],
            api_calls: 3,
            bytes_read: 1000,
            insights_estimated_cost_usd: Some(0.25),
            insights_queries: Some(12),
            insights_second_pass: None,
            insights_split_queries: None,
            s3_objects: Some(ObjectCounts {
                read: 4,
                skipped: 1,
            }),
            phases: vec![Phase {
                phase: "read",
                seconds: 0.2,
            }],
            seconds: 0.3,
        }
    }
}
