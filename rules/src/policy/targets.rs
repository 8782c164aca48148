//! Where blocks go (`[[targets]]`) and where WAF logs come from (`[source]`).

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use toml::Spanned;

use super::accounts::{Account, AccountName, check_account_ref};
use super::check::{Checker, UrlRules};
use super::raw::{RawS3Bucket, RawSource, RawTarget};

/// An AWS region name such as `eu-west-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(String);

impl Region {
    /// Checks the shape of a region name (`xx-name-N`, `us-gov-west-1`).
    pub fn new(name: &str) -> Option<Region> {
        let parts: Vec<&str> = name.split('-').collect();
        let valid = parts.len() >= 3
            && parts[0].len() == 2
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
            && parts[parts.len() - 1].parse::<u8>().is_ok();
        valid.then(|| Region(name.to_owned()))
    }

    /// The region name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a WAFv2 IP set: 1 to 128 letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetName(String);

impl IpSetName {
    /// Checks an IP set name against the WAFv2 rules.
    pub fn new(name: &str) -> Option<IpSetName> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        valid.then(|| IpSetName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A WAF scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WafScope {
    /// A regional web ACL (ALB, API Gateway, AppSync...) in one region.
    Regional(Region),
    /// The CloudFront (edge) scope, whose API lives in us-east-1.
    CloudFront,
}

impl WafScope {
    /// The region to call the WAFv2 API in.
    pub fn api_region(&self) -> &str {
        match self {
            WafScope::Regional(region) => region.as_str(),
            WafScope::CloudFront => "us-east-1",
        }
    }
}

impl fmt::Display for WafScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WafScope::Regional(region) => write!(f, "regional/{region}"),
            WafScope::CloudFront => f.write_str("cloudfront"),
        }
    }
}

/// IP sets in one WAF scope that the responder owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wafv2Target {
    /// Region or CloudFront.
    pub scope: WafScope,
    /// IPv4 sets: the first is filled first, the rest take the spill-over
    /// past 10,000 addresses.
    pub ipv4_sets: Vec<IpSetName>,
    /// IPv6 sets, likewise.
    pub ipv6_sets: Vec<IpSetName>,
    /// A local AWS emulator instead of AWS.
    pub endpoint_url: Option<String>,
    /// Create missing IP sets (for emulators and first setup).
    pub create_missing: bool,
    /// The `[[accounts]]` entry whose role reaches the sets; `None` for
    /// the responder's own account.
    pub account: Option<AccountName>,
}

/// The name of a Cloudflare list: 1 to 50 lowercase letters, digits or
/// `_`, as the Lists API requires (developers.cloudflare.com/waf/tools/lists/).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloudflareListName(String);

impl CloudflareListName {
    /// Checks a list name against Cloudflare's rules.
    pub fn new(name: &str) -> Option<CloudflareListName> {
        let valid = !name.is_empty()
            && name.len() <= 50
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        valid.then(|| CloudflareListName(name.to_owned()))
    }

    /// The name, as rule expressions write it after `$`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Items a Cloudflare account holds across all its lists unless it is on
/// Enterprise (developers.cloudflare.com/waf/tools/lists/#availability).
pub const CLOUDFLARE_ACCOUNT_ITEMS: u32 = 10_000;

/// The most rows a Logs Insights query may return (the `limit` command's
/// ceiling, in the Logs Insights query syntax), and the default.
pub const INSIGHTS_MAX_ROWS: u32 = 100_000;

/// Logs Insights queries one count may run by default, splitting included.
pub const INSIGHTS_MAX_QUERIES: u32 = 200;
/// The Enterprise cap on items across all lists.
pub const CLOUDFLARE_ENTERPRISE_ITEMS: u32 = 500_000;
/// The Cloudflare API's base URL.
pub const CLOUDFLARE_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// An account-level Cloudflare IP list that the responder owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudflareTarget {
    /// The account's id: 32 hexadecimal digits.
    pub account_id: String,
    /// The list's name.
    pub list: CloudflareListName,
    /// The environment variable that holds the API token: a token never
    /// sits in the policy file.
    pub api_token_env: String,
    /// The API's base URL (a fake in tests).
    pub api_url: String,
    /// Create the list when it is missing.
    pub create_missing: bool,
    /// Items the account may hold across all its lists: 10,000, or up to
    /// 500,000 on Enterprise. The list gets what the other lists leave.
    pub max_items: u32,
    /// Block an IPv6 address (which a list cannot hold) as its /64.
    /// Off: such an address is reported and left out.
    pub widen_ipv6: bool,
}

