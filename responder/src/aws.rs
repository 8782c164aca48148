//! AWS SDK clients, built in one place: region, endpoint override (for a
//! local emulator), retry settings and credentials. Credentials come from
//! the standard AWS chain (environment, profile, container or instance
//! role), never from the policy file; an `[[accounts]]` entry's come from
//! assuming its role with them.

use std::time::Duration;

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_sts::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::identity::SharedIdentityCache;
use floodgate_rules::policy::{Account, AccountName, RoleArn};

use crate::failure::FailureKind;

/// The retry policy of every AWS client: the SDK's standard mode retries
/// throttling, transient and 5xx errors with jittered exponential backoff.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(10))
}

/// Shared SDK settings for one region, from the standard credential chain.
pub async fn sdk_config(region: &str, endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .retry_config(retry_config());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// The AWS side of a policy: the process's own credentials and, for each
/// `[[accounts]]` entry, a role-assuming provider with its own cache.
/// Built once (the daemon keeps it for its life) and shared by every client,
/// so each role is assumed once per session, not once per client or cycle,
/// and refreshed by the SDK's cache shortly before it expires.
#[derive(Debug, Clone)]
pub struct Aws {
    base: SdkConfig,
    accounts: Vec<AssumedAccount>,
}

/// One account's credentials: the provider and the cache that holds what
/// it returned, both shared by the account's clients.
#[derive(Debug, Clone)]
struct AssumedAccount {
    name: AccountName,
    provider: SharedCredentialsProvider,
    cache: SharedIdentityCache,
}

impl Aws {
    /// The process's AWS environment and the policy's accounts.
    pub async fn from_policy(policy: &floodgate_rules::Policy) -> Aws {
        let loader =
            || aws_config::defaults(BehaviorVersion::latest()).retry_config(retry_config());
        let mut base = loader().load().await;
        if base.region().is_none() {
            // Every client names its own region, but the credential chain
            // itself may call STS (a web identity token, an SSO profile):
            // without a region in the environment, it calls us-east-1.
            base = loader().region(Region::new(FALLBACK_REGION)).load().await;
        }
        Aws::from_base(base, &policy.accounts).await
    }

    /// Accounts whose roles are assumed with `base`'s credentials, time
    /// source and HTTP client (tests give their own).
    pub async fn from_base(base: SdkConfig, accounts: &[Account]) -> Aws {
        let mut assumed = Vec::new();
        for account in accounts {
            let provider = AssumedRole::new(account, &base).await;
            assumed.push(AssumedAccount {
                name: account.name.clone(),
                provider: SharedCredentialsProvider::new(provider),
                cache: IdentityCache::lazy().build(),
            });
        }
        Aws {
            base,
            accounts: assumed,
        }
    }

    /// SDK settings for one region of one account (`None`: the process's
    /// own), with an emulator's endpoint if the policy names one.
    pub fn config(
        &self,
        account: Option<&AccountName>,
        region: &str,
        endpoint_url: Option<&str>,
    ) -> SdkConfig {
        let mut config = self.base.to_builder();
        config.set_region(Some(Region::new(region.to_owned())));
        if let Some(url) = endpoint_url {
            config.set_endpoint_url(Some(url.to_owned()));
        }
        if let Some(name) = account {
            let assumed = self
                .accounts
                .iter()
                .find(|a| &a.name == name)
                .expect("the policy checks every account name it uses");
            config.set_credentials_provider(Some(assumed.provider.clone()));
            config.set_identity_cache(Some(assumed.cache.clone()));
        }
        config.build()
    }

    /// A WAFv2 client for one region of one account.
    pub fn wafv2_client(
        &self,
        account: Option<&AccountName>,
        region: &str,
        endpoint_url: Option<&str>,
    ) -> aws_sdk_wafv2::Client {
        aws_sdk_wafv2::Client::new(&self.config(account, region, endpoint_url))
    }

    /// A CloudWatch Logs client for one region of one account.
    pub fn logs_client(
        &self,
        account: Option<&AccountName>,
        region: &str,
        endpoint_url: Option<&str>,
    ) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.config(account, region, endpoint_url))
    }
}

