//! `[[accounts]]`: AWS accounts other than the responder's own. A WAFv2
//! target, a log group or an S3 source that names one is reached through
//! the role it names, which the responder assumes with STS; everything
//! else uses the process's own credentials.

use std::fmt;

use toml::Spanned;

use super::check::Checker;
use super::raw::{RawAccount, RawPolicy};
use super::targets::ENDPOINT_URL;

/// An account's name in the policy: 1 to 64 letters, digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    /// Checks a name against the policy's rules.
    pub fn new(name: &str) -> Option<AccountName> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        valid.then(|| AccountName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ARN of an IAM role, checked for shape: `arn:<partition>:iam::<12
/// digits>:role/<optional path/><name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleArn(String);

/// AWS's partitions, as ARNs spell them.
const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

impl RoleArn {
    /// Checks an ARN's shape; the role's existence is STS's to say.
    pub fn new(arn: &str) -> Option<RoleArn> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
        // IAM's role names: 1 to 64 of letters, digits and +=,.@_-.
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
        let valid = PARTITIONS.contains(&partition)
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && valid_name;
        valid.then(|| RoleArn(arn.to_owned()))
    }

    /// The ARN.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-digit id of the account the role lives in.
    pub fn account_id(&self) -> &str {
        self.0.split(':').nth(4).expect("checked in RoleArn::new")
    }

    /// The partition (`aws`, `aws-cn`, `aws-us-gov`).
    pub fn partition(&self) -> &str {
        self.0.split(':').nth(1).expect("checked in RoleArn::new")
    }

    /// The role's name, without its path.
    pub fn role_name(&self) -> &str {
        self.0.rsplit('/').next().expect("checked in RoleArn::new")
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS account the responder reaches by assuming a role in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name targets and sources use.
    pub name: AccountName,
    /// The role to assume.
    pub role_arn: RoleArn,
    /// The environment variable holding the external id the role's trust
    /// policy requires, if it requires one.
    pub external_id_env: Option<String>,
    /// A local STS emulator instead of AWS.
    pub endpoint_url: Option<String>,
}

/// Checks `[[accounts]]`: names and role ARNs well formed and unique.
pub(crate) fn check_accounts(
    checker: &mut Checker<'_>,
    raw: &[Spanned<RawAccount>],
) -> Vec<Account> {
    let mut accounts: Vec<Account> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let raw = entry.get_ref();
        let path = format!("accounts[{i}]");
        let name = AccountName::new(raw.name.get_ref());
        if name.is_none() {
            let message = format!("\"{}\" is not an account name", raw.name.get_ref());
            let help = Some("use 1 to 64 letters, digits, '-' or '_', such as \"prod-eu\"".into());
            checker.error(raw.name.span(), &format!("{path}.name"), message, help);
        }
        let role_arn = RoleArn::new(raw.role_arn.get_ref());
        if role_arn.is_none() {
            let message = format!("\"{}\" is not an IAM role ARN", raw.role_arn.get_ref());
            let help = Some("write role_arn = \"arn:aws:iam::111122223333:role/floodgate\"".into());
            checker.error(
                raw.role_arn.span(),
                &format!("{path}.role_arn"),
                message,
                help,
            );
        }
        let external_id_env = match &raw.external_id_env {
            Some(name) => {
                let name = checker.env_var_name(
                    name,
                    &format!("{path}.external_id_env"),
                    "FLOODGATE_EXTERNAL_ID",
                );
                name.map(Some)
            }
            None => Some(None),
        };
        let endpoint_url = match &raw.endpoint_url {
            Some(url) => checker
                .url(url, &format!("{path}.endpoint_url"), &ENDPOINT_URL)
                .map(Some),
            None => Some(None),
        };
        let (Some(name), Some(role_arn), Some(external_id_env), Some(endpoint_url)) =
            (name, role_arn, external_id_env, endpoint_url)
        else {
            continue;
        };
        if let Some(earlier) = accounts.iter().position(|a| a.name == name) {
            let message = format!("account \"{name}\" is already accounts[{earlier}]");
            let help = Some("give each account its own name".to_owned());
            checker.error(raw.name.span(), &format!("{path}.name"), message, help);
            continue;
        }
        if let Some(earlier) = accounts.iter().position(|a| a.role_arn == role_arn) {
            let message = format!("{role_arn} is already accounts[{earlier}]'s role");
            let help = Some("name the account once and use its name everywhere".to_owned());
            checker.error(
                raw.role_arn.span(),
                &format!("{path}.role_arn"),
                message,
                help,
            );
            continue;
        }
        accounts.push(Account {
            name,
            role_arn,
            external_id_env,
            endpoint_url,
        });
    }
    accounts
}

/// Checks an `account = "…"` key against the accounts the policy names.
pub(crate) fn check_account_ref(
    checker: &mut Checker<'_>,
    accounts: &[Account],
    value: &Spanned<String>,
    path: &str,
) -> Option<AccountName> {
    let name = value.get_ref();
    if let Some(account) = accounts.iter().find(|a| a.name.as_str() == name) {
        return Some(account.name.clone());
    }
    let message = format!("no [[accounts]] entry is named \"{name}\"");
    let help = match crate::diagnostic::closest(name, accounts.iter().map(|a| a.name.as_str())) {
        Some(close) => format!("did you mean \"{close}\"?"),
        None if accounts.is_empty() => format!(
            "add [[accounts]] with name = \"{name}\" and its role_arn, or remove account \
             to use the responder's own credentials"
        ),
        None => format!(
            "the accounts are {}",
            accounts
                .iter()
                .map(|a| format!("\"{}\"", a.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    checker.error(value.span(), path, message, Some(help));
    None
}

/// Warns about accounts that no target and no source names (as written,
/// so a source with another mistake still counts): a role the responder
/// may assume for nothing, or a target that forgot its `account`.
pub(crate) fn warn_unused(checker: &mut Checker<'_>, raw: &RawPolicy, accounts: &[Account]) {
    let source = raw.source.as_ref().map(Spanned::get_ref);
    let groups = source
        .and_then(|s| s.log_groups.as_ref())
        .into_iter()
        .flat_map(|groups| groups.get_ref())
        .filter_map(|group| group.get_ref().account.as_ref());
    let buckets = source
        .and_then(|s| s.buckets.as_ref())
        .into_iter()
        .flat_map(|buckets| buckets.get_ref())
        .filter_map(|bucket| bucket.get_ref().account.as_ref());
    let used: Vec<&str> = raw
        .targets
        .iter()
        .filter_map(|t| t.get_ref().account.as_ref())
        .chain(source.and_then(|s| s.account.as_ref()))
        .chain(groups)
        .chain(buckets)
        .map(|name| name.get_ref().as_str())
        .collect();
    for (i, entry) in raw.accounts.iter().enumerate() {
        let (name, role) = (
            entry.get_ref().name.get_ref(),
            entry.get_ref().role_arn.get_ref(),
        );
        // Only the entries that were accepted: the others have their errors.
        let accepted = accounts
            .iter()
            .any(|a| a.name.as_str() == name && a.role_arn.as_str() == role);
        if !accepted || used.contains(&name.as_str()) {
            continue;
        }
        let message = format!("no target and no source uses account \"{name}\"");
        let help = Some(format!(
            "add account = \"{name}\" to its [[targets]] or log groups, or remove accounts[{i}]"
        ));
        checker.warn(entry.span(), &format!("accounts[{i}]"), message, help);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_are_checked_for_shape() {
        let arn = RoleArn::new("arn:aws:iam::111122223333:role/team/floodgate-member").unwrap();
        assert_eq!(arn.account_id(), "111122223333");
        assert_eq!(arn.partition(), "aws");
        assert_eq!(arn.role_name(), "floodgate-member");
        assert!(RoleArn::new("arn:aws-cn:iam::111122223333:role/f").is_some());
        for bad in [
            "arn:aws:iam::11112222333:role/f",           // 11 digits
            "arn:aws:iam::111122223333:user/f",          // a user
            "arn:aws:sts::111122223333:role/f",          // not IAM
            "arn:aws:iam:eu-west-1:111122223333:role/f", // IAM has no region
            "arn:aws:iam::111122223333:role/",           // no name
            "arn:aws:iam::111122223333:role/a b",        // a space
            "arn:azure:iam::111122223333:role/f",        // no such partition
            "111122223333",
        ] {
            assert!(RoleArn::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn account_names_are_short_words() {
        assert!(AccountName::new("prod-eu_2").is_some());
        assert!(AccountName::new("").is_none());
        assert!(AccountName::new("prod eu").is_none());
        assert!(AccountName::new(&"a".repeat(65)).is_none());
    }
}
