//! The table sink: one task per stream kind, owning its cleaned table and its rejects
//! table. Shard readers send it [`Chunk`]s (already cleaned Arrow batches); it buffers the
//! rows of every shard this worker holds and flushes by age, rows or bytes, whichever
//! comes first: one Delta commit per table carrying a `txn` per shard, then one
//! conditional checkpoint per shard. Acknowledge only after delivery.
//!
//! Rows of a shard whose lease was lost are dropped, never committed.

pub mod budget;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::backoff;
use crate::clean::Kind;
use crate::config::FlushPolicy;
use crate::delta::{self, Appended, ShardCommit};
use crate::fault::FaultPoint;
use crate::lease::{Checkpoint, HeldLease, LeaseError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("commit to {table} failed (rows kept for the next flush): {source}")]
    Commit {
        table: String,
        source: deltalake::DeltaTableError,
    },
    #[error("building a batch for {table}: {source}")]
    Arrow {
        table: String,
        source: deltalake::arrow::error::ArrowError,
    },
    #[error("the {0} sink has stopped")]
    Stopped(Kind),
    #[error("injected failure at {0:?} (--fault)")]
    Injected(FaultPoint),
}

/// The cleaned output of one GetRecords call of one shard.
pub struct Chunk {
    pub lease: Arc<HeldLease>,
    pub rows: RecordBatch,
    pub rejects: RecordBatch,
    /// Position of the last record in this chunk (`None`: no records, e.g. only a shard end).
    pub last: Option<(String, i64)>,
    pub end_of_shard: bool,
    /// Bytes of record data this chunk came from.
    pub bytes: usize,
    /// Kinesis arrival time of the chunk's oldest record, microseconds since the epoch.
    pub oldest_arrival_micros: Option<i64>,
    /// The chunk's room in the worker's memory budget, held until its rows are committed
    /// or dropped.
    pub reservation: Option<budget::Reservation>,
}

impl Chunk {
    /// Bytes of Arrow data the chunk holds (what the memory budget counts).
    pub fn memory_size(&self) -> usize {
        self.rows.get_array_memory_size() + self.rejects.get_array_memory_size()
    }
}

pub enum SinkMsg {
    Chunk(Chunk),
    /// Flush now and answer when committed and checkpointed.
    Flush(oneshot::Sender<Result<(), SinkError>>),
}

/// Running totals of one sink, read by the demo summary and tests.
#[derive(Debug, Default)]
pub struct SinkTotals {
    pub rows_committed: AtomicU64,
    pub rejects_committed: AtomicU64,
    pub commits: AtomicU64,
}

/// Handle to a running sink.
#[derive(Clone)]
pub struct SinkHandle {
    pub kind: Kind,
    pub tx: mpsc::Sender<SinkMsg>,
    pub totals: Arc<SinkTotals>,
}

impl SinkHandle {
    pub async fn flush(&self) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(SinkMsg::Flush(tx))
            .await
            .map_err(|_| SinkError::Stopped(self.kind))?;
        rx.await.map_err(|_| SinkError::Stopped(self.kind))?
    }
}

struct ShardBuf {
    lease: Arc<HeldLease>,
    rows: Vec<RecordBatch>,
    rejects: Vec<RecordBatch>,
    last: Option<(String, i64)>,
    end_of_shard: bool,
    /// The buffered chunks' room in the memory budget, given back with the rows.
    reservations: Vec<budget::Reservation>,
}

/// Everything the sink needs to run.
pub struct TableSink {
    pub kind: Kind,
    pub application: String,
    /// This worker's id, recorded in each commit's info.
    pub writer: String,
    pub table: delta::Appender,
    pub rejects_table: delta::Appender,
    pub policy: FlushPolicy,
    pub progress: Arc<crate::progress::RunProgress>,
    /// Crash tests only: abort at a chosen point of a flush.
    pub fault: Option<crate::fault::Fault>,
    pub maintenance: crate::config::MaintenancePolicy,
    pub health: Option<Arc<crate::telemetry::Health>>,
    /// The worker's memory budget, shared with every reader and sink.
    pub budget: Arc<budget::MemoryBudget>,
}

/// Flushes that failed in a row, and whether the last one was a refusal (a table feature
/// pinstream cannot honour), which is logged once per run of refusals.
#[derive(Debug, Default, Clone, Copy)]
struct Failures {
    count: u32,
    refusing: bool,
}

