//! A lease this worker holds, and its keeper: one task per held lease that owns the
//! lease's counter and makes every conditional write of it (renewals on their own schedule,
//! checkpoints the sink asks for, the final release), one at a time, so they never race on
//! the counter and no lock is held across a DynamoDB call.
//!
//! The keeper renews every `failover_time / 3` whatever the rest of the worker is doing. A
//! refused renewal means another worker took the lease; renewals that keep failing for
//! `failover_time` mean others may have taken it by now: in both cases the lease is lost
//! (the reader stops, the sink drops the shard's rows and never commits for it again). When
//! the lease is lost or given up, the keeper hands it back if the table still names us.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, CommittedPosition, Lease, LeaseError, LeaseTable, RejectsMark};
use crate::fault::{Fault, FaultPoint};

/// The txn versions a held lease's commits are fenced on, owned by the sink after recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitVersions {
    /// The shard's txn version in the cleaned table as of the last checkpoint (the table
    /// version of that commit): the cleaned commit's fence.
    pub batch_version: i64,
    /// The shard's txn version in the rejects table as this worker last read or wrote it
    /// (the rejects commit's fence).
    pub rejects_version: i64,
    /// Where the rejects commit `rejects_version` ends (`None`: no rejects committed yet),
    /// written to the lease with each checkpoint.
    pub rejects_position: Option<(String, i64)>,
}

impl CommitVersions {
    /// The rejects mark to write with a checkpoint.
    pub fn rejects_mark(&self) -> Option<RejectsMark> {
        self.rejects_position
            .as_ref()
            .map(|(sequence, sub_sequence)| RejectsMark {
                version: self.rejects_version,
                sequence: sequence.clone(),
                sub_sequence: *sub_sequence,
            })
    }
}

/// How a keeper renews.
#[derive(Debug, Clone)]
pub struct KeeperSettings {
    pub table: LeaseTable,
    pub me: String,
    pub failover: Duration,
    /// Fault tests only.
    pub fault: Option<Fault>,
}

enum KeeperMsg {
    Checkpoint {
        checkpoint: Checkpoint,
        sub_sequence: i64,
        versions: CommitVersions,
        reply: oneshot::Sender<Result<(), LeaseError>>,
    },
}

/// A lease this worker holds, shared by the coordinator, the shard's reader and the sink.
#[derive(Debug)]
pub struct HeldLease {
    pub key: String,
    pub stream: String,
    pub shard_id: String,
    /// The lease's txn app id, if it records one (see [`Lease::app_id`]).
    txn_app_id: Option<String>,
    /// Cancelled when the reader must stop: the worker stops (the sink still commits what
    /// it holds), or the lease is lost or given up.
    pub token: CancellationToken,
    /// Cancelled when the lease is lost or given up: the keeper hands it back and ends.
    done: CancellationToken,
    lost: AtomicBool,
    /// Why the lease was given up, when it was for an error (recorded on the lease).
    error: Mutex<Option<String>>,
    versions: Mutex<CommitVersions>,
    /// Records and bytes read from the shard so far (the keeper derives its load from them).
    records: AtomicU64,
    bytes: AtomicU64,
    /// The load as the lease row said when it was taken: the keeper's averages start there.
    initial_load: Load,
    /// The shard's last MillisBehindLatest; `i64::MIN` until the first answer.
    millis_behind: AtomicI64,
    /// When the reader last had an answer, and why it has had none for long, if so.
    reading: Mutex<Reading>,
    keeper: mpsc::Sender<KeeperMsg>,
}

/// How the shard's reading goes, as the keeper reports it with each renewal.
#[derive(Debug)]
struct Reading {
    /// The last answer (GetRecords, or a fan-out event); the take, before the first.
    last_answer: Instant,
    /// Set while the reader's calls keep failing past `reader.stall_timeout`.
    stalled: Option<String>,
}

impl HeldLease {
    /// Starts holding `lease`, taken with counter `counter`; `readers` stops every reader
    /// of the worker. Returns the handle and its keeper, a future to spawn that renews
    /// until the lease is lost or given up and then hands it back.
    pub fn start(
        lease: &Lease,
        counter: u64,
        readers: &CancellationToken,
        settings: KeeperSettings,
    ) -> (
        Arc<HeldLease>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let held = Arc::new(HeldLease {
            key: lease.key.clone(),
            stream: lease.stream.clone(),
            shard_id: lease.shard_id.clone(),
            txn_app_id: lease.txn_app_id.clone(),
            token: readers.child_token(),
            done: CancellationToken::new(),
            lost: AtomicBool::new(false),
            error: Mutex::new(None),
            versions: Mutex::new(CommitVersions {
                batch_version: lease.batch_version,
                ..CommitVersions::default()
            }),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            initial_load: Load {
                records_per_second: lease.records_per_second.unwrap_or(0.0),
                bytes_per_second: lease.bytes_per_second.unwrap_or(0.0),
            },
            millis_behind: AtomicI64::new(i64::MIN),
            reading: Mutex::new(Reading {
                last_answer: Instant::now(),
                stalled: None,
            }),
            keeper: tx,
        });
        let keeper = Keeper {
            lease: held.clone(),
            settings,
            counter,
            rx,
            last_renewed: Instant::now(),
        };
        (held, keeper.run())
    }

