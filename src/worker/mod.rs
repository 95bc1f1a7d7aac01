//! The worker: the lease coordinator loop (sync shards into leases, renew, take) and one
//! reader task per held lease, feeding the three table sinks.
//!
//! Data flow: lease taken -> recovery (table txn version vs lease `batch_version`) ->
//! shard reader (`shard.rs`) -> clean -> chunk -> sink (commit, then checkpoint). Shutdown: stop
//! reading, flush, commit, checkpoint, release every lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::progress::RunProgress;

use crate::aws::{AwsClients, ServiceError};
use crate::config::{ReadMode, Settings};
use crate::delta::DeltaError;
use crate::lease::{LeaseError, LeaseTable};
use crate::sink::SinkError;

mod coordinator;
mod recovery;
mod shard;
mod source;
mod stall;
mod sync;

use coordinator::Coordinator;
pub use sync::{sync_shards, Listing};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Kinesis(#[from] ServiceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("recovery of {lease}: {message}")]
    Recovery { lease: String, message: String },
}

/// How `run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Drain what is in the streams now, commit, checkpoint, release and return.
    pub available_now: bool,
    /// This worker's identity in the lease table; unique per process.
    pub worker_id: String,
    /// How long a graceful shutdown may take before the worker gives up waiting.
    pub shutdown_deadline: Duration,
    /// Live counters, for whoever runs the worker (the demo waits on them).
    pub progress: Arc<RunProgress>,
    /// Crash tests only: abort at a chosen point of a flush.
    pub fault: Option<crate::fault::Fault>,
    /// Readiness signals for `/readyz`, when served.
    pub health: Option<Arc<crate::telemetry::Health>>,
}

/// What a run did, for the summary.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub records_read: u64,
    /// Rows committed per table name (cleaned and rejects tables).
    pub rows: BTreeMap<String, u64>,
    pub commits: u64,
    pub elapsed: Duration,
}

/// A unique worker id: host, pid and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// What every task of one worker shares.
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) aws: AwsClients,
    pub(super) leases: LeaseTable,
    pub(super) me: String,
    pub(super) progress: Arc<RunProgress>,
    pub(super) budget: Arc<crate::sink::budget::MemoryBudget>,
    /// Fault tests only: fail a reader at a chosen point.
    pub(super) fault: Option<crate::fault::Fault>,
    /// Fan-out: the registered consumer (ARN) of each stream read by fan-out; streams not
    /// in it are polled.
    pub(super) consumers: BTreeMap<String, String>,
    /// Lease keys of the shards the last listing saw closed (kept by the coordinator).
    pub(super) closed_shards: tokio::sync::watch::Sender<std::collections::HashSet<String>>,
    /// Readiness signals for `/readyz`, when served (readers report stalls there).
    pub(super) health: Option<Arc<crate::telemetry::Health>>,
}

/// Runs the worker until `shutdown` is cancelled or, with `available_now`, until every
/// shard it could take has been drained and committed.
pub async fn run(
    settings: Settings,
    aws: AwsClients,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunSummary, WorkerError> {
    let started = Instant::now();
    let leases = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    leases.ensure_exists(Duration::from_secs(60)).await?;
    let budget = crate::sink::budget::MemoryBudget::new(settings.flush.max_buffered_bytes);
    let consumers = match settings.reader.mode {
        ReadMode::Polling => BTreeMap::new(),
        ReadMode::FanOut => {
            let r = &settings.reader;
            crate::fanout::consumer::consumers_for_run(
                &aws.kinesis,
                settings.streams.values().map(String::as_str),
                &r.consumer_name,
                r.fallback_to_polling,
            )
            .await?
        }
    };
    let shared = Arc::new(Shared {
        settings,
        aws,
        leases,
        me: opts.worker_id.clone(),
        progress: opts.progress.clone(),
        budget,
        fault: opts.fault.clone(),
        consumers,
        closed_shards: tokio::sync::watch::Sender::new(Default::default()),
        health: opts.health.clone(),
    });
    // The bound a stall alert compares the shards' read age with (docs/operations.md).
    metrics::gauge!("pinstream_reader_stall_timeout_seconds")
        .set(shared.settings.reader.stall_timeout.as_secs_f64());
    let mut c = Coordinator::start(shared, opts).await?;
    // Compaction and vacuum on a schedule, beside the sinks (never inside a flush), of the
    // tables whose maintenance this worker owns.
    let maintenance_stop = CancellationToken::new();
    let maintenance_task = crate::maintenance::spawn_scheduled(
        &c.shared.settings,
        maintenance_stop.clone(),
        c.maintenance_owned.subscribe(),
    );
    let listing = sync_shards(&c.shared.aws, &c.shared.leases, &c.shared.settings).await?;
    c.set_listing(listing);
    tracing::info!(worker_id = %c.shared.me, lease_table = %c.shared.leases.name(), available_now = c.opts.available_now, "worker started");
    let outcome = c.coordinate(&shutdown).await;
    maintenance_stop.cancel();
    let summary = c.stop(started, outcome).await;
    if let Some(t) = maintenance_task {
        let _ = t.await;
    }
    summary
}
