//! Configuration: the TOML file (raw, `deny_unknown_fields`) and the `run` flags are merged
//! once, at start, into a validated [`Settings`]; nothing else reads configuration. AWS
//! region, credentials and endpoints are not here: they come from the standard AWS chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::clean::Kind;

mod network;

pub use network::{CallTimeouts, CallTimeoutsConfig, NetworkConfig, NetworkPolicy};

/// A configuration problem, always naming the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}\n  fix: check the key's spelling and type against the README's configuration reference")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}\n  fix: {fix}")]
    Invalid {
        key: String,
        message: String,
        fix: String,
    },
}

fn invalid(key: &str, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// The TOML file as written. Every field is optional; defaults live in [`Settings`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub application: Option<String>,
    pub lease_table: Option<String>,
    pub table_root: Option<String>,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub flush: FlushConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
    #[serde(default)]
    pub reader: ReaderConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub network: NetworkConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    pub checkpoint_interval: Option<u64>,
    pub log_retention: Option<String>,
    pub compact_interval: Option<String>,
    pub compact_min_age: Option<String>,
    pub compact_target_size: Option<u64>,
    pub compact_min_files: Option<usize>,
    pub vacuum_interval: Option<String>,
    pub vacuum_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_request_bytes: Option<usize>,
    pub max_record_bytes: Option<usize>,
    pub max_in_flight_bytes: Option<usize>,
    pub linger: Option<String>,
    pub api_key_file: Option<String>,
    pub stream_admin: Option<bool>,
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    pub pin: Option<String>,
    pub geo: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    pub max_batch_age: Option<String>,
    pub max_batch_rows: Option<usize>,
    pub max_batch_bytes: Option<usize>,
    pub max_buffered_bytes: Option<usize>,
    pub failing_commits_unready_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    pub failover_time: Option<String>,
    pub shard_sync_interval: Option<String>,
    pub cleanup_after: Option<String>,
    pub initial_position: Option<String>,
    pub scan_interval: Option<String>,
    pub balance: Option<String>,
    pub balance_band: Option<f64>,
    pub balance_cooldown: Option<String>,
    pub max_leases_per_worker: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    pub max_records: Option<i32>,
    pub idle_poll_interval: Option<String>,
    pub mode: Option<String>,
    pub consumer_name: Option<String>,
    pub fallback: Option<String>,
    pub quiet_timeout: Option<String>,
    pub stall_timeout: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// Flag values of `pinstream run` that override the file (flags win).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub application: Option<String>,
    pub streams: Vec<(Kind, String)>,
    pub lease_table: Option<String>,
    pub table_root: Option<String>,
    /// `run --reader`: wins over `reader.mode`.
    pub reader_mode: Option<ReadMode>,
}

/// Where the Delta tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRoot {
    Local(PathBuf),
    S3(url::Url),
}

impl TableRoot {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let fix = "use a local directory or s3://bucket/prefix";
        if s.trim().is_empty() {
            return Err(invalid("table_root", "empty", fix));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            if rest.split('/').next().unwrap_or("").is_empty() {
                return Err(invalid("table_root", format!("`{s}` names no bucket"), fix));
            }
            let url = url::Url::parse(s.trim_end_matches('/'))
                .map_err(|e| invalid("table_root", e.to_string(), fix))?;
            return Ok(TableRoot::S3(url));
        }
        if s.contains("://") {
            return Err(invalid(
                "table_root",
                format!("`{s}`: only local paths and s3:// are supported"),
                fix,
            ));
        }
        Ok(TableRoot::Local(PathBuf::from(s)))
    }

    /// Location of one table under the root, as a string delta-rs accepts.
    pub fn table_url(&self, table: &str) -> String {
        match self {
            TableRoot::Local(p) => p.join(table).to_string_lossy().into_owned(),
            TableRoot::S3(u) => format!("{}/{}", u.as_str().trim_end_matches('/'), table),
        }
    }
}

impl std::fmt::Display for TableRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableRoot::Local(p) => write!(f, "{}", p.display()),
            TableRoot::S3(u) => write!(f, "{u}"),
        }
    }
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    AtTimestamp(i64),
}