    /// The txn app id of this shard in a Delta table of `application`.
    pub fn app_id(&self, application: &str) -> String {
        self.txn_app_id
            .clone()
            .unwrap_or_else(|| format!("{application}/{}/{}", self.stream, self.shard_id))
    }

    /// Whether the lease is lost or given up: nothing may be committed for it any more.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Marks the lease lost: stop reading, never commit or checkpoint for it again; the
    /// keeper hands it back.
    pub fn mark_lost(&self, why: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            metrics::counter!("pinstream_leases_lost_total").increment(1);
            tracing::warn!(lease = %self.key, reason = why, "lease lost; stopping the shard and dropping its uncommitted rows");
        }
        self.token.cancel();
        self.done.cancel();
    }

    /// Gives the lease up on purpose (shutdown, shard finished, reader failed): like
    /// [`HeldLease::mark_lost`] without the warning; the keeper hands it back.
    pub fn give_up(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.token.cancel();
        self.done.cancel();
    }

    /// Gives the lease up because its shard cannot go on here (`why` is recorded on the
    /// lease, for `pinstream status`, until the next checkpoint).
    pub fn give_up_with_error(&self, why: &str) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
        self.give_up();
    }

    /// The commit versions (a copy).
    pub fn versions(&self) -> CommitVersions {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the commit versions.
    pub fn update_versions(&self, f: impl FnOnce(&mut CommitVersions)) {
        f(&mut self.versions.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Counts records and bytes read and notes the shard's lag (reader statistics, written
    /// with the renewals).
    pub fn note_read(&self, records: usize, bytes: usize, millis_behind: Option<i64>) {
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(ms) = millis_behind {
            self.millis_behind.store(ms, Ordering::Relaxed);
        }
        let mut reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        reading.last_answer = Instant::now();
        reading.stalled = None;
    }

    /// Notes that the reader's calls have kept failing (`Some(why)`) past its bound; the
    /// next renewal writes it to the lease, for `pinstream status`. The next answer clears it.
    pub fn note_stalled(&self, why: Option<String>) {
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stalled = why;
    }

    /// How long since the reader last had an answer, and why it is stalled, if it is.
    fn reading(&self) -> (Duration, Option<String>) {
        let reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        (reading.last_answer.elapsed(), reading.stalled.clone())
    }

    /// Records a committed position on the lease (through the keeper), conditional on
    /// still holding it; the commit versions' rejects mark goes with it.
    pub async fn checkpoint(
        &self,
        checkpoint: Checkpoint,
        sub_sequence: i64,
        versions: CommitVersions,
    ) -> Result<(), LeaseError> {
        let lost = || LeaseError::Lost(self.key.clone());
        if self.is_lost() {
            return Err(lost());
        }
        let (reply, answer) = oneshot::channel();
        let msg = KeeperMsg::Checkpoint {
            checkpoint,
            sub_sequence,
            versions,
            reply,
        };
        self.keeper.send(msg).await.map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

struct Keeper {
    lease: Arc<HeldLease>,
    settings: KeeperSettings,
    counter: u64,
    rx: mpsc::Receiver<KeeperMsg>,
    /// When the last write that moved the counter (renewal or checkpoint) was sent:
    /// others count `failover_time` from a moment after it reached the table.
    last_renewed: Instant,
}

impl Keeper {
    async fn run(mut self) {
        let every = self.settings.failover / 3;
        let mut next_renewal = Instant::now() + every;
        let mut meter = LoadMeter::starting_at(self.lease.initial_load, self.settings.failover * 2);
        loop {
            tokio::select! {
                biased;
                _ = self.lease.done.cancelled() => break,
                Some(msg) = self.rx.recv() => match msg {
                    KeeperMsg::Checkpoint { checkpoint, sub_sequence, versions, reply } => {
                        let res = self.checkpoint(&checkpoint, sub_sequence, &versions, &mut meter).await;
                        if res.is_ok() {
                            // The checkpoint moved the counter and carried the load: it
                            // is this interval's renewal (one write fewer).
                            next_renewal = self.last_renewed + every;
                        }
                        let _ = reply.send(res);
                    }
                },
                _ = tokio::time::sleep_until(next_renewal) => {
                    let sent = Instant::now();
                    // A renewal that does not answer within its interval counts as failed.
                    let res = match tokio::time::timeout(every, self.renew(&mut meter)).await {
                        Ok(res) => res,
                        Err(_) => Err(LeaseError::Table {
                            table: self.settings.table.name().into(),
                            message: format!("renewal took longer than {every:?}"),
                        }),
                    };
                    match res {
                        Ok(()) => self.last_renewed = sent,
                        Err(LeaseError::Lost(_)) => {
                            self.lease.mark_lost("renewal refused: another worker took the lease");
                            break;
                        }
                        Err(e) if sent.duration_since(self.last_renewed) + every >= self.settings.failover => {
                            tracing::error!(lease = %self.lease.key, error = %e, "renewals failed for the failover time; treating the lease as lost");
                            self.lease.mark_lost("renewals kept failing");
                            break;
                        }
                        Err(e) => tracing::warn!(lease = %self.lease.key, error = %e, "renewal failed; will retry"),
                    }
                    next_renewal = sent + every;
                }
            }
        }
        self.lease.give_up();
        self.release().await;
    }

    async fn renew(&mut self, meter: &mut LoadMeter) -> Result<(), LeaseError> {
        if let Some(f) = &self.settings.fault {
            if f.hit(FaultPoint::Renew).is_err() {
                return Err(LeaseError::Table {
                    table: self.settings.table.name().into(),
                    message: "injected renewal failure (--fault renew)".into(),
                });
            }
        }
        let load = meter.next(
            self.lease.records.load(Ordering::Relaxed),
            self.lease.bytes.load(Ordering::Relaxed),
            Instant::now(),
        );
        let lag = Some(self.lease.millis_behind.load(Ordering::Relaxed)).filter(|ms| *ms >= 0);
        let (age, stalled) = self.lease.reading();
        self.read_age_gauge().set(age.as_secs_f64());
        let s = &self.settings;
        self.counter = s
            .table
            .renew(
                &self.lease.key,
                &s.me,
                self.counter,
                lag,
                load,
                stalled.as_deref(),
            )
            .await?;
        meter.commit();
        Ok(())
    }

    async fn checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        sub_sequence: i64,
        versions: &CommitVersions,
        meter: &mut LoadMeter,
    ) -> Result<(), LeaseError> {
        if self.lease.is_lost() {
            return Err(LeaseError::Lost(self.lease.key.clone()));
        }
        let rejects = versions.rejects_mark();
        let sent = Instant::now();
        let load = meter.next(
            self.lease.records.load(Ordering::Relaxed),
            self.lease.bytes.load(Ordering::Relaxed),
            sent,
        );
        // A checkpoint stands for a renewal (the next one is put off), so it reports the
        // reading as a renewal does: else a shard checkpointing faster than it renews
        // would keep a stale age and a stale stall on its lease row.
        let (age, stalled) = self.lease.reading();
        self.read_age_gauge().set(age.as_secs_f64());
        let position = CommittedPosition {
            checkpoint,
            sub_sequence,
            batch_version: versions.batch_version,
            rejects: rejects.as_ref(),
            load: Some(load),
            read_stall: stalled.as_deref(),
        };
        let s = &self.settings;
        self.counter = s
            .table
            .checkpoint(&self.lease.key, &s.me, self.counter, &position)
            .await?;
        meter.commit();
        self.last_renewed = sent;
        Ok(())
    }

    /// `pinstream_shard_read_age_seconds` of this lease's shard: set at every renewal and
    /// checkpoint, so
    /// it keeps growing while the reader gets no answer, whatever the reader is stuck on.
    fn read_age_gauge(&self) -> metrics::Gauge {
        metrics::gauge!("pinstream_shard_read_age_seconds", "stream" => self.lease.stream.clone(), "shard_id" => self.lease.shard_id.clone())
    }

    /// Hands the lease back if the table still names us at our counter; if someone else
    /// took it, the conditional write changes nothing.
    async fn release(&self) {
        // Not ours any more: an age here would alert on a shard another worker reads.
        self.read_age_gauge().set(0.0);
        let s = &self.settings;
        let error = self
            .lease
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match s
            .table
            .release(&self.lease.key, &s.me, self.counter, error.as_deref())
            .await
        {
            Ok(()) => {
                metrics::counter!("pinstream_leases_released_total").increment(1);
                tracing::info!(lease = %self.lease.key, "lease released");
            }
            Err(LeaseError::Lost(_)) => {
                tracing::debug!(lease = %self.lease.key, "lease already taken by another worker")
            }
            Err(e) => {
                tracing::warn!(lease = %self.lease.key, error = %e, "release failed; the lease will expire instead")
            }
        }
    }
}

/// A shard's load: what its reader takes from it per second, smoothed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub records_per_second: f64,
    pub bytes_per_second: f64,
}

/// Turns the reader's running totals into a smoothed load at each renewal: an exponential
/// moving average in time (time constant `tau`, two failover times: six renewals), so a
/// sample weighs by the time it covers. A checkpoint a moment after a renewal (a rate over
/// 50 ms of bursty polls) barely moves it, and one slow or bursty poll does not move a
/// lease, however often the sink checkpoints.
#[derive(Debug, Clone)]
struct LoadMeter {
    load: Load,
    tau: Duration,
    /// Totals and time of the last renewal that reached the table.
    mark: (u64, u64, Instant),
    /// The load and mark of the renewal being sent (kept once it succeeds).
    pending: Option<(Load, (u64, u64, Instant))>,
}

impl LoadMeter {
    fn starting_at(load: Load, tau: Duration) -> Self {
        LoadMeter {
            load,
            tau,
            mark: (0, 0, Instant::now()),
            pending: None,
        }
    }

    /// The average with a new sample from the totals now.
    fn next(&mut self, records: u64, bytes: u64, now: Instant) -> Load {
        let secs = now.duration_since(self.mark.2).as_secs_f64();
        if secs <= 0.0 {
            return self.load;
        }
        let sample = |total: u64, at_mark: u64| total.saturating_sub(at_mark) as f64 / secs;
        let weight = 1.0 - (-secs / self.tau.as_secs_f64().max(1e-9)).exp();
        let blend = |avg: f64, x: f64| avg + weight * (x - avg);
        let load = Load {
            records_per_second: blend(self.load.records_per_second, sample(records, self.mark.0)),
            bytes_per_second: blend(self.load.bytes_per_second, sample(bytes, self.mark.1)),
        };
        self.pending = Some((load, (records, bytes, now)));
        load
    }

    /// The renewal carrying the last [`LoadMeter::next`] reached the table.
    fn commit(&mut self) {
        if let Some((load, mark)) = self.pending.take() {
            (self.load, self.mark) = (load, mark);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_is_a_smoothed_rate_that_starts_from_the_row_and_keeps_only_written_samples() {
        let start = Instant::now();
        // A time constant under which a 1 s sample weighs 20 %.
        let tau = Duration::from_secs_f64(-1.0 / 0.8f64.ln());
        let mut m = LoadMeter::starting_at(
            Load {
                records_per_second: 100.0,
                bytes_per_second: 50_000.0,
            },
            tau,
        );
        m.mark.2 = start;
        // 1 s later, 400 records / 200 KB were read: the average moves 20 % of the way.
        let l = m.next(400, 200_000, start + Duration::from_secs(1));
        assert!((l.records_per_second - 160.0).abs() < 1e-6, "{l:?}");
        assert!((l.bytes_per_second - 80_000.0).abs() < 1e-3, "{l:?}");
        // That write failed: the next sample counts from the last written mark and blends
        // into the last written average (800 records in 2 s: the same 400/s, over 2 s, so
        // 1 - 0.8^2 = 36 % of the way from 100: 208).
        let again = m.next(800, 400_000, start + Duration::from_secs(2));
        assert!((again.records_per_second - 208.0).abs() < 1e-6, "{again:?}");
        m.commit();
        // Steady 400 records/s converges on it.
        let mut now = start + Duration::from_secs(2);
        let (mut records, mut bytes) = (800, 400_000);
        let mut last = again;
        for _ in 0..30 {
            now += Duration::from_secs(1);
            (records, bytes) = (records + 400, bytes + 200_000);
            last = m.next(records, bytes, now);
            m.commit();
        }
        assert!((last.records_per_second - 400.0).abs() < 1.0, "{last:?}");
    }

    #[test]
    fn a_sample_weighs_by_the_time_it_covers() {
        let start = Instant::now();
        let steady = Load {
            records_per_second: 100.0,
            bytes_per_second: 10_000.0,
        };
        let mut m = LoadMeter::starting_at(steady, Duration::from_secs(20));
        m.mark.2 = start;
        // A checkpoint 50 ms after the last write saw a burst of 20 records (400/s): the
        // average barely moves (0.25 % of the way), where a fixed share per write would
        // have moved it a fifth.
        let l = m.next(20, 2_000, start + Duration::from_millis(50));
        assert!((l.records_per_second - 100.75).abs() < 0.01, "{l:?}");
        // A sample over one time constant moves it 63 % of the way.
        let mut m = LoadMeter::starting_at(steady, Duration::from_secs(20));
        m.mark.2 = start;
        let l = m.next(8_000, 800_000, start + Duration::from_secs(20));
        let expected = 100.0 + (1.0 - (-1.0f64).exp()) * 300.0;
        assert!((l.records_per_second - expected).abs() < 1e-6, "{l:?}");
    }
}
