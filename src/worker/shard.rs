//! One shard's reader task: records from its [`Source`] (GetRecords polling or a fan-out
//! subscription) with backoff, KPL de-aggregation, cleaning into a [`Chunk`] for the table
//! sink, until the lease is lost, the worker stops, the shard ends, or (draining) it has
//! caught up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::source::Source;
use super::stall::{StallWatch, Verdict};
use super::Shared;
use crate::aws::ServiceError;
use crate::backoff::backoff;
use crate::clean::{self, Kind, RecordMeta, Reject, RejectReason, RejectsColumns, TableColumns};
use crate::fault::FaultPoint;
use crate::kinesis::{self, ShardPresence, StartAt};
use crate::kpl::{self, Decoded};
use crate::lease::HeldLease;
use crate::sink::{Chunk, SinkMsg};

/// Why a shard task ended.
#[derive(Debug)]
pub(super) enum ShardExit {
    /// Read to the end of a closed shard (the sink checkpoints SHARD_END).
    ShardEnd,
    /// `--available-now`: nothing more to read right now.
    CaughtUp,
    /// Lease lost or shutdown.
    Cancelled,
    /// The reader cannot go on (a bug): its lease must be handed back.
    Failed(String),
    /// No call has had an answer for twice `reader.stall_timeout`: the lease is handed
    /// back (with this reason) so that the shard is read again.
    Stalled(String),
    /// The table sink is gone (it died): the coordinator restarts it and hands back the
    /// leases of its kind.
    SinkGone,
}

/// A record's position in its shard: sequence number and sub-sequence number.
pub(super) type Position = (String, i64);

/// Whether `a` is at or before `b`. Sequence numbers are decimal strings without leading
/// zeros, so shorter is smaller.
fn at_or_before(a: (&str, i64), b: &Position) -> bool {
    (a.0.len(), a.0, a.1) <= (b.0.len(), b.0.as_str(), b.1)
}

/// Reads one shard until the lease is lost, shutdown, the shard ends, or (draining) it has
/// caught up.
pub(super) async fn read_shard(
    shared: Arc<Shared>,
    kind: Kind,
    lease: Arc<HeldLease>,
    start: StartAt,
    rejects_done: Option<Position>,
    sink: mpsc::Sender<SinkMsg>,
    drain: bool,
) -> ShardExit {
    let idle_poll_interval = shared.settings.reader.idle_poll_interval;
    let mut source = Source::open(&shared, &lease, start);
    // Consecutive failed calls, and how many of them cannot be helped by retrying.
    let (mut failures, mut permanent) = (0u32, 0u32);
    let stream_label = lease.stream.clone();
    // Kept across GetRecords answers: it sizes each chunk's builders from the last one.
    let mut rows = TableColumns::new(kind);
    let stall_timeout = shared.settings.reader.stall_timeout;
    let mut stall = StallWatch::new(lease.clone(), shared.health.clone(), stall_timeout);
    loop {
        let started = tokio::time::Instant::now();
        // Every call the source makes is bounded; this bounds the whole of it too (a
        // subscription that keeps going quiet, a call an SDK setting left unbounded).
        let fetched = tokio::select! {
            _ = lease.token.cancelled() => return ShardExit::Cancelled,
            f = tokio::time::timeout(stall_timeout, source.next(&shared, &lease)) => {
                f.unwrap_or_else(|_| Err(source.no_answer(stall_timeout)))
            }
        };
        if let Err(e) = &fetched {
            if let Verdict::GiveUp(why) = stall.failed(started, e) {
                return ShardExit::Stalled(why);
            }
        }
        let fetched = match fetched {
            Ok(f) => {
                (failures, permanent) = (0, 0);
                stall.answered();
                f
            }
            Err(e) if e.code_is("ResourceNotFoundException") => {
                // The shard (or its stream) may be gone for good: look it up.
                match kinesis::shard_presence(&shared.aws.kinesis, &lease.stream, &lease.shard_id)
                    .await
                {
                    Ok(ShardPresence::Gone) => {
                        tracing::warn!(error = %e, "the shard no longer exists in the stream (aged out past its retention); treating it as ended so that its children are read");
                        metrics::counter!("pinstream_shards_vanished_total", "stream" => stream_label.clone()).increment(1);
                        kinesis::Fetched {
                            records: kinesis::Records::default(),
                            millis_behind_latest: None,
                            end_of_shard: true,
                        }
                    }
                    Ok(ShardPresence::StreamGone) => {
                        return ShardExit::Failed(format!(
                            "stream {} does not exist: {e}",
                            lease.stream
                        ));
                    }
                    Ok(ShardPresence::Listed) | Err(_) => {
                        match retry_or_give_up(
                            &lease,
                            &mut failures,
                            &mut permanent,
                            &e,
                            e.is_retryable(),
                        )
                        .await
                        {
                            Some(exit) => return exit,
                            None => continue,
                        }
                    }
                }
            }
            Err(e) => {
                if e.is_throttle() && !source.is_pushed() {
                    metrics::counter!("pinstream_get_records_throttles_total", "stream" => stream_label.clone()).increment(1);
                }
                let transient = source.is_transient(&e);
                match retry_or_give_up(&lease, &mut failures, &mut permanent, &e, transient).await {
                    Some(exit) => return exit,
                    None => continue,
                }
            }
        };
        let bytes = fetched.records.data_bytes();
        lease.note_read(fetched.records.len(), bytes, fetched.millis_behind_latest);
        observe_read_delay(&fetched.records, &stream_label);
        if let Some(ms) = fetched.millis_behind_latest {
            metrics::gauge!("pinstream_millis_behind_latest", "stream" => stream_label.clone(), "shard_id" => lease.shard_id.clone()).set(ms as f64);
        }
        let n = fetched.records.len();
        let (end_of_shard, millis_behind) = (fetched.end_of_shard, fetched.millis_behind_latest);
        if n > 0 || end_of_shard {
            let chunk = build_chunk(&mut rows, &lease, &fetched, rejects_done.as_ref());
            // The raw answer is not needed any more: do not hold it while waiting for room.
            drop(fetched);
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // Our schemas and builders disagree: a bug, not bad data. Stop the shard
                    // without committing; its records stay in the stream.
                    return ShardExit::Failed(format!("cannot build a batch: {e}"));
                }
            };
            if let Some(f) = &shared.fault {
                if f.hit(FaultPoint::Read).is_err() {
                    return ShardExit::Failed("injected failure (--fault read)".into());
                }
            }
            shared
                .progress
                .records_read
                .fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!("pinstream_records_received_total", "stream" => stream_label.clone())
                .increment(n as u64);
            metrics::counter!("pinstream_bytes_received_total", "stream" => stream_label.clone())
                .increment(chunk.bytes as u64);
            // Room in the worker's memory budget first (readers wait, sinks flush early).
            let size = chunk.memory_size();
            tokio::select! {
                _ = lease.token.cancelled() => return ShardExit::Cancelled,
                r = shared.budget.reserve(size) => chunk.reservation = Some(r),
            }
            tokio::select! {
                _ = lease.token.cancelled() => return ShardExit::Cancelled,
                sent = sink.send(SinkMsg::Chunk(chunk)) => if sent.is_err() {
                    return ShardExit::SinkGone;
                },
            }
        }
        if end_of_shard {
            tracing::info!("reached the end of the shard");
            return ShardExit::ShardEnd;
        }
        if n == 0 {
            if drain && caught_up(n, millis_behind) {
                return ShardExit::CaughtUp;
            }
            if source.is_pushed() {
                continue;
            }
            tokio::select! {
                _ = lease.token.cancelled() => return ShardExit::Cancelled,
                _ = tokio::time::sleep(idle_poll_interval) => {}
            }
        }
    }
}