impl InitialPosition {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "TRIM_HORIZON" => Ok(InitialPosition::TrimHorizon),
            "LATEST" => Ok(InitialPosition::Latest),
            other => other
                .strip_prefix("AT_TIMESTAMP:")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| InitialPosition::AtTimestamp(t.timestamp_millis()))
                .ok_or_else(|| {
                    invalid(
                        "lease.initial_position",
                        format!("`{other}` is not a position"),
                        "use TRIM_HORIZON, LATEST or AT_TIMESTAMP:<RFC 3339 time>",
                    )
                }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FlushPolicy {
    pub max_batch_age: Duration,
    pub max_batch_rows: usize,
    pub max_batch_bytes: usize,
    /// Worker-wide memory budget: bytes of cleaned Arrow data held between the readers and
    /// the commits, all tables together.
    pub max_buffered_bytes: usize,
    /// Commits may fail (and be retried) for this long before `/readyz` answers 503.
    pub failing_commits_unready_after: Duration,
}

#[derive(Debug, Clone)]
pub struct LeasePolicy {
    pub failover_time: Duration,
    /// How often each worker scans the lease table (takes free, expired and stolen
    /// leases); renewals run on their own every `failover_time / 3`.
    pub scan_interval: Duration,
    pub shard_sync_interval: Duration,
    /// A finished lease whose shard no longer exists in the stream is deleted this long
    /// after a worker first saw the shard gone.
    pub cleanup_after: Duration,
    pub initial_position: InitialPosition,
    /// How workers share the shards: by load (bytes/s) or by count.
    pub balance: crate::lease::BalancePolicy,
}

/// Delta table health.
#[derive(Debug, Clone)]
pub struct MaintenancePolicy {
    /// Write a log checkpoint every this many commits (0: never).
    pub checkpoint_interval: u64,
    /// Log files older than this are removed when a checkpoint is written.
    pub log_retention: Duration,
    /// How often a worker compacts the tables it writes to; `None`: never.
    pub compact_interval: Option<Duration>,
    /// Files younger than this are left out of compaction.
    pub compact_min_age: Duration,
    /// Files at or above this many bytes are left alone; compaction writes files of about
    /// this size.
    pub compact_target_size: u64,
    /// Compact only when at least this many files qualify.
    pub compact_min_files: usize,
    /// How often a worker vacuums the tables it writes to; `None` (the default): never.
    pub vacuum_interval: Option<Duration>,
    /// Vacuum deletes files removed from the table longer ago than this.
    pub vacuum_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct ReaderPolicy {
    pub max_records: i32,
    pub idle_poll_interval: Duration,
    /// Polling (GetRecords) or enhanced fan-out (SubscribeToShard).
    pub mode: ReadMode,
    /// The registered stream consumer fan-out reads through (default: the application).
    pub consumer_name: String,
    /// Fan-out only: poll a stream whose consumer cannot be registered (limit reached, no
    /// permission) instead of refusing to start.
    pub fallback_to_polling: bool,
    /// Fan-out only: a subscription without any event this long is taken as half-open,
    /// dropped and renewed (Kinesis sends an event at least every 5 s, even when idle).
    pub quiet_timeout: Duration,
    /// A reader whose calls have all failed for this long says so (a warning, `/readyz`,
    /// `pinstream status`); for twice this long, it hands its lease back.
    pub stall_timeout: Duration,
}

/// How the shard readers get records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// GetRecords, shared with every other polling consumer of the shard.
    Polling,
    /// SubscribeToShard through a registered consumer: its own throughput, records pushed.
    FanOut,
}

impl ReadMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "polling" => Ok(ReadMode::Polling),
            "fan-out" => Ok(ReadMode::FanOut),
            other => Err(format!("`{other}`: write \"polling\" or \"fan-out\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Polling => "polling",
            ReadMode::FanOut => "fan-out",
        }
    }
}

