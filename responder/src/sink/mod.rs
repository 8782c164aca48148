//! Where blocks go. Every target takes the same desired IP sets and
//! reports one outcome; AWS SDK types never cross this seam.
//!
//! - [`wafv2`]: AWS WAFv2 IP sets, in a region or the CloudFront scope;
//! - [`cloudflare`]: a Cloudflare account-level IP list;
//! - [`file`]: JSON files shaped like UpdateIPSet requests (the embedded
//!   default, and a way to apply blocks with other tooling).
//!
//! Targets are applied concurrently by [`apply_all`]; one failing never
//! stops the others.

pub mod cloudflare;
pub mod file;
pub mod wafv2;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::failure::FailureKind;

/// What every IP set of a target should hold: one list per set, in the
/// order the target names its sets (the first fills first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredSets {
    /// IPv4 sets.
    pub ipv4: Vec<Vec<IpNet>>,
    /// IPv6 sets.
    pub ipv6: Vec<Vec<IpNet>>,
    /// Why each address is blocked, for targets that can say so.
    pub notes: BTreeMap<IpNet, BlockNote>,
}

impl DesiredSets {
    /// Every address and range of every set, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.ipv4.iter().chain(&self.ipv6).flatten()
    }
}

/// Why one address of the sets is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNote {
    /// The tier that blocked it.
    pub tier: String,
    /// When its block ends, ms since the epoch.
    pub expires_at_ms: i64,
    /// Its place among the active blocks, most severe and most active
    /// first: a target short of room keeps the lowest.
    pub rank: usize,
    /// Taken in from a target while the ledger was empty and not seen
    /// offending since: a target keeps what it says about it (a Cloudflare
    /// item's comment, written by an operator).
    pub adopted: bool,
}

/// An address a target could not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The address or range.
    pub net: IpNet,
    /// Why, with the fix where there is one.
    pub reason: String,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.net, self.reason)
    }
}

/// `left_out` for a report: one line per reason, naming the first two
/// addresses and how many more share it.
pub fn left_out_by_reason(left_out: &[LeftOut]) -> Vec<String> {
    let mut by_reason: Vec<(&str, Vec<IpNet>)> = Vec::new();
    for left in left_out {
        match by_reason
            .iter_mut()
            .find(|(reason, _)| *reason == left.reason)
        {
            Some((_, nets)) => nets.push(left.net),
            None => by_reason.push((&left.reason, vec![left.net])),
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, nets)| match nets.as_slice() {
            [one] => format!("{one}: {reason}"),
            [a, b] => format!("{a} and {b}: {reason}"),
            [a, b, rest @ ..] => format!("{a}, {b} and {} more: {reason}", rest.len()),
            [] => unreachable!("a reason has at least one address"),
        })
        .collect()
}

/// API calls one target made. WAFv2 names them; a Cloudflare list counts
/// its list and item pages as `list`, bulk-operation polls as `get`, bulk
/// item writes as `update` and list creation as `create`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiCalls {
    /// ListIPSets pages.
    pub list: u32,
    /// GetIPSet calls.
    pub get: u32,
    /// UpdateIPSet calls.
    pub update: u32,
    /// CreateIPSet calls.
    pub create: u32,
}

impl std::ops::AddAssign for ApiCalls {
    fn add_assign(&mut self, other: ApiCalls) {
        self.list += other.list;
        self.get += other.get;
        self.update += other.update;
        self.create += other.create;
    }
}

impl ApiCalls {
    /// All calls together.
    pub fn total(&self) -> u32 {
        self.list + self.get + self.update + self.create
    }
}

/// What a target's sets hold, and the API calls reading them took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// Every address or range in the target's sets.
    pub nets: Vec<IpNet>,
    /// API calls made to read them.
    pub calls: ApiCalls,
}

/// Why a target could not be read or written: what kind of failure, for
/// the cycle to decide on, and what happened, for the operator (the call,
/// the object and the provider's message, with the fix where one is known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct TargetError {
    /// What kind of failure it is.
    pub kind: FailureKind,
    /// What happened, in words.
    pub detail: String,
}

impl TargetError {
    /// A failure of `kind`, described by `detail`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> TargetError {
        TargetError {
            kind,
            detail: detail.into(),
        }
    }

    /// The same failure, with `context` (such as the call) before its
    /// detail.
    pub fn context(self, context: impl fmt::Display) -> TargetError {
        TargetError {
            kind: self.kind,
            detail: format!("{context}: {}", self.detail),
        }
    }
}

/// How applying to one target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every set already held what it should; nothing was written.
    Unchanged,
    /// Sets that did not exist were created, holding nothing yet (a first
    /// run with nothing to block).
    Created {
        /// Sets, lists or set files created.
        sets: usize,
    },
    /// Sets were written: this many addresses added and removed.
    Updated {
        /// Addresses added across the target's sets.
        added: usize,
        /// Addresses removed.
        removed: usize,
    },
    /// The target did not converge; the next run retries.
    Failed(TargetError),
}