/// Records of one answer whose read delay is observed, at most (spread evenly over it).
const READ_DELAY_SAMPLES: usize = 100;

/// `pinstream_read_delay_seconds`: from each record's arrival in Kinesis to now, when the
/// worker has it in hand, for up to [`READ_DELAY_SAMPLES`] records of the answer (every
/// record of the small answers a reader that keeps up gets; a sample of a backlog's).
fn observe_read_delay(records: &kinesis::Records, stream: &str) {
    if records.is_empty() {
        return;
    }
    let now = chrono::Utc::now().timestamp_micros();
    let step = records.len().div_ceil(READ_DELAY_SAMPLES);
    let delay = metrics::histogram!("pinstream_read_delay_seconds", "stream" => stream.to_owned());
    for r in records.iter().step_by(step) {
        if let Some(arrived) = r.arrival_micros {
            delay.record((now - arrived).max(0) as f64 / 1e6);
        }
    }
}

/// Whether an answer of `records` records says the reader has caught up with the shard:
/// none returned and Kinesis says it is 0 ms behind. An answer without MillisBehindLatest
/// (such as the empty one after an expired iterator is renewed) says nothing.
fn caught_up(records: usize, millis_behind: Option<i64>) -> bool {
    records == 0 && millis_behind == Some(0)
}

/// How many GetRecords / GetShardIterator failures in a row that retrying cannot help
/// (access denied, a stream that is not what the lease names, ...) end the reader: its
/// lease is handed back with an error, and taken again after a growing backoff.
const PERMANENT_FAILURES: u32 = 3;

/// How many retryable failures in a row are backed off quietly (about 5 s of them, with
/// the backoff's growth): a fan-out subscription is refused for a few seconds after the
/// previous one of the shard closed, and that is not worth a warning.
const QUIET_FAILURES: u32 = 6;