/// Validated settings of one worker.
/// `pinstream ingest`: the HTTP entry points in front of the streams.
#[derive(Debug, Clone)]
pub struct IngestPolicy {
    /// Largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// Largest record (its data and partition key), at most Kinesis's 1 MiB (413 above).
    pub max_record_bytes: usize,
    /// Request bytes being stored at once, all requests together (429 when full).
    pub max_in_flight_bytes: usize,
    /// How long a PutRecords batch waits for records of other requests before it is sent.
    pub linger: Duration,
    /// A file holding the API key (else `PINSTREAM_INGEST_API_KEY`, else no key).
    pub api_key_file: Option<PathBuf>,
    /// Whether `POST` / `DELETE /streams/{stream}` create and delete streams.
    pub stream_admin: bool,
    /// REST Proxy topics mapped to kinds, beyond the rule "the part after the last dot".
    pub topics: BTreeMap<String, Kind>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub application: String,
    pub streams: BTreeMap<Kind, String>,
    pub lease_table: String,
    pub table_root: TableRoot,
    pub flush: FlushPolicy,
    pub lease: LeasePolicy,
    pub reader: ReaderPolicy,
    pub maintenance: MaintenancePolicy,
    pub ingest: IngestPolicy,
    pub network: NetworkPolicy,
}

pub const DEFAULT_TABLE_ROOT: &str = "pinstream-data/tables";

/// The shortest `maintenance.log_retention`: six times the time a sink's appender trusts
/// the log version it last knew (`delta::Appender`).
const MIN_LOG_RETENTION: Duration = Duration::from_secs(3600);

fn duration(key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(invalid(
                key,
                "must be above zero",
                "write a duration such as \"5s\" or \"500ms\"",
            )),
            Err(e) => Err(invalid(
                key,
                format!("`{s}`: {e}"),
                "write a duration such as \"5s\" or \"500ms\"",
            )),
        },
    }
}

/// A share between 0 and 1, as `--dirty-rate` takes it (every command that has the flag
/// refuses the same values, with the same message).
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a share: give a number from 0 to 1, e.g. 0.01"
        )),
    }
}

/// Records per second, above zero, as `--rate` takes it.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a rate: give records per second above zero, e.g. 1000"
        )),
    }
}

/// A count of at least one, as `--aggregate` takes it.
pub fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("`{s}` is not a count of at least 1, e.g. 100")),
    }
}

/// A duration that may be zero (`"0s"`).
fn duration_or_zero(
    key: &str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v.map(humantime::parse_duration) {
        Some(Ok(d)) if d.is_zero() => Ok(d),
        _ => duration(key, v, default),
    }
}

