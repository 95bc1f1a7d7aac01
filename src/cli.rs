//! Command-line interface (clap derive). Raw flags only; `main.rs` turns them into
//! validated settings once, at start.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clean::Kind;
use crate::config::Settings;

/// pinstream: Kinesis -> clean -> Delta Lake, exactly once.
///
/// Consumes the pin, geo and user Kinesis streams with any number of workers sharing the
/// shards through a DynamoDB lease table, cleans every record, and appends micro-batches to
/// Delta tables on local disk or S3. AWS region, credentials and endpoints come from the
/// standard AWS chain; set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_KINESIS,
/// AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_S3) to use local emulators.
#[derive(Debug, Parser)]
#[command(name = "pinstream", version, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PINSTREAM_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker: take shard leases, read, clean, commit to Delta, checkpoint.
    ///
    /// Start as many workers as you like with the same application name and lease table:
    /// they share the shards of all three streams. Ctrl-C or SIGTERM stops gracefully
    /// (flush, commit, checkpoint, release leases); a second signal exits at once.
    Run(RunArgs),
    /// Accept records over HTTP as the original project's producers sent them (the API
    /// Gateway Kinesis proxy and the Confluent REST Proxy) and put them into the streams.
    ///
    /// Answers 200 only once Kinesis stored every record of a request. Serves /metrics,
    /// /healthz and /readyz on the same address. SIGTERM stops accepting, answers the
    /// requests in hand and exits.
    Ingest(IngestArgs),
    /// Put synthetic (or replayed) Pinterest records into the streams.
    ///
    /// Synthetic records come as pin/geo/user triples sharing an `ind`, with the real data's
    /// formats and dirty values; --dirty-rate adds malformed records. --from replays NDJSON.
    Produce(ProduceArgs),
    /// Show every lease: stream, shard, owner, checkpoint, lag, records/s.
    Status(StatusArgs),
    /// List the enhanced fan-out consumers registered on the streams; with --register or
    /// --deregister, register (once, waiting until ACTIVE) or remove the one named
    /// --consumer-name. Workers never deregister on their own: other workers use it.
    Consumers(ConsumersArgs),
    /// Table health on demand: a log checkpoint and log cleanup for every table, and with
    /// --vacuum a vacuum of data files no longer referenced. Safe while workers append.
    Maintain(MaintainArgs),
    /// Run SQL over the tables (DataFusion): pin, geo, user and the *_rejects tables.
    ///
    /// Example: pinstream query "SELECT category, COUNT(*) FROM pin GROUP BY 1 ORDER BY 2 DESC"
    Query(QueryArgs),
    /// Answer one of the analysts' questions (the original project's tasks 4 to 11).
    ///
    /// `pinstream report --list` lists them.
    Report(ReportArgs),
    /// Measure: local stack, producer at a rate, 1..N worker processes; throughput,
    /// arrival-to-commit latency, worker peak RSS and CPU, files written, exactly-once check.
    ///
    /// Exits 1 if a record is missing or duplicated in the tables.
    Loadtest(LoadtestArgs),
    /// Run the whole job locally: emulators, streams, producer, worker, summary.
    ///
    /// Starts kinesalite and dynalite on loopback (installing them on first use), creates
    /// run-specific streams and a lease table, produces records while a worker consumes
    /// them into Delta tables on local disk, prints what landed, and stops the emulators it
    /// started.
    Demo(DemoArgs),
}