/// Where the responder pushes block lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// AWS WAFv2 IP sets.
    Wafv2(Wafv2Target),
    /// A Cloudflare IP list.
    Cloudflare(CloudflareTarget),
    /// JSON files in the shape of UpdateIPSet requests, under a directory.
    File {
        /// The directory.
        dir: PathBuf,
    },
}

impl Target {
    /// The `[[accounts]]` entry the target is reached through, if any.
    pub fn account(&self) -> Option<&AccountName> {
        match self {
            Target::Wafv2(target) => target.account.as_ref(),
            Target::Cloudflare(_) | Target::File { .. } => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Wafv2(target) => match &target.account {
                Some(account) => write!(f, "wafv2 {account}/{}", target.scope),
                None => write!(f, "wafv2 {}", target.scope),
            },
            Target::Cloudflare(target) => write!(
                f,
                "cloudflare {}/{}",
                target.account_id,
                target.list.as_str()
            ),
            Target::File { dir } => write!(f, "file {}", dir.display()),
        }
    }
}

/// Which CloudWatch Logs API the responder reads WAF logs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudWatchApi {
    /// Logs Insights queries, aggregated by AWS.
    Insights,
    /// Raw events (FilterLogEvents), aggregated here; for small volumes.
    Events,
}

/// A WAF log group in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGroup {
    /// Its region (us-east-1 for CloudFront web ACLs).
    pub region: Region,
    /// Its name, starting with `aws-waf-logs-`.
    pub name: String,
    /// The `[[accounts]]` entry whose role reads it; `None` for the
    /// responder's own account.
    pub account: Option<AccountName>,
}

/// What wrote the log records a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// AWS WAF's web ACL traffic logs (the default).
    #[default]
    Waf,
    /// Cloudflare's `http_requests` dataset, as Logpush writes it (NDJSON).
    Cloudflare,
}

impl LogFormat {
    /// Every format, by the name the policy and `--log-format` use.
    pub const ALL: [(&'static str, LogFormat); 2] = [
        ("waf", LogFormat::Waf),
        ("cloudflare", LogFormat::Cloudflare),
    ];

    /// The format a name stands for.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        LogFormat::ALL
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, format)| format)
    }

    /// Its name in the policy.
    pub fn name(self) -> &'static str {
        LogFormat::ALL
            .into_iter()
            .find(|(_, format)| *format == self)
            .map_or("waf", |(name, _)| name)
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where WAF logs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSourceConfig {
    /// Local files, directories or globs.
    Files {
        /// At least one path.
        paths: Vec<String>,
        /// What wrote them.
        format: LogFormat,
    },
    /// CloudWatch Logs.
    CloudWatch {
        /// Insights (default) or raw events.
        api: CloudWatchApi,
        /// At least one log group.
        log_groups: Vec<LogGroup>,
        /// A local AWS emulator instead of AWS.
        endpoint_url: Option<String>,
        /// Logs Insights queries in flight at once (default 30).
        max_concurrent_queries: NonZeroU32,
        /// Rows one Logs Insights query may return (StartQuery's `limit`;
        /// default and most [`INSIGHTS_MAX_ROWS`]).
        row_limit: NonZeroU32,
        /// Logs Insights queries one count may run before it stops
        /// splitting results the row limit cut (default
        /// [`INSIGHTS_MAX_QUERIES`]); the passes every count needs run
        /// whatever it says.
        max_queries_per_cycle: NonZeroU32,
    },
    /// WAF log objects in S3, as WAF or Firehose delivers them.
    S3(S3Source),
}

impl LogSourceConfig {
    /// What reads the logs, for reports and metrics: `files`, `s3`,
    /// `insights` (Logs Insights) or `events` (raw CloudWatch Logs events).
    pub fn kind(&self) -> &'static str {
        match self {
            LogSourceConfig::Files { .. } => "files",
            LogSourceConfig::S3(_) => "s3",
            LogSourceConfig::CloudWatch {
                api: CloudWatchApi::Insights,
                ..
            } => "insights",
            LogSourceConfig::CloudWatch {
                api: CloudWatchApi::Events,
                ..
            } => "events",
        }
    }

    /// Where the source reads: each log group as `region/name`, the S3
    /// location as `s3://bucket/prefix`, each after `account/` when it is
    /// in an `[[accounts]]` account; the paths of a files source.
    pub fn locations(&self) -> Vec<String> {
        let in_account = |account: &Option<AccountName>, place: String| match account {
            Some(account) => format!("{account}/{place}"),
            None => place,
        };
        match self {
            LogSourceConfig::Files { paths, .. } => paths.clone(),
            LogSourceConfig::S3(s3) => s3
                .buckets
                .iter()
                .map(|b| in_account(&b.account, format!("s3://{}/{}", b.bucket, b.prefix)))
                .collect(),
            LogSourceConfig::CloudWatch { log_groups, .. } => log_groups
                .iter()
                .map(|g| in_account(&g.account, format!("{}/{}", g.region, g.name)))
                .collect(),
        }
    }

    /// What wrote the records, for the sources that read them whole;
    /// `None` for CloudWatch Logs, which holds only WAF's.
    pub fn format(&self) -> Option<LogFormat> {
        match self {
            LogSourceConfig::Files { format, .. } => Some(*format),
            LogSourceConfig::S3(s3) => Some(s3.format),
            LogSourceConfig::CloudWatch { .. } => None,
        }
    }
}

