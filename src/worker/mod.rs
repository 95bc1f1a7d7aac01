//! The worker: the lease coordinator loop (sync shards into leases, renew, take) and one
//! reader task per held lease, feeding the three table sinks.
//!
//! Data flow: lease taken -> recovery (table txn version vs lease `batch_version`) ->
//! shard reader (`shard.rs`) -> clean -> chunk -> sink (commit, then checkpoint). Shutdown: stop
//! reading, flush, commit, checkpoint, release every lease.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
use crate::fault::FaultPoint;
use crate::kinesis::{self, StartAt};
use crate::lease::{
    self, Checkpoint, ExpiryTracker, HeldLease, KeeperSettings, Lease, LeaseError, LeaseTable,
    RejectsMark, TakeKind,
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

/// How often a shard may fail in one `--available-now` run before the run gives up on it.
const DRAIN_ATTEMPTS: u32 = 3;

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

/// What a shard sync listed.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// The shard ids each configured stream listed, by stream name.
    pub shards: BTreeMap<String, HashSet<String>>,
    /// Lease keys of the listed shards that are closed (they will reach SHARD_END).
    pub closed: HashSet<String>,
    /// Each stream's creation time (ms): leases recording another are not taken.
    pub created: BTreeMap<String, i64>,
}

/// Creates a lease for every shard of every configured stream that has none. Shards whose
/// parents are listed too are children of a reshard: they start at TRIM_HORIZON so nothing
/// between the parent's end and the child's start is skipped. New leases record the
/// stream's creation time and a txn app id that includes it.
///
/// A stream deleted and created again under the same name is noticed here (its leases
/// record another creation time): its leases start over at TRIM_HORIZON for the new
/// stream's shards (with a new txn app id, so the tables' old txn versions do not apply),
/// and those of shards the new stream does not have are deleted. Nothing of the new stream
/// is skipped. Leases from before pinstream recorded the creation time are taken to belong
/// to the stream as it is. Returns what was listed.
pub async fn sync_shards(
    aws: &AwsClients,
    leases: &LeaseTable,
    settings: &Settings,
) -> Result<Listing, WorkerError> {
    let mut listing = Listing::default();
    let existing = leases.scan().await?;
    for stream in settings.streams.values() {
        let created = kinesis::stream_created(&aws.kinesis, stream).await?;
        let shards = kinesis::list_shards(&aws.kinesis, stream).await?;
        let theirs: Vec<&Lease> = existing.iter().filter(|l| &l.stream == stream).collect();
        start_over_if_recreated(leases, settings, stream, created, &shards, &theirs).await?;
        let ids: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        for s in &shards {
            let is_child = s.parents.iter().any(|p| ids.contains(p.as_str()));
            let start = if is_child {
                Checkpoint::TrimHorizon
            } else {
                initial_checkpoint(settings.lease.initial_position)
            };
            let app_id = Lease::app_id_for(&settings.application, stream, created, &s.shard_id);
            if leases
                .create_lease(
                    stream,
                    &s.shard_id,
                    &s.parents,
                    &start,
                    Some((created, &app_id)),
                )
                .await?
            {
                tracing::info!(%stream, shard_id = %s.shard_id, parents = ?s.parents, "new shard lease");
            }
        }
        listing.closed.extend(
            shards
                .iter()
                .filter(|s| s.closed)
                .map(|s| Lease::key_of(stream, &s.shard_id)),
        );
        listing.created.insert(stream.clone(), created);
        listing.shards.insert(
            stream.clone(),
            shards.into_iter().map(|s| s.shard_id).collect(),
        );
    }
    Ok(listing)
}

