//! AWS WAFv2 IP sets in one scope: a region's REGIONAL scope, or the
//! CLOUDFRONT scope (always called in us-east-1).
//!
//! Writing a set is GetIPSet (addresses and lock token), a diff, and
//! UpdateIPSet only when the set changed, so a no-op run writes nothing.
//! - `WAFOptimisticLockException` (someone wrote the set between our get and
//!   update): get again, diff again against the fresh addresses, retry, up to
//!   [`MAX_ATTEMPTS`] times with jittered backoff. Note that the AWS
//!   solution's retry matches the wrong error code and never fires.
//! - `WAFLimitsExceededException` and throttling: back off and retry (the
//!   SDK's own retry handles `ThrottlingException` first).
//! - `WAFNonexistentItemException`: the cached id is stale; look the set up
//!   again once.
//! - Anything else fails this target only.
//!
//! Set ids are found by name with paginated ListIPSets and cached.
//! `create_missing` creates absent sets (for emulators and first setup).
//! Nothing is ever deleted: blocks outlive the responder.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_wafv2::Client;
use aws_sdk_wafv2::operation::update_ip_set::UpdateIPSetError;
use aws_sdk_wafv2::types::{IpAddressVersion, Scope};
use floodgate_rules::policy::{AccountName, WafScope};
use ipnet::IpNet;

use super::{ApiCalls, Changes, Contents, DesiredSets, TargetError, TargetReport, WafTarget};
use crate::aws::{describe_error, failure_kind};
use crate::failure::FailureKind;

/// Attempts per set write before the target is reported failed.
pub const MAX_ATTEMPTS: u32 = 6;

/// The longest wait between two attempts (the fifth, from the default
/// 200 ms, is 3.2 s plus its jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Owned IP sets in one WAF scope.
#[derive(Debug)]
pub struct Wafv2Target {
    client: Client,
    scope: WafScope,
    ipv4_sets: Vec<String>,
    ipv6_sets: Vec<String>,
    create_missing: bool,
    /// The `[[accounts]]` entry it lives in; `None` for the responder's own.
    account: Option<AccountName>,
    /// First backoff after a lock conflict or limit; doubles per attempt.
    backoff: Duration,
    ids: Mutex<HashMap<String, String>>,
}

/// Why a set could not be written.
enum SetError {
    /// Worth another try after a pause.
    Retry(TargetError),
    /// The cached id is stale.
    Stale,
    /// Give up on this target.
    Fatal(TargetError),
}

/// A failed WAFv2 call as a target error: its kind, the call and the
/// service's message.
pub(crate) fn call_failed<E>(
    call: impl std::fmt::Display,
    error: &aws_sdk_wafv2::error::SdkError<E, aws_sdk_wafv2::config::http::HttpResponse>,
) -> TargetError
where
    E: aws_sdk_wafv2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    TargetError::new(
        failure_kind(error),
        format!("{call}: {}", describe_error(error)),
    )
}