/// What writing a target's sets changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Addresses added across the target's sets.
    pub added: usize,
    /// Addresses removed, each named: the run report tells strangers apart.
    pub removed: Vec<IpNet>,
    /// Set files created (the API targets count their creations in
    /// [`ApiCalls::create`]).
    pub created: usize,
}

impl Changes {
    /// Counts `other`'s changes in with these.
    pub fn add(&mut self, other: Changes) {
        self.added += other.added;
        self.removed.extend(other.removed);
        self.created += other.created;
    }
}

impl TargetReport {
    /// The report of writing `target`'s sets: what changed, or why it failed.
    pub fn of(
        target: String,
        changes: Result<Changes, TargetError>,
        calls: ApiCalls,
        left_out: Vec<LeftOut>,
    ) -> TargetReport {
        let (outcome, removed) = match changes {
            Ok(changes) if changes.added == 0 && changes.removed.is_empty() => {
                let sets = changes.created + calls.create as usize;
                let outcome = match sets {
                    0 => Outcome::Unchanged,
                    sets => Outcome::Created { sets },
                };
                (outcome, Vec::new())
            }
            Ok(changes) => (
                Outcome::Updated {
                    added: changes.added,
                    removed: changes.removed.len(),
                },
                changes.removed,
            ),
            Err(reason) => (Outcome::Failed(reason), Vec::new()),
        };
        TargetReport {
            target,
            outcome,
            calls,
            left_out,
            removed,
        }
    }
}

impl Outcome {
    /// The outcome in one word, for machines.
    pub fn state(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Created { .. } => "created",
            Outcome::Updated { .. } => "updated",
            Outcome::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Unchanged => f.write_str("unchanged"),
            Outcome::Created { sets: 1 } => f.write_str("created 1 empty set"),
            Outcome::Created { sets } => write!(f, "created {sets} empty sets"),
            Outcome::Updated { added, removed } => write!(f, "updated +{added} −{removed}"),
            Outcome::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// One target's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    /// Which target, such as `wafv2 regional/eu-west-1`.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// API calls made.
    pub calls: ApiCalls,
    /// Addresses this target cannot hold (a Cloudflare list takes no IPv6
    /// address narrower than a /64), each reported here and in the log.
    pub left_out: Vec<LeftOut>,
    /// What the write removed.
    pub removed: Vec<IpNet>,
}

/// A place that holds block lists.
pub trait WafTarget: Send + Sync + 'static {
    /// A name for reports.
    fn label(&self) -> String;
    /// Every address currently in the target's sets.
    fn read(&self) -> impl Future<Output = Result<Contents, TargetError>> + Send;
    /// Makes the sets hold `desired`, writing only what changed.
    fn apply(&self, desired: &DesiredSets) -> impl Future<Output = TargetReport> + Send;
    /// What the target holds once it has converged on `desired`, as it
    /// holds it (a Cloudflare list holds an IPv6 address as its /64), and
    /// what it leaves out on purpose, for comparing its contents with the
    /// ledger.
    fn expected(&self, desired: &DesiredSets) -> (Vec<IpNet>, Vec<LeftOut>) {
        (desired.nets().copied().collect(), Vec::new())
    }
}

/// Asked right before each target is written: with a lease, whether it is
/// still ours.
pub trait WriteGuard: Send + Sync + 'static {
    /// `Ok` to write, or why not.
    fn may_write(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// No lease: every write may go ahead.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unguarded;

impl WriteGuard for Unguarded {
    async fn may_write(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Applies `desired` to every target, `concurrency` at a time, and returns
/// their reports in target order. A failing target never stops the others.
pub async fn apply_all<T: WafTarget>(
    targets: Vec<Arc<T>>,
    desired: &DesiredSets,
    concurrency: usize,
) -> Vec<TargetReport> {
    apply_all_guarded(targets, desired, concurrency, Arc::new(Unguarded)).await
}

/// [`apply_all`], asking `guard` before each target: a target it refuses
/// is not written and reports why.
pub async fn apply_all_guarded<T: WafTarget, G: WriteGuard>(
    targets: Vec<Arc<T>>,
    desired: &DesiredSets,
    concurrency: usize,
    guard: Arc<G>,
) -> Vec<TargetReport> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let (slots, desired, guard) = (slots.clone(), desired.clone(), guard.clone());
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            if let Err(reason) = guard.may_write().await {
                let fenced =
                    TargetError::new(FailureKind::Fenced, format!("not written: {reason}"));
                let report =
                    TargetReport::of(target.label(), Err(fenced), ApiCalls::default(), Vec::new());
                return (index, report);
            }
            (index, target.apply(&desired).await)
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        reports.push(done.expect("target task panicked"));
    }
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, report)| report).collect()
}

