//! AWS clients from the standard chain (profiles, environment, `AWS_ENDPOINT_URL` and the
//! per-service `AWS_ENDPOINT_URL_KINESIS` / `_DYNAMODB` / `_S3` for emulators), and the one
//! error type every AWS call is mapped into, which says whether a retry can help.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

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

/// The innermost cause of an error, first line only (the SDK's outer layers say only
/// "dispatch failure" or "service error"; debug dumps never reach the user).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    let text = e.to_string();
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// The likely fix for a service error code, in a few words.
fn fix_for_code(service: &str, op: &str, code: &str) -> Option<String> {
    Some(match code {
        "ResourceNotFoundException" if op == "SubscribeToShard" => {
            "the consumer (reader.consumer_name) was deregistered, or the shard is gone: restart the workers to register the consumer again".into()
        }
        "ResourceInUseException" if op == "SubscribeToShard" => {
            "another subscription of this consumer to the shard is open (a reader that just stopped, or another fleet with the same reader.consumer_name); retried".into()
        }
        "ResourceNotFoundException" if service == "Kinesis" => {
            "check the stream names (`streams.<kind>` / `--stream`) and the region, or create the streams".into()
        }
        "AccessDeniedException" | "AccessDenied" => {
            format!("the credentials in use may not call {service} {op}: grant it to the role or user")
        }
        "UnrecognizedClientException" | "InvalidSignatureException" | "InvalidClientTokenId" => {
            "the credentials are not valid for this account or region: check AWS_PROFILE / the access keys".into()
        }
        "ExpiredTokenException" | "ExpiredToken" => "the session token has expired: renew the credentials".into(),
        "UnknownOperationException" if op.contains("StreamConsumer") => {
            "this Kinesis endpoint has no enhanced fan-out (an emulator without it?): read by polling (reader.mode = \"polling\"), or set reader.fallback = \"polling\"".into()
        }
        "LimitExceededException" if op == "RegisterStreamConsumer" => {
            "a stream has at most 20 registered consumers: deregister unused ones (`pinstream consumers --deregister --consumer-name NAME`), or set reader.fallback = \"polling\"".into()
        }
        _ => return None,
    })
}

/// A failed AWS call, in one line: the service's error code and message and the likely
/// fix (or, with no answer, what went wrong on the way). `code` is the service's error
/// code when it answered.
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
        R: std::fmt::Debug + 'static,
    {
        let code = err.code().map(str::to_owned);
        let message = match &err {
            SdkError::ServiceError(_) => {
                let text = err.message().unwrap_or("no message");
                let c = code.as_deref().unwrap_or("error");
                match fix_for_code(service, op, c) {
                    Some(fix) => format!("{c}: {text}; {fix}"),
                    None => format!("{c}: {text}"),
                }
            }
            SdkError::DispatchFailure(d) => {
                let cause = innermost(&err);
                if cause.contains("no credentials") || cause.contains("credential provider") {
                    "no AWS credentials found (tried the environment, profiles, web identity, ECS and instance metadata): set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; for the local stack run `eval \"$(infra/local/start.sh)\"`".to_owned()
                } else if d.is_timeout() {
                    format!("no answer from the {service} endpoint (timed out): check the endpoint (AWS_ENDPOINT_URL*) and the network")
                } else if d.is_io() {
                    format!("cannot reach the {service} endpoint ({cause}): check the region and AWS_ENDPOINT_URL*, or start the local stack (`eval \"$(infra/local/start.sh)\"`)")
                } else {
                    cause
                }
            }
            SdkError::TimeoutError(_) => format!(
                "no answer from the {service} endpoint (timed out): check the endpoint and the network"
            ),
            _ => innermost(&err),
        };
        ServiceError {
            service,
            op,
            code,
            message,
        }
    }

    pub fn kinesis<E, R>(op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        Self::from_sdk("Kinesis", op, err)
    }

    pub fn dynamodb<E, R>(op: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        Self::from_sdk("DynamoDB", op, err)
    }

    /// A failure the service did not name with an error code: an answer without what it
    /// must carry, or no answer in time.
    pub fn uncoded(service: &'static str, op: &'static str, message: impl Into<String>) -> Self {
        ServiceError {
            service,
            op,
            code: None,
            message: message.into(),
        }
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
