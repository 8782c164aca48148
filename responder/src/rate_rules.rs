//! The fast tiers' AWS WAF rate-based rules, as the fast detector reads
//! them: which addresses a rule is limiting right now
//! (`GetRateBasedStatementManagedKeys`), and whether the deployed rule
//! still holds its tier (`GetWebACL`).
//!
//! A rule lives in the web ACL `render-infra` deploys (`[infra] name`) in
//! the scope of each wafv2 target: every region and CloudFront (called in
//! us-east-1), in the target's account. The web ACL's id is looked up by
//! name with paginated `ListWebACLs` and cached; a rule or web ACL that no
//! longer exists drops the cached id so the next poll looks it up again.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_wafv2::Client;
use aws_sdk_wafv2::types::{RateBasedStatementAggregateKeyType, Scope, Statement};
use floodgate_rules::Policy;
use floodgate_rules::policy::{AccountName, Target, Tier, TierName, WafScope, rate_rule_name};
use ipnet::IpNet;

use crate::aws::Aws;
use crate::failure::FailureKind;
use crate::sink::TargetError;
use crate::sink::wafv2::call_failed;

/// The longest a throttled rule is left alone before it is asked again.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// One fast tier's rate-based rule in one web ACL.
#[derive(Debug)]
pub struct RateRule {
    /// The tier it stands for.
    pub tier: TierName,
    /// The web ACL it is in.
    pub web_acl: String,
    /// The rule's name.
    pub rule: String,
    /// The web ACL's scope.
    pub scope: WafScope,
    /// The `[[accounts]]` entry it is reached through.
    pub account: Option<AccountName>,
    client: Client,
    /// The web ACL's id, once looked up.
    id: Mutex<Option<String>>,
    /// After throttling: polls to skip, and the next pause's length.
    pause: Mutex<Pause>,
}

#[derive(Debug, Default)]
struct Pause {
    skip_polls: u32,
    next: u32,
}

/// What one rule listed, and the calls it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// The addresses the rule is limiting (each a /32 or /128).
    pub addresses: Vec<IpNet>,
    /// `ListWebACLs` pages and `GetRateBasedStatementManagedKeys` calls.
    pub calls: u32,
}

/// Every fast tier's rule in every wafv2 target's scope, with clients from
/// `aws`; one per (scope, account, tier).
pub fn rate_rules(aws: &Aws, policy: &Policy) -> Vec<RateRule> {
    let mut rules: Vec<RateRule> = Vec::new();
    let web_acl = policy.web_acl_name();
    for target in &policy.targets {
        let Target::Wafv2(target) = target else {
            continue;
        };
        let client = aws.wafv2_client(
            target.account.as_ref(),
            target.scope.api_region(),
            target.endpoint_url.as_deref(),
        );
        for tier in policy.fast_tiers() {
            let seen = rules.iter().any(|r| {
                r.scope == target.scope && r.account == target.account && r.tier == tier.name
            });
            if !seen {
                rules.push(RateRule::new(
                    client.clone(),
                    tier.name.clone(),
                    web_acl,
                    target.scope.clone(),
                    target.account.clone(),
                ));
            }
        }
    }
    rules
}

impl RateRule {
    /// `tier`'s rule in `web_acl`, in `scope`, reached with `client`.
    pub fn new(
        client: Client,
        tier: TierName,
        web_acl: &str,
        scope: WafScope,
        account: Option<AccountName>,
    ) -> RateRule {
        RateRule {
            rule: rate_rule_name(web_acl, &tier),
            tier,
            web_acl: web_acl.to_owned(),
            scope,
            account,
            client,
            id: Mutex::new(None),
            pause: Mutex::new(Pause::default()),
        }
    }

    /// The rule as reports name it: `floodgate-tier-block in web ACL
    /// floodgate, regional/eu-west-1`.
    pub fn label(&self) -> String {
        let account = match &self.account {
            Some(account) => format!(", account {account}"),
            None => String::new(),
        };
        format!(
            "{} in web ACL {}, {}{account}",
            self.rule, self.web_acl, self.scope
        )
    }

    fn sdk_scope(&self) -> Scope {
        match self.scope {
            WafScope::Regional(_) => Scope::Regional,
            WafScope::CloudFront => Scope::Cloudfront,
        }
    }

    /// Whether this poll should leave the rule alone: it was throttled,
    /// and its pause (1, 2, 4 … polls, up to [`MAX_PAUSE`]) is not over.
    pub fn paused(&self) -> bool {
        let mut pause = self.pause.lock().expect("pause");
        if pause.skip_polls == 0 {
            return false;
        }
        pause.skip_polls -= 1;
        true
    }

