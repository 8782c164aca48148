//! `floodgate check`: validate the policy file.

use floodgate_rules::Policy;

use super::{CheckArgs, CliError, Status, load_policy, plural, write_stdout};

/// Validates the policy, printing every diagnostic and a one-line summary.
pub(super) fn run(args: &CheckArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    write_stdout(&format!(
        "{}: valid: {}; {}\n",
        args.policy.config.display(),
        summary(&loaded.policy),
        plural(loaded.warnings.len(), "warning")
    ))?;
    Ok(Status::Success)
}

/// `3 tiers, 4 allow entries (1 expired), 3 plans, 2 tenant overrides, 4 targets, source files`.
fn summary(policy: &Policy) -> String {
    let today = policy.evaluated_on;
    let entries = policy.allow.entries();
    let expired_entries = entries.iter().filter(|e| e.is_expired(today)).count();
    let mut parts = vec![
        plural(policy.tiers.len(), "tier"),
        with_expired(plural(entries.len(), "allow entry"), expired_entries),
    ];
    if let Some(quotas) = &policy.quotas {
        let overrides = quotas.overrides();
        let expired_overrides = overrides.iter().filter(|o| o.is_expired(today)).count();
        parts.push(plural(quotas.plans().len(), "plan"));
        parts.push(with_expired(
            plural(overrides.len(), "tenant override"),
            expired_overrides,
        ));
        if !quotas.routes().is_empty() {
            parts.push(plural(quotas.routes().len(), "route"));
        }
    }
    parts.push(plural(policy.targets.len(), "target"));
    let of = |format: floodgate_rules::policy::LogFormat| match format {
        floodgate_rules::policy::LogFormat::Waf => "",
        floodgate_rules::policy::LogFormat::Cloudflare => " (Cloudflare logs)",
    };
    parts.push(match &policy.source {
        Some(floodgate_rules::policy::LogSourceConfig::Files { format, .. }) => {
            format!("source files{}", of(*format))
        }
        Some(floodgate_rules::policy::LogSourceConfig::CloudWatch { .. }) => {
            "source cloudwatch".to_owned()
        }
        Some(floodgate_rules::policy::LogSourceConfig::S3(s3)) => {
            let first = &s3.buckets[0];
            let more = match s3.buckets.len() {
                1 => String::new(),
                n => format!(" and {} more buckets", n - 1),
            };
            format!(
                "source s3://{}/{}{more}{}",
                first.bucket,
                first.prefix,
                of(s3.format)
            )
        }
        None => "no source".to_owned(),
    });
    parts.join(", ")
}

fn with_expired(text: String, expired: usize) -> String {
    if expired == 0 {
        text
    } else {
        format!("{text} ({expired} expired)")
    }
}
