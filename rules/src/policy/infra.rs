//! The `[infra]` section: what `floodgate render-infra` needs beyond the
//! tiers, allow-list, targets and source to write the CloudFormation.

use std::num::NonZeroU32;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawInfra;
use super::targets::{Region, check_region};

/// AWS WAF rate-based rules: the smallest limit and the evaluation windows.
pub const WAF_MIN_RATE_LIMIT: u32 = 10;
/// The evaluation windows AWS WAF rate-based rules accept, in seconds.
pub const WAF_RATE_WINDOWS: [u32; 4] = [60, 120, 300, 600];
/// The retention periods CloudWatch Logs accepts, in days.
pub const LOG_RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The `[infra]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infra {
    /// Prefix of every AWS resource name (default `floodgate`).
    pub name: String,
    /// The WAF's own BLOCK rate rule: a level no customer should reach.
    pub emergency_block_requests: NonZeroU32,
    /// Its window, one of 60, 120, 300, 600 (default 300).
    pub emergency_block_window_seconds: u32,
    /// Retention of the WAF log groups, in days (default 30).
    pub log_retention_days: u32,
    /// EventBridge Scheduler expression for the responder's task, in the
    /// scheduled mode (default `rate(1 minute)`).
    pub schedule_expression: String,
    /// How the responder runs on AWS.
    pub mode: InfraMode,
    /// Where a standby responder's stack goes, with a lease (default: the
    /// first target region other than the primary's).
    pub standby_region: Option<Region>,
    /// A customer managed KMS key for the ledger table and the log groups
    /// (default: AWS's own keys).
    pub kms_key_arn: Option<String>,
}

/// How `render-infra` runs the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InfraMode {
    /// The daemon as an always-on ECS service (the default): cycles on
    /// `[responder] schedule`, health-checked; needs the DynamoDB ledger.
    #[default]
    Service,
    /// One `run --once` task per EventBridge Scheduler tick, the file
    /// ledger on EFS.
    Scheduled,
}

/// Checks `[infra]`; `shared_ledger` tells whether `[responder]` names
/// the DynamoDB ledger, which the service mode needs.
pub(crate) fn check_infra(
    checker: &mut Checker<'_>,
    raw: &Spanned<RawInfra>,
    shared_ledger: bool,
) -> Option<Infra> {
    let section = raw.span();
    let raw = raw.get_ref();
    let name = match &raw.name {
        None => Some("floodgate".to_owned()),
        Some(name) => {
            let text = name.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 32
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !valid {
                let help =
                    Some("use 1 to 32 letters, digits or '-', such as \"floodgate\"".to_owned());
                checker.error(
                    name.span(),
                    "infra.name",
                    format!("\"{text}\" cannot prefix AWS resource names"),
                    help,
                );
            }
            valid.then(|| text.clone())
        }
    };
    let emergency = checker.positive(
        &raw.emergency_block_requests,
        "infra.emergency_block_requests",
    );
    if let Some(requests) = emergency.filter(|r| r.get() < WAF_MIN_RATE_LIMIT) {
        let help = Some(format!(
            "AWS WAF rate-based rules start at {WAF_MIN_RATE_LIMIT}"
        ));
        checker.error(
            raw.emergency_block_requests.span(),
            "infra.emergency_block_requests",
            format!("{requests} is below the AWS minimum"),
            help,
        );
    }
    let window = match &raw.emergency_block_window_seconds {
        None => Some(300),
        Some(window) => one_of(
            checker,
            window,
            "infra.emergency_block_window_seconds",
            &WAF_RATE_WINDOWS,
            "AWS WAF rate-based rules evaluate over",
        ),
    };
    let retention = match &raw.log_retention_days {
        None => Some(30),
        Some(days) => one_of(
            checker,
            days,
            "infra.log_retention_days",
            &LOG_RETENTION_DAYS,
            "CloudWatch Logs keeps logs for",
        ),
    };
    let schedule_expression = match &raw.schedule_expression {
        None => Some("rate(1 minute)".to_owned()),
        Some(expression) => {
            let text = expression.get_ref();
            let valid = ["rate(", "cron(", "at("]
                .iter()
                .any(|p| text.starts_with(p))
                && text.ends_with(')');
            if !valid {
                let help = Some("write an EventBridge Scheduler expression such as \"rate(1 minute)\" or \"cron(0/5 * * * ? *)\"".to_owned());
                checker.error(
                    expression.span(),
                    "infra.schedule_expression",
                    format!("\"{text}\" is not a schedule expression"),
                    help,
                );
            }
            valid.then(|| text.clone())
        }
    };
    let mode = match &raw.mode {
        None => Some(InfraMode::Service),
        Some(mode) => checker
            .choice(mode, "infra.mode", &["service", "scheduled"])
            .map(|mode| match mode {
                "scheduled" => InfraMode::Scheduled,
                _ => InfraMode::Service,
            }),
    };
    if mode == Some(InfraMode::Service) && !shared_ledger {
        let span = raw.mode.as_ref().map_or(section, Spanned::span);
        let message = "the service mode (the default) runs the responder as an always-on ECS service, which keeps its ledger in DynamoDB".to_owned();
        let help = Some("add [responder] ledger = { backend = \"dynamodb\", table = \"floodgate-ledger\", region = \"eu-west-1\" }, or set mode = \"scheduled\" for a task per tick with the file ledger on EFS".to_owned());
        checker.error(span, "infra.mode", message, help);
    }
    if mode == Some(InfraMode::Service)
        && let Some(expression) = &raw.schedule_expression
    {
        let message = "the service mode cycles on [responder] schedule; this applies only to mode = \"scheduled\"".to_owned();
        checker.warn(
            expression.span(),
            "infra.schedule_expression",
            message,
            Some("remove it, or set mode = \"scheduled\"".to_owned()),
        );
    }
    let standby_region = match &raw.standby_region {
        None => Some(None),
        Some(region) => check_region(checker, region, "infra.standby_region").map(Some),
    };
    let kms_key_arn = match &raw.kms_key_arn {
        None => Some(None),
        Some(arn) => {
            let text = arn.get_ref();
            let parts: Vec<&str> = text.splitn(6, ':').collect();
            let valid = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "kms"
                && !parts[3].is_empty()
                && parts[4].len() == 12
                && parts[4].chars().all(|c| c.is_ascii_digit())
                && parts[5]
                    .strip_prefix("key/")
                    .is_some_and(|id| !id.is_empty());
            if !valid {
                let help = Some("the key's ARN, such as \"arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\" (not an alias)".to_owned());
                checker.error(
                    arn.span(),
                    "infra.kms_key_arn",
                    format!("\"{text}\" is not a KMS key ARN"),
                    help,
                );
            }
            valid.then(|| Some(text.clone()))
        }
    };
    Some(Infra {
        kms_key_arn: kms_key_arn?,
        mode: mode?,
        standby_region: standby_region?,
        name: name?,
        emergency_block_requests: emergency.filter(|r| r.get() >= WAF_MIN_RATE_LIMIT)?,
        emergency_block_window_seconds: window?,
        log_retention_days: retention?,
        schedule_expression: schedule_expression?,
    })
}

fn one_of(
    checker: &mut Checker<'_>,
    value: &Spanned<i64>,
    path: &str,
    allowed: &[u32],
    what: &str,
) -> Option<u32> {
    let number = *value.get_ref();
    match allowed.iter().find(|&&a| i64::from(a) == number) {
        Some(&a) => Some(a),
        None => {
            let list = allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            checker.error(
                value.span(),
                path,
                format!("{number} is not allowed"),
                Some(format!("{what} one of {list}")),
            );
            None
        }
    }
}