    /// Records how a poll of the rule went: throttling doubles its pause,
    /// anything else ends it.
    fn after_poll(&self, result: &Result<Listed, TargetError>, interval: Duration) {
        let mut pause = self.pause.lock().expect("pause");
        match result {
            Err(error) if matches!(error.kind, FailureKind::Throttled { .. }) => {
                let most = (MAX_PAUSE.as_secs() / interval.as_secs().max(1)).max(1) as u32;
                pause.next = (pause.next * 2).clamp(1, most);
                pause.skip_polls = pause.next;
            }
            _ => *pause = Pause::default(),
        }
    }

    /// The web ACL's id: cached, or found by name with `ListWebACLs`.
    async fn web_acl_id(&self, calls: &mut u32) -> Result<String, TargetError> {
        if let Some(id) = self.id.lock().expect("id cache").clone() {
            return Ok(id);
        }
        let mut marker: Option<String> = None;
        loop {
            *calls += 1;
            let page = self
                .client
                .list_web_acls()
                .scope(self.sdk_scope())
                .limit(100)
                .set_next_marker(marker.clone())
                .send()
                .await
                .map_err(|e| call_failed(format_args!("ListWebACLs in {}", self.scope), &e))?;
            let found = page
                .web_acls()
                .iter()
                .find(|acl| acl.name() == Some(self.web_acl.as_str()))
                .and_then(|acl| acl.id());
            if let Some(id) = found {
                *self.id.lock().expect("id cache") = Some(id.to_owned());
                return Ok(id.to_owned());
            }
            // WAF returns a marker even on the last page; an empty page ends the list.
            match page.next_marker() {
                Some(next) if !page.web_acls().is_empty() => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        Err(TargetError::new(
            FailureKind::NotFound,
            format!(
                "web ACL {} does not exist in {}; deploy infra/cloudformation/waf.yaml there (floodgate render-infra), or set [infra] name to the web ACL's name",
                self.web_acl, self.scope
            ),
        ))
    }

    /// The addresses the rule is limiting now. `interval` is the poll's,
    /// for the pause after throttling.
    pub async fn managed_keys(&self, interval: Duration) -> Result<Listed, TargetError> {
        let result = self.ask_managed_keys().await;
        self.after_poll(&result, interval);
        result
    }

    async fn ask_managed_keys(&self) -> Result<Listed, TargetError> {
        let mut calls = 0;
        let id = self.web_acl_id(&mut calls).await?;
        calls += 1;
        let answer = self
            .client
            .get_rate_based_statement_managed_keys()
            .scope(self.sdk_scope())
            .web_acl_name(&self.web_acl)
            .web_acl_id(id)
            .rule_name(&self.rule)
            .send()
            .await;
        let output = match answer {
            Ok(output) => output,
            Err(error) => {
                let error = call_failed(
                    format_args!("GetRateBasedStatementManagedKeys {}", self.label()),
                    &error,
                );
                if error.kind == FailureKind::NotFound {
                    // The web ACL may have been replaced: look it up again.
                    *self.id.lock().expect("id cache") = None;
                }
                return Err(error);
            }
        };
        let mut addresses = Vec::new();
        let sets = [output.managed_keys_ipv4(), output.managed_keys_ipv6()];
        for address in sets.into_iter().flatten().flat_map(|s| s.addresses()) {
            let net = address.parse::<IpNet>().map_err(|_| {
                TargetError::new(
                    FailureKind::Invalid,
                    format!(
                        "GetRateBasedStatementManagedKeys {}: \"{address}\" is not an address",
                        self.label()
                    ),
                )
            })?;
            addresses.push(net.trunc());
        }
        Ok(Listed { addresses, calls })
    }

    /// How the deployed rule differs from `tier`: `None` when it holds the
    /// tier's limit and window and aggregates on the IP; else what differs,
    /// in words. An error when the web ACL cannot be read.
    pub async fn drift(&self, tier: &Tier) -> Result<Option<String>, TargetError> {
        let mut calls = 0;
        let id = self.web_acl_id(&mut calls).await?;
        let answer = self
            .client
            .get_web_acl()
            .scope(self.sdk_scope())
            .name(&self.web_acl)
            .id(id)
            .send()
            .await
            .map_err(|e| call_failed(format_args!("GetWebACL {}", self.web_acl), &e))?;
        let rules = answer.web_acl().map(|acl| acl.rules()).unwrap_or_default();
        let Some(rule) = rules.iter().find(|r| r.name() == self.rule) else {
            return Ok(Some(format!(
                "no rule {} in web ACL {}: deploy the templates floodgate render-infra writes",
                self.rule, self.web_acl
            )));
        };
        let Some(Statement {
            rate_based_statement: Some(rate),
            ..
        }) = rule.statement()
        else {
            return Ok(Some(format!("{} is not a rate-based rule", self.rule)));
        };
        let mut differences = Vec::new();
        if rate.limit() != i64::from(tier.requests.get()) {
            differences.push(format!(
                "its limit is {}, the tier's requests {}",
                rate.limit(),
                tier.requests
            ));
        }
        // AWS's default window, when the rule names none, is 300 s.
        let window = match rate.evaluation_window_sec() {
            0 => 300,
            window => window,
        };
        if window != i64::from(tier.window_seconds.get()) {
            differences.push(format!(
                "its window is {window} s, the tier's {} s",
                tier.window_seconds
            ));
        }
        let key = rate.aggregate_key_type();
        if !matches!(
            key,
            RateBasedStatementAggregateKeyType::Ip
                | RateBasedStatementAggregateKeyType::ForwardedIp
        ) {
            differences.push(format!(
                "it aggregates on {}, and only rules on the IP or a forwarded IP list addresses",
                key.as_str()
            ));
        }
        Ok((!differences.is_empty()).then(|| differences.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_wafv2::error::ErrorMetadata;
    use aws_sdk_wafv2::operation::get_rate_based_statement_managed_keys::{
        GetRateBasedStatementManagedKeysError, GetRateBasedStatementManagedKeysOutput,
    };
    use aws_sdk_wafv2::operation::get_web_acl::GetWebAclOutput;
    use aws_sdk_wafv2::operation::list_web_acls::ListWebAcLsOutput;
    use aws_sdk_wafv2::types::{
        RateBasedStatement, RateBasedStatementManagedKeysIpSet, Rule, VisibilityConfig, WebAcl,
        WebAclSummary,
    };
    use aws_smithy_mocks::{Rule as MockRule, RuleMode, mock, mock_client};
    use floodgate_rules::policy::Region;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn listed() -> MockRule {
        mock!(Client::list_web_acls).then_output(|| {
            ListWebAcLsOutput::builder()
                .web_acls(WebAclSummary::builder().name("other").id("x").build())
                .web_acls(
                    WebAclSummary::builder()
                        .name("floodgate")
                        .id("acl-1")
                        .build(),
                )
                .build()
        })
    }

    fn rule(mocks: &[&MockRule]) -> RateRule {
        let client = mock_client!(aws_sdk_wafv2, RuleMode::MatchAny, mocks, |c| c
            .retry_config(aws_sdk_wafv2::config::retry::RetryConfig::disabled()));
        let tier = policy().tiers[0].name.clone();
        RateRule::new(
            client,
            tier,
            "floodgate",
            WafScope::Regional(Region::new("eu-west-1").unwrap()),
            None,
        )
    }

    fn policy() -> Policy {
        let text = "[[tiers]]\nname = \"block\"\nrequests = 100\nwindow_seconds = 300\naction = \"block\"\nblock_minutes = 15\nfast = true\n\n\
                    [[targets]]\ntype = \"wafv2\"\nscope = \"regional\"\nregion = \"eu-west-1\"\nipv4_sets = [\"v4\"]\nipv6_sets = [\"v6\"]\n";
        Policy::from_toml(text, "p.toml", time::macros::date!(2026 - 12 - 07))
            .unwrap()
            .policy
    }

    fn keys(v4: &[&str], v6: &[&str]) -> GetRateBasedStatementManagedKeysOutput {
        let set = |version: &str, addresses: &[&str]| {
            RateBasedStatementManagedKeysIpSet::builder()
                .ip_address_version(version.into())
                .set_addresses(Some(addresses.iter().map(|a| (*a).to_owned()).collect()))
                .build()
        };
        GetRateBasedStatementManagedKeysOutput::builder()
            .managed_keys_ipv4(set("IPV4", v4))
            .managed_keys_ipv6(set("IPV6", v6))
            .build()
    }

    fn failing(code: &'static str) -> MockRule {
        mock!(Client::get_rate_based_statement_managed_keys).then_error(move || {
            GetRateBasedStatementManagedKeysError::generic(
                ErrorMetadata::builder().code(code).message("no").build(),
            )
        })
    }

    #[tokio::test]
    async fn managed_keys_are_read_and_the_web_acl_is_looked_up_once() {
        let list = listed();
        let get = mock!(Client::get_rate_based_statement_managed_keys)
            .match_requests(|r| {
                r.web_acl_id() == Some("acl-1") && r.rule_name() == Some("floodgate-tier-block")
            })
            .then_output(|| keys(&["192.0.2.7/32"], &["2001:db8::1/128"]));
        let rule = rule(&[&list, &get]);
        let first = rule.managed_keys(INTERVAL).await.unwrap();
        let addresses: Vec<String> = first.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addresses, ["192.0.2.7/32", "2001:db8::1/128"]);
        assert_eq!(first.calls, 2, "ListWebACLs, then the keys");
        let second = rule.managed_keys(INTERVAL).await.unwrap();
        assert_eq!(second.calls, 1, "the id is cached");
        assert_eq!((list.num_calls(), get.num_calls()), (1, 2));
        assert_eq!(
            rule.label(),
            "floodgate-tier-block in web ACL floodgate, regional/eu-west-1"
        );
    }

    #[tokio::test]
    async fn a_missing_rule_is_not_found_and_the_web_acl_is_looked_up_again() {
        let list = listed();
        let gone = failing("WAFNonexistentItemException");
        let rule = rule(&[&list, &gone]);
        for _ in 0..2 {
            let error = rule.managed_keys(INTERVAL).await.unwrap_err();
            assert_eq!(error.kind, FailureKind::NotFound);
            assert!(error.detail.contains("floodgate-tier-block"), "{error}");
        }
        assert_eq!(list.num_calls(), 2);
    }

    #[tokio::test]
    async fn a_missing_web_acl_says_how_to_deploy_it() {
        let list =
            mock!(Client::list_web_acls).then_output(|| ListWebAcLsOutput::builder().build());
        let error = rule(&[&list]).managed_keys(INTERVAL).await.unwrap_err();
        assert_eq!(error.kind, FailureKind::NotFound);
        assert!(error.detail.contains("render-infra"), "{error}");
    }

    #[tokio::test]
    async fn a_throttled_rule_is_left_alone_for_doubling_polls_until_it_answers() {
        let list = listed();
        let throttled = failing("ThrottlingException");
        let rule = rule(&[&list, &throttled]);
        let skipped = |rule: &RateRule| (0..10).take_while(|_| rule.paused()).count();
        for expected in [1, 2, 4, 8] {
            let error = rule.managed_keys(INTERVAL).await.unwrap_err();
            assert!(matches!(error.kind, FailureKind::Throttled { .. }));
            assert_eq!(skipped(&rule), expected);
        }
        let answers =
            mock!(Client::get_rate_based_statement_managed_keys).then_output(|| keys(&[], &[]));
        let rule = RateRule {
            client: mock_client!(aws_sdk_wafv2, RuleMode::MatchAny, [&listed(), &answers]),
            ..rule
        };
        rule.managed_keys(INTERVAL).await.unwrap();
        assert_eq!(skipped(&rule), 0, "an answer ends the pause");
    }

    fn web_acl(limit: i64, window: i64) -> GetWebAclOutput {
        let visibility = VisibilityConfig::builder()
            .sampled_requests_enabled(true)
            .cloud_watch_metrics_enabled(true)
            .metric_name("m")
            .build()
            .unwrap();
        let rate = RateBasedStatement::builder()
            .limit(limit)
            .evaluation_window_sec(window)
            .aggregate_key_type(RateBasedStatementAggregateKeyType::Ip)
            .build()
            .unwrap();
        let rule = Rule::builder()
            .name("floodgate-tier-block")
            .priority(10)
            .statement(Statement::builder().rate_based_statement(rate).build())
            .visibility_config(visibility.clone())
            .build()
            .unwrap();
        let acl = WebAcl::builder()
            .name("floodgate")
            .id("acl-1")
            .arn("arn")
            .default_action(
                aws_sdk_wafv2::types::DefaultAction::builder()
                    .allow(aws_sdk_wafv2::types::AllowAction::builder().build())
                    .build(),
            )
            .visibility_config(visibility)
            .rules(rule)
            .build()
            .unwrap();
        GetWebAclOutput::builder().web_acl(acl).build()
    }

    #[tokio::test]
    async fn drift_names_what_the_deployed_rule_does_differently() {
        let policy = policy();
        let tier = &policy.tiers[0];
        let same = mock!(Client::get_web_acl).then_output(|| web_acl(100, 300));
        assert_eq!(rule(&[&listed(), &same]).drift(tier).await.unwrap(), None);
        let other = mock!(Client::get_web_acl).then_output(|| web_acl(200, 60));
        let drift = rule(&[&listed(), &other])
            .drift(tier)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            drift,
            "its limit is 200, the tier's requests 100; its window is 60 s, the tier's 300 s"
        );
        let empty = mock!(Client::get_web_acl).then_output(|| {
            let mut output = web_acl(100, 300);
            if let Some(acl) = output.web_acl.as_mut() {
                acl.rules = None;
            }
            output
        });
        let missing = rule(&[&listed(), &empty])
            .drift(tier)
            .await
            .unwrap()
            .unwrap();
        assert!(
            missing.starts_with("no rule floodgate-tier-block"),
            "{missing}"
        );
    }
}
