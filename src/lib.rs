//! pinstream: Kinesis -> clean -> Delta Lake, exactly once, with any number of workers
//! sharing the shards through a DynamoDB lease table.
//!
//! # Layout
//!
//! The modules, in the order a record flows through them:
//!
//! - [`config`]: TOML file + `run` flags -> validated [`config::Settings`], once, at start.
//! - [`aws`]: Kinesis and DynamoDB clients from the standard AWS chain; one error type
//!   that says whether a retry can help.
//! - [`lease`]: the DynamoDB lease table (conditional writes only), expiry by each
//!   worker's own monotonic clock, which leases to take, and [`lease::HeldLease`], the
//!   handle the reader and the sink share, whose keeper task renews, checkpoints and
//!   releases it.
//! - [`kinesis`]: stream administration, shard lineage, and [`kinesis::ShardReader`]
//!   (GetRecords polling with iterator renewal; each answer's records decoded by
//!   pinstream's own reader into one packed [`kinesis::Records`], the rest by the SDK).
//! - [`fanout`]: enhanced fan-out: stream consumers (registered once per fleet; listed and
//!   deregistered by `pinstream consumers`) and one shard's SubscribeToShard reader,
//!   renewed when it ends, fails or goes quiet.
//! - [`kpl`]: splits Kinesis Producer Library aggregates into user records (and builds
//!   them for the producer).
//! - [`clean`]: pure, synchronous operators for pin, geo and user: JSON bytes in, Arrow
//!   rows of the cleaned table or of its rejects table out. Knows nothing of Kinesis,
//!   Delta or DynamoDB.
//! - [`delta`]: Delta tables: open or create, fenced appends (ONE commit per flush with a
//!   `txn` per shard, landing at exactly one version), txn versions and positions for
//!   recovery, the Parquet settings. Used by the sink, maintenance, recovery and queries;
//!   depends on none of them.
//! - [`sink`]: per-table micro-batch buffers flushed by age, rows or bytes (or memory
//!   pressure) through a [`delta::Appender`] per table (appends that neither rebuild the
//!   table's file list nor list its log), then a conditional checkpoint per shard.
//! - [`maintenance`]: Delta log checkpoints, log cleanup and vacuum (after commits and
//!   `pinstream maintain`).
//! - [`worker`]: [`worker::run`] wires the layers above: the coordinator loop
//!   (`worker/coordinator.rs`: take, release, react to readers and sinks that end), where a
//!   taken shard resumes (`worker/recovery.rs`), shards into leases (`worker/sync.rs`), and
//!   one reader task per held lease (`worker/shard.rs`, its records from polling or a
//!   fan-out subscription: `worker/source.rs`); graceful shutdown.
//! - [`backoff`] and [`progress`]: the retry delays readers and sinks share, and the live
//!   counters a run publishes.
//! - [`read`]: the read side: SQL (DataFusion) over the tables, the analysts' questions
//!   as named reports, the lease table's status. Writes nothing.
//! - [`producer`]: synthetic or replayed load into the streams (PutRecords, retries of
//!   failed entries only, pacing).
//! - [`ingest`]: the HTTP entry points of the original project (the API Gateway Kinesis
//!   proxy and the Confluent REST Proxy) in front of the streams, on axum; records of
//!   concurrent requests share the producer's PutRecords calls.
//! - [`local`]: the commands on this machine's emulators: the stack itself, the
//!   one-command demo, and the load test that measures worker processes from outside
//!   (and kills them, with `--chaos`).
//! - [`error`]: the crate's one error type; its kind is the exit code.
//! - [`instrumentation`]: every metric in one list (type, labels, unit, meaning), which
//!   the Prometheus recorder and the docs follow; [`telemetry`]: the `/metrics`,
//!   `/healthz` and `/readyz` endpoints.
//! - [`cli`]: command-line definitions; `main.rs` parses, dispatches and maps errors to
//!   exit codes.
//!
//! Lower layers never call upward: the cleaning operators know nothing of Kinesis or
//! Delta; the lease table knows nothing of cleaning. A shard is checkpointed only after
//! its rows are committed.

#![forbid(unsafe_code)]

pub use error::{Error, ErrorKind};

pub mod aws;
pub mod backoff;
pub mod clean;
pub mod cli;
pub mod config;
pub mod delta;
pub mod error;
pub mod fanout;
pub mod fault;
pub mod ingest;
pub mod instrumentation;
pub mod kinesis;
pub mod kpl;
pub mod lease;
pub mod local;
pub mod maintenance;
pub mod producer;
pub mod progress;
pub mod read;
pub mod sink;
pub mod telemetry;
pub mod worker;
