//! AWS SDK clients, built in one place: region, endpoint override (for a
//! local emulator) and retry settings. Credentials come from the standard
//! AWS chain (environment, profile, container or instance role), never from
//! the policy file.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

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

/// A CloudWatch Logs client for one region.
pub async fn logs_client(
    region: &str,
    endpoint_url: Option<&str>,
) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&sdk_config(region, endpoint_url).await)
}

/// The message of an SDK error, with its service error code when it has
/// one. Every AWS client shares these error types.
pub fn describe_error<E, R>(error: &aws_sdk_cloudwatchlogs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_cloudwatchlogs::error::SdkError;
    let Some(service) = error.as_service_error() else {
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

/// The WAF log groups of one region, with a client for that region.
#[derive(Debug, Clone)]
pub struct RegionLogs {
    /// The region.
    pub region: String,
    /// A CloudWatch Logs client in that region.
    pub client: aws_sdk_cloudwatchlogs::Client,
    /// Log group names.
    pub log_groups: Vec<String>,
}

/// Groups log groups by region and builds one client per region.
pub async fn region_logs(
    groups: &[floodgate_rules::policy::LogGroup],
    endpoint_url: Option<&str>,
) -> Vec<RegionLogs> {
    let mut by_region: Vec<RegionLogs> = Vec::new();
    for group in groups {
        let region = group.region.as_str();
        match by_region.iter_mut().find(|r| r.region == region) {
            Some(existing) => existing.log_groups.push(group.name.clone()),
            None => by_region.push(RegionLogs {
                region: region.to_owned(),
                client: logs_client(region, endpoint_url).await,
                log_groups: vec![group.name.clone()],
            }),
        }
    }
    by_region
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
    let shared = loader.load().await;
    let emulated =
        shared.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(emulated);
    if shared.region().is_none() {
        // S3 answers a request sent to the wrong region with a redirect
        // naming the right one, which the error message passes on.
        config = config.region(Region::new("us-east-1"));
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// A WAFv2 client for one region (us-east-1 for the CloudFront scope).
pub async fn wafv2_client(region: &str, endpoint_url: Option<&str>) -> aws_sdk_wafv2::Client {
    aws_sdk_wafv2::Client::new(&sdk_config(region, endpoint_url).await)
}

/// A DynamoDB client for the shared ledger and lease.
pub async fn dynamodb_client(region: &str, endpoint_url: Option<&str>) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(region, endpoint_url).await)
}