/// `[source] type = "s3"`: where the log objects are and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    /// The buckets, at least one: `bucket` (with `prefix`, `region`,
    /// `account`), or each entry of `buckets`. Their records are counted
    /// as one traffic.
    pub buckets: Vec<S3Bucket>,
    /// A local S3 emulator instead of AWS.
    pub endpoint_url: Option<String>,
    /// How long after a record's time its object may appear in S3 (default
    /// 10 minutes: WAF delivers every 5 minutes, Firehose as its buffer
    /// fills). Objects whose time is this far outside the windows are read too.
    pub delivery_lag_minutes: u32,
    /// Objects fetched at once (default 16).
    pub max_concurrent_objects: NonZeroU32,
    /// What wrote them: WAF (or Firehose) in its `YYYY/MM/DD/HH/` folders,
    /// or Cloudflare's Logpush in `YYYYMMDD/` folders or none.
    pub format: LogFormat,
}

/// One bucket an S3 source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Bucket {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix above the logs (may be empty): the folder holding
    /// the `YYYY/` folders, or any folder above it (such as `AWSLogs/`),
    /// under which every web ACL's and region's folders are read.
    pub prefix: String,
    /// The bucket's region.
    pub region: Region,
    /// The `[[accounts]]` entry whose role reads the bucket; `None` for
    /// the responder's own account.
    pub account: Option<AccountName>,
}

/// Delivery lag when the policy does not set one: WAF publishes to S3
/// every 5 minutes, Firehose's default buffer interval is 5 minutes.
pub const DEFAULT_DELIVERY_LAG_MINUTES: u32 = 10;

const WAF_LOG_GROUP_PREFIX: &str = "aws-waf-logs-";

/// Checks every target, then that no two write to the same place.
pub(crate) fn check_targets(
    checker: &mut Checker<'_>,
    raw: &[Spanned<RawTarget>],
    accounts: &[Account],
) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let path = format!("targets[{i}]");
        let Some(target) = check_target(checker, entry.get_ref(), &path, accounts) else {
            continue;
        };
        let same_place = |other: &Target| match (other, &target) {
            (Target::Wafv2(a), Target::Wafv2(b)) => a.scope == b.scope && a.account == b.account,
            (Target::Cloudflare(a), Target::Cloudflare(b)) => {
                a.account_id == b.account_id && a.list == b.list
            }
            (Target::File { dir: a }, Target::File { dir: b }) => a == b,
            _ => false,
        };
        if let Some(earlier) = targets.iter().position(same_place) {
            let message = format!("{target} is already targets[{earlier}]");
            checker.error(
                entry.span(),
                &path,
                message,
                Some("merge the two targets".to_owned()),
            );
            continue;
        }
        targets.push(target);
    }
    targets
}

fn check_target(
    checker: &mut Checker<'_>,
    raw: &RawTarget,
    path: &str,
    accounts: &[Account],
) -> Option<Target> {
    let kind = checker.choice(
        &raw.kind,
        &format!("{path}.type"),
        &["wafv2", "cloudflare", "file"],
    )?;
    reject_stray_target_keys(checker, raw, path, kind);
    match kind {
        "file" => {
            let dir = required(
                checker,
                raw.dir.as_ref(),
                &raw.kind,
                path,
                "dir",
                "dir = \"state/ip-sets\"",
            )?;
            let dir = checker.text(dir, &format!("{path}.dir"))?;
            Some(Target::File {
                dir: PathBuf::from(dir),
            })
        }
        "cloudflare" => check_cloudflare_target(checker, raw, path).map(Target::Cloudflare),
        _ => {
            let scope = check_scope(checker, raw, path);
            let ipv4_sets = check_ip_sets(
                checker,
                raw.ipv4_sets.as_ref(),
                &raw.kind,
                path,
                "ipv4_sets",
            );
            let ipv6_sets = check_ip_sets(
                checker,
                raw.ipv6_sets.as_ref(),
                &raw.kind,
                path,
                "ipv6_sets",
            );
            let endpoint_url = match &raw.endpoint_url {
                Some(url) => {
                    Some(checker.url(url, &format!("{path}.endpoint_url"), &ENDPOINT_URL)?)
                }
                None => None,
            };
            let account = match &raw.account {
                Some(name) => Some(check_account_ref(
                    checker,
                    accounts,
                    name,
                    &format!("{path}.account"),
                )?),
                None => None,
            };
            Some(Target::Wafv2(Wafv2Target {
                scope: scope?,
                ipv4_sets: ipv4_sets?,
                ipv6_sets: ipv6_sets?,
                endpoint_url,
                create_missing: raw.create_missing.as_ref().is_some_and(|c| *c.get_ref()),
                account,
            }))
        }
    }
}