impl Wafv2Target {
    /// A target for `scope`, with a client in the scope's API region.
    pub fn new(
        client: Client,
        scope: WafScope,
        ipv4_sets: Vec<String>,
        ipv6_sets: Vec<String>,
        create_missing: bool,
    ) -> Self {
        Wafv2Target {
            client,
            scope,
            ipv4_sets,
            ipv6_sets,
            create_missing,
            account: None,
            backoff: Duration::from_millis(200),
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// Names the `[[accounts]]` entry whose role the client uses, for
    /// reports.
    pub fn in_account(mut self, account: Option<AccountName>) -> Self {
        self.account = account;
        self
    }

    /// Changes the first backoff (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    fn sdk_scope(&self) -> Scope {
        match self.scope {
            WafScope::Regional(_) => Scope::Regional,
            WafScope::CloudFront => Scope::Cloudfront,
        }
    }

    /// The id of the set `name`, from the cache or ListIPSets; created when
    /// missing and `create_missing` is on.
    async fn id(
        &self,
        name: &str,
        version: IpAddressVersion,
        calls: &mut ApiCalls,
    ) -> Result<String, TargetError> {
        if let Some(id) = self.ids.lock().expect("id cache").get(name) {
            return Ok(id.clone());
        }
        let mut marker: Option<String> = None;
        loop {
            calls.list += 1;
            let page = self
                .client
                .list_ip_sets()
                .scope(self.sdk_scope())
                .limit(100)
                .set_next_marker(marker.clone())
                .send()
                .await
                .map_err(|e| call_failed("ListIPSets", &e))?;
            let mut ids = self.ids.lock().expect("id cache");
            for summary in page.ip_sets() {
                if let (Some(n), Some(id)) = (summary.name(), summary.id()) {
                    ids.insert(n.to_owned(), id.to_owned());
                }
            }
            if let Some(id) = ids.get(name) {
                return Ok(id.clone());
            }
            drop(ids);
            // WAF returns a marker even on the last page; an empty page ends the list.
            match page.next_marker() {
                Some(next) if !page.ip_sets().is_empty() => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        if !self.create_missing {
            return Err(TargetError::new(
                FailureKind::NotFound,
                format!(
                    "IP set {name} does not exist in scope {}; deploy infra/ or set create_missing = true",
                    self.scope
                ),
            ));
        }
        calls.create += 1;
        let created = self
            .client
            .create_ip_set()
            .name(name)
            .scope(self.sdk_scope())
            .ip_address_version(version)
            .set_addresses(Some(Vec::new()))
            .description("Dynamic block list owned by the floodgate responder")
            .send()
            .await
            .map_err(|e| call_failed(format_args!("CreateIPSet {name}"), &e))?;
        let id = created
            .summary()
            .and_then(|s| s.id())
            .ok_or_else(|| TargetError::new(FailureKind::Invalid, "CreateIPSet returned no id"))?
            .to_owned();
        self.ids
            .lock()
            .expect("id cache")
            .insert(name.to_owned(), id.clone());
        Ok(id)
    }

    /// The set's current addresses and lock token.
    async fn get(
        &self,
        name: &str,
        id: &str,
        calls: &mut ApiCalls,
    ) -> Result<(BTreeSet<IpNet>, String), SetError> {
        calls.get += 1;
        let got = self
            .client
            .get_ip_set()
            .name(name)
            .scope(self.sdk_scope())
            .id(id)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(service) if service.is_waf_nonexistent_item_exception() => SetError::Stale,
                _ => SetError::Fatal(call_failed(format_args!("GetIPSet {name}"), &e)),
            })?;
        let addresses = got
            .ip_set()
            .map(|set| {
                set.addresses()
                    .iter()
                    .filter_map(|a| a.parse::<IpNet>().ok().map(|n| n.trunc()))
                    .collect()
            })
            .unwrap_or_default();
        let token = got.lock_token().unwrap_or_default().to_owned();
        Ok((addresses, token))
    }

    /// Makes one set hold `desired`; returns what changed.
    async fn write_set(
        &self,
        name: &str,
        version: IpAddressVersion,
        desired: &[IpNet],
        calls: &mut ApiCalls,
    ) -> Result<Changes, TargetError> {
        let desired: BTreeSet<IpNet> = desired.iter().copied().collect();
        let mut refreshed = false;
        let mut pauses = crate::retry::doubling(self.backoff, MAX_BACKOFF, true);
        for attempt in 1..=MAX_ATTEMPTS {
            let id = self.id(name, version.clone(), calls).await?;
            let result = async {
                let (current, token) = self.get(name, &id, calls).await?;
                if current == desired {
                    return Ok(Changes::default());
                }
                let changes = Changes {
                    added: desired.difference(&current).count(),
                    removed: current.difference(&desired).copied().collect(),
                    created: 0,
                };
                calls.update += 1;
                self.client
                    .update_ip_set()
                    .name(name)
                    .scope(self.sdk_scope())
                    .id(&id)
                    .lock_token(token)
                    .set_addresses(Some(desired.iter().map(ToString::to_string).collect()))
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(UpdateIPSetError::WafOptimisticLockException(_)) => SetError::Retry(
                            TargetError::new(FailureKind::Conflict, "lock conflict"),
                        ),
                        Some(UpdateIPSetError::WafLimitsExceededException(_)) => {
                            SetError::Retry(TargetError::new(
                                FailureKind::Throttled { retry_after: None },
                                "WAF limits exceeded",
                            ))
                        }
                        Some(UpdateIPSetError::WafNonexistentItemException(_)) => SetError::Stale,
                        _ => SetError::Fatal(call_failed(format_args!("UpdateIPSet {name}"), &e)),
                    })?;
                Ok(changes)
            }
            .await;
            match result {
                Ok(changes) => return Ok(changes),
                Err(SetError::Fatal(reason)) => return Err(reason),
                Err(SetError::Stale) if !refreshed => {
                    refreshed = true;
                    self.ids.lock().expect("id cache").remove(name);
                }
                Err(SetError::Stale) => {
                    return Err(TargetError::new(
                        FailureKind::NotFound,
                        format!("IP set {name} disappeared while being written"),
                    ));
                }
                Err(SetError::Retry(why)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(set = name, attempt, why = %why, "retrying IP set write");
                    tokio::time::sleep(pauses.next().unwrap_or(MAX_BACKOFF)).await;
                }
                Err(SetError::Retry(why)) => {
                    return Err(TargetError::new(
                        why.kind,
                        format!("IP set {name}: {why} after {MAX_ATTEMPTS} attempts"),
                    ));
                }
            }
        }
        Err(TargetError::new(
            FailureKind::Unavailable,
            format!("IP set {name}: gave up after {MAX_ATTEMPTS} attempts"),
        ))
    }

    async fn apply_sets(
        &self,
        desired: &DesiredSets,
        calls: &mut ApiCalls,
    ) -> Result<Changes, TargetError> {
        let mut changes = Changes::default();
        for (names, lists, version) in [
            (&self.ipv4_sets, &desired.ipv4, IpAddressVersion::Ipv4),
            (&self.ipv6_sets, &desired.ipv6, IpAddressVersion::Ipv6),
        ] {
            if let Some(extra) = lists
                .get(names.len()..)
                .filter(|rest| rest.iter().any(|l| !l.is_empty()))
            {
                let count: usize = extra.iter().map(Vec::len).sum();
                return Err(TargetError::new(
                    FailureKind::Invalid,
                    format!(
                        "{count} addresses need more {} sets than the {} this target declares",
                        version.as_str(),
                        names.len()
                    ),
                ));
            }
            for (i, name) in names.iter().enumerate() {
                let list = lists.get(i).map_or(&[][..], Vec::as_slice);
                changes.add(self.write_set(name, version.clone(), list, calls).await?);
            }
        }
        Ok(changes)
    }
}