/// Chunks in flight per sink before readers wait (backpressure).
const CHANNEL_CHUNKS: usize = 16;

impl TableSink {
    /// Starts the sink task. It ends when every sender is dropped, after a last flush.
    pub fn spawn(self) -> (SinkHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let totals = Arc::new(SinkTotals::default());
        let handle = SinkHandle {
            kind: self.kind,
            tx,
            totals: totals.clone(),
        };
        let task = tokio::spawn(self.run(rx, totals));
        (handle, task)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<SinkMsg>, totals: Arc<SinkTotals>) {
        let mut buf: BTreeMap<String, ShardBuf> = BTreeMap::new();
        let (mut rows, mut bytes) = (0usize, 0usize);
        // When the buffered batch must be committed (see `batch_due`).
        let mut due_at: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut failures = Failures::default();
        let holding = self.budget.holding();
        loop {
            // The budget this sink can give back if readers wait for room; nothing while
            // it waits to retry, so that the other sinks make the room instead.
            let held = match retry_at {
                Some(_) => 0,
                None => buf
                    .values()
                    .flat_map(|b| &b.reservations)
                    .map(budget::Reservation::bytes)
                    .sum(),
            };
            holding.set(held);
            let due = match (due_at, retry_at) {
                (_, Some(r)) => Some(r),
                (Some(f), None) => Some(f),
                (None, None) => None,
            };
            let budget = self.budget.clone();
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sleep_until_opt(due) => {
                    self.flush_or_retry(&mut buf, &totals, &mut failures, &mut retry_at, &mut rows, &mut bytes, &mut due_at).await;
                    continue;
                }
                // A reader waits for room in the memory budget: commit what we hold now if
                // we hold an equal share or more (the largest holders make the room; a
                // trickle keeps its own pace while another stream catches up).
                _ = budget.pressed(), if rows > 0 && retry_at.is_none() => {
                    if !budget.should_flush(held) {
                        continue;
                    }
                    metrics::counter!("pinstream_pressure_flushes_total", "table" => self.kind.name()).increment(1);
                    self.flush_or_retry(&mut buf, &totals, &mut failures, &mut retry_at, &mut rows, &mut bytes, &mut due_at).await;
                    continue;
                }
            };
            match msg {
                Some(SinkMsg::Chunk(c)) => {
                    rows += c.rows.num_rows() + c.rejects.num_rows();
                    bytes += c.bytes;
                    let chunk_due = batch_due(
                        Instant::now(),
                        c.oldest_arrival_micros,
                        chrono::Utc::now().timestamp_micros(),
                        self.policy.max_batch_age,
                    );
                    due_at = Some(due_at.map_or(chunk_due, |d| d.min(chunk_due)));
                    add_chunk(&mut buf, c);
                    buffer_gauges(self.kind, rows, bytes);
                    let full =
                        rows >= self.policy.max_batch_rows || bytes >= self.policy.max_batch_bytes;
                    if full && retry_at.is_none() {
                        self.flush_or_retry(
                            &mut buf,
                            &totals,
                            &mut failures,
                            &mut retry_at,
                            &mut rows,
                            &mut bytes,
                            &mut due_at,
                        )
                        .await;
                    }
                }
                Some(SinkMsg::Flush(reply)) => {
                    let res = self.flush(&mut buf, &totals).await;
                    if res.is_ok() {
                        metrics::histogram!("pinstream_flush_bytes", "table" => self.kind.name())
                            .record(bytes as f64);
                        buffer_gauges(self.kind, 0, 0);
                        (rows, bytes, due_at, retry_at, failures) =
                            (0, 0, None, None, Failures::default());
                    }
                    let _ = reply.send(res);
                }
                None => {
                    if let Err(e) = self.flush(&mut buf, &totals).await {
                        tracing::error!(table = self.kind.name(), error = %e, "final flush failed; rows stay uncommitted and will be read again from the last checkpoint");
                    }
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn flush_or_retry(
        &mut self,
        buf: &mut BTreeMap<String, ShardBuf>,
        totals: &SinkTotals,
        failures: &mut Failures,
        retry_at: &mut Option<Instant>,
        rows: &mut usize,
        bytes: &mut usize,
        due_at: &mut Option<Instant>,
    ) {
        let res = self.flush(buf, totals).await;
        let refused = match &res {
            Err(SinkError::Commit { table, source }) if delta::features::is_refusal(source) => {
                Some((table.clone(), source.to_string()))
            }
            _ => None,
        };
        if let Some(h) = &self.health {
            if res.is_ok() {
                h.flush_ok();
                h.table_refused(self.kind.name(), None);
                h.table_refused(self.kind.rejects_table(), None);
            } else {
                h.flush_failed()
            }
            if let Some((table, why)) = &refused {
                h.table_refused(table, Some(why));
            }
        }
        match res {
            Ok(()) => {
                metrics::histogram!("pinstream_flush_bytes", "table" => self.kind.name())
                    .record(*bytes as f64);
                buffer_gauges(self.kind, 0, 0);
                (*rows, *bytes, *due_at, *retry_at, *failures) =
                    (0, 0, None, None, Failures::default())
            }
            Err(e) => {
                failures.count += 1;
                let wait = backoff(failures.count);
                // Said once per run of refusals, whatever failed before it.
                let first_refusal = refused.is_some() && !failures.refusing;
                failures.refusing = refused.is_some();
                match refused {
                    // Said once: retrying cannot help until the table changes. The rows
                    // stay buffered (readers wait on the memory budget, nothing is lost)
                    // and the flush is tried again, in case it did.
                    Some(_) if first_refusal => {
                        tracing::error!(table = self.kind.name(), error = %e, "refusing to append to the table; its rows stay buffered and its shards wait until it changes")
                    }
                    Some(_) => {
                        tracing::debug!(table = self.kind.name(), error = %e, retry_in = ?wait, "still refusing to append to the table")
                    }
                    None => {
                        tracing::warn!(table = self.kind.name(), error = %e, retry_in = ?wait, "flush failed; will retry")
                    }
                }
                *retry_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Commits everything buffered, then checkpoints each shard (docs/DESIGN.md, "Exactly
    /// once into Delta"). On a commit error the rows stay buffered for the next attempt;
    /// rejects already committed leave the buffer.
    async fn flush(
        &mut self,
        buf: &mut BTreeMap<String, ShardBuf>,
        totals: &SinkTotals,
    ) -> Result<(), SinkError> {
        let mut planned = shards_to_commit(buf);
        if planned.is_empty() {
            return Ok(());
        }
        self.fence_cleaned(buf, &mut planned).await?;
        if planned.is_empty() {
            return Ok(());
        }
        self.fault_at(FaultPoint::BeforeCommit)?;
        // Rejects first: a crash between the two commits re-reads the batch, and the next
        // owner skips the rejects the rejects commit covers; a reject is never lost.
        if self.commit_rejects(buf, &mut planned, totals).await? {
            self.fault_at(FaultPoint::BetweenCommits)?;
        }
        let Some((version, good_rows)) = self.commit_cleaned(buf, &mut planned).await? else {
            return Ok(());
        };
        self.fault_at(FaultPoint::AfterCommit)?;
        self.count_committed(totals, false, good_rows);
        metrics::histogram!("pinstream_flush_rows", "table" => self.kind.name())
            .record(good_rows as f64);
        self.checkpoint_all(buf, &planned, version).await;
        self.fault_at(FaultPoint::AfterCheckpoint)?;
        Ok(())
    }

    /// Drops the shards whose txn version in the cleaned table is no longer the lease's
    /// `batch_version` (someone else committed for them since), before any file is
    /// written. The commit itself checks the same again against the version it lands on.
    async fn fence_cleaned(
        &mut self,
        buf: &mut BTreeMap<String, ShardBuf>,
        planned: &mut Vec<String>,
    ) -> Result<(), SinkError> {
        let app_ids: Vec<String> = planned
            .iter()
            .map(|k| buf[k].lease.app_id(&self.application))
            .collect();
        let app_refs: Vec<&str> = app_ids.iter().map(String::as_str).collect();
        let versions =
            self.table
                .txn_versions(&app_refs)
                .await
                .map_err(|source| SinkError::Commit {
                    table: self.kind.name().into(),
                    source,
                })?;
        let mut fenced = Vec::new();
        for (key, t) in planned.iter().zip(versions) {
            let expected = buf[key].lease.versions().batch_version;
            if t.unwrap_or(0) != expected {
                tracing::warn!(lease = %key, table_version = t.unwrap_or(0), lease_version = expected, "another writer committed for this shard; dropping our rows");
                fenced.push(key.clone());
            }
        }
        drop_fenced(buf, planned, &fenced);
        Ok(())
    }

    /// Commits the rejects of the planned shards that have any, fenced on each shard's
    /// rejects txn version; shards fenced there are dropped. Committed rejects leave the
    /// buffer, so a retry after a failed cleaned commit writes only rejects read since.
    /// Returns whether anything was committed.
    async fn commit_rejects(
        &mut self,
        buf: &mut BTreeMap<String, ShardBuf>,
        planned: &mut Vec<String>,
        totals: &SinkTotals,
    ) -> Result<bool, SinkError> {
        loop {
            let keys: Vec<String> = planned
                .iter()
                .filter(|k| buf[*k].rejects.iter().any(|b| b.num_rows() > 0))
                .cloned()
                .collect();
            if keys.is_empty() {
                return Ok(false);
            }
            let shards = self.shard_commits(buf, &keys, true);
            let batches: Vec<RecordBatch> = keys
                .iter()
                .flat_map(|k| buf[k].rejects.iter().cloned())
                .collect();
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            match self.append(true, &batches, &shards).await? {
                Appended::Fenced(fenced) => {
                    tracing::warn!(leases = ?fenced, "another writer committed rejects for these shards; dropping our rows");
                    drop_fenced(buf, planned, &fenced);
                }
                Appended::Committed(version) => {
                    for shard in &shards {
                        let sb = buf
                            .get_mut(&shard.lease_key)
                            .expect("planned shard is buffered");
                        sb.rejects.clear();
                        sb.lease.update_versions(|v| {
                            v.rejects_version = version;
                            v.rejects_position =
                                Some((shard.last_sequence.clone(), shard.last_sub_sequence));
                        });
                    }
                    self.count_committed(totals, true, rows);
                    return Ok(true);
                }
            }
        }
    }

    /// Commits the cleaned rows of every planned shard as one commit, fenced on each shard's
    /// `batch_version`; shards fenced there are dropped and the rest committed without
    /// them. Returns the commit's version and rows, or `None` when no shard is left.
    async fn commit_cleaned(
        &mut self,
        buf: &mut BTreeMap<String, ShardBuf>,
        planned: &mut Vec<String>,
    ) -> Result<Option<(i64, usize)>, SinkError> {
        while !planned.is_empty() {
            let shards = self.shard_commits(buf, planned, false);
            let batches: Vec<RecordBatch> = planned
                .iter()
                .flat_map(|k| buf[k].rows.iter().cloned())
                .collect();
            match self.append(false, &batches, &shards).await? {
                Appended::Committed(version) => {
                    return Ok(Some((
                        version,
                        batches.iter().map(RecordBatch::num_rows).sum(),
                    )))
                }
                Appended::Fenced(fenced) => {
                    tracing::warn!(leases = ?fenced, "another writer committed for these shards; dropping our rows");
                    drop_fenced(buf, planned, &fenced);
                }
            }
        }
        Ok(None)
    }

    /// Counts one commit of `rows` rows to the rejects (`rejects`) or the cleaned table:
    /// the sink's totals, the run's progress and the written-rows metric.
    fn count_committed(&self, totals: &SinkTotals, rejects: bool, rows: usize) {
        let n = rows as u64;
        totals.commits.fetch_add(1, Ordering::Relaxed);
        self.progress.rows_committed.fetch_add(n, Ordering::Relaxed);
        if rejects {
            totals.rejects_committed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("pinstream_records_rejected_written_total", "table" => self.kind.rejects_table()).increment(n);
        } else {
            totals.rows_committed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("pinstream_records_written_total", "table" => self.kind.name())
                .increment(n);
        }
    }

    /// The parts of the shards `keys` in a commit to the rejects (`rejects`) or the cleaned
    /// table, each fenced on the shard's txn version in that table.
    fn shard_commits(
        &self,
        buf: &BTreeMap<String, ShardBuf>,
        keys: &[String],
        rejects: bool,
    ) -> Vec<ShardCommit> {
        keys.iter()
            .map(|k| {
                let v = buf[k].lease.versions();
                let expected = if rejects {
                    v.rejects_version
                } else {
                    v.batch_version
                };
                self.shard_commit(&buf[k], expected)
            })
            .collect()
    }

    /// A shard's part in a commit: its fence and where its buffered rows end.
    fn shard_commit(&self, sb: &ShardBuf, expected: i64) -> ShardCommit {
        let (last_sequence, last_sub_sequence) = sb.last.clone().unwrap_or_default();
        ShardCommit {
            app_id: sb.lease.app_id(&self.application),
            lease_key: sb.lease.key.clone(),
            expected,
            last_sequence,
            last_sub_sequence,
            shard_end: sb.end_of_shard,
        }
    }

    /// Checkpoints each committed shard at `version`, conditional on still holding it.
    async fn checkpoint_all(
        &self,
        buf: &mut BTreeMap<String, ShardBuf>,
        planned: &[String],
        version: i64,
    ) {
        for key in planned {
            let sb = buf.remove(key).expect("planned shard is buffered");
            let (seq, sub) = sb.last.clone().unwrap_or_default();
            let checkpoint = if sb.end_of_shard {
                Checkpoint::ShardEnd
            } else {
                Checkpoint::Sequence(seq)
            };
            self.checkpoint(&sb.lease, &checkpoint, sub, version).await;
        }
    }

    fn fault_at(&self, point: FaultPoint) -> Result<(), SinkError> {
        match &self.fault {
            Some(f) => f.hit(point).map_err(SinkError::Injected),
            None => Ok(()),
        }
    }

    /// One fenced append to the cleaned or the rejects table, with its metrics, log line
    /// and the log checkpoint that may follow it.
    async fn append(
        &mut self,
        rejects: bool,
        batches: &[RecordBatch],
        shards: &[ShardCommit],
    ) -> Result<Appended, SinkError> {
        let (table, name) = if rejects {
            (&mut self.rejects_table, self.kind.rejects_table())
        } else {
            (&mut self.table, self.kind.name())
        };
        let started = Instant::now();
        let res = table.append(&self.writer, batches, shards).await;
        metrics::histogram!("pinstream_delta_commit_duration_seconds", "table" => name)
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok(Appended::Committed(version)) => {
                crate::maintenance::after_append(table, version as u64, &self.maintenance).await;
                metrics::counter!("pinstream_delta_commits_total", "table" => name).increment(1);
                tracing::info!(
                    table = name,
                    version,
                    rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
                    shards = shards.len(),
                    "committed"
                );
                Ok(Appended::Committed(version))
            }
            Ok(fenced) => Ok(fenced),
            Err(source) => {
                metrics::counter!("pinstream_delta_commit_failures_total", "table" => name)
                    .increment(1);
                Err(SinkError::Commit {
                    table: name.into(),
                    source,
                })
            }
        }
    }

    /// Checkpoints one shard at `version` through its lease keeper, conditional on still
    /// holding the lease; a lease that cannot be checkpointed is given up (the next owner
    /// finds the commit through the table's txn version).
    async fn checkpoint(&self, lease: &HeldLease, checkpoint: &Checkpoint, sub: i64, version: i64) {
        if *checkpoint == Checkpoint::ShardEnd
            && self.fault_at(FaultPoint::ShardEndCheckpoint).is_err()
        {
            tracing::error!(lease = %lease.key, "checkpoint failed (injected); giving the shard up");
            lease.mark_lost("checkpoint failed");
            return;
        }
        let mut versions = lease.versions();
        versions.batch_version = version;
        match lease.checkpoint(checkpoint.clone(), sub, versions).await {
            Ok(()) => {
                lease.update_versions(|v| v.batch_version = version);
                tracing::debug!(lease = %lease.key, checkpoint = %checkpoint.as_str(), version, "checkpointed");
            }
            Err(LeaseError::Lost(_)) => lease.mark_lost("checkpoint refused"),
            Err(e) => {
                // Unknown outcome: stop this shard; the next owner resolves it from the table.
                tracing::error!(lease = %lease.key, error = %e, "checkpoint failed; giving the shard up");
                lease.mark_lost("checkpoint failed");
            }
        }
    }
}

/// The buffered shards that have something to commit, by lease key; drops the rows of
/// shards whose lease was lost and forgets shards with nothing read.
fn shards_to_commit(buf: &mut BTreeMap<String, ShardBuf>) -> Vec<String> {
    let keys: Vec<String> = buf.keys().cloned().collect();
    let mut planned = Vec::new();
    for key in keys {
        let sb = &buf[&key];
        if sb.lease.is_lost() {
            drop_shard(buf, &key);
        } else if sb.last.is_none() && !sb.end_of_shard {
            buf.remove(&key);
        } else {
            planned.push(key);
        }
    }
    planned
}

/// Marks the leases of `fenced` shards lost (someone else committed for them), drops their
/// rows and takes them out of the plan.
fn drop_fenced(buf: &mut BTreeMap<String, ShardBuf>, planned: &mut Vec<String>, fenced: &[String]) {
    for key in fenced {
        if let Some(sb) = buf.get(key) {
            sb.lease.mark_lost("another writer committed for the shard");
        }
        drop_shard(buf, key);
    }
    planned.retain(|k| !fenced.contains(k));
}

/// Buffer fill of one table, rows and bytes of record data waiting for a commit.
fn buffer_gauges(kind: Kind, rows: usize, bytes: usize) {
    metrics::gauge!("pinstream_buffer_rows", "table" => kind.name()).set(rows as f64);
    metrics::gauge!("pinstream_buffer_bytes", "table" => kind.name()).set(bytes as f64);
}

fn add_chunk(buf: &mut BTreeMap<String, ShardBuf>, c: Chunk) {
    let key = c.lease.key.clone();
    let entry = buf.entry(key).or_insert_with(|| ShardBuf {
        lease: c.lease.clone(),
        rows: Vec::new(),
        rejects: Vec::new(),
        last: None,
        end_of_shard: false,
        reservations: Vec::new(),
    });
    if !Arc::ptr_eq(&entry.lease, &c.lease) {
        // The lease was lost and taken again: what was buffered under the old hold is void.
        *entry = ShardBuf {
            lease: c.lease.clone(),
            rows: Vec::new(),
            rejects: Vec::new(),
            last: None,
            end_of_shard: false,
            reservations: Vec::new(),
        };
    }
    entry.reservations.extend(c.reservation);
    if c.rows.num_rows() > 0 {
        entry.rows.push(c.rows);
    }
    if c.rejects.num_rows() > 0 {
        entry.rejects.push(c.rejects);
    }
    if c.last.is_some() {
        entry.last = c.last;
    }
    entry.end_of_shard |= c.end_of_shard;
}

fn drop_shard(buf: &mut BTreeMap<String, ShardBuf>, key: &str) {
    if let Some(sb) = buf.remove(key) {
        let n: usize = sb
            .rows
            .iter()
            .chain(&sb.rejects)
            .map(RecordBatch::num_rows)
            .sum();
        tracing::info!(lease = %key, rows = n, "dropped uncommitted rows of a lost lease");
    }
}

/// When a chunk received at `now` must be committed: `max_batch_age` after its oldest
/// record arrived in Kinesis, so that a record waiting for the next poll does not also
/// wait a whole flush age in the buffer (visible within `max_batch_age` + commit time of
/// its arrival while the worker keeps up). Never later than `max_batch_age` after the
/// chunk came in (clock skew), and never sooner than half of it (a worker catching up on
/// old records still commits in batches, not once per chunk).
fn batch_due(
    now: Instant,
    oldest_arrival_micros: Option<i64>,
    wall_now_micros: i64,
    max_batch_age: Duration,
) -> Instant {
    let latest = now + max_batch_age;
    let Some(arrival) = oldest_arrival_micros else {
        return latest;
    };
    let waited = Duration::from_micros(wall_now_micros.saturating_sub(arrival).max(0) as u64);
    let by_arrival = now + max_batch_age.saturating_sub(waited);
    by_arrival.clamp(now + max_batch_age / 2, latest)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_one_flush_age_after_its_oldest_arrival_within_bounds() {
        let now = Instant::now();
        let age = Duration::from_secs(5);
        let wall = 1_700_000_000_000_000;
        // Read 800 ms after arrival: due 4.2 s from now.
        assert_eq!(
            batch_due(now, Some(wall - 800_000), wall, age),
            now + Duration::from_millis(4200)
        );
        // Catching up on hour-old records: half a flush age, not immediately.
        assert_eq!(
            batch_due(now, Some(wall - 3_600_000_000), wall, age),
            now + age / 2
        );
        // An arrival "in the future" (clock skew) or unknown: one full flush age.
        assert_eq!(batch_due(now, Some(wall + 2_000_000), wall, age), now + age);
        assert_eq!(batch_due(now, None, wall, age), now + age);
    }
}