/// Credentials from `sts:AssumeRole` into an account's role, whose
/// failures name the account and the role.
#[derive(Debug)]
struct AssumedRole {
    account: AccountName,
    role_arn: RoleArn,
    /// The SDK's provider, or why none could be built (an external id
    /// variable that is not set).
    provider: Result<AssumeRoleProvider, String>,
}

/// The region of the calls that name none (STS, for credentials), when the
/// environment sets none.
const FALLBACK_REGION: &str = "us-east-1";

/// The session name CloudTrail shows for the responder's calls in an account.
const SESSION_NAME: &str = "floodgate";

impl AssumedRole {
    async fn new(account: &Account, base: &SdkConfig) -> AssumedRole {
        let external_id = match &account.external_id_env {
            Some(variable) => match std::env::var(variable) {
                Ok(id) if !id.is_empty() => Ok(Some(id)),
                _ => Err(format!(
                    "the environment variable {variable} (external_id_env) is not set: \
                     set it to the external id the role's trust policy requires"
                )),
            },
            None => Ok(None),
        };
        let provider = match external_id {
            Ok(external_id) => {
                let mut sts = base.to_builder();
                if base.region().is_none() {
                    // STS is in every region; without one configured, the
                    // first region's endpoint serves.
                    sts.set_region(Some(Region::new(FALLBACK_REGION)));
                }
                sts.set_endpoint_url(account.endpoint_url.clone());
                let mut builder = AssumeRoleProvider::builder(account.role_arn.as_str())
                    .session_name(SESSION_NAME)
                    .configure(&sts.build());
                if let Some(id) = external_id {
                    builder = builder.external_id(id);
                }
                Ok(builder.build().await)
            }
            Err(why) => Err(why),
        };
        AssumedRole {
            account: account.name.clone(),
            role_arn: account.role_arn.clone(),
            provider,
        }
    }

    async fn assume(&self) -> aws_credential_types::provider::Result {
        let failed = |cause: String| {
            CredentialsError::provider_error(AssumeRoleFailed {
                account: self.account.clone(),
                role_arn: self.role_arn.clone(),
                cause,
            })
        };
        match &self.provider {
            Ok(provider) => provider
                .provide_credentials()
                .await
                .map_err(|error| failed(sts_cause(&error))),
            Err(why) => Err(failed(why.clone())),
        }
    }
}

impl ProvideCredentials for AssumedRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.assume())
    }
}

/// What STS said, without the SDK's wrappers ("service error", "an error
/// occurred while loading credentials").
fn sts_cause(error: &CredentialsError) -> String {
    let mut cause: &dyn std::error::Error = error;
    let mut text = error.to_string();
    while let Some(next) = cause.source() {
        cause = next;
        if let Some(service) =
            next.downcast_ref::<aws_sdk_sts::operation::assume_role::AssumeRoleError>()
        {
            return match (service.code(), service.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                _ => service.to_string(),
            };
        }
        text = next.to_string();
    }
    text
}

/// Why an account's role could not be assumed: every call in that account
/// fails with it.
#[derive(Debug, thiserror::Error)]
#[error("account {account}: sts:AssumeRole into {role_arn} failed: {cause}")]
pub struct AssumeRoleFailed {
    /// The `[[accounts]]` entry.
    pub account: AccountName,
    /// Its role.
    pub role_arn: RoleArn,
    /// What STS (or the environment) said.
    pub cause: String,
}

/// What to do about a role that could not be assumed.
const ASSUME_ROLE_FIX: &str = "the role's trust policy must name the responder's role (and the \
     external id, if it requires one): deploy floodgate-member-role.yaml from render-infra in that account";

/// The role-assumption failure behind an error, if that is what it is.
fn assume_role_failure<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e AssumeRoleFailed> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(failed) = current.downcast_ref::<AssumeRoleFailed>() {
            return Some(failed);
        }
        cause = current.source();
    }
    None
}