/// The API's own URL or a fake's; a token never goes in it.
const CLOUDFLARE_URL: UrlRules = UrlRules {
    schemes: &["http://", "https://"],
    kind: "an http(s)",
    example: CLOUDFLARE_API_URL,
    credentials: "the API token comes from the variable api_token_env names",
};

fn check_cloudflare_target(
    checker: &mut Checker<'_>,
    raw: &RawTarget,
    path: &str,
) -> Option<CloudflareTarget> {
    if let Some(token) = &raw.api_token {
        checker.error(
            token.span(),
            &format!("{path}.api_token"),
            "an API token must not be written in the policy file".to_owned(),
            Some(
                "remove api_token, put the token in an environment variable, \
                 and name it with api_token_env = \"CLOUDFLARE_API_TOKEN\""
                    .to_owned(),
            ),
        );
    }
    let account_id = required(
        checker,
        raw.account_id.as_ref(),
        &raw.kind,
        path,
        "account_id",
        "account_id = \"<the 32 hex digits on the account's dashboard>\"",
    )
    .and_then(|id| {
        let text = id.get_ref();
        let valid = text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            let message = format!("\"{text}\" is not a Cloudflare account id");
            let help = "copy the 32 hexadecimal digits from the account's dashboard".to_owned();
            checker.error(
                id.span(),
                &format!("{path}.account_id"),
                message,
                Some(help),
            );
        }
        valid.then(|| text.to_ascii_lowercase())
    });
    let list = required(
        checker,
        raw.list.as_ref(),
        &raw.kind,
        path,
        "list",
        "list = \"floodgate_blocked\"",
    )
    .and_then(|name| {
        let list = CloudflareListName::new(name.get_ref());
        if list.is_none() {
            let message = format!("\"{}\" is not a Cloudflare list name", name.get_ref());
            let help = "use 1 to 50 lowercase letters, digits and _".to_owned();
            checker.error(name.span(), &format!("{path}.list"), message, Some(help));
        }
        list
    });
    let api_token_env = required(
        checker,
        raw.api_token_env.as_ref(),
        &raw.kind,
        path,
        "api_token_env",
        "api_token_env = \"CLOUDFLARE_API_TOKEN\"",
    )
    .and_then(|name| {
        checker.env_var_name(
            name,
            &format!("{path}.api_token_env"),
            "CLOUDFLARE_API_TOKEN",
        )
    });
    let api_url = match &raw.api_url {
        Some(url) => checker.url(url, &format!("{path}.api_url"), &CLOUDFLARE_URL),
        None => Some(CLOUDFLARE_API_URL.to_owned()),
    };
    let max_items = match &raw.max_items {
        Some(max) => checker.in_range(
            max,
            &format!("{path}.max_items"),
            1,
            i64::from(CLOUDFLARE_ENTERPRISE_ITEMS),
        ),
        None => Some(CLOUDFLARE_ACCOUNT_ITEMS),
    };
    if raw.api_token.is_some() {
        return None;
    }
    Some(CloudflareTarget {
        account_id: account_id?,
        list: list?,
        api_token_env: api_token_env?,
        api_url: api_url?.trim_end_matches('/').to_owned(),
        create_missing: raw.create_missing.as_ref().is_some_and(|c| *c.get_ref()),
        max_items: max_items?,
        widen_ipv6: raw.widen_ipv6.as_ref().is_some_and(|w| *w.get_ref()),
    })
}

fn check_scope(checker: &mut Checker<'_>, raw: &RawTarget, path: &str) -> Option<WafScope> {
    let scope = required(
        checker,
        raw.scope.as_ref(),
        &raw.kind,
        path,
        "scope",
        "scope = \"regional\" or scope = \"cloudfront\"",
    )?;
    match checker.choice(scope, &format!("{path}.scope"), &["regional", "cloudfront"])? {
        "cloudfront" => match &raw.region {
            Some(region) if region.get_ref() != "us-east-1" => {
                let message = format!(
                    "the CloudFront scope is managed in us-east-1, not {}",
                    region.get_ref()
                );
                let help = Some("remove region (or set it to \"us-east-1\")".to_owned());
                checker.error(region.span(), &format!("{path}.region"), message, help);
                None
            }
            _ => Some(WafScope::CloudFront),
        },
        _ => {
            let region = required(
                checker,
                raw.region.as_ref(),
                &raw.kind,
                path,
                "region",
                "region = \"eu-west-1\"",
            )?;
            check_region(checker, region, &format!("{path}.region")).map(WafScope::Regional)
        }
    }
}

