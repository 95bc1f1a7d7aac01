//! The lease coordinator of one worker: every `lease.scan_interval` it forgets lost leases,
//! syncs shards, scans the lease table, releases finished leases and takes what is due
//! (recovering where each shard resumes and starting its reader); in between it reacts to
//! readers and sinks that end. Graceful stop: stop reading, flush, checkpoint, release.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTable;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clean::{self, Kind};
use crate::delta::{self};
use crate::kinesis::StartAt;
use crate::lease::{self, ExpiryTracker, HeldLease, KeeperSettings, Lease, LeaseError, TakeKind};
use crate::sink::{SinkHandle, TableSink};

use super::recovery::resume_position;
use super::shard::{read_shard, Position, ShardExit};
use super::sync::{maintenance_owned, sync_shards, FinishedLeaseCleanup, Listing};
use super::{RunOptions, RunSummary, Shared, WorkerError};

/// How often a shard may fail in one `--available-now` run before the run gives up on it.
const DRAIN_ATTEMPTS: u32 = 3;

/// The lease coordinator of one worker: the leases it holds, their reader tasks, and the
/// table sinks they feed.
pub(super) struct Coordinator {
    pub(super) shared: Arc<Shared>,
    pub(super) opts: RunOptions,
    sinks: BTreeMap<Kind, SinkHandle>,
    /// The sink tasks, each ending with its kind (only at shutdown, unless it died).
    sink_tasks: JoinSet<Kind>,
    /// Separate handles (cleaned, rejects) for recovery reads, so they never wait on a sink.
    recovery_tables: BTreeMap<Kind, (DeltaTable, DeltaTable)>,
    kind_of: HashMap<String, Kind>,
    tracker: ExpiryTracker,
    /// Scans in a row that called for a steal by load from the same worker.
    steal_streak: lease::StealStreak,
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
    pub(super) listing: Listing,
    cleanup: FinishedLeaseCleanup,
    /// The kinds whose tables this worker maintains (compaction, vacuum), from each scan.
    pub(super) maintenance_owned: tokio::sync::watch::Sender<BTreeSet<Kind>>,
    readers: JoinSet<(String, ShardExit)>,
    reader_keys: HashMap<tokio::task::Id, String>,
    reader_stop: CancellationToken,
}

impl Coordinator {
    pub(super) async fn start(shared: Arc<Shared>, opts: RunOptions) -> Result<Self, WorkerError> {
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
            steal_streak: lease::StealStreak::default(),
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
            writer: self.opts.worker_id.clone(),
            table: delta::Appender::new(table),
            rejects_table: delta::Appender::new(rejects_table),
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

    /// The coordinator loop: every `lease.scan_interval` sync shards, scan, release
    /// finished leases and take what is due; in between, react to readers and sinks that
    /// end. Returns when `shutdown` is cancelled or, draining, when nothing is left.
    pub(super) async fn coordinate(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let mut tick = tokio::time::interval(self.shared.settings.lease.scan_interval);
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
                    Ok(listing) => self.set_listing(listing),
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
            // Unfinished leases nobody holds (free, or expired on this worker's clock), as
            // this scan saw them before taking: every worker says the same of the fleet.
            let failover = self.shared.settings.lease.failover_time;
            let unowned = all
                .iter()
                .filter(|l| !l.is_finished())
                .filter(|l| l.owner.is_none() || self.tracker.is_expired(l, cycle_at, failover))
                .count();
            metrics::gauge!("pinstream_leases_unowned").set(unowned as f64);
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
    fn candidates(&mut self, all: &[Lease], cycle_at: Instant) -> Vec<(Lease, TakeKind)> {
        let mut take: Vec<(Lease, TakeKind)> = lease::leases_to_take(
            all,
            &self.shared.me,
            &self.tracker,
            cycle_at,
            self.shared.settings.lease.failover_time,
            self.opts.available_now,
            &self.shared.settings.lease.balance,
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
        .collect();
        if self.shared.settings.lease.balance.mode == lease::BalanceMode::Load {
            // By load, a steal waits until scans in a row agree (measured loads are noisy).
            let victim = take
                .iter()
                .find(|(_, how)| *how == TakeKind::Steal)
                .and_then(|(l, _)| l.owner.clone());
            let min_age = self.shared.settings.lease.failover_time * 2;
            if !self
                .steal_streak
                .confirm(victim.as_deref(), cycle_at, min_age)
            {
                take.retain(|(_, how)| *how != TakeKind::Steal);
            }
        }
        take
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
        if how == TakeKind::Steal {
            // The old owner learns of the steal at its next renewal (within failover / 3)
            // and stops committing then. Reading the table before that would likely see
            // its last commit land after our recovery, and our first commit would be fenced
            // and the lease handed back: safe, but a wasted hand-off. Wait it out (our
            // keeper renews meanwhile).
            let wait = shared.settings.lease.failover_time.mul_f64(0.4);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = handle.token.cancelled() => {}
            }
        }
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
                handle.give_up_with_error(&e.to_string());
            }
        }
    }

    /// `--available-now`, everything taken so far drained: lists the shards again so that
    /// children of a reshard during the run get their leases, and lets a shard drained as
    /// caught up be read again if it has been closed since (it must reach SHARD_END for its
    /// children to be read).
    async fn sync_for_drain(&mut self) {
        match sync_shards(&self.shared.aws, &self.shared.leases, &self.shared.settings).await {
            Ok(listing) => self.set_listing(listing),
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

    /// Keeps the last shard listing, and tells the readers which shards are closed.
    pub(super) fn set_listing(&mut self, listing: Listing) {
        self.shared
            .closed_shards
            .send_replace(listing.closed.clone());
        self.listing = listing;
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
            ShardExit::Stalled(why) => {
                // Not a bug: the network or the service. Another worker (or this one, after
                // the same backoff as a failure) reads it again.
                let wait = self.retry_after_failure(&key);
                tracing::warn!(lease = %key, reason = %why, retry_in = ?wait, "handing back the lease of a shard that is not being read");
                if let Some(h) = self.held.remove(&key) {
                    h.give_up_with_error(&why);
                }
            }
            ShardExit::Failed(why) => {
                let wait = self.retry_after_failure(&key);
                tracing::error!(lease = %key, error = %why, retry_in = ?wait, "shard reader failed; releasing its lease");
                metrics::counter!("pinstream_shard_reader_failures_total").increment(1);
                if let Some(h) = self.held.remove(&key) {
                    h.give_up_with_error(&why);
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
    pub(super) async fn stop(
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