/// Reads every target's sets, `concurrency` at a time (the reads of many
/// regions overlap): each target with what it holds, in target order.
pub async fn read_all<T: WafTarget>(
    targets: Vec<Arc<T>>,
    concurrency: usize,
) -> Vec<(Arc<T>, Result<Contents, TargetError>)> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let contents = target.read().await;
            (index, target, contents)
        });
    }
    let mut read = Vec::new();
    while let Some(done) = tasks.join_next().await {
        read.push(done.expect("target task panicked"));
    }
    read.sort_by_key(|(index, _, _)| *index);
    read.into_iter()
        .map(|(_, target, contents)| (target, contents))
        .collect()
}

/// A target the policy's `[[targets]]` names.
#[derive(Debug)]
pub enum ConfiguredTarget {
    /// `type = "wafv2"`.
    Wafv2(wafv2::Wafv2Target),
    /// `type = "cloudflare"` (boxed: it holds its own HTTPS client).
    Cloudflare(Box<cloudflare::CloudflareTarget>),
    /// `type = "file"`.
    File(file::FileTarget),
}

impl ConfiguredTarget {
    /// Builds every target of the policy, with AWS clients from `aws` (an
    /// account's through its role); the CloudFront scope's is in us-east-1.
    pub fn from_policy(
        aws: &crate::aws::Aws,
        policy: &floodgate_rules::Policy,
    ) -> Vec<ConfiguredTarget> {
        use floodgate_rules::policy::Target;
        let mut targets = Vec::new();
        for target in &policy.targets {
            targets.push(match target {
                Target::Wafv2(t) => {
                    let client = aws.wafv2_client(
                        t.account.as_ref(),
                        t.scope.api_region(),
                        t.endpoint_url.as_deref(),
                    );
                    let names = |sets: &[floodgate_rules::policy::IpSetName]| {
                        sets.iter().map(|n| n.as_str().to_owned()).collect()
                    };
                    ConfiguredTarget::Wafv2(
                        wafv2::Wafv2Target::new(
                            client,
                            t.scope.clone(),
                            names(&t.ipv4_sets),
                            names(&t.ipv6_sets),
                            t.create_missing,
                        )
                        .in_account(t.account.clone()),
                    )
                }
                Target::Cloudflare(t) => {
                    let allowed = policy.allow.entries().iter().map(|e| e.cidr).collect();
                    let token = std::env::var(&t.api_token_env).ok();
                    ConfiguredTarget::Cloudflare(Box::new(cloudflare::CloudflareTarget::new(
                        t.clone(),
                        token,
                        allowed,
                    )))
                }
                Target::File { dir } => {
                    // A file target keeps the set names of the first wafv2
                    // target, or plain ones, so its files mirror the WAF's.
                    let (v4, v6) = policy
                        .targets
                        .iter()
                        .find_map(|t| match t {
                            Target::Wafv2(w) => Some((
                                w.ipv4_sets.iter().map(|n| n.as_str().to_owned()).collect(),
                                w.ipv6_sets.iter().map(|n| n.as_str().to_owned()).collect(),
                            )),
                            Target::Cloudflare(_) | Target::File { .. } => None,
                        })
                        .unwrap_or_else(|| {
                            (
                                vec!["floodgate-blocked-v4".to_owned()],
                                vec!["floodgate-blocked-v6".to_owned()],
                            )
                        });
                    ConfiguredTarget::File(file::FileTarget::new(dir.clone(), v4, v6))
                }
            });
        }
        targets
    }
}

impl WafTarget for ConfiguredTarget {
    fn label(&self) -> String {
        match self {
            ConfiguredTarget::Wafv2(t) => t.label(),
            ConfiguredTarget::Cloudflare(t) => t.label(),
            ConfiguredTarget::File(t) => t.label(),
        }
    }

    async fn read(&self) -> Result<Contents, TargetError> {
        match self {
            ConfiguredTarget::Wafv2(t) => t.read().await,
            ConfiguredTarget::Cloudflare(t) => t.read().await,
            ConfiguredTarget::File(t) => t.read().await,
        }
    }

    fn expected(&self, desired: &DesiredSets) -> (Vec<IpNet>, Vec<LeftOut>) {
        match self {
            ConfiguredTarget::Wafv2(t) => t.expected(desired),
            ConfiguredTarget::Cloudflare(t) => t.expected(desired),
            ConfiguredTarget::File(t) => t.expected(desired),
        }
    }

    async fn apply(&self, desired: &DesiredSets) -> TargetReport {
        match self {
            ConfiguredTarget::Wafv2(t) => t.apply(desired).await,
            ConfiguredTarget::Cloudflare(t) => t.apply(desired).await,
            ConfiguredTarget::File(t) => t.apply(desired).await,
        }
    }
}