/// After a failed call: backs off (`None`: try again), or gives the shard up when the
/// errors are not `transient` and keep coming (`Some(exit)`), or the lease is gone. The
/// wait grows per failure, with jitter (75-100 %) so that readers failing together do not
/// retry together.
async fn retry_or_give_up(
    lease: &HeldLease,
    failures: &mut u32,
    permanent: &mut u32,
    e: &ServiceError,
    transient: bool,
) -> Option<ShardExit> {
    *failures += 1;
    let wait = backoff(*failures).mul_f64(0.75 + rand::random::<f64>() * 0.25);
    if transient && *failures >= QUIET_FAILURES {
        // About 5 s of failures: worth a line (a subscription refused this long is held by
        // another reader with the same consumer name, or a throttle that does not let up).
        tracing::warn!(error = %e, failures = *failures, retry_in = ?wait, "reading keeps failing; backing off");
    } else if transient {
        tracing::debug!(error = %e, retry_in = ?wait, "reading failed; backing off");
    } else {
        *permanent += 1;
        if *permanent >= PERMANENT_FAILURES {
            return Some(ShardExit::Failed(format!(
                "{} failures in a row that retrying cannot help; last: {e}",
                *permanent
            )));
        }
        tracing::warn!(error = %e, retry_in = ?wait, "reading failed; backing off");
    }
    tokio::select! {
        _ = lease.token.cancelled() => Some(ShardExit::Cancelled),
        _ = tokio::time::sleep(wait) => None,
    }
}

/// Decodes (KPL) and cleans one GetRecords answer into a chunk for the sink. Reject
/// counts are emitted once per chunk, by reason.
fn build_chunk(
    rows: &mut TableColumns,
    lease: &Arc<HeldLease>,
    fetched: &kinesis::Fetched,
    rejects_done: Option<&Position>,
) -> Result<Chunk, deltalake::arrow::error::ArrowError> {
    let kind = rows.kind();
    let input = fetched.records.data_bytes();
    rows.reserve(fetched.records.len(), input);
    let mut rejects = RejectsColumns::default();
    // Rejects at or before `rejects_done` were committed before a crash: cleaned rows of
    // those records still go to `rows`, their rejects to this scratch builder, dropped.
    let mut already = RejectsColumns::default();
    let mut rejected = [0u64; RejectReason::ALL.len()];
    let mut last: Option<(&str, i64)> = None;
    let mut oldest_arrival: Option<i64> = None;
    for r in fetched.records.iter() {
        let (data, seq) = (r.data, r.sequence_number);
        let meta = RecordMeta {
            shard_id: &lease.shard_id,
            sequence_number: seq,
            sub_sequence_number: 0,
            arrival_micros: r.arrival_micros,
        };
        if let Some(a) = meta.arrival_micros {
            oldest_arrival = Some(oldest_arrival.map_or(a, |o: i64| o.min(a)));
        }
        // A plain record is one user record; no allocation for it on this per-record path.
        let (plain, aggregated);
        let users: &[&[u8]] = match kpl::decode(data) {
            Ok(Decoded::Plain(d)) => {
                plain = [d];
                &plain
            }
            Ok(Decoded::Aggregated(v)) => {
                aggregated = v;
                &aggregated
            }
            Err(e) => {
                if !rejects_done.is_some_and(|p| at_or_before((seq, 0), p)) {
                    let reject = Reject::new(RejectReason::CorruptAggregate, None, e.to_string());
                    rejects.push(data, &reject, &lease.stream, &meta);
                    rejected[RejectReason::CorruptAggregate as usize] += 1;
                }
                last = Some((seq, 0));
                continue;
            }
        };
        for (i, d) in users.iter().enumerate() {
            let meta = RecordMeta {
                sub_sequence_number: i as i64,
                ..meta
            };
            let done = rejects_done.is_some_and(|p| at_or_before((seq, i as i64), p));
            let target = if done { &mut already } else { &mut rejects };
            if let Err(reason) = clean::clean_into(kind, d, &meta, &lease.stream, rows, target) {
                if !done {
                    rejected[reason as usize] += 1;
                }
            }
        }
        last = Some((seq, users.len().saturating_sub(1) as i64));
    }
    for (reason, n) in RejectReason::ALL.iter().zip(rejected) {
        if n > 0 {
            metrics::counter!("pinstream_records_rejected_total", "stream" => lease.stream.clone(), "reason" => reason.as_str()).increment(n);
        }
    }
    Ok(Chunk {
        lease: lease.clone(),
        rows: rows.finish()?,
        rejects: rejects.finish()?,
        last: last.map(|(seq, sub)| (seq.to_owned(), sub)),
        end_of_shard: fetched.end_of_shard,
        bytes: input,
        oldest_arrival_micros: oldest_arrival,
        reservation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_answer_at_zero_lag_is_caught_up() {
        assert!(caught_up(0, Some(0)));
        assert!(
            !caught_up(0, None),
            "an expired iterator's empty answer says nothing"
        );
        assert!(!caught_up(0, Some(1500)), "records are still arriving");
        assert!(!caught_up(3, Some(0)), "records were returned");
    }

    #[test]
    fn positions_compare_as_numbers_then_sub_sequence() {
        let p: Position = ("49680".into(), 2);
        assert!(at_or_before(("49680", 2), &p));
        assert!(at_or_before(("49680", 1), &p));
        assert!(!at_or_before(("49680", 3), &p));
        assert!(
            at_or_before(("9999", 9), &p),
            "shorter sequence numbers are smaller"
        );
        assert!(!at_or_before(("100000", 0), &p));
        assert!(!at_or_before(("49681", 0), &p));
    }
}