/// See [`sync_shards`]: leases of `stream` written for another stream of the same name.
async fn start_over_if_recreated(
    leases: &LeaseTable,
    settings: &Settings,
    stream: &str,
    created: i64,
    shards: &[kinesis::ShardInfo],
    theirs: &[&Lease],
) -> Result<(), WorkerError> {
    for l in theirs {
        let Some(was) = l.stream_created else {
            leases.adopt(&l.key, created).await?;
            continue;
        };
        if was == created {
            continue;
        }
        let res = match shards.iter().find(|s| s.shard_id == l.shard_id) {
            Some(s) => {
                let app_id = Lease::app_id_for(&settings.application, stream, created, &s.shard_id);
                leases.start_over(l, &s.parents, created, &app_id).await
            }
            None => leases.delete_stale(&l.key, l.counter).await,
        };
        match res {
            Ok(()) => {
                metrics::counter!("pinstream_stream_recreated_leases_total", "stream" => stream.to_owned()).increment(1);
                tracing::warn!(%stream, lease = %l.key, old_created_ms = was, new_created_ms = created, "the stream was deleted and created again under the same name: this lease starts over at TRIM_HORIZON of the new stream (rows of the old stream stay in the tables)");
            }
            // Another worker did it first.
            Err(LeaseError::Lost(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The kinds whose tables `me` maintains: one owner per stream, found in the lease table
/// without a row or a write of its own: the owner of the stream's unfinished lease with the
/// smallest key. Nobody maintains a stream whose first such lease is free.
fn maintenance_owned(all: &[Lease], me: &str, kind_of: &HashMap<String, Kind>) -> BTreeSet<Kind> {
    let mut first: BTreeMap<&str, &Lease> = BTreeMap::new();
    for l in all.iter().filter(|l| !l.is_finished()) {
        let e = first.entry(l.stream.as_str()).or_insert(l);
        if l.key < e.key {
            *e = l;
        }
    }
    first
        .into_iter()
        .filter(|(_, l)| l.owner.as_deref() == Some(me))
        .filter_map(|(stream, _)| kind_of.get(stream).copied())
        .collect()
}

/// Finished leases whose shards the stream no longer lists, with the instant each was
/// first seen so; those gone for `cleanup_after` are due for deletion (KCL's lease cleanup).
#[derive(Debug, Default)]
struct FinishedLeaseCleanup {
    gone_since: HashMap<String, Instant>,
}

impl FinishedLeaseCleanup {
    /// The finished leases (key, counter) to delete now, given a scan and the last listing.
    fn due(
        &mut self,
        all: &[Lease],
        listing: &Listing,
        now: Instant,
        after: Duration,
    ) -> Vec<(String, u64)> {
        let mut due = Vec::new();
        let mut seen = HashSet::new();
        for l in all.iter().filter(|l| l.is_finished() && l.owner.is_none()) {
            let Some(listed) = listing.shards.get(&l.stream) else {
                continue;
            };
            if listed.contains(&l.shard_id) {
                continue;
            }
            seen.insert(l.key.clone());
            let since = *self.gone_since.entry(l.key.clone()).or_insert(now);
            if now.duration_since(since) >= after {
                due.push((l.key.clone(), l.counter));
            }
        }
        self.gone_since.retain(|k, _| seen.contains(k));
        due
    }
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
    let shared = Arc::new(Shared {
        settings,
        aws,
        leases,
        me: opts.worker_id.clone(),
        progress: opts.progress.clone(),
        budget,
        fault: opts.fault.clone(),
    });
    let mut c = Coordinator::start(shared, opts).await?;
    // Compaction and vacuum on a schedule, beside the sinks (never inside a flush), of the
    // tables whose maintenance this worker owns.
    let maintenance_stop = CancellationToken::new();
    let maintenance_task = crate::maintenance::spawn_scheduled(
        &c.shared.settings,
        maintenance_stop.clone(),
        c.maintenance_owned.subscribe(),
    );
    c.listing = sync_shards(&c.shared.aws, &c.shared.leases, &c.shared.settings).await?;
    tracing::info!(worker_id = %c.shared.me, lease_table = %c.shared.leases.name(), available_now = c.opts.available_now, "worker started");
    let outcome = c.coordinate(&shutdown).await;
    maintenance_stop.cancel();
    let summary = c.stop(started, outcome).await;
    if let Some(t) = maintenance_task {
        let _ = t.await;
    }
    summary
}

/// The lease coordinator of one worker: the leases it holds, their reader tasks, and the
/// table sinks they feed.
struct Coordinator {
    shared: Arc<Shared>,
    opts: RunOptions,
    sinks: BTreeMap<Kind, SinkHandle>,
    /// The sink tasks, each ending with its kind (only at shutdown, unless it died).
    sink_tasks: JoinSet<Kind>,
    /// Separate handles (cleaned, rejects) for recovery reads, so they never wait on a sink.
    recovery_tables: BTreeMap<Kind, (DeltaTable, DeltaTable)>,
    kind_of: HashMap<String, Kind>,
    tracker: ExpiryTracker,
    held: HashMap<String, Arc<HeldLease>>,
    /// The keepers of the leases held (and of those being handed back).
    keepers: JoinSet<()>,
    /// Leases not to take again before an instant: recovery failed, or the reader died.
    /// lease key -> (retry after, failures). Retried with backoff, never given up: a
    /// released lease that nobody retries would stay unread while every other worker
    /// sits at its fair share.
    retry_later: HashMap<String, (Instant, u32)>,
    /// `--available-now` only: shards already drained in this run are not taken again
    /// (unless closed since), and those of them read to their end.
    drained: HashSet<String>,
    finished: HashSet<String>,
    /// The last successful shard listing, and the finished leases of shards no longer in it.
    listing: Listing,
    cleanup: FinishedLeaseCleanup,
    /// The kinds whose tables this worker maintains (compaction, vacuum), from each scan.
    maintenance_owned: tokio::sync::watch::Sender<BTreeSet<Kind>>,
    readers: JoinSet<(String, ShardExit)>,
    reader_keys: HashMap<tokio::task::Id, String>,
    reader_stop: CancellationToken,
}

impl Coordinator {
    async fn start(shared: Arc<Shared>, opts: RunOptions) -> Result<Self, WorkerError> {
        let mut c = Coordinator {
            kind_of: shared
                .settings
                .streams
                .iter()
                .map(|(k, s)| (s.clone(), *k))
                .collect(),
            shared,
            opts,
            sinks: BTreeMap::new(),
            sink_tasks: JoinSet::new(),
            recovery_tables: BTreeMap::new(),
            tracker: ExpiryTracker::default(),
            held: HashMap::new(),
            keepers: JoinSet::new(),
            retry_later: HashMap::new(),
            drained: HashSet::new(),
            finished: HashSet::new(),
            listing: Listing::default(),
            cleanup: FinishedLeaseCleanup::default(),
            maintenance_owned: tokio::sync::watch::Sender::new(BTreeSet::new()),
            readers: JoinSet::new(),
            reader_keys: HashMap::new(),
            reader_stop: CancellationToken::new(),
        };
        let kinds: Vec<Kind> = c.shared.settings.streams.keys().copied().collect();
        for kind in kinds {
            let root = &c.shared.settings.table_root;
            let tables = (
                delta::open_or_create(root, kind.name(), &kind.schema()).await?,
                delta::open_or_create(root, kind.rejects_table(), &clean::schema::REJECTS).await?,
            );
            c.recovery_tables.insert(kind, tables);
            c.start_sink(kind).await?;
        }
        Ok(c)
    }

    /// Opens the kind's tables and starts its sink.
    async fn start_sink(&mut self, kind: Kind) -> Result<(), WorkerError> {
        let settings = &self.shared.settings;
        let table =
            delta::open_or_create(&settings.table_root, kind.name(), &kind.schema()).await?;
        let rejects_table = delta::open_or_create(
            &settings.table_root,
            kind.rejects_table(),
            &clean::schema::REJECTS,
        )
        .await?;
        let sink = TableSink {
            kind,
            application: settings.application.clone(),
            table,
            rejects_table,
            policy: settings.flush.clone(),
            progress: self.opts.progress.clone(),
            fault: self.opts.fault.clone(),
            maintenance: settings.maintenance.clone(),
            health: self.opts.health.clone(),
            budget: self.shared.budget.clone(),
        };
        let (handle, task) = sink.spawn();
        self.sink_tasks.spawn(async move {
            // A panic inside the sink resumes here, so the coordinator learns the kind.
            if let Err(e) = task.await {
                tracing::error!(table = kind.name(), error = %e, "the table sink died");
            }
            kind
        });
        self.sinks.insert(kind, handle);
        Ok(())
    }

    /// The coordinator loop: every `failover_time / 3` renew, sync shards, scan, release
    /// finished leases and take what is due; in between, react to readers and sinks that
    /// end. Returns when `shutdown` is cancelled or, draining, when nothing is left.
    async fn coordinate(&mut self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let failover = self.shared.settings.lease.failover_time;
        let mut tick = tokio::time::interval(failover / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_sync = Instant::now() + self.shared.settings.lease.shard_sync_interval;
        loop {
            // The cycle's instant: the scheduled tick, so that scans are exactly one period
            // apart on the expiry clock and an expired lease is noticed within one cycle of
            // `failover_time`, not two.
            let cycle_at = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                Some(joined) = self.readers.join_next_with_id(), if !self.readers.is_empty() => {
                    self.on_reader_exit(joined).await;
                    if !(self.opts.available_now && self.readers.is_empty()) {
                        continue;
                    }
                    Instant::now()
                }
                Some(died) = self.sink_tasks.join_next() => {
                    self.on_sink_exit(died).await?;
                    continue;
                }
                t = tick.tick() => t,
            };
            // Leases lost since the last cycle (renewal refused or failing, fenced by the
            // sink): their keepers have handed them back.
            self.held.retain(|_, h| !h.is_lost());
            if Instant::now() >= next_sync {
                match sync_shards(&self.shared.aws, &self.shared.leases, &self.shared.settings)
                    .await
                {
                    Ok(listing) => self.listing = listing,
                    Err(e) => tracing::warn!(error = %e, "shard sync failed; will retry"),
                }
                next_sync = Instant::now() + self.shared.settings.lease.shard_sync_interval;
            }
            if self.opts.available_now && self.readers.is_empty() {
                // Everything taken so far is drained: commit it, hand the leases back, and
                // see whether finishing parents made children ready.
                for s in self.sinks.values() {
                    s.flush().await?;
                }
                self.release_all(None).await;
                self.sync_for_drain().await;
            }
            let all = match self.shared.leases.scan().await {
                Ok(all) => {
                    if let Some(h) = &self.opts.health {
                        h.lease_scan_ok();
                    }
                    all
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease scan failed; will retry");
                    continue;
                }
            };
            self.tracker.observe(&all, cycle_at);
            self.maintenance_owned.send_replace(maintenance_owned(
                &all,
                &self.shared.me,
                &self.kind_of,
            ));
            self.release_finished(&all);
            self.delete_gone_finished_leases(&all, cycle_at).await;
            for (lease, how) in self.candidates(&all, cycle_at) {
                self.take_and_start(lease, how).await;
            }
            metrics::gauge!("pinstream_leases_held").set(self.held.len() as f64);
            if self.opts.available_now
                && self.readers.is_empty()
                && self.held.values().all(|h| h.token.is_cancelled())
            {
                match self.drain_outcome() {
                    None => {}
                    Some(done) => return done,
                }
            }
        }
    }

    /// The leases to try to take this cycle (see [`lease::leases_to_take`]), less those to
    /// retry later, those drained in this `--available-now` run, and other streams'.
    fn candidates(&self, all: &[Lease], cycle_at: Instant) -> Vec<(Lease, TakeKind)> {
        lease::leases_to_take(
            all,
            &self.shared.me,
            &self.tracker,
            cycle_at,
            self.shared.settings.lease.failover_time,
            self.opts.available_now,
        )
        .into_iter()
        .filter(|(l, _)| {
            self.retry_later
                .get(&l.key)
                .is_none_or(|(at, _)| cycle_at >= *at)
                && !self.drained.contains(&l.key)
                && self.kind_of.contains_key(&l.stream)
                && self.of_the_stream_as_it_is(l)
        })
        .map(|(l, k)| (l.clone(), k))
        .collect()
    }

    /// Whether a lease was written for the stream as it is now (not for an older stream of
    /// the same name, whose leases the next shard sync starts over).
    fn of_the_stream_as_it_is(&self, l: &Lease) -> bool {
        match (l.stream_created, self.listing.created.get(&l.stream)) {
            (Some(was), Some(now)) => was == *now,
            _ => true,
        }
    }

    /// Takes one lease (conditional on the counter we saw), decides where its shard
    /// resumes, and starts its reader; a lease that cannot be resumed is handed back and
    /// retried later.
    async fn take_and_start(&mut self, lease: Lease, how: TakeKind) {
        let Some(&kind) = self.kind_of.get(&lease.stream) else {
            return;
        };
        let shared = &self.shared;
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
            Err(LeaseError::Lost(_)) => return, // someone else was faster
            Err(e) => {
                tracing::warn!(lease = %lease.key, error = %e, "take failed");
                return;
            }
        };
        metrics::counter!("pinstream_leases_taken_total", "how" => match how {
            TakeKind::Free => "free",
            TakeKind::Expired => "expired",
            TakeKind::Steal => "stolen",
        })
        .increment(1);
        tracing::info!(lease = %lease.key, previous_owner = lease.owner.as_deref().unwrap_or("-"), how = ?how, "lease taken");
        let (handle, keeper) = HeldLease::start(
            &lease,
            counter,
            &self.reader_stop,
            KeeperSettings {
                table: shared.leases.clone(),
                me: shared.me.clone(),
                failover: shared.settings.lease.failover_time,
                fault: shared.fault.clone(),
            },
        );
        self.keepers.spawn(keeper);
        let (table, rejects_table) = self
            .recovery_tables
            .get_mut(&kind)
            .expect("recovery tables per configured kind");
        match resume_position(shared, &lease, &handle, table, rejects_table).await {
            Ok(Some((start, rejects_done))) => {
                self.retry_later.remove(&lease.key);
                self.held.insert(lease.key.clone(), handle.clone());
                self.start_reader(kind, handle, start, rejects_done);
            }
            Ok(None) => {
                // Already at SHARD_END per the table: recorded; give it back.
                self.retry_later.remove(&lease.key);
                self.held.insert(lease.key.clone(), handle);
            }
            Err(e) => {
                let wait = self.retry_after_failure(&lease.key);
                tracing::error!(lease = %lease.key, error = %e, retry_in = ?wait, "cannot resume this shard; releasing the lease and retrying later");
                metrics::counter!("pinstream_lease_recovery_failures_total").increment(1);
                handle.give_up();
            }
        }
    }

    /// `--available-now`, everything taken so far drained: lists the shards again so that
    /// children of a reshard during the run get their leases, and lets a shard drained as
    /// caught up be read again if it has been closed since (it must reach SHARD_END for its
    /// children to be read).
    async fn sync_for_drain(&mut self) {
        match sync_shards(&self.shared.aws, &self.shared.leases, &self.shared.settings).await {
            Ok(listing) => self.listing = listing,
            Err(e) => tracing::warn!(error = %e, "shard sync failed; will retry"),
        }
        let closed = &self.listing.closed;
        self.drained
            .retain(|key| !closed.contains(key) || self.finished.contains(key));
    }

    /// A drain run with nothing left to read ends here (`Some`): done, unless a shard
    /// failed. A shard that failed fewer than [`DRAIN_ATTEMPTS`] times is tried again
    /// after its backoff (`None`: go on); one that failed that often ends the run with an
    /// error (exit non-zero).
    fn drain_outcome(&self) -> Option<Result<(), WorkerError>> {
        let given_up: Vec<&String> = self
            .retry_later
            .iter()
            .filter(|(_, (_, n))| *n >= DRAIN_ATTEMPTS)
            .map(|(k, _)| k)
            .collect();
        if let Some(key) = given_up.first() {
            return Some(Err(WorkerError::Recovery {
                lease: (*key).clone(),
                message: format!(
                    "{} shard(s) failed {DRAIN_ATTEMPTS} times in this drain run and were not read to the end; see the errors above",
                    given_up.len()
                ),
            }));
        }
        self.retry_later.is_empty().then_some(Ok(()))
    }

    /// Starts the reader task of a held lease.
    fn start_reader(
        &mut self,
        kind: Kind,
        handle: Arc<HeldLease>,
        start: StartAt,
        rejects_done: Option<Position>,
    ) {
        let sink = self.sinks[&kind].tx.clone();
        let span =
            tracing::info_span!("shard", stream = %handle.stream, shard_id = %handle.shard_id);
        let shared = self.shared.clone();
        // Draining, a reader stops once caught up; but a closed shard is read to its end
        // (an empty answer of a closed shard is not its end), so that its children follow.
        let key = handle.key.clone();
        let drain = self.opts.available_now && !self.listing.closed.contains(&key);
        let task = self.readers.spawn(
            async move {
                let key = handle.key.clone();
                let exit = read_shard(shared, kind, handle, start, rejects_done, sink, drain).await;
                (key, exit)
            }
            .instrument(span),
        );
        self.reader_keys.insert(task.id(), key);
    }

    /// Backs off a lease that failed (recovery or reader): one failover time, doubling per
    /// failure, at most 5 minutes. Returns the wait.
    fn retry_after_failure(&mut self, key: &str) -> Duration {
        let failures = self.retry_later.get(key).map_or(0, |(_, n)| *n) + 1;
        let wait = refusal_backoff(self.shared.settings.lease.failover_time, failures);
        self.retry_later
            .insert(key.to_owned(), (Instant::now() + wait, failures));
        wait
    }

    /// A reader ended. Caught up or at the shard's end: nothing to do (the sink commits and
    /// checkpoints; a drain run does not take it again). Cancelled: lease lost or shutdown.
    /// Failed or panicked: the shard would stop being read while we keep renewing its
    /// lease, so the lease is handed back at once and retried later.
    async fn on_reader_exit(
        &mut self,
        joined: Result<(tokio::task::Id, (String, ShardExit)), tokio::task::JoinError>,
    ) {
        let (key, exit) = match joined {
            Ok((id, (key, exit))) => {
                self.reader_keys.remove(&id);
                (key, exit)
            }
            Err(e) => {
                let Some(key) = self.reader_keys.remove(&e.id()) else {
                    return;
                };
                (key, ShardExit::Failed(format!("the reader panicked: {e}")))
            }
        };
        tracing::debug!(lease = %key, ?exit, "shard reader ended");
        match exit {
            ShardExit::ShardEnd => {
                if self.opts.available_now {
                    self.finished.insert(key.clone());
                    self.drained.insert(key);
                }
            }
            ShardExit::CaughtUp => {
                if self.opts.available_now {
                    self.drained.insert(key);
                }
            }
            ShardExit::Cancelled => {}
            ShardExit::SinkGone => {
                // The sink's exit restarts it; until then nothing may be read for it.
                if let Some(h) = self.held.remove(&key) {
                    h.give_up();
                }
            }
            ShardExit::Failed(why) => {
                let wait = self.retry_after_failure(&key);
                tracing::error!(lease = %key, error = %why, retry_in = ?wait, "shard reader failed; releasing its lease");
                metrics::counter!("pinstream_shard_reader_failures_total").increment(1);
                if let Some(h) = self.held.remove(&key) {
                    h.give_up();
                }
            }
        }
    }

    /// A sink task ended while the worker runs: it died. Its buffered rows are gone (never
    /// committed), so every lease of its kind is handed back to be read again from its
    /// checkpoint, and a new sink takes its place.
    async fn on_sink_exit(
        &mut self,
        died: Result<Kind, tokio::task::JoinError>,
    ) -> Result<(), WorkerError> {
        let Ok(kind) = died else {
            return Ok(());
        };
        let stream = &self.shared.settings.streams[&kind];
        tracing::error!(
            table = kind.name(),
            "table sink stopped unexpectedly; releasing its leases and starting a new one"
        );
        metrics::counter!("pinstream_sink_failures_total", "table" => kind.name()).increment(1);
        let keys: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| &h.stream == stream)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(h) = self.held.remove(&key) {
                h.give_up();
            }
        }
        self.start_sink(kind).await
    }

    /// Deletes finished leases whose shards have been gone from the stream for
    /// `lease.cleanup_after`. A lease still listed is never deleted (sync would create it
    /// again at TRIM_HORIZON); children do not need their parents' leases once those are
    /// finished.
    async fn delete_gone_finished_leases(&mut self, all: &[Lease], now: Instant) {
        let after = self.shared.settings.lease.cleanup_after;
        for (key, counter) in self.cleanup.due(all, &self.listing, now, after) {
            match self.shared.leases.delete_finished(&key, counter).await {
                Ok(()) => {
                    metrics::counter!("pinstream_leases_deleted_total").increment(1);
                    tracing::info!(lease = %key, "deleted the finished lease of a shard no longer in the stream");
                }
                Err(LeaseError::Lost(_)) => {}
                Err(e) => {
                    tracing::warn!(lease = %key, error = %e, "could not delete a finished lease; will retry")
                }
            }
        }
    }

    /// Gives up the held leases whose shard is finished (SHARD_END checkpointed).
    fn release_finished(&mut self, all: &[Lease]) {
        for l in all
            .iter()
            .filter(|l| l.is_finished() && l.owner.as_deref() == Some(self.shared.me.as_str()))
        {
            if let Some(h) = self.held.remove(&l.key) {
                h.give_up();
            }
        }
    }

    /// Gives up every held lease and waits (until `deadline`, if any) for their keepers to
    /// hand them back.
    async fn release_all(&mut self, deadline: Option<Instant>) {
        for (_, h) in self.held.drain() {
            h.give_up();
        }
        loop {
            let next = self.keepers.join_next();
            let joined = match deadline {
                Some(d) => match tokio::time::timeout_at(d, next).await {
                    Ok(j) => j,
                    Err(_) => {
                        tracing::warn!("leases not handed back before the shutdown deadline; they will expire instead");
                        return;
                    }
                },
                None => next.await,
            };
            if joined.is_none() {
                return;
            }
        }
    }

    /// Graceful stop: stop reading, flush and commit, checkpoint, release; the summary.
    async fn stop(
        mut self,
        started: Instant,
        outcome: Result<(), WorkerError>,
    ) -> Result<RunSummary, WorkerError> {
        self.reader_stop.cancel();
        let deadline = Instant::now() + self.opts.shutdown_deadline;
        while !self.readers.is_empty() {
            if tokio::time::timeout_at(deadline, self.readers.join_next())
                .await
                .is_err()
            {
                tracing::warn!("shard readers did not stop before the shutdown deadline");
                self.readers.abort_all();
                break;
            }
        }
        let mut flush_error = outcome.err();
        for s in self.sinks.values() {
            match tokio::time::timeout_at(deadline, s.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    flush_error.get_or_insert(e.into());
                }
                Err(_) => tracing::warn!(
                    table = s.kind.name(),
                    "flush did not finish before the shutdown deadline"
                ),
            }
        }
        self.release_all(Some(deadline)).await;
        let mut summary = RunSummary {
            records_read: self.shared.progress.records_read.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            ..Default::default()
        };
        for (kind, s) in &self.sinks {
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
        self.sinks.clear();
        while self.sink_tasks.join_next().await.is_some() {}
        tracing::info!(records_read = summary.records_read, "worker stopped");
        match flush_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// How long a worker waits before retrying a lease it could not resume: one failover
/// time, doubling per failure, at most 5 minutes.
fn refusal_backoff(failover: Duration, failures: u32) -> Duration {
    (failover * 2u32.pow(failures.saturating_sub(1).min(8))).min(Duration::from_secs(300))
}

/// Decides where a newly taken shard resumes, comparing the table's txn version `T` for
/// the shard with the lease's `batch_version` `B` (docs/DESIGN.md, exactly once).
/// `Ok(None)`: the shard is already finished. Also returns the position up to which the
/// rejects table already holds this shard's rejects: those are never written again.
async fn resume_position(
    shared: &Shared,
    lease: &Lease,
    handle: &HeldLease,
    table: &mut DeltaTable,
    rejects_table: &mut DeltaTable,
) -> Result<Option<(StartAt, Option<Position>)>, WorkerError> {
    let recovery = |e: deltalake::DeltaTableError| WorkerError::Recovery {
        lease: lease.key.clone(),
        message: e.to_string(),
    };
    if let Some(f) = &shared.fault {
        let _ = f.hit_async(FaultPoint::Recover).await;
    }
    let app_id = handle.app_id(&shared.settings.application);
    let rejects = rejects_committed(lease, &app_id, rejects_table).await?;
    handle.update_versions(|v| {
        v.rejects_version = rejects.as_ref().map_or(0, |r| r.version);
        v.rejects_position = rejects
            .as_ref()
            .map(|r| (r.sequence.clone(), r.sub_sequence));
    });
    let t = delta::txn_version(table, &app_id)
        .await
        .map_err(recovery)?
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
            .map_err(recovery)?
            .ok_or_else(|| WorkerError::Recovery {
                lease: lease.key.clone(),
                message: format!("no commit carries version {t} for this shard"),
            })?;
        let cp = if pos.shard_end {
            Checkpoint::ShardEnd
        } else {
            Checkpoint::Sequence(pos.last_sequence.clone())
        };
        let mut versions = handle.versions();
        versions.batch_version = t;
        handle
            .checkpoint(cp.clone(), pos.last_sub_sequence, versions)
            .await?;
        handle.update_versions(|v| v.batch_version = t);
        tracing::info!(lease = %lease.key, version = t, checkpoint = %cp.as_str(), "recovered a position committed but not checkpointed");
        cp
    };
    let rejects_done = rejects.map(|r| (r.sequence, r.sub_sequence));
    let start = match checkpoint {
        Checkpoint::ShardEnd => return Ok(None),
        Checkpoint::TrimHorizon => StartAt::TrimHorizon,
        Checkpoint::Latest => StartAt::Latest,
        Checkpoint::AtTimestamp(ms) => StartAt::AtTimestamp(ms),
        Checkpoint::Sequence(s) => StartAt::AfterSequence(s),
    };
    Ok(Some((start, rejects_done)))
}

/// How far the shard's rejects are committed, whatever the cleaned table says: the rejects
/// table's txn version `R` of the shard and the position of that commit. When `R` is the
/// one the lease recorded at its last checkpoint, the lease has the position; otherwise
/// (rejects committed after the last checkpoint) it is read from commit `R`.
async fn rejects_committed(
    lease: &Lease,
    app_id: &str,
    rejects_table: &mut DeltaTable,
) -> Result<Option<RejectsMark>, WorkerError> {
    let recovery = |message: String| WorkerError::Recovery {
        lease: lease.key.clone(),
        message,
    };
    let r = delta::txn_version(rejects_table, app_id)
        .await
        .map_err(|e| recovery(e.to_string()))?
        .unwrap_or(0);
    if r == 0 {
        return Ok(None);
    }
    if let Some(mark) = lease.rejects.as_ref().filter(|m| m.version == r) {
        return Ok(Some(mark.clone()));
    }
    let pos = delta::position_at(rejects_table, &lease.key, r)
        .await
        .map_err(|e| recovery(e.to_string()))?
        .ok_or_else(|| {
            recovery(format!(
                "no rejects commit carries version {r} for this shard"
            ))
        })?;
    tracing::info!(lease = %lease.key, rejects_version = r, sequence = %pos.last_sequence, sub = pos.last_sub_sequence, "rejects up to this position are already committed; not writing them again");
    Ok(Some(RejectsMark {
        version: r,
        sequence: pos.last_sequence,
        sub_sequence: pos.last_sub_sequence,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(stream: &str, shard: &str, counter: u64) -> Lease {
        Lease {
            key: Lease::key_of(stream, shard),
            stream: stream.into(),
            shard_id: shard.into(),
            owner: None,
            counter,
            checkpoint: Checkpoint::ShardEnd,
            sub_sequence: 0,
            batch_version: 0,
            rejects: None,
            parent_shard_ids: vec![],
            stream_created: None,
            txn_app_id: None,
            owner_switches_since_checkpoint: 0,
            millis_behind_latest: None,
            records_per_second: None,
        }
    }

    #[test]
    fn one_worker_maintains_each_stream_the_owner_of_its_first_unfinished_lease() {
        let kind_of: HashMap<String, Kind> =
            [("p".to_string(), Kind::Pin), ("g".to_string(), Kind::Geo)].into();
        let mut done = finished("p", "s0", 1);
        done.owner = Some("a".into());
        let mut p1 = finished("p", "s1", 1);
        p1.checkpoint = Checkpoint::TrimHorizon;
        p1.owner = Some("b".into());
        let mut p2 = p1.clone();
        p2.shard_id = "s2".into();
        p2.key = Lease::key_of("p", "s2");
        p2.owner = Some("a".into());
        let mut g0 = p1.clone();
        g0.stream = "g".into();
        g0.key = Lease::key_of("g", "s1");
        g0.owner = None;
        let all = vec![done, p2, p1, g0];
        assert_eq!(
            maintenance_owned(&all, "b", &kind_of),
            BTreeSet::from([Kind::Pin])
        );
        assert!(maintenance_owned(&all, "a", &kind_of).is_empty());
    }

    #[test]
    fn finished_leases_are_deleted_only_after_their_shard_is_gone_for_the_grace_period() {
        let mut cleanup = FinishedLeaseCleanup::default();
        let after = Duration::from_secs(60);
        let listing = Listing {
            shards: [("s".to_string(), HashSet::from(["listed".to_string()]))].into(),
            closed: HashSet::new(),
            created: BTreeMap::new(),
        };
        let mut open = finished("s", "open", 1);
        open.checkpoint = Checkpoint::TrimHorizon;
        let mut owned = finished("s", "owned", 1);
        owned.owner = Some("w".into());
        let all = vec![
            finished("s", "listed", 1),
            finished("s", "gone", 4),
            finished("other", "x", 1), // a stream this worker was not told about
            open,
            owned,
        ];
        let t0 = Instant::now();
        assert!(cleanup.due(&all, &listing, t0, after).is_empty());
        assert!(cleanup
            .due(&all, &listing, t0 + after - Duration::from_secs(1), after)
            .is_empty());
        assert_eq!(
            cleanup.due(&all, &listing, t0 + after, after),
            vec![(Lease::key_of("s", "gone"), 4)]
        );
        // Listed again (a stale listing said it was gone): the clock starts over.
        let relisted = Listing {
            shards: [(
                "s".to_string(),
                HashSet::from(["listed".to_string(), "gone".to_string()]),
            )]
            .into(),
            closed: HashSet::new(),
            created: BTreeMap::new(),
        };
        assert!(cleanup
            .due(&all, &relisted, t0 + after * 2, after)
            .is_empty());
        assert!(cleanup
            .due(&all, &listing, t0 + after * 2, after)
            .is_empty());
    }

    #[test]
    fn refused_leases_are_retried_with_capped_backoff() {
        let f = Duration::from_secs(10);
        assert_eq!(refusal_backoff(f, 1), f);
        assert_eq!(refusal_backoff(f, 2), f * 2);
        assert_eq!(refusal_backoff(f, 4), f * 8);
        assert_eq!(refusal_backoff(f, 50), Duration::from_secs(300));
    }
}
