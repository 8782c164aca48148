//! Where blocks go. Every target takes the same desired IP sets and
//! reports one outcome; AWS SDK types never cross this seam.
//!
//! - [`wafv2`]: AWS WAFv2 IP sets, in a region or the CloudFront scope;
//! - [`file`]: JSON files shaped like UpdateIPSet requests (the embedded
//!   default, and a way to apply blocks with other tooling).
//!
//! Targets are applied concurrently by [`apply_all`]; one failing never
//! stops the others.

pub mod file;
pub mod wafv2;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What every IP set of a target should hold: one list per set, in the
/// order the target names its sets (the first fills first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredSets {
    /// IPv4 sets.
    pub ipv4: Vec<Vec<IpNet>>,
    /// IPv6 sets.
    pub ipv6: Vec<Vec<IpNet>>,
}

/// AWS API calls one target made.
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

impl ApiCalls {
    /// All calls together.
    pub fn total(&self) -> u32 {
        self.list + self.get + self.update + self.create
    }
}

/// How applying to one target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every set already held what it should; nothing was written.
    Unchanged,
    /// Sets were written: this many addresses added and removed.
    Updated {
        /// Addresses added across the target's sets.
        added: usize,
        /// Addresses removed.
        removed: usize,
    },
    /// The target did not converge; the next run retries.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Unchanged => f.write_str("unchanged"),
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
}

/// A place that holds block lists.
pub trait WafTarget: Send + Sync + 'static {
    /// A name for reports.
    fn label(&self) -> String;
    /// Every address currently in the target's sets.
    fn read(&self) -> impl Future<Output = Result<Vec<IpNet>, String>> + Send;
    /// Makes the sets hold `desired`, writing only what changed.
    fn apply(&self, desired: &DesiredSets) -> impl Future<Output = TargetReport> + Send;
}

/// Applies `desired` to every target, `concurrency` at a time, and returns
/// their reports in target order. A failing target never stops the others.
pub async fn apply_all<T: WafTarget>(
    targets: Vec<Arc<T>>,
    desired: &DesiredSets,
    concurrency: usize,
) -> Vec<TargetReport> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let (slots, desired) = (slots.clone(), desired.clone());
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
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
