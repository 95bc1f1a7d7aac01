//! `[network]`: how long a call to each service may take. Every call pinstream makes to
//! Kinesis, DynamoDB and S3 ends: each attempt within `attempt_timeout`, the whole call
//! (the SDK's or object_store's retries included) within `operation_timeout`, a new
//! connection within `connect_timeout`. A half-open connection or a peer that never answers
//! is then an error like any other, retried on a fresh connection.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, ConfigError};

/// `[network]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub kinesis: CallTimeoutsConfig,
    #[serde(default)]
    pub dynamodb: CallTimeoutsConfig,
    #[serde(default)]
    pub s3: CallTimeoutsConfig,
}

/// `[network.<service>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallTimeoutsConfig {
    pub attempt_timeout: Option<String>,
    pub operation_timeout: Option<String>,
}

/// How long one service's calls may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeouts {
    /// One attempt: request sent, whole answer read.
    pub attempt: Duration,
    /// The whole call, retries and their backoff included.
    pub operation: Duration,
}

/// The bounds of every network call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub connect: Duration,
    pub kinesis: CallTimeouts,
    pub dynamodb: CallTimeouts,
    pub s3: CallTimeouts,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Default for NetworkPolicy {
    /// Kinesis: GetRecords answers within a second or two even at 10 MB; 10 s per attempt
    /// is far beyond that and well inside the 5-minute iterator lifetime. DynamoDB: lease
    /// writes are small; 5 s per attempt, 20 s in all (a renewal is bounded again by its
    /// interval). S3: object_store's own defaults (30 s per request, 3 minutes of retries),
    /// which a 16 MiB data file needs on a slow link.
    fn default() -> Self {
        NetworkPolicy {
            connect: secs(5),
            kinesis: CallTimeouts {
                attempt: secs(10),
                operation: secs(30),
            },
            dynamodb: CallTimeouts {
                attempt: secs(5),
                operation: secs(20),
            },
            s3: CallTimeouts {
                attempt: secs(30),
                operation: secs(180),
            },
        }
    }
}

impl NetworkPolicy {
    pub(super) fn resolve(n: &NetworkConfig) -> Result<Self, ConfigError> {
        let d = NetworkPolicy::default();
        let connect = duration(
            "network.connect_timeout",
            n.connect_timeout.as_deref(),
            d.connect,
        )?;
        let policy = NetworkPolicy {
            connect,
            kinesis: CallTimeouts::resolve("kinesis", &n.kinesis, d.kinesis)?,
            dynamodb: CallTimeouts::resolve("dynamodb", &n.dynamodb, d.dynamodb)?,
            s3: CallTimeouts::resolve("s3", &n.s3, d.s3)?,
        };
        Ok(policy)
    }
}

impl CallTimeouts {
    fn resolve(
        service: &str,
        c: &CallTimeoutsConfig,
        default: CallTimeouts,
    ) -> Result<Self, ConfigError> {
        let attempt_key = format!("network.{service}.attempt_timeout");
        let operation_key = format!("network.{service}.operation_timeout");
        let attempt = duration(&attempt_key, c.attempt_timeout.as_deref(), default.attempt)?;
        // An operation bound left unset follows a larger attempt bound (three attempts).
        let operation = match c.operation_timeout.as_deref() {
            None => default.operation.max(attempt * 3),
            given => duration(&operation_key, given, default.operation)?,
        };
        let fmt = humantime::format_duration;
        if operation < attempt {
            return Err(invalid(
                &operation_key,
                format!(
                    "{} is shorter than {attempt_key} ({})",
                    fmt(operation),
                    fmt(attempt)
                ),
                "the whole call includes its attempts: use at least the attempt timeout (three times it allows two retries)",
            ));
        }
        Ok(CallTimeouts { attempt, operation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<NetworkPolicy, ConfigError> {
        let n: NetworkConfig = toml::from_str(toml_text).unwrap();
        NetworkPolicy::resolve(&n)
    }

    #[test]
    fn unset_keys_take_the_defaults_and_a_longer_attempt_stretches_the_operation() {
        assert_eq!(parse("").unwrap(), NetworkPolicy::default());
        let p = parse("[kinesis]\nattempt_timeout = \"20s\"").unwrap();
        assert_eq!(p.kinesis.attempt, secs(20));
        assert_eq!(p.kinesis.operation, secs(60), "three attempts' worth");
        assert_eq!(p.dynamodb, NetworkPolicy::default().dynamodb);
    }

    #[test]
    fn bounds_that_contradict_each_other_are_refused_naming_the_key() {
        let e = parse("[dynamodb]\nattempt_timeout = \"10s\"\noperation_timeout = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.dynamodb.operation_timeout"), "{e}");
        let e = parse("connect_timeout = \"0s\"").unwrap_err().to_string();
        assert!(e.contains("network.connect_timeout"), "{e}");
        let e = parse("[s3]\nattempt_timeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.s3.attempt_timeout"), "{e}");
    }
}