/// Settings shared by commands that address the pipeline (flags win over the config file).
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, env = "PINSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Application name: names the lease table and the Delta txn app ids [default: pinstream].
    #[arg(long = "app", env = "PINSTREAM_APP")]
    pub application: Option<String>,
    /// Stream name of a kind, as KIND=NAME (KIND: pin, geo, user); repeatable [default: the kind's name].
    #[arg(long = "stream", value_name = "KIND=NAME", value_parser = Settings::parse_stream_flag)]
    pub streams: Vec<(Kind, String)>,
    /// DynamoDB lease table (default: the application name followed by -leases).
    #[arg(long, env = "PINSTREAM_LEASE_TABLE")]
    pub lease_table: Option<String>,
    /// Where the Delta tables live: a local directory or s3://bucket/prefix [default: pinstream-data/tables].
    #[arg(long, value_name = "PATH_OR_S3_URI", env = "PINSTREAM_TABLE_ROOT")]
    pub table_root: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Drain what is in the streams now, commit, checkpoint, release the leases and exit 0.
    #[arg(long)]
    pub available_now: bool,
    /// How shards are read: polling (GetRecords) or fan-out (SubscribeToShard through the
    /// registered consumer `reader.consumer_name`) [default: `reader.mode`, else polling].
    #[arg(long, value_name = "MODE", value_parser = crate::config::ReadMode::parse)]
    pub reader: Option<crate::config::ReadMode>,
    /// This worker's id in the lease table [default: host-pid-random].
    #[arg(long, env = "PINSTREAM_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How long a graceful shutdown may take, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 0.0.0.0:9464.
    #[arg(long, env = "PINSTREAM_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Crash tests only: abort at `POINT[:N]` of a flush (before_commit, between_commits,
    /// after_commit, after_checkpoint); `POINT:N:fail` fails that flush instead.
    #[arg(long, hide = true, value_parser = crate::fault::Fault::parse)]
    pub fault: Option<crate::fault::Fault>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Address to serve on, e.g. 0.0.0.0:8080 (port 0: any free port, logged at start).
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "PINSTREAM_INGEST_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    /// How long answering the requests in hand may take after the signal, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Records per stream to send (synthetic: triples). Default: until --duration, the end
    /// of the replay files, or Ctrl-C.
    #[arg(long)]
    pub count: Option<u64>,
    /// Target records per second over all streams (steady pacing). Default: flat out.
    #[arg(long, value_parser = crate::config::parse_rate)]
    pub rate: Option<f64>,
    /// Stop after this long, e.g. 30s or 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Seed of the synthetic generator (same seed, same records).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of synthetic records replaced by malformed ones (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = crate::config::parse_share)]
    pub dirty_rate: f64,
    /// Replay NDJSON files instead of generating, as KIND=FILE; repeatable.
    #[arg(long = "from", value_name = "KIND=FILE", value_parser = parse_from)]
    pub from: Vec<(Kind, PathBuf)>,
    /// With --from: start the files over when they end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Use this partition key for every record (default: spread over all shards).
    #[arg(long)]
    pub partition_key: Option<String>,
    /// Pack up to N user records into one KPL aggregated record (readable by pinstream and
    /// by the Kinesis Client Library).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "100", value_parser = crate::config::parse_at_least_one)]
    pub aggregate: Option<usize>,
    /// PutRecords calls in flight per stream.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Create missing streams with this many shards first.
    #[arg(long, value_name = "SHARDS")]
    pub create_streams: Option<i32>,
    /// Send through an HTTP gateway in front of the streams (`pinstream ingest`, or the
    /// original API Gateway) instead of Kinesis: PUT URL/streams/{stream}/records per batch,
    /// e.g. http://127.0.0.1:8080/test. The report then counts requests and their latency.
    #[arg(long, value_name = "URL", conflicts_with_all = ["aggregate", "create_streams"])]
    pub via_http: Option<String>,
    /// With --via-http: the API key to send as x-api-key.
    #[arg(
        long,
        env = "PINSTREAM_INGEST_API_KEY",
        hide_env_values = true,
        requires = "via_http"
    )]
    pub api_key: Option<String>,
    /// Final report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print JSON (an array of leases) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConsumersArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The consumer's name [default: `reader.consumer_name`, else the application name].
    #[arg(long)]
    pub consumer_name: Option<String>,
    /// Register the consumer on every stream (if not registered yet) and wait until ACTIVE.
    #[arg(long, conflicts_with = "deregister")]
    pub register: bool,
    /// Deregister the consumer from every stream and wait until it is gone.
    #[arg(long)]
    pub deregister: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Also vacuum data files removed from the tables longer ago than this (e.g. 7d; the
    /// tables refuse less than their own minimum, 7 days by default).
    #[arg(long, value_name = "RETENTION", value_parser = humantime::parse_duration)]
    pub vacuum: Option<std::time::Duration>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

/// Output and time travel, shared by `query` and `report`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::read::query::Format::Table)]
    pub format: crate::read::query::Format,
    /// Read the tables as of a version (e.g. 12) or an RFC 3339 time (e.g. 2026-11-21T10:00:00Z).
    #[arg(long, value_name = "VERSION_OR_TIME", value_parser = crate::read::query::AsOf::parse)]
    pub as_of: Option<crate::read::query::AsOf>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The SQL statement. Table names: pin, geo, "user" (quoted: USER is an SQL keyword),
    /// pin_rejects, geo_rejects, user_rejects.
    pub sql: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// List the reports, one line each, and exit.
    #[arg(long, conflicts_with = "name")]
    pub list: bool,
    /// The report to run (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Shards per stream.
    #[arg(long, default_value_t = 2)]
    pub shards: i32,
    /// Records per second over all three streams [default: flat out].
    #[arg(long, value_parser = crate::config::parse_rate)]
    pub rate: Option<f64>,
    /// How long the producer runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Share of malformed records [default: 0.01; with --backlog 0, so that the pandas
    /// baseline reads the file at its fastest].
    #[arg(long, value_parser = crate::config::parse_share)]
    pub dirty_rate: Option<f64>,
    /// Where the run's tables, worker logs and the emulators' state go.
    #[arg(long, default_value = "pinstream-data")]
    pub data_dir: PathBuf,
    /// Give up if the workers have not committed everything this long after the producer stops.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// TOML with flush, lease, reader or maintenance sections (as in a worker's config)
    /// for the workers.
    #[arg(long, value_name = "FILE")]
    pub worker_config: Option<PathBuf>,
    /// Fault run: while the producer runs, kill a random worker with SIGKILL every
    /// --kill-every and start a replacement; workers compact every 3s (files of any age),
    /// fail over within 3s and reach Kinesis and DynamoDB through fault proxies that
    /// delay, swallow and reset answers (--network-faults), unless --worker-config says
    /// otherwise for the settings. The run fails unless
    /// every record is in its table exactly once and every closed shard was read to its end.
    #[arg(long)]
    pub chaos: bool,
    /// With --chaos: how often a worker is killed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "chaos")]
    pub kill_every: std::time::Duration,
    /// With --chaos: split the first open shard of every stream halfway through the run.
    #[arg(long, requires = "chaos")]
    pub split: bool,
    /// With --chaos: the share of the answer chunks from Kinesis and DynamoDB that the
    /// workers' fault proxies delay by 1.5 s (half of them), swallow (a quarter: the
    /// connection stays open and silent) or reset (a quarter); 0 turns network faults off.
    #[arg(long, default_value = "0.02", value_parser = crate::config::parse_share, requires = "chaos")]
    pub network_faults: f64,
    /// How the workers read: polling (on kinesalite) or fan-out (on kinesis-local, the
    /// local engine with enhanced fan-out; it stores a few hundred records/s at most, so
    /// keep --rate low).
    #[arg(long, value_name = "MODE", default_value = "polling", value_parser = crate::config::ReadMode::parse)]
    pub reader: crate::config::ReadMode,
    /// The Kinesis emulator: kinesalite or kinesis-local [default: kinesalite for polling,
    /// kinesis-local for fan-out]. Compare the readers on the same one.
    #[arg(long, value_parser = ["kinesalite", "kinesis-local"])]
    pub emulator: Option<String>,
    /// Drain benchmark instead of a load: put N generated pin records into the pin stream
    /// (--shards shards) first, then drain them with one `pinstream run --available-now`
    /// and report its CPU seconds per million records and peak RSS, measured from outside
    /// (the emulators not counted), beside the pandas baseline (benches/pandas_baseline.py:
    /// pandas + write_deltalake) cleaning the same records, and the ratio of the two.
    #[arg(long, value_name = "N", conflicts_with_all = ["rate", "duration", "workers", "chaos", "reader", "emulator"])]
    pub backlog: Option<u64>,
    /// With --backlog: do not run the pandas baseline.
    #[arg(long, requires = "backlog")]
    pub no_baseline: bool,
    /// Output of the final report.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Records per stream to produce.
    #[arg(long, default_value_t = 2000)]
    pub records: u64,
    /// Shards per stream.
    #[arg(long, default_value_t = 2)]
    pub shards: i32,
    /// Share of malformed records, to show the rejects tables.
    #[arg(long, default_value_t = 0.01, value_parser = crate::config::parse_share)]
    pub dirty_rate: f64,
    /// Where the demo's tables and the emulators' state go.
    #[arg(long, default_value = "pinstream-data")]
    pub data_dir: PathBuf,
    /// Give up if the records have not landed within this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

fn parse_from(s: &str) -> Result<(Kind, PathBuf), String> {
    let (kind, file) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KIND=FILE, e.g. pin=pin.ndjson"))?;
    let kind =
        Kind::parse(kind).ok_or_else(|| format!("`{kind}`: KIND is one of pin, geo, user"))?;
    Ok((kind, PathBuf::from(file)))
}