pub(crate) fn check_region(
    checker: &mut Checker<'_>,
    value: &Spanned<String>,
    path: &str,
) -> Option<Region> {
    let region = Region::new(value.get_ref());
    if region.is_none() {
        let message = format!("\"{}\" is not an AWS region name", value.get_ref());
        checker.error(
            value.span(),
            path,
            message,
            Some("write a region such as \"eu-west-1\"".to_owned()),
        );
    }
    region
}

fn check_ip_sets(
    checker: &mut Checker<'_>,
    value: Option<&Spanned<Vec<Spanned<String>>>>,
    kind: &Spanned<String>,
    path: &str,
    key: &str,
) -> Option<Vec<IpSetName>> {
    let example = format!("{key} = [\"floodgate-blocked-{}\"]", &key[..4]);
    let value = required(checker, value, kind, path, key, &example)?;
    if value.get_ref().is_empty() {
        checker.error(
            value.span(),
            &format!("{path}.{key}"),
            "needs at least one IP set name".to_owned(),
            Some(format!("write {example}")),
        );
        return None;
    }
    let mut names = Vec::new();
    for (i, name) in value.get_ref().iter().enumerate() {
        let set_path = format!("{path}.{key}[{i}]");
        match IpSetName::new(name.get_ref()) {
            Some(set) if names.contains(&set) => {
                let message = format!("\"{}\" is listed twice", name.get_ref());
                checker.error(
                    name.span(),
                    &set_path,
                    message,
                    Some("list each IP set once".to_owned()),
                );
            }
            Some(set) => names.push(set),
            None => {
                let message = format!("\"{}\" is not a valid IP set name", name.get_ref());
                let help = Some("use 1 to 128 letters, digits, '_' or '-'".to_owned());
                checker.error(name.span(), &set_path, message, help);
            }
        }
    }
    (names.len() == value.get_ref().len()).then_some(names)
}

/// An emulator's URL, such as moto's: AWS credentials never go in it.
pub(crate) const ENDPOINT_URL: UrlRules = UrlRules {
    schemes: &["http://", "https://"],
    kind: "an http(s)",
    example: "http://127.0.0.1:5000",
    credentials: "credentials come from the AWS environment, never from the policy file",
};

