//! The worker: the lease coordinator loop (sync shards into leases, renew, take) and one
//! reader task per held lease, feeding the three table sinks.
//!
//! Data flow: lease taken -> recovery (table txn version vs lease `batch_version`) ->
//! shard reader (`shard.rs`) -> clean -> chunk -> sink (commit, then checkpoint). Shutdown: stop
//! reading, flush, commit, checkpoint, release every lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTable;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::aws::{AwsClients, ServiceError};
use crate::clean::{self, Kind};
use crate::config::{InitialPosition, Settings};
use crate::kinesis::{self, StartAt};
use crate::lease::{
    self, Checkpoint, ExpiryTracker, HeldLease, Lease, LeaseError, LeaseTable, TakeKind,
};
use crate::sink::delta::{self, DeltaError};
use crate::sink::{SinkError, SinkHandle, TableSink};

mod shard;
use shard::{read_shard, Position, ShardExit};

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

/// Live counters of a running worker.
#[derive(Debug, Default)]
pub struct RunProgress {
    pub records_read: AtomicU64,
    /// Rows committed to cleaned and rejects tables together.
    pub rows_committed: AtomicU64,
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

/// Where a shard without a committed position starts, as stored in a new lease.
fn initial_checkpoint(p: InitialPosition) -> Checkpoint {
    match p {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp(ms) => Checkpoint::AtTimestamp(ms),
    }
}

/// Creates a lease for every shard of every configured stream that has none. Shards whose
/// parents are listed too are children of a reshard: they start at TRIM_HORIZON so nothing
/// between the parent's end and the child's start is skipped.
pub async fn sync_shards(
    aws: &AwsClients,
    leases: &LeaseTable,
    settings: &Settings,
) -> Result<usize, WorkerError> {
    let mut created = 0;
    for stream in settings.streams.values() {
        let shards = kinesis::list_shards(&aws.kinesis, stream).await?;
        let ids: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        for s in &shards {
            let is_child = s.parents.iter().any(|p| ids.contains(p.as_str()));
            let start = if is_child {
                Checkpoint::TrimHorizon
            } else {
                initial_checkpoint(settings.lease.initial_position)
            };
            if leases
                .create_if_absent(stream, &s.shard_id, &s.parents, &start)
                .await?
            {
                tracing::info!(%stream, shard_id = %s.shard_id, parents = ?s.parents, "new shard lease");
                created += 1;
            }
        }
    }
    Ok(created)
}

/// What every task of one worker shares.
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) aws: AwsClients,
    pub(super) leases: LeaseTable,
    pub(super) me: String,
    pub(super) progress: Arc<RunProgress>,
    pub(super) budget: Arc<crate::sink::budget::MemoryBudget>,
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
    let mut sinks: BTreeMap<Kind, SinkHandle> = BTreeMap::new();
    let mut sink_tasks = Vec::new();
    // Separate handles (cleaned, rejects) for recovery reads, so they never wait on a sink.
    let mut recovery_tables: BTreeMap<Kind, (DeltaTable, DeltaTable)> = BTreeMap::new();
    for &kind in settings.streams.keys() {
        let table =
            delta::open_or_create(&settings.table_root, kind.name(), &kind.schema()).await?;
        let rejects_table = delta::open_or_create(
            &settings.table_root,
            kind.rejects_table(),
            &clean::schema::REJECTS,
        )
        .await?;
        recovery_tables.insert(
            kind,
            (
                delta::open_or_create(&settings.table_root, kind.name(), &kind.schema()).await?,
                delta::open_or_create(
                    &settings.table_root,
                    kind.rejects_table(),
                    &clean::schema::REJECTS,
                )
                .await?,
            ),
        );
        let sink = TableSink {
            kind,
            application: settings.application.clone(),
            worker_id: opts.worker_id.clone(),
            table,
            rejects_table,
            leases: leases.clone(),
            policy: settings.flush.clone(),
            progress: opts.progress.clone(),
            fault: opts.fault.clone(),
            maintenance: settings.maintenance.clone(),
            health: opts.health.clone(),
            budget: budget.clone(),
        };
        let (handle, task) = sink.spawn();
        sinks.insert(kind, handle);
        sink_tasks.push(task);
    }
    // Compaction and vacuum on a schedule, beside the sinks (never inside a flush).
    let maintenance_stop = CancellationToken::new();
    let maintenance_task = crate::maintenance::spawn_scheduled(&settings, maintenance_stop.clone());
    let kind_of: HashMap<String, Kind> = settings
        .streams
        .iter()
        .map(|(k, s)| (s.clone(), *k))
        .collect();
    let shared = Arc::new(Shared {
        settings,
        aws,
        leases,
        me: opts.worker_id.clone(),
        progress: opts.progress.clone(),
        budget,
    });
    sync_shards(&shared.aws, &shared.leases, &shared.settings).await?;
    tracing::info!(worker_id = %shared.me, lease_table = %shared.leases.name(), available_now = opts.available_now, "worker started");

    let failover = shared.settings.lease.failover_time;
    let mut tick = tokio::time::interval(failover / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sync = Instant::now() + shared.settings.lease.shard_sync_interval;
    let mut tracker = ExpiryTracker::default();
    let mut held: HashMap<String, Arc<HeldLease>> = HashMap::new();
    // Leases whose recovery failed: lease key -> (retry after, failures). Retried with
    // backoff, never given up: a released lease that nobody retries would stay unread
    // while every other worker sits at its fair share.
    let mut refused: HashMap<String, (Instant, u32)> = HashMap::new();
    // `--available-now`: shards already drained in this run are not taken again.
    let mut drained: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, ShardExit)> = JoinSet::new();
    let readers = CancellationToken::new();

    loop {
        // The cycle's instant: the scheduled tick, so that scans are exactly one period
        // apart on the expiry clock and an expired lease is noticed within one cycle of
        // `failover_time`, not two.
        let cycle_at = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok((key, exit)) => {
                        tracing::debug!(lease = %key, ?exit, "shard task ended");
                        if !matches!(exit, ShardExit::Cancelled) {
                            drained.insert(key);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "shard task panicked"),
                }
                if !(opts.available_now && tasks.is_empty()) {
                    continue;
                }
                Instant::now()
            }
            t = tick.tick() => t,
        };

        renew_all(&shared, &mut held).await;
        if Instant::now() >= next_sync {
            if let Err(e) = sync_shards(&shared.aws, &shared.leases, &shared.settings).await {
                tracing::warn!(error = %e, "shard sync failed; will retry");
            }
            next_sync = Instant::now() + shared.settings.lease.shard_sync_interval;
        }
        if opts.available_now && tasks.is_empty() {
            // Everything taken so far is drained: commit it, hand the leases back, and see
            // whether finishing parents made children ready.
            for s in sinks.values() {
                s.flush().await?;
            }
            release_all(&shared, &mut held).await;
        }
        let all = match shared.leases.scan().await {
            Ok(all) => {
                if let Some(h) = &opts.health {
                    h.lease_scan_ok();
                }
                all
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease scan failed; will retry");
                continue;
            }
        };
        tracker.observe(&all, cycle_at);
        release_finished(&shared, &mut held, &all).await;
        let candidates: Vec<(Lease, TakeKind)> = lease::leases_to_take(
            &all,
            &shared.me,
            &tracker,
            cycle_at,
            failover,
            opts.available_now,
        )
        .into_iter()
        .filter(|(l, _)| {
            refused.get(&l.key).is_none_or(|(at, _)| cycle_at >= *at)
                && !drained.contains(&l.key)
                && kind_of.contains_key(&l.stream)
        })
        .map(|(l, k)| (l.clone(), k))
        .collect();
        for (lease, how) in candidates {
            let Some(&kind) = kind_of.get(&lease.stream) else {
                continue;
            };
            let counter = match shared
                .leases
                .take(
                    &lease.key,
                    &shared.me,
                    lease.counter,
                    lease.owner.as_deref(),
                )
                .await
            {
                Ok(c) => c,
                Err(LeaseError::Lost(_)) => continue, // someone else was faster
                Err(e) => {
                    tracing::warn!(lease = %lease.key, error = %e, "take failed");
                    continue;
                }
            };
            metrics::counter!("pinstream_leases_taken_total", "how" => match how {
                TakeKind::Free => "free",
                TakeKind::Expired => "expired",
                TakeKind::Steal => "stolen",
            })
            .increment(1);
            tracing::info!(lease = %lease.key, previous_owner = lease.owner.as_deref().unwrap_or("-"), how = ?how, "lease taken");
            let handle = Arc::new(HeldLease::new(&lease, counter, &readers));
            let (table, rejects_table) = recovery_tables
                .get_mut(&kind)
                .expect("recovery tables per configured kind");
            match resume_position(&shared, &lease, &handle, table, rejects_table).await {
                Ok(Some((start, rejects_done))) => {
                    refused.remove(&lease.key);
                    held.insert(lease.key.clone(), handle.clone());
                    let sink = sinks[&kind].tx.clone();
                    let span = tracing::info_span!("shard", stream = %lease.stream, shard_id = %lease.shard_id);
                    let shared = shared.clone();
                    let drain = opts.available_now;
                    tasks.spawn(
                        async move {
                            let key = handle.key.clone();
                            (
                                key,
                                read_shard(shared, kind, handle, start, rejects_done, sink, drain)
                                    .await,
                            )
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    // Already at SHARD_END per the table: recorded; give it back.
                    refused.remove(&lease.key);
                    held.insert(lease.key.clone(), handle);
                }
                Err(e) => {
                    let failures = refused.get(&lease.key).map_or(0, |(_, n)| *n) + 1;
                    let wait = refusal_backoff(failover, failures);
                    tracing::error!(lease = %lease.key, error = %e, retry_in = ?wait, "cannot resume this shard; releasing the lease and retrying later");
                    metrics::counter!("pinstream_lease_recovery_failures_total").increment(1);
                    refused.insert(lease.key.clone(), (Instant::now() + wait, failures));
                    let state = handle.state.lock().await;
                    let _ = shared
                        .leases
                        .release(&handle.key, &shared.me, state.counter)
                        .await;
                }
            }
        }
        metrics::gauge!("pinstream_leases_held").set(held.len() as f64);
        if opts.available_now && tasks.is_empty() && held.values().all(|h| h.token.is_cancelled()) {
            break;
        }
    }

    // Graceful stop: stop reading, flush and commit, checkpoint, release.
    readers.cancel();
    maintenance_stop.cancel();
    let deadline = Instant::now() + opts.shutdown_deadline;
    while !tasks.is_empty() {
        if tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_err()
        {
            tracing::warn!("shard tasks did not stop before the shutdown deadline");
            tasks.abort_all();
            break;
        }
    }
    let mut flush_error = None;
    for s in sinks.values() {
        match tokio::time::timeout_at(deadline, s.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => flush_error = Some(e),
            Err(_) => tracing::warn!(
                table = s.kind.name(),
                "flush did not finish before the shutdown deadline"
            ),
        }
    }
    release_all(&shared, &mut held).await;
    let mut summary = RunSummary {
        records_read: shared.progress.records_read.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for (kind, s) in &sinks {
        summary.rows.insert(
            kind.name().into(),
            s.totals.rows_committed.load(Ordering::Relaxed),
        );
        summary.rows.insert(
            kind.rejects_table().into(),
            s.totals.rejects_committed.load(Ordering::Relaxed),
        );
        summary.commits += s.totals.commits.load(Ordering::Relaxed);
    }
    drop(sinks);
    for t in sink_tasks {
        let _ = t.await;
    }
    if let Some(t) = maintenance_task {
        let _ = t.await;
    }
    tracing::info!(records_read = summary.records_read, "worker stopped");
    match flush_error {
        Some(e) => Err(e.into()),
        None => Ok(summary),
    }
}

/// How long a worker waits before retrying a lease it could not resume: one failover
/// time, doubling per failure, at most 5 minutes.
fn refusal_backoff(failover: Duration, failures: u32) -> Duration {
    (failover * 2u32.pow(failures.saturating_sub(1).min(8))).min(Duration::from_secs(300))
}

/// Renews every held lease; a lease whose renewal is refused is lost.
async fn renew_all(shared: &Shared, held: &mut HashMap<String, Arc<HeldLease>>) {
    let renewals = held.values().map(|h| async move {
        let mut state = h.state.lock().await;
        if state.lost {
            return;
        }
        let rps = state.take_rate(Instant::now());
        match shared
            .leases
            .renew(&h.key, &shared.me, state.counter, state.millis_behind, rps)
            .await
        {
            Ok(c) => state.counter = c,
            Err(LeaseError::Lost(_)) => h.mark_lost(&mut state),
            Err(e) => tracing::warn!(lease = %h.key, error = %e, "renewal failed; will retry"),
        }
    });
    futures::future::join_all(renewals).await;
    // A lease that stopped being ours for committing (lost, or fenced by the sink because
    // the table moved past our checkpoint) is handed back if the table still names us, so
    // that the next owner recovers it at once instead of after failover_time. The release is
    // conditional on our counter: if someone else took the lease, it changes nothing.
    let mut gone = Vec::new();
    for (key, h) in held.iter() {
        if h.state.lock().await.lost {
            release_one(shared, h).await;
            gone.push(key.clone());
        }
    }
    for key in gone {
        held.remove(&key);
    }
}

/// Releases held leases whose shard is finished (SHARD_END checkpointed).
async fn release_finished(
    shared: &Shared,
    held: &mut HashMap<String, Arc<HeldLease>>,
    all: &[Lease],
) {
    for l in all
        .iter()
        .filter(|l| l.is_finished() && l.owner.as_deref() == Some(&shared.me))
    {
        if let Some(h) = held.remove(&l.key) {
            release_one(shared, &h).await;
        }
    }
}

async fn release_all(shared: &Shared, held: &mut HashMap<String, Arc<HeldLease>>) {
    for (_, h) in held.drain() {
        release_one(shared, &h).await;
    }
}

async fn release_one(shared: &Shared, h: &HeldLease) {
    let mut state = h.state.lock().await;
    h.token.cancel();
    // No longer ours: nothing may be committed or checkpointed for it from here on.
    state.lost = true;
    if state.released {
        return;
    }
    state.released = true;
    match shared
        .leases
        .release(&h.key, &shared.me, state.counter)
        .await
    {
        Ok(()) => {
            metrics::counter!("pinstream_leases_released_total").increment(1);
            tracing::info!(lease = %h.key, "lease released");
        }
        Err(LeaseError::Lost(_)) => {
            tracing::debug!(lease = %h.key, "lease already taken by another worker")
        }
        Err(e) => {
            tracing::warn!(lease = %h.key, error = %e, "release failed; the lease will expire instead")
        }
    }
}

/// Decides where a newly taken shard resumes, comparing the table's txn version `T` for
/// the shard with the lease's `batch_version` `B` (docs/DESIGN.md, exactly once).
/// `Ok(None)`: the shard is already finished. Also returns the position up to which the
/// rejects table already holds this shard's rejects when a crash fell between the rejects
/// commit and the cleaned commit: those rejects are not written again.
async fn resume_position(
    shared: &Shared,
    lease: &Lease,
    handle: &HeldLease,
    table: &mut DeltaTable,
    rejects_table: &mut DeltaTable,
) -> Result<Option<(StartAt, Option<Position>)>, WorkerError> {
    let app_id = handle.app_id(&shared.settings.application);
    let t = delta::txn_version(table, &app_id)
        .await
        .map_err(|e| WorkerError::Recovery {
            lease: lease.key.clone(),
            message: e.to_string(),
        })?
        .unwrap_or(0);
    let b = lease.batch_version;
    if t < b {
        return Err(WorkerError::Recovery {
            lease: lease.key.clone(),
            message: format!("table txn version {t} is behind the lease's batch_version {b}: the table was replaced or rolled back; refusing to read (fix the table or reset the lease)"),
        });
    }
    let checkpoint = if t == b {
        lease.checkpoint.clone()
    } else {
        // The commit landed, the checkpoint did not: take the position from the commit.
        let pos = delta::position_at(table, &lease.key, t)
            .await
            .map_err(|e| WorkerError::Recovery {
                lease: lease.key.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| WorkerError::Recovery {
                lease: lease.key.clone(),
                message: format!("no commit carries version {t} for this shard"),
            })?;
        let cp = if pos.shard_end {
            Checkpoint::ShardEnd
        } else {
            Checkpoint::Sequence(pos.last_sequence.clone())
        };
        let mut state = handle.state.lock().await;
        state.counter = shared
            .leases
            .checkpoint(
                &lease.key,
                &shared.me,
                state.counter,
                &cp,
                pos.last_sub_sequence,
                t,
            )
            .await?;
        state.batch_version = t;
        tracing::info!(lease = %lease.key, version = t, checkpoint = %cp.as_str(), "recovered a position committed but not checkpointed");
        cp
    };
    let recovery = |e: deltalake::DeltaTableError| WorkerError::Recovery {
        lease: lease.key.clone(),
        message: e.to_string(),
    };
    let r = delta::txn_version(rejects_table, &app_id)
        .await
        .map_err(recovery)?
        .unwrap_or(0);
    handle.state.lock().await.rejects_version = r;
    let rejects_done = if r > t {
        let pos = delta::position_at(rejects_table, &lease.key, r)
            .await
            .map_err(recovery)?;
        pos.map(|p| (p.last_sequence, p.last_sub_sequence))
    } else {
        None
    };
    if let Some((seq, sub)) = &rejects_done {
        tracing::info!(lease = %lease.key, rejects_version = r, table_version = t, sequence = %seq, sub, "rejects up to this position are already committed; not writing them again");
    }
    let start = match checkpoint {
        Checkpoint::ShardEnd => return Ok(None),
        Checkpoint::TrimHorizon => StartAt::TrimHorizon,
        Checkpoint::Latest => StartAt::Latest,
        Checkpoint::AtTimestamp(ms) => StartAt::AtTimestamp(ms),
        Checkpoint::Sequence(s) => StartAt::AfterSequence(s),
    };
    Ok(Some((start, rejects_done)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_leases_are_retried_with_capped_backoff() {
        let f = Duration::from_secs(10);
        assert_eq!(refusal_backoff(f, 1), f);
        assert_eq!(refusal_backoff(f, 2), f * 2);
        assert_eq!(refusal_backoff(f, 4), f * 8);
        assert_eq!(refusal_backoff(f, 50), Duration::from_secs(300));
    }
}
