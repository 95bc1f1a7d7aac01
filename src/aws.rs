//! AWS clients from the standard chain (profiles, environment, `AWS_ENDPOINT_URL` and the
//! per-service `AWS_ENDPOINT_URL_KINESIS` / `_DYNAMODB` / `_S3` for emulators), and the one
//! error type every AWS call is mapped into, which says whether a retry can help.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The clients one process needs, built once at start.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub kinesis: aws_sdk_kinesis::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sdk: SdkConfig,
}

impl AwsClients {
    /// Clients for local emulators at explicit endpoints, with dummy credentials and
    /// `us-east-1`: what `pinstream demo` uses, whatever the user's AWS environment says.
    pub async fn for_emulators(kinesis: &str, dynamodb: &str) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "pinstream-local",
            ))
            .load()
            .await;
        let k = aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(kinesis)
            .build();
        let d = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(dynamodb)
            .build();
        AwsClients {
            kinesis: aws_sdk_kinesis::Client::from_conf(k),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(d),
            sdk,
        }
    }

    /// Loads region, credentials and endpoints from the standard AWS chain.
    pub async fn from_env() -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        AwsClients {
            kinesis: aws_sdk_kinesis::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sdk,
        }
    }
}

/// Storage options for delta-rs on S3, from the same environment the SDK reads: an S3
/// emulator endpoint (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`) with plain HTTP allowed
/// only when that endpoint is `http://`. Credentials are left to delta-rs's own AWS chain.
pub fn s3_storage_options() -> HashMap<String, String> {
    let mut opts = HashMap::new();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    if let Some(ep) = endpoint.filter(|e| !e.is_empty()) {
        if ep.starts_with("http://") {
            opts.insert("AWS_ALLOW_HTTP".into(), "true".into());
        }
        opts.insert("AWS_ENDPOINT_URL".into(), ep);
        // Emulators serve path-style buckets only.
        opts.insert("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into());
    }
    opts
}

/// A failed AWS call. `code` is the service's error code when it answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} {op} failed: {message}")]
pub struct ServiceError {
    pub service: &'static str,
    pub op: &'static str,
    pub code: Option<String>,
    pub message: String,
}

impl ServiceError {
    pub fn from_sdk<E, R>(service: &'static str, op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        ServiceError {
            service,
            op,
            code: err.code().map(str::to_owned),
            message: DisplayErrorContext(&err).to_string(),
        }
    }

    pub fn kinesis<E, R>(op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Self::from_sdk("Kinesis", op, err)
    }

    pub fn dynamodb<E, R>(op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Self::from_sdk("DynamoDB", op, err)
    }

    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// The service asked us to slow down.
    pub fn is_throttle(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "LimitExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
            )
        )
    }

    /// Whether trying again later can help: throttling, server faults, and failures with
    /// no answer at all (connection refused, timeouts).
    pub fn is_retryable(&self) -> bool {
        self.is_throttle()
            || self.code.is_none()
            || matches!(
                self.code.as_deref(),
                Some(
                    "InternalFailure"
                        | "InternalFailureException"
                        | "ServiceUnavailable"
                        | "InternalServerError"
                )
            )
    }
}