/// Checks `[source]`.
pub(crate) fn check_source(
    checker: &mut Checker<'_>,
    raw: &Spanned<RawSource>,
    accounts: &[Account],
) -> Option<LogSourceConfig> {
    let raw = raw.get_ref();
    let kind = checker.choice(&raw.kind, "source.type", &["files", "cloudwatch", "s3"])?;
    let keys = [
        (
            "paths",
            raw.paths.as_ref().map(Spanned::span),
            &["files"][..],
        ),
        ("api", raw.api.as_ref().map(Spanned::span), &["cloudwatch"]),
        (
            "log_groups",
            raw.log_groups.as_ref().map(Spanned::span),
            &["cloudwatch"],
        ),
        (
            "endpoint_url",
            raw.endpoint_url.as_ref().map(Spanned::span),
            &["cloudwatch", "s3"],
        ),
        (
            "max_concurrent_queries",
            raw.max_concurrent_queries.as_ref().map(Spanned::span),
            &["cloudwatch"],
        ),
        (
            "row_limit",
            raw.row_limit.as_ref().map(Spanned::span),
            &["cloudwatch"],
        ),
        (
            "max_queries_per_cycle",
            raw.max_queries_per_cycle.as_ref().map(Spanned::span),
            &["cloudwatch"],
        ),
        ("bucket", raw.bucket.as_ref().map(Spanned::span), &["s3"]),
        ("prefix", raw.prefix.as_ref().map(Spanned::span), &["s3"]),
        ("region", raw.region.as_ref().map(Spanned::span), &["s3"]),
        (
            "delivery_lag_minutes",
            raw.delivery_lag_minutes.as_ref().map(Spanned::span),
            &["s3"],
        ),
        (
            "max_concurrent_objects",
            raw.max_concurrent_objects.as_ref().map(Spanned::span),
            &["s3"],
        ),
        (
            "format",
            raw.format.as_ref().map(Spanned::span),
            &["files", "s3"],
        ),
        ("account", raw.account.as_ref().map(Spanned::span), &["s3"]),
        ("buckets", raw.buckets.as_ref().map(Spanned::span), &["s3"]),
    ];
    let stray: Vec<_> = keys
        .into_iter()
        .filter(|(_, _, types)| !types.contains(&kind))
        .map(|(key, span, _)| span.map(|span| (key, span)))
        .collect();
    reject_stray_keys(checker, "source", kind, &stray);
    let format = match &raw.format {
        Some(format) => {
            let names = LogFormat::ALL.map(|(name, _)| name);
            checker
                .choice(format, "source.format", &names)
                .and_then(LogFormat::from_name)
        }
        None => Some(LogFormat::Waf),
    };
    if kind == "files" {
        return check_files_source(checker, raw, format?);
    }
    let endpoint_url = match &raw.endpoint_url {
        Some(url) => checker
            .url(url, "source.endpoint_url", &ENDPOINT_URL)
            .map(Some),
        None => Some(None),
    };
    match kind {
        "s3" => check_s3_source(checker, raw, endpoint_url?, format?, accounts),
        _ => {
            let api = match &raw.api {
                None => Some(CloudWatchApi::Insights),
                Some(api) => match checker.choice(api, "source.api", &["insights", "events"]) {
                    Some("events") => Some(CloudWatchApi::Events),
                    Some(_) => Some(CloudWatchApi::Insights),
                    None => None,
                },
            };
            let log_groups = check_log_groups(checker, raw, accounts);
            let max_concurrent_queries = match &raw.max_concurrent_queries {
                Some(max) => checker.positive(max, "source.max_concurrent_queries")?,
                None => NonZeroU32::new(30).expect("30 is not zero"),
            };
            let row_limit = match &raw.row_limit {
                Some(rows) => checker
                    .in_range(rows, "source.row_limit", 1, INSIGHTS_MAX_ROWS.into())
                    .and_then(NonZeroU32::new),
                None => NonZeroU32::new(INSIGHTS_MAX_ROWS),
            };
            let max_queries_per_cycle = match &raw.max_queries_per_cycle {
                Some(max) => checker.positive(max, "source.max_queries_per_cycle"),
                None => NonZeroU32::new(INSIGHTS_MAX_QUERIES),
            };
            Some(LogSourceConfig::CloudWatch {
                api: api?,
                log_groups: log_groups?,
                endpoint_url: endpoint_url?,
                max_concurrent_queries,
                row_limit: row_limit?,
                max_queries_per_cycle: max_queries_per_cycle?,
            })
        }
    }
}

fn check_files_source(
    checker: &mut Checker<'_>,
    raw: &RawSource,
    format: LogFormat,
) -> Option<LogSourceConfig> {
    let paths = required(
        checker,
        raw.paths.as_ref(),
        &raw.kind,
        "source",
        "paths",
        "paths = [\"logs/\"]",
    )?;
    if paths.get_ref().is_empty() {
        checker.error(
            paths.span(),
            "source.paths",
            "needs at least one path".to_owned(),
            Some("write paths = [\"logs/\"]".to_owned()),
        );
        return None;
    }
    let mut checked = Vec::new();
    for (i, p) in paths.get_ref().iter().enumerate() {
        checked.push(checker.text(p, &format!("source.paths[{i}]")));
    }
    Some(LogSourceConfig::Files {
        paths: checked.into_iter().collect::<Option<_>>()?,
        format,
    })
}