/// The message of an SDK error, with its service error code when it has
/// one. Every AWS client shares these error types.
pub fn describe_error<E, R>(error: &aws_sdk_cloudwatchlogs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_cloudwatchlogs::error::SdkError;
    let Some(service) = error.as_service_error() else {
        if let Some(failed) = assume_role_failure(error) {
            return format!("{failed}; {ASSUME_ROLE_FIX}");
        }
        let chain = crate::failure::one_line(error);
        return match error {
            SdkError::DispatchFailure(_) if chain.contains("credentials") => {
                let cause = deepest_cause(error);
                format!("no AWS credentials ({cause}): {NO_CREDENTIALS_FIX}")
            }
            SdkError::TimeoutError(_) => format!("no answer in time ({chain})"),
            _ => chain,
        };
    };
    let text = match (service.code(), service.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => service.to_string(),
    };
    match service.code().and_then(fix_for) {
        Some(fix) => format!("{text}; {fix}"),
        None => text,
    }
}

/// What to do about credentials the SDK found none of.
const NO_CREDENTIALS_FIX: &str = "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role is attached";

/// The fix for an AWS error code the operator can cause, where one is known.
fn fix_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => {
            "the session has expired: refresh it (aws sso login, or new keys)"
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch" => {
            "the access key is not valid here: check AWS_ACCESS_KEY_ID, the secret, and the region"
        }
        "AccessDeniedException" | "AccessDenied" | "WAFAccessDeniedException" => {
            "the role needs this permission: render-infra writes the least-privilege policy"
        }
        _ => return None,
    })
}

/// The innermost cause of an error: for a credentials failure, what the
/// chain of providers said.
fn deepest_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// What kind of failure an SDK error is, for the cycle to decide on: by the
/// service's error code where AWS documents one, else by the HTTP status,
/// else by how the call failed (a timeout or a broken connection is
/// transient). Every AWS client shares these error types.
pub fn failure_kind<E>(
    error: &aws_sdk_cloudwatchlogs::error::SdkError<
        E,
        aws_sdk_cloudwatchlogs::config::http::HttpResponse,
    >,
) -> FailureKind
where
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, SdkError};
    match error {
        SdkError::ConstructionFailure(_) => FailureKind::Invalid,
        // The SDK reports credentials it could not load (none configured,
        // an unreachable instance role) as a dispatch failure of kind other.
        SdkError::DispatchFailure(failure)
            if failure.is_other()
                && DisplayErrorContext(error)
                    .to_string()
                    .contains("credentials") =>
        {
            FailureKind::Denied
        }
        SdkError::ServiceError(context) => match context.err().code() {
            Some(
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "ProvisionedThroughputExceededException"
                | "SlowDown"
                | "WAFLimitsExceededException",
            ) => FailureKind::Throttled { retry_after: None },
            Some(
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "MissingAuthenticationToken",
            ) => FailureKind::Denied,
            Some(
                "WAFNonexistentItemException"
                | "ResourceNotFoundException"
                | "NoSuchBucket"
                | "NoSuchKey",
            ) => FailureKind::NotFound,
            Some(
                "WAFOptimisticLockException"
                | "ConditionalCheckFailedException"
                | "TransactionConflictException",
            ) => FailureKind::Conflict,
            Some(
                "WAFInvalidParameterException"
                | "WAFInvalidOperationException"
                | "ValidationException"
                | "InvalidParameterException",
            ) => FailureKind::Invalid,
            Some(
                "WAFInternalErrorException"
                | "InternalFailure"
                | "InternalServerError"
                | "InternalServerException"
                | "ServiceUnavailable"
                | "ServiceUnavailableException",
            ) => FailureKind::Unavailable,
            // An error without a code: its HTTP status says what it is; one
            // that has no error status either is taken as transient.
            _ => match context.raw().status().as_u16() {
                status @ 400.. => FailureKind::from_http_status(status, None),
                _ => FailureKind::Unavailable,
            },
        },
        _ => FailureKind::Unavailable,
    }
}

/// The WAF log groups of one region of one account, with a client there.
#[derive(Debug, Clone)]
pub struct RegionLogs {
    /// Where the groups are, as messages name it: the region, after the
    /// account's name for another account's (`prod-eu/eu-west-1`).
    pub place: String,
    /// A CloudWatch Logs client in that region and account.
    pub client: aws_sdk_cloudwatchlogs::Client,
    /// Log group names.
    pub log_groups: Vec<String>,
}