impl WafTarget for Wafv2Target {
    fn label(&self) -> String {
        match &self.account {
            Some(account) => format!("wafv2 {account}/{}", self.scope),
            None => format!("wafv2 {}", self.scope),
        }
    }

    async fn read(&self) -> Result<Contents, TargetError> {
        let mut calls = ApiCalls::default();
        let mut all = Vec::new();
        for (names, version) in [
            (&self.ipv4_sets, IpAddressVersion::Ipv4),
            (&self.ipv6_sets, IpAddressVersion::Ipv6),
        ] {
            for name in names {
                let id = self.id(name, version.clone(), &mut calls).await?;
                match self.get(name, &id, &mut calls).await {
                    Ok((addresses, _)) => all.extend(addresses),
                    Err(SetError::Fatal(reason) | SetError::Retry(reason)) => return Err(reason),
                    Err(SetError::Stale) => {
                        return Err(TargetError::new(
                            FailureKind::NotFound,
                            format!("IP set {name} disappeared while being read"),
                        ));
                    }
                }
            }
        }
        Ok(Contents { nets: all, calls })
    }

    async fn apply(&self, desired: &DesiredSets) -> TargetReport {
        let mut calls = ApiCalls::default();
        let changes = self.apply_sets(desired, &mut calls).await;
        TargetReport::of(self.label(), changes, calls, Vec::new())
    }
}