fn check_s3_source(
    checker: &mut Checker<'_>,
    raw: &RawSource,
    endpoint_url: Option<String>,
    format: LogFormat,
    accounts: &[Account],
) -> Option<LogSourceConfig> {
    let buckets = match &raw.buckets {
        Some(list) => {
            let single = [
                raw.bucket.as_ref().map(|v| ("bucket", v.span())),
                raw.prefix.as_ref().map(|v| ("prefix", v.span())),
                raw.region.as_ref().map(|v| ("region", v.span())),
                raw.account.as_ref().map(|v| ("account", v.span())),
            ];
            let mixed = single.iter().any(Option::is_some);
            for (key, span) in single.into_iter().flatten() {
                let message = format!("{key} and buckets both name where the logs are");
                let help = Some(format!("move {key} into an entry of buckets"));
                checker.error(span, &format!("source.{key}"), message, help);
            }
            if list.get_ref().is_empty() {
                let help = "write buckets = [{ bucket = \"aws-waf-logs-example\", region = \"eu-west-1\" }]";
                checker.error(
                    list.span(),
                    "source.buckets",
                    "needs at least one bucket".to_owned(),
                    Some(help.to_owned()),
                );
                return None;
            }
            let checked: Vec<Option<S3Bucket>> = list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let path = format!("source.buckets[{i}]");
                    let at = (entry.span(), "a bucket entry");
                    check_s3_bucket(checker, entry.get_ref(), at, &path, accounts)
                })
                .collect();
            if mixed {
                return None;
            }
            checked
        }
        None => {
            // The single-bucket form: its keys sit in [source] itself.
            let one = RawS3Bucket {
                bucket: raw.bucket.clone(),
                prefix: raw.prefix.clone(),
                region: raw.region.clone(),
                account: raw.account.clone(),
            };
            let at = (raw.kind.span(), "type = \"s3\"");
            vec![check_s3_bucket(checker, &one, at, "source", accounts)]
        }
    };
    let delivery_lag_minutes = match &raw.delivery_lag_minutes {
        Some(lag) => match u32::try_from(*lag.get_ref()) {
            Ok(minutes) if minutes <= 24 * 60 => Some(minutes),
            _ => {
                let message = format!("must be 0 to 1440 minutes, got {}", lag.get_ref());
                checker.error(lag.span(), "source.delivery_lag_minutes", message, None);
                None
            }
        },
        None => Some(DEFAULT_DELIVERY_LAG_MINUTES),
    };
    let max_concurrent_objects = match &raw.max_concurrent_objects {
        Some(max) => checker.positive(max, "source.max_concurrent_objects"),
        None => NonZeroU32::new(16),
    };
    Some(LogSourceConfig::S3(S3Source {
        buckets: buckets.into_iter().collect::<Option<_>>()?,
        endpoint_url,
        delivery_lag_minutes: delivery_lag_minutes?,
        max_concurrent_objects: max_concurrent_objects?,
        format,
    }))
}

/// One bucket: its name, prefix, region and account, at `path` (`source`
/// for the single-bucket form, `source.buckets[i]` in the list); `at` is
/// where a missing key is reported, and what lacks it.
fn check_s3_bucket(
    checker: &mut Checker<'_>,
    raw: &RawS3Bucket,
    at: (std::ops::Range<usize>, &str),
    path: &str,
    accounts: &[Account],
) -> Option<S3Bucket> {
    let mut required = |value: Option<&Spanned<String>>, key: &str, example: &str| {
        if value.is_none() {
            let message = format!("{} needs {key}", at.1);
            checker.error(at.0.clone(), path, message, Some(format!("add {example}")));
        }
        value.cloned()
    };
    let bucket = required(
        raw.bucket.as_ref(),
        "bucket",
        "bucket = \"aws-waf-logs-example\"",
    );
    let region = required(raw.region.as_ref(), "region", "region = \"eu-west-1\"");
    let bucket = bucket.and_then(|bucket| {
        let name = bucket.get_ref();
        if valid_bucket_name(name) {
            return Some(name.clone());
        }
        let help = if name.starts_with("s3://") || name.contains('/') {
            "write the bucket's name alone, and the folder in prefix"
        } else {
            "a bucket name is 3 to 63 lowercase letters, digits, dots and hyphens"
        };
        let message = format!("\"{name}\" is not an S3 bucket name");
        checker.error(
            bucket.span(),
            &format!("{path}.bucket"),
            message,
            Some(help.to_owned()),
        );
        None
    });
    let region =
        region.and_then(|region| check_region(checker, &region, &format!("{path}.region")));
    let prefix = match &raw.prefix {
        Some(prefix) if prefix.get_ref().starts_with('/') => {
            let message = "S3 keys do not start with \"/\"".to_owned();
            let help = Some(format!(
                "write prefix = \"{}\"",
                prefix.get_ref().trim_start_matches('/')
            ));
            checker.error(prefix.span(), &format!("{path}.prefix"), message, help);
            None
        }
        // A folder, so that "logs" does not also match "logs-old/".
        Some(prefix) if !prefix.get_ref().is_empty() && !prefix.get_ref().ends_with('/') => {
            Some(format!("{}/", prefix.get_ref()))
        }
        Some(prefix) => Some(prefix.get_ref().clone()),
        None => Some(String::new()),
    };
    let account = match &raw.account {
        Some(name) => Some(Some(check_account_ref(
            checker,
            accounts,
            name,
            &format!("{path}.account"),
        )?)),
        None => Some(None),
    };
    Some(S3Bucket {
        bucket: bucket?,
        prefix: prefix?,
        region: region?,
        account: account?,
    })
}

/// S3's rules for bucket names (general purpose buckets): 3 to 63
/// characters of lowercase letters, digits, dots and hyphens, starting and
/// ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

