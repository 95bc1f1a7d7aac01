//! AWS clients from the standard chain (profiles, environment, `AWS_ENDPOINT_URL` and the
//! per-service `AWS_ENDPOINT_URL_KINESIS` / `_DYNAMODB` / `_S3` for emulators), and the one
//! error type every AWS call is mapped into, which says whether a retry can help.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use crate::config::{CallTimeouts, NetworkPolicy};

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
    /// The default bounds of [`NetworkPolicy`] apply.
    pub async fn for_emulators(kinesis: &str, dynamodb: &str) -> Self {
        Self::for_emulators_with(kinesis, dynamodb, &NetworkPolicy::default()).await
    }

    /// [`AwsClients::for_emulators`] with calls bounded as `network` says.
    pub async fn for_emulators_with(
        kinesis: &str,
        dynamodb: &str,
        network: &NetworkPolicy,
    ) -> Self {
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
        Self::bounded(&sdk, network, Some((kinesis, dynamodb)))
    }

    /// Loads region, credentials and endpoints from the standard AWS chain; every call is
    /// bounded as `network` says (S3's bounds go to delta-rs's storage options).
    pub async fn from_env(network: &NetworkPolicy) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::bounded(&sdk, network, None)
    }

    /// Kinesis and DynamoDB clients whose every call is bounded, and counted when it runs
    /// out of time; `endpoints` overrides the chain's (Kinesis, DynamoDB).
    fn bounded(sdk: &SdkConfig, network: &NetworkPolicy, endpoints: Option<(&str, &str)>) -> Self {
        let mut k = aws_sdk_kinesis::config::Builder::from(sdk)
            .timeout_config(timeout_config(network.connect, network.kinesis))
            .interceptor(TimeoutCounter);
        let mut d = aws_sdk_dynamodb::config::Builder::from(sdk)
            .timeout_config(timeout_config(network.connect, network.dynamodb))
            .interceptor(TimeoutCounter);
        if let Some((kinesis, dynamodb)) = endpoints {
            k = k.endpoint_url(kinesis);
            d = d.endpoint_url(dynamodb);
        }
        AwsClients {
            kinesis: aws_sdk_kinesis::Client::from_conf(k.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(d.build()),
            sdk: sdk.clone(),
        }
    }
}

fn timeout_config(connect: Duration, call: CallTimeouts) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(connect)
        .operation_attempt_timeout(call.attempt)
        .operation_timeout(call.operation)
        .build()
}

/// Counts every attempt of an SDK call that ran out of time
/// (`pinstream_call_timeouts_total{service,operation}`): the attempt timeout, or the
/// operation timeout landing mid-attempt. The SDK settles such an attempt too, so this
/// hook sees each one, whether the SDK retries it or hands the error to the caller.
#[derive(Debug, Clone, Copy)]
struct TimeoutCounter;

impl Intercept for TimeoutCounter {
    fn name(&self) -> &'static str {
        "pinstream::TimeoutCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let timed_out = matches!(context.output_or_error(), Some(Err(e)) if e.is_timeout_error());
        if timed_out {
            let (service, op) = cfg
                .load::<Metadata>()
                .map(|m| (m.service().to_owned(), m.name().to_owned()))
                .unwrap_or_default();
            count_timeout(service, op);
        }
        Ok(())
    }
}

/// One call (or attempt) that ran out of time.
pub fn count_timeout(service: String, op: String) {
    metrics::counter!("pinstream_call_timeouts_total", "service" => service, "operation" => op)
        .increment(1);
}

/// The S3 bounds of this process, for delta-rs's storage options (set once the settings
/// are known; the defaults otherwise).
static S3_TIMEOUTS: RwLock<Option<(Duration, CallTimeouts)>> = RwLock::new(None);

/// Sets the bounds of this process's S3 calls, for [`s3_storage_options`].
pub fn set_s3_timeouts(network: &NetworkPolicy) {
    *S3_TIMEOUTS.write().unwrap_or_else(PoisonError::into_inner) =
        Some((network.connect, network.s3));
}

/// Storage options for delta-rs on S3, from the same environment the SDK reads: an S3
/// emulator endpoint (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`) with plain HTTP allowed
/// only when that endpoint is `http://`, and the `[network]` bounds of S3 calls
/// (object_store's `connect_timeout`, `timeout` per request and `retry_timeout` for a call
/// with its retries). Credentials are left to delta-rs's own AWS chain.
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
    let (connect, s3) = S3_TIMEOUTS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_else(|| {
            let d = NetworkPolicy::default();
            (d.connect, d.s3)
        });
    let text = |d: Duration| format!("{}ms", d.as_millis());
    opts.insert("connect_timeout".into(), text(connect));
    opts.insert("timeout".into(), text(s3.attempt));
    opts.insert("retry_timeout".into(), text(s3.operation));
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

/// Every level of an error's chain, outermost first, joined (one line each level).
fn whole_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut e = Some(err);
    while let Some(level) = e {
        text.push_str(level.to_string().lines().next().unwrap_or_default());
        text.push_str(" | ");
        e = level.source();
    }
    text
}

/// The one line for a call that could not be signed because the credential chain found
/// nothing: which source answered last (the instance metadata service refusing, timing out
/// or answering 404 on a machine without a role) and the fix.
fn no_credentials(cause: &str) -> String {
    let imds = if cause.contains("IMDS") || cause.contains("metadata") {
        if cause.contains("forbidden") || cause.contains("403") {
            " (the instance metadata service refused: 403)"
        } else if cause.contains("timed out") || cause.contains("timeout") {
            " (the instance metadata service did not answer: not on EC2?)"
        } else if cause.contains("404") || cause.contains("not found") || cause.contains("NotFound")
        {
            " (the instance metadata service has no role for this instance: 404)"
        } else {
            ""
        }
    } else {
        ""
    };
    format!("no AWS credentials found{imds}: tried the environment, profiles, web identity, ECS and instance metadata; fix: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (an instance or task role on AWS); for the local stack run `eval \"$(infra/local/start.sh)\"`")
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
            _ if whole_chain(&err).contains("signing region") => {
                "no AWS region set; fix: set AWS_REGION (or `region` in the AWS profile in use)"
                    .to_owned()
            }
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
                let chain = whole_chain(&err);
                if chain.contains("no credentials")
                    || chain.contains("credential provider")
                    || chain.contains("loading credentials")
                    || chain.contains("credentials provider")
                {
                    no_credentials(&chain)
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