/// Groups log groups by account and region and builds one client for each.
pub fn region_logs(
    aws: &Aws,
    groups: &[floodgate_rules::policy::LogGroup],
    endpoint_url: Option<&str>,
) -> Vec<RegionLogs> {
    let mut by_place: Vec<RegionLogs> = Vec::new();
    for group in groups {
        let region = group.region.as_str();
        let place = match &group.account {
            Some(account) => format!("{account}/{region}"),
            None => region.to_owned(),
        };
        match by_place.iter_mut().find(|r| r.place == place) {
            Some(existing) => existing.log_groups.push(group.name.clone()),
            None => by_place.push(RegionLogs {
                place,
                client: aws.logs_client(group.account.as_ref(), region, endpoint_url),
                log_groups: vec![group.name.clone()],
            }),
        }
    }
    by_place
}

/// An S3 client. Without a region or endpoint, the standard AWS
/// environment's (`AWS_REGION`, `AWS_ENDPOINT_URL[_S3]`, profile) apply. With
/// an emulator's endpoint, buckets are addressed by path, since
/// `bucket.127.0.0.1` does not resolve.
pub async fn s3_client(region: Option<&str>, endpoint_url: Option<&str>) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry_config());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    s3_client_from(&loader.load().await)
}

/// An S3 client with `shared`'s settings, addressing buckets by path when
/// it talks to an emulator.
pub fn s3_client_from(shared: &SdkConfig) -> aws_sdk_s3::Client {
    let emulated =
        shared.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let mut config = aws_sdk_s3::config::Builder::from(shared).force_path_style(emulated);
    if shared.region().is_none() {
        // S3 answers a request sent to the wrong region with a redirect
        // naming the right one, which the error message passes on.
        config = config.region(Region::new("us-east-1"));
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// A DynamoDB client for the shared ledger and lease.
pub async fn dynamodb_client(region: &str, endpoint_url: Option<&str>) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(region, endpoint_url).await)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use aws_config::BehaviorVersion;
    use aws_credential_types::Credentials;
    use aws_smithy_async::time::TimeSource;
    use aws_smithy_http_client::test_util::infallible_client_fn;

    use super::*;

    /// A clock the test moves: the SDK's signing and its credentials cache
    /// read it.
    #[derive(Debug, Clone)]
    struct TestClock(Arc<Mutex<SystemTime>>);

    impl TestClock {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl TimeSource for TestClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    /// A session's length, as STS's DurationSeconds defaults to (one hour)
    /// would be too long to read: 15 minutes, AssumeRole's shortest.
    const SESSION: Duration = Duration::from_secs(15 * 60);

    /// AssumeRole's answer ("AssumeRole", AWS STS API Reference, Response
    /// Elements): the nth session's key, expiring `SESSION` after `now`.
    fn assume_role_response(n: usize, now: SystemTime) -> String {
        let expires = time::OffsetDateTime::from(now + SESSION)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <AssumeRoleResult><Credentials><AccessKeyId>ASIASESSION{n}</AccessKeyId>\
             <SecretAccessKey>secret</SecretAccessKey><SessionToken>token{n}</SessionToken>\
             <Expiration>{expires}</Expiration></Credentials>\
             <AssumedRoleUser><Arn>arn:aws:sts::111122223333:assumed-role/floodgate-member/floodgate</Arn>\
             <AssumedRoleId>AROAEXAMPLE:floodgate</AssumedRoleId></AssumedRoleUser>\
             </AssumeRoleResult><ResponseMetadata><RequestId>r{n}</RequestId></ResponseMetadata>\
             </AssumeRoleResponse>"
        )
    }

    #[tokio::test]
    async fn an_accounts_role_is_assumed_once_for_all_its_clients_and_again_just_before_it_expires()
    {
        let clock = TestClock(Arc::new(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )));
        let sessions = Arc::new(AtomicUsize::new(0));
        let keys_used = Arc::new(Mutex::new(Vec::<String>::new()));
        let http = {
            let (clock, sessions, keys_used) = (clock.clone(), sessions.clone(), keys_used.clone());
            infallible_client_fn(move |request| {
                let body = String::from_utf8_lossy(request.body().bytes().unwrap_or_default());
                if body.contains("Action=AssumeRole") {
                    assert!(
                        body.contains(
                            "RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Ffloodgate-member"
                        ),
                        "{body}"
                    );
                    assert!(body.contains("RoleSessionName=floodgate"), "{body}");
                    let n = sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    return http::Response::builder()
                        .status(200)
                        .body(assume_role_response(n, clock.now()))
                        .unwrap();
                }
                // A WAFv2 call: note which session's key signed it.
                let authorization = request
                    .headers()
                    .get("authorization")
                    .unwrap()
                    .to_str()
                    .unwrap();
                let key = authorization
                    .split("Credential=")
                    .nth(1)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap();
                keys_used.lock().unwrap().push(key.to_owned());
                http::Response::builder()
                    .status(200)
                    .body(r#"{"IPSets":[]}"#.to_owned())
                    .unwrap()
            })
        };
        let base = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
            .time_source(clock.clone())
            .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
            .http_client(http)
            .build();
        let account = Account {
            name: AccountName::new("shop").unwrap(),
            role_arn: RoleArn::new("arn:aws:iam::111122223333:role/floodgate-member").unwrap(),
            external_id_env: None,
            endpoint_url: None,
        };
        let aws = Aws::from_base(base, std::slice::from_ref(&account)).await;
        let list = |region: &'static str| {
            let client = aws.wafv2_client(Some(&account.name), region, None);
            async move {
                client
                    .list_ip_sets()
                    .scope(aws_sdk_wafv2::types::Scope::Regional)
                    .send()
                    .await
                    .unwrap();
            }
        };
        let minute = Duration::from_secs(60);

        list("eu-west-1").await;
        list("us-east-1").await;
        clock.advance(14 * minute);
        list("eu-west-1").await;
        assert_eq!(
            sessions.load(Ordering::SeqCst),
            1,
            "one session serves every client while it lasts"
        );

        // The cache renews 5 to 10 s (10 s less up to half of it) before
        // the session ends.
        clock.advance(minute - Duration::from_secs(11));
        list("eu-west-1").await;
        assert_eq!(
            sessions.load(Ordering::SeqCst),
            1,
            "still valid 11 s before the end"
        );
        clock.advance(Duration::from_secs(7));
        list("us-east-1").await;
        assert_eq!(
            sessions.load(Ordering::SeqCst),
            2,
            "renewed 4 s before the end"
        );
        clock.advance(SESSION + minute);
        list("eu-west-1").await;
        assert_eq!(
            sessions.load(Ordering::SeqCst),
            3,
            "and after a session has lapsed"
        );
        assert_eq!(
            *keys_used.lock().unwrap(),
            [
                "ASIASESSION1",
                "ASIASESSION1",
                "ASIASESSION1",
                "ASIASESSION1",
                "ASIASESSION2",
                "ASIASESSION3"
            ],
            "every call is signed with the session current at its time"
        );
    }

    #[tokio::test]
    async fn an_external_id_variable_that_is_not_set_fails_that_account_with_the_fix() {
        let account = Account {
            name: AccountName::new("shop").unwrap(),
            role_arn: RoleArn::new("arn:aws:iam::111122223333:role/floodgate-member").unwrap(),
            external_id_env: Some("FLOODGATE_TEST_EXTERNAL_ID_NEVER_SET".to_owned()),
            endpoint_url: None,
        };
        let role = AssumedRole::new(&account, &SdkConfig::builder().build()).await;
        let error = role.assume().await.unwrap_err();
        let failed = assume_role_failure(&error).expect("the failure is typed");
        assert_eq!(failed.account.as_str(), "shop");
        assert!(
            failed
                .cause
                .contains("FLOODGATE_TEST_EXTERNAL_ID_NEVER_SET"),
            "{failed}"
        );
        assert!(
            failed
                .to_string()
                .contains("arn:aws:iam::111122223333:role/floodgate-member"),
            "{failed}"
        );
    }
}