fn check_log_groups(
    checker: &mut Checker<'_>,
    raw: &RawSource,
    accounts: &[Account],
) -> Option<Vec<LogGroup>> {
    let example = "log_groups = [{ region = \"eu-west-1\", name = \"aws-waf-logs-app\" }]";
    let groups = required(
        checker,
        raw.log_groups.as_ref(),
        &raw.kind,
        "source",
        "log_groups",
        example,
    )?;
    if groups.get_ref().is_empty() {
        checker.error(
            groups.span(),
            "source.log_groups",
            "needs at least one log group".to_owned(),
            Some(format!("write {example}")),
        );
        return None;
    }
    let mut checked = Vec::new();
    for (i, group) in groups.get_ref().iter().enumerate() {
        let group = group.get_ref();
        let path = format!("source.log_groups[{i}]");
        let region = check_region(checker, &group.region, &format!("{path}.region"));
        let name = group.name.get_ref();
        if !name.starts_with(WAF_LOG_GROUP_PREFIX) {
            let message = format!("\"{name}\" is not a WAF log group");
            let help = Some(format!(
                "AWS WAF only logs to groups whose names start with \"{WAF_LOG_GROUP_PREFIX}\""
            ));
            checker.error(group.name.span(), &format!("{path}.name"), message, help);
            continue;
        }
        let account = match &group.account {
            Some(account) => {
                match check_account_ref(checker, accounts, account, &format!("{path}.account")) {
                    Some(account) => Some(account),
                    None => continue,
                }
            }
            None => None,
        };
        if let Some(region) = region {
            checked.push(LogGroup {
                region,
                name: name.clone(),
                account,
            });
        }
    }
    (checked.len() == groups.get_ref().len()).then_some(checked)
}

/// A key the chosen `type` needs; reports it missing otherwise.
fn required<'v, T>(
    checker: &mut Checker<'_>,
    value: Option<&'v Spanned<T>>,
    kind: &Spanned<String>,
    path: &str,
    key: &str,
    example: &str,
) -> Option<&'v Spanned<T>> {
    if value.is_none() {
        let message = format!("type = \"{}\" needs {key}", kind.get_ref());
        checker.error(kind.span(), path, message, Some(format!("add {example}")));
    }
    value
}

/// Reports keys that the target's `type` does not take.
fn reject_stray_target_keys(checker: &mut Checker<'_>, raw: &RawTarget, path: &str, kind: &str) {
    let span = |value: Option<std::ops::Range<usize>>, kinds: &[&str]| {
        value.filter(|_| !kinds.contains(&kind))
    };
    let wafv2 = ["wafv2"].as_slice();
    let cloudflare = ["cloudflare"].as_slice();
    let stray = [
        span(raw.scope.as_ref().map(Spanned::span), wafv2).map(|s| ("scope", s)),
        span(raw.region.as_ref().map(Spanned::span), wafv2).map(|s| ("region", s)),
        span(raw.ipv4_sets.as_ref().map(Spanned::span), wafv2).map(|s| ("ipv4_sets", s)),
        span(raw.ipv6_sets.as_ref().map(Spanned::span), wafv2).map(|s| ("ipv6_sets", s)),
        span(raw.endpoint_url.as_ref().map(Spanned::span), wafv2).map(|s| ("endpoint_url", s)),
        span(
            raw.create_missing.as_ref().map(Spanned::span),
            &["wafv2", "cloudflare"],
        )
        .map(|s| ("create_missing", s)),
        span(raw.dir.as_ref().map(Spanned::span), &["file"]).map(|s| ("dir", s)),
        span(raw.account_id.as_ref().map(Spanned::span), cloudflare).map(|s| ("account_id", s)),
        span(raw.list.as_ref().map(Spanned::span), cloudflare).map(|s| ("list", s)),
        span(raw.api_token_env.as_ref().map(Spanned::span), cloudflare)
            .map(|s| ("api_token_env", s)),
        span(raw.api_token.as_ref().map(Spanned::span), cloudflare).map(|s| ("api_token", s)),
        span(raw.api_url.as_ref().map(Spanned::span), cloudflare).map(|s| ("api_url", s)),
        span(raw.max_items.as_ref().map(Spanned::span), cloudflare).map(|s| ("max_items", s)),
        span(raw.widen_ipv6.as_ref().map(Spanned::span), cloudflare).map(|s| ("widen_ipv6", s)),
        span(raw.account.as_ref().map(Spanned::span), wafv2).map(|s| ("account", s)),
    ];
    reject_stray_keys(checker, path, kind, &stray);
}

/// Reports keys that the chosen `type` does not take.
fn reject_stray_keys(
    checker: &mut Checker<'_>,
    path: &str,
    kind: &str,
    stray: &[Option<(&'static str, std::ops::Range<usize>)>],
) {
    for (key, span) in stray.iter().flatten() {
        let message = format!("{key} does not apply to type = \"{kind}\"");
        checker.error(
            span.clone(),
            &format!("{path}.{key}"),
            message,
            Some(format!("remove {key}")),
        );
    }
}