/// An interval that `"off"` disables.
fn interval(
    key: &str,
    v: Option<&str>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match v {
        Some("off") => Ok(None),
        Some(s) => duration(key, Some(s), Duration::ZERO)
            .map(Some)
            .map_err(|_| {
                invalid(
                    key,
                    format!("`{s}` is not a duration"),
                    "write a duration such as \"10m\" or \"24h\", or \"off\"",
                )
            }),
        None => Ok(default),
    }
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    key: &str,
    v: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match v {
        Some(n) if n <= T::default() => Err(invalid(
            key,
            format!("{n} is not above zero"),
            "use a positive number",
        )),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// Kinesis stream names: 1-128 of `[a-zA-Z0-9_.-]`.
fn valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// DynamoDB table names: 3-255 of `[a-zA-Z0-9_.-]`.
fn valid_table_name(s: &str) -> bool {
    (3..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Settings {
    /// Merges the file and the flags (flags win) and checks every value once, naming the
    /// key and the fix of the first one that is wrong.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let application = resolve_application(flags.application.or(file.application))?;
        let streams = resolve_streams(&file.streams, flags.streams)?;
        let lease_table = resolve_lease_table(
            flags
                .lease_table
                .or(file.lease_table)
                .unwrap_or_else(|| format!("{application}-leases")),
        )?;
        let table_root = TableRoot::parse(
            &flags
                .table_root
                .or(file.table_root)
                .unwrap_or_else(|| DEFAULT_TABLE_ROOT.into()),
        )?;
        let reader = ReaderPolicy::resolve(&file.reader, &application, flags.reader_mode)?;
        let network = NetworkPolicy::resolve(&file.network)?;
        check_stall_timeout(&reader, &network)?;
        Ok(Settings {
            application,
            streams,
            lease_table,
            table_root,
            flush: FlushPolicy::resolve(&file.flush)?,
            lease: LeasePolicy::resolve(&file.lease)?,
            reader,
            maintenance: MaintenancePolicy::resolve(&file.maintenance)?,
            ingest: IngestPolicy::resolve(&file.ingest)?,
            network,
        })
    }

    /// Parses `KIND=NAME` of `--stream`.
    pub fn parse_stream_flag(s: &str) -> Result<(Kind, String), String> {
        let (kind, name) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected KIND=NAME, e.g. pin=my-pin-stream"))?;
        let kind =
            Kind::parse(kind).ok_or_else(|| format!("`{kind}`: KIND is one of pin, geo, user"))?;
        Ok((kind, name.to_owned()))
    }
}

/// A reader is stalled only once a call could have ended (a Kinesis call, or a quiet
/// subscription) and been retried.
fn check_stall_timeout(reader: &ReaderPolicy, network: &NetworkPolicy) -> Result<(), ConfigError> {
    let longest_call = network.kinesis.operation.max(reader.quiet_timeout);
    if reader.stall_timeout <= longest_call {
        return Err(invalid(
            "reader.stall_timeout",
            format!(
                "{} is not longer than the longest call a reader waits on ({}: network.kinesis.operation_timeout or reader.quiet_timeout)",
                humantime::format_duration(reader.stall_timeout),
                humantime::format_duration(longest_call)
            ),
            "use more than both (twice the longer is a good start; the default is 60s)",
        ));
    }
    Ok(())
}

fn resolve_application(given: Option<String>) -> Result<String, ConfigError> {
    let application = given.unwrap_or_else(|| "pinstream".into());
    if application.is_empty() || application.contains('/') {
        return Err(invalid(
            "application",
            format!("`{application}`"),
            "use a non-empty name without `/`",
        ));
    }
    Ok(application)
}

/// Each kind's stream: the flag, else the file, else the kind's name.
fn resolve_streams(
    file: &StreamsConfig,
    flags: Vec<(Kind, String)>,
) -> Result<BTreeMap<Kind, String>, ConfigError> {
    let mut streams: BTreeMap<Kind, String> = BTreeMap::new();
    for kind in Kind::ALL {
        let from_file = match kind {
            Kind::Pin => &file.pin,
            Kind::Geo => &file.geo,
            Kind::User => &file.user,
        };
        streams.insert(
            kind,
            from_file.clone().unwrap_or_else(|| kind.name().to_owned()),
        );
    }
    streams.extend(flags);
    for (kind, name) in &streams {
        if !valid_stream_name(name) {
            return Err(invalid(
                &format!("streams.{kind}"),
                format!("`{name}` is not a Kinesis stream name"),
                "use 1-128 letters, digits, `_`, `.` or `-`",
            ));
        }
    }
    Ok(streams)
}

fn resolve_lease_table(lease_table: String) -> Result<String, ConfigError> {
    if !valid_table_name(&lease_table) {
        return Err(invalid(
            "lease_table",
            format!("`{lease_table}` is not a DynamoDB table name"),
            "use 3-255 letters, digits, `_`, `.` or `-`",
        ));
    }
    Ok(lease_table)
}

impl FlushPolicy {
    fn resolve(f: &FlushConfig) -> Result<Self, ConfigError> {
        Ok(FlushPolicy {
            max_batch_age: duration(
                "flush.max_batch_age",
                f.max_batch_age.as_deref(),
                Duration::from_secs(5),
            )?,
            max_batch_rows: positive("flush.max_batch_rows", f.max_batch_rows, 200_000)?,
            max_batch_bytes: positive("flush.max_batch_bytes", f.max_batch_bytes, 16 << 20)?,
            max_buffered_bytes: positive(
                "flush.max_buffered_bytes",
                f.max_buffered_bytes,
                32 << 20,
            )?,
            failing_commits_unready_after: duration_or_zero(
                "flush.failing_commits_unready_after",
                f.failing_commits_unready_after.as_deref(),
                Duration::from_secs(120),
            )?,
        })
    }
}

impl LeasePolicy {
    fn resolve(l: &LeaseConfig) -> Result<Self, ConfigError> {
        let failover_time = duration(
            "lease.failover_time",
            l.failover_time.as_deref(),
            Duration::from_secs(10),
        )?;
        let scan_interval = duration(
            "lease.scan_interval",
            l.scan_interval.as_deref(),
            failover_time,
        )?;
        if scan_interval > failover_time {
            return Err(invalid(
                "lease.scan_interval",
                format!(
                    "{} is longer than lease.failover_time",
                    humantime::format_duration(scan_interval)
                ),
                "use lease.failover_time or less: a dead worker's leases are taken within failover_time plus one scan",
            ));
        }
        Ok(LeasePolicy {
            failover_time,
            scan_interval,
            shard_sync_interval: duration(
                "lease.shard_sync_interval",
                l.shard_sync_interval.as_deref(),
                Duration::from_secs(60),
            )?,
            cleanup_after: duration(
                "lease.cleanup_after",
                l.cleanup_after.as_deref(),
                Duration::from_secs(3600),
            )?,
            initial_position: InitialPosition::parse(
                l.initial_position.as_deref().unwrap_or("TRIM_HORIZON"),
            )?,
            balance: resolve_balance(l)?,
        })
    }
}

fn resolve_balance(l: &LeaseConfig) -> Result<crate::lease::BalancePolicy, ConfigError> {
    use crate::lease::{BalanceMode, BalancePolicy};
    let d = BalancePolicy::default();
    let mode = match l.balance.as_deref() {
        None | Some("load") => BalanceMode::Load,
        Some("count") => BalanceMode::Count,
        Some(other) => {
            return Err(invalid(
                "lease.balance",
                format!("`{other}`"),
                "write \"load\" (bytes/s read, the default) or \"count\"",
            ))
        }
    };
    let band = l.balance_band.unwrap_or(d.band);
    if !(0.0..1.0).contains(&band) || band.is_nan() {
        return Err(invalid(
            "lease.balance_band",
            format!("{band}"),
            "use a share from 0 to below 1, e.g. 0.1",
        ));
    }
    Ok(BalancePolicy {
        mode,
        band,
        max_leases: match l.max_leases_per_worker {
            None => None,
            Some(n) => Some(positive("lease.max_leases_per_worker", Some(n), n)?),
        },
        cooldown: duration_or_zero(
            "lease.balance_cooldown",
            l.balance_cooldown.as_deref(),
            d.cooldown,
        )?,
    })
}

impl ReaderPolicy {
    fn resolve(
        r: &ReaderConfig,
        application: &str,
        mode_flag: Option<ReadMode>,
    ) -> Result<Self, ConfigError> {
        let max_records = positive("reader.max_records", r.max_records, 10_000)?;
        if max_records > 10_000 {
            return Err(invalid(
                "reader.max_records",
                format!("{max_records} is above the GetRecords limit"),
                "use 1 to 10000",
            ));
        }
        let mode = match (mode_flag, r.mode.as_deref()) {
            (Some(m), _) => m,
            (None, None) => ReadMode::Polling,
            (None, Some(m)) => ReadMode::parse(m).map_err(|e| {
                invalid("reader.mode", e, "polling reads with GetRecords; fan-out subscribes through a registered consumer")
            })?,
        };
        let fallback_to_polling = match r.fallback.as_deref() {
            None | Some("none") => false,
            Some("polling") => true,
            Some(other) => {
                return Err(invalid(
                    "reader.fallback",
                    format!("`{other}`"),
                    "write \"polling\" (poll a stream whose consumer cannot be registered) or \"none\" (refuse to start)",
                ))
            }
        };
        let consumer_name = r
            .consumer_name
            .clone()
            .unwrap_or_else(|| application.to_owned());
        if mode == ReadMode::FanOut && !valid_stream_name(&consumer_name) {
            return Err(invalid(
                "reader.consumer_name",
                format!("`{consumer_name}`"),
                "use 1-128 letters, digits, `_`, `.` or `-`",
            ));
        }
        let quiet_timeout = duration(
            "reader.quiet_timeout",
            r.quiet_timeout.as_deref(),
            Duration::from_secs(30),
        )?;
        if quiet_timeout < Duration::from_secs(2) || quiet_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "reader.quiet_timeout",
                format!("{} is out of range", humantime::format_duration(quiet_timeout)),
                "use 2s to 5m; 10s or more on AWS (Kinesis sends an event at least every 5 s, so shorter renews healthy subscriptions of idle shards), and at most a subscription's 5 minutes (longer leaves a half-open one stalled)",
            ));
        }
        Ok(ReaderPolicy {
            max_records,
            idle_poll_interval: duration(
                "reader.idle_poll_interval",
                r.idle_poll_interval.as_deref(),
                Duration::from_millis(1000),
            )?,
            mode,
            consumer_name,
            fallback_to_polling,
            quiet_timeout,
            stall_timeout: duration(
                "reader.stall_timeout",
                r.stall_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
        })
    }
}

impl MaintenancePolicy {
    fn resolve(m: &MaintenanceConfig) -> Result<Self, ConfigError> {
        let maintenance = MaintenancePolicy {
            checkpoint_interval: m.checkpoint_interval.unwrap_or(100),
            log_retention: duration(
                "maintenance.log_retention",
                m.log_retention.as_deref(),
                Duration::from_secs(30 * 86_400),
            )?,
            compact_interval: interval(
                "maintenance.compact_interval",
                m.compact_interval.as_deref(),
                Some(Duration::from_secs(600)),
            )?,
            compact_min_age: duration_or_zero(
                "maintenance.compact_min_age",
                m.compact_min_age.as_deref(),
                Duration::from_secs(300),
            )?,
            compact_target_size: positive(
                "maintenance.compact_target_size",
                m.compact_target_size,
                64 * 1024 * 1024,
            )?,
            compact_min_files: positive("maintenance.compact_min_files", m.compact_min_files, 10)?,
            vacuum_interval: interval(
                "maintenance.vacuum_interval",
                m.vacuum_interval.as_deref(),
                None,
            )?,
            vacuum_retention: duration(
                "maintenance.vacuum_retention",
                m.vacuum_retention.as_deref(),
                Duration::from_secs(7 * 86_400),
            )?,
        };
        if maintenance.log_retention < MIN_LOG_RETENTION {
            return Err(invalid(
                "maintenance.log_retention",
                format!(
                    "{} is below the 1-hour minimum (a writer that knew the latest log version within the last 10 minutes reads the entries after it without listing the log; none of them may be cleaned meanwhile)",
                    humantime::format_duration(maintenance.log_retention)
                ),
                "use 1h or more (time travel reaches back this far; 30d is the default)",
            ));
        }
        if maintenance.vacuum_retention < Duration::from_secs(7 * 86_400) {
            return Err(invalid(
                "maintenance.vacuum_retention",
                format!(
                    "{} is below the tables' 7-day minimum (readers and time travel within it would break)",
                    humantime::format_duration(maintenance.vacuum_retention)
                ),
                "use 7d or more",
            ));
        }
        Ok(maintenance)
    }
}

impl IngestPolicy {
    fn resolve(i: &IngestConfig) -> Result<Self, ConfigError> {
        let max_record_bytes = positive("ingest.max_record_bytes", i.max_record_bytes, 1 << 20)?;
        if max_record_bytes > 1 << 20 {
            return Err(invalid(
                "ingest.max_record_bytes",
                format!("{max_record_bytes} is above Kinesis's 1 MiB record limit"),
                "use 1048576 or less",
            ));
        }
        let mut topics = BTreeMap::new();
        for (topic, kind) in &i.topics {
            let k = Kind::parse(kind).ok_or_else(|| {
                invalid(
                    &format!("ingest.topics.{topic}"),
                    format!("`{kind}` is not a kind"),
                    "map the topic to pin, geo or user",
                )
            })?;
            topics.insert(topic.clone(), k);
        }
        Ok(IngestPolicy {
            max_request_bytes: positive("ingest.max_request_bytes", i.max_request_bytes, 10 << 20)?,
            max_record_bytes,
            max_in_flight_bytes: positive(
                "ingest.max_in_flight_bytes",
                i.max_in_flight_bytes,
                64 << 20,
            )?,
            linger: duration_or_zero(
                "ingest.linger",
                i.linger.as_deref(),
                Duration::from_millis(20),
            )?,
            api_key_file: i.api_key_file.clone().map(PathBuf::from),
            stream_admin: i.stream_admin.unwrap_or(false),
            topics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str, flags: Overrides) -> Result<Settings, ConfigError> {
        Settings::resolve(FileConfig::parse(toml, Path::new("t.toml"))?, flags)
    }

    #[test]
    fn defaults() {
        let s = resolve("", Overrides::default()).unwrap();
        assert_eq!(s.application, "pinstream");
        assert_eq!(s.lease_table, "pinstream-leases");
        assert_eq!(s.streams[&Kind::Geo], "geo");
        assert_eq!(s.table_root, TableRoot::Local(DEFAULT_TABLE_ROOT.into()));
        assert_eq!(s.flush.max_batch_age, Duration::from_secs(5));
        // docs/benchmarks.md, "Memory": the budget the drain was measured with.
        assert_eq!(s.flush.max_batch_bytes, 16 << 20);
        assert_eq!(s.flush.max_buffered_bytes, 32 << 20);
        assert_eq!(s.lease.failover_time, Duration::from_secs(10));
    }

    #[test]
    fn a_stall_bound_no_longer_than_a_call_a_reader_waits_on_is_refused() {
        let s = resolve("", Overrides::default()).unwrap();
        assert_eq!(s.reader.stall_timeout, Duration::from_secs(60));
        for toml in [
            "[reader]\nstall_timeout = \"30s\"\n", // = the Kinesis operation timeout
            "[reader]\nstall_timeout = \"40s\"\nquiet_timeout = \"45s\"\n",
            "[reader]\nstall_timeout = \"50s\"\n[network.kinesis]\nattempt_timeout = \"20s\"\n", // 3 attempts: 60 s
        ] {
            let e = resolve(toml, Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("reader.stall_timeout"), "{toml}: {e}");
        }
        assert!(resolve("[reader]\nstall_timeout = \"31s\"\n", Overrides::default()).is_ok());
    }

    #[test]
    fn flags_win_over_the_file() {
        let toml = "application = \"a\"\ntable_root = \"/x\"\n[streams]\npin = \"p1\"\n";
        let flags = Overrides {
            application: Some("b".into()),
            streams: vec![(Kind::Pin, "p2".into())],
            lease_table: None,
            table_root: Some("s3://bucket/pre".into()),
            reader_mode: None,
        };
        let s = resolve(toml, flags).unwrap();
        assert_eq!(s.application, "b");
        assert_eq!(s.lease_table, "b-leases");
        assert_eq!(s.streams[&Kind::Pin], "p2");
        assert_eq!(s.table_root.table_url("pin"), "s3://bucket/pre/pin");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = resolve("[flush]\nmax_batch_rowz = 5\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_batch_rowz"), "{e}");
        let e = resolve("aplication = \"x\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("aplication"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let e = resolve("[flush]\nmax_batch_age = \"soon\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flush.max_batch_age") && e.contains("fix:"),
            "{e}"
        );
        let e = resolve(
            "[lease]\ninitial_position = \"START\"\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lease.initial_position"), "{e}");
        let e = resolve("table_root = \"gs://b/x\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("table_root"), "{e}");
        let e = resolve("[reader]\nmax_records = 20000\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reader.max_records") && e.contains("1 to 10000"),
            "{e}"
        );
        let e = resolve(
            "[maintenance]\nvacuum_retention = \"1d\"\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("maintenance.vacuum_retention") && e.contains("7d or more"),
            "{e}"
        );
        let e = resolve(
            "[maintenance]\nlog_retention = \"5m\"\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("maintenance.log_retention") && e.contains("1h or more"),
            "{e}"
        );
        assert!(resolve(
            "[maintenance]\nvacuum_retention = \"8d\"\n",
            Overrides::default()
        )
        .is_ok());
        assert!(Settings::parse_stream_flag("pins=x").is_err());
        assert_eq!(
            Settings::parse_stream_flag("geo=g1").unwrap(),
            (Kind::Geo, "g1".into())
        );
    }
}
