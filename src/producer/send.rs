//! Sending: PutRecords calls of at most 500 entries / 5 MiB, several in flight per stream,
//! retrying only the failed entries with exponential backoff and full jitter. An entry may
//! carry several user records (a KPL aggregate); counts are of user records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::ServiceError;

pub const MAX_ATTEMPTS: u32 = 10;

/// Counters of one run, in user records.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub calls: AtomicU64,
    /// Latency of every PutRecords call, microseconds.
    pub latencies_us: Mutex<Vec<u32>>,
}

/// PutRecords latency percentiles of a run, milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    pub fn latency(&self) -> Latency {
        let mut v = self
            .latencies_us
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        v.sort_unstable();
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            f64::from(v[rank - 1]) / 1000.0
        };
        Latency {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// One PutRecords entry and how many user records it carries.
#[derive(Debug, Clone)]
pub struct Pending {
    pub entry: PutRecordsRequestEntry,
    pub users: u64,
}

/// Where batches go: Kinesis itself, or an HTTP gateway in front of it.
#[derive(Clone, Debug)]
pub enum Destination {
    Kinesis(aws_sdk_kinesis::Client),
    Http(Box<super::http::HttpGateway>),
}

impl Destination {
    /// One call with `entries`: each entry's outcome, or the whole call's error.
    async fn put(
        &self,
        stream: &str,
        entries: &[&Pending],
    ) -> Result<Vec<EntryOutcome>, ServiceError> {
        match self {
            Destination::Http(gateway) => gateway.put_records(stream, entries).await,
            Destination::Kinesis(client) => {
                let out = client
                    .put_records()
                    .stream_name(stream)
                    .set_records(Some(entries.iter().map(|p| p.entry.clone()).collect()))
                    .send()
                    .await
                    .map_err(|e| ServiceError::kinesis("PutRecords", e))?;
                Ok(out
                    .records()
                    .iter()
                    .map(|r| match r.error_code() {
                        None => EntryOutcome::Stored {
                            sequence_number: r.sequence_number().unwrap_or_default().to_owned(),
                            shard_id: r.shard_id().unwrap_or_default().to_owned(),
                        },
                        Some(code) => EntryOutcome::failed(
                            code,
                            r.error_message().unwrap_or_default().to_owned(),
                        ),
                    })
                    .collect())
            }
        }
    }
}

/// PutRecords calls in flight: each batch is sent on its own task once a permit is free,
/// so at most `permits` calls run at once.
pub struct Calls {
    destination: Destination,
    stats: Arc<Stats>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl Calls {
    pub fn new(
        destination: Destination,
        stats: Arc<Stats>,
        in_flight: usize,
        cancel: CancellationToken,
    ) -> Self {
        Calls {
            destination,
            stats,
            permits: Arc::new(Semaphore::new(in_flight.max(1))),
            tasks: JoinSet::new(),
            cancel,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends `entries` to `stream` on a task, waiting for a free permit first.
    pub async fn dispatch(&mut self, stream: &str, entries: Vec<Pending>) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let (destination, stream, stats, cancel) = (
            self.destination.clone(),
            stream.to_owned(),
            self.stats.clone(),
            self.cancel.clone(),
        );
        self.tasks.spawn(async move {
            put_with_retries(&destination, &stream, entries, &stats, &cancel).await;
            drop(permit);
        });
        // Reap finished calls so the set stays small.
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for every call in flight.
    pub async fn finish(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Where Kinesis stored one entry, or why it could not.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryOutcome {
    Stored {
        sequence_number: String,
        shard_id: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

impl EntryOutcome {
    fn failed(code: &str, message: String) -> Self {
        EntryOutcome::Failed {
            code: code.to_owned(),
            message,
        }
    }
}

/// Sends one batch; on a partial failure resends only the failed entries, with exponential
/// backoff and full jitter, up to [`MAX_ATTEMPTS`] attempts. Returns each entry's outcome,
/// in the order given.
pub async fn put_with_retries(
    destination: &Destination,
    stream: &str,
    pending: Vec<Pending>,
    stats: &Stats,
    cancel: &CancellationToken,
) -> Vec<EntryOutcome> {
    let mut outcomes: Vec<Option<EntryOutcome>> = vec![None; pending.len()];
    let mut pending: Vec<(usize, Pending)> = pending.into_iter().enumerate().collect();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        attempt += 1;
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let batch: Vec<&Pending> = pending.iter().map(|(_, p)| p).collect();
        let res = destination.put(stream, &batch).await;
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if let Ok(mut v) = stats.latencies_us.lock() {
            v.push(us);
        }
        metrics::histogram!("pinstream_put_records_duration_seconds", "stream" => stream.to_owned()).record(f64::from(us) / 1e6);
        let failure = match res {
            Ok(results) => {
                let mut failed = Vec::new();
                for ((i, p), result) in pending.into_iter().zip(results) {
                    if let EntryOutcome::Failed { code, .. } = &result {
                        if code == "ProvisionedThroughputExceededException" {
                            stats.throttled.fetch_add(p.users, Ordering::Relaxed);
                            metrics::counter!("pinstream_put_records_throttles_total", "stream" => stream.to_owned()).increment(1);
                        }
                        failed.push((i, p));
                    } else {
                        stats.sent.fetch_add(p.users, Ordering::Relaxed);
                    }
                    outcomes[i] = Some(result);
                }
                pending = failed;
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            let n = pending.iter().map(|(_, p)| p.users).sum::<u64>();
            if e.is_throttle() {
                stats.throttled.fetch_add(n, Ordering::Relaxed);
            }
            for (i, _) in &pending {
                outcomes[*i] = Some(EntryOutcome::failed(
                    e.code.as_deref().unwrap_or("ServiceUnavailable"),
                    e.message.clone(),
                ));
            }
            if !e.is_retryable() {
                tracing::error!(%stream, error = %e, records = n, "PutRecords failed; not retryable");
                stats.failed.fetch_add(n, Ordering::Relaxed);
                break;
            }
            tracing::debug!(%stream, error = %e, "PutRecords failed; retrying");
        }
        if pending.is_empty() {
            break;
        }
        let n = pending.iter().map(|(_, p)| p.users).sum::<u64>();
        if attempt >= MAX_ATTEMPTS || cancel.is_cancelled() {
            tracing::warn!(%stream, records = n, attempts = attempt, "giving up on records after retries");
            stats.failed.fetch_add(n, Ordering::Relaxed);
            break;
        }
        stats.retries.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("pinstream_put_records_retries_total", "stream" => stream.to_owned())
            .increment(n);
        tokio::time::sleep(jittered_backoff(attempt)).await;
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| EntryOutcome::failed("InternalFailure", "not sent".into())))
        .collect()
}

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)], base 50 ms, cap 5 s.
pub fn jittered_backoff(attempt: u32) -> Duration {
    let ceiling = 50u64.saturating_mul(1 << attempt.min(10)).min(5_000);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

/// A live view: on a terminal one line rewritten in place; otherwise a log line each
/// `every`. Returns the token that stops it.
pub fn spawn_progress(
    stats: Arc<Stats>,
    every: Duration,
    stop: CancellationToken,
) -> CancellationToken {
    use std::io::IsTerminal as _;
    let handle = stop.clone();
    let tty = std::io::stderr().is_terminal();
    let period = if tty {
        Duration::from_millis(500)
    } else {
        every
    };
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (0u64, Instant::now());
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(period) => false,
            };
            let sent = stats.sent.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (sent - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
            last = (sent, now);
            let (failed, throttled, retries) = (
                stats.failed.load(Ordering::Relaxed),
                stats.throttled.load(Ordering::Relaxed),
                stats.retries.load(Ordering::Relaxed),
            );
            let secs = started.elapsed().as_secs_f64();
            if tty {
                eprint!("\r\x1b[2Kproduce {secs:>6.1}s  sent {sent}  {rate:>7.0} rec/s  failed {failed}  throttled {throttled}  retries {retries}");
                if stopping {
                    eprintln!();
                }
            } else if !stopping {
                tracing::info!(
                    seconds = secs,
                    sent,
                    rate = rate.round(),
                    failed,
                    throttled,
                    retries,
                    "producing"
                );
            }
            if stopping {
                return;
            }
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let s = Stats::default();
        assert_eq!(s.latency(), Latency::default());
        *s.latencies_us.lock().unwrap() = (1..=100).map(|ms| ms * 1000).collect();
        let l = s.latency();
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
    }

    #[test]
    fn backoff_is_jittered_under_a_growing_cap() {
        for attempt in 1..20 {
            let cap = 50u64.saturating_mul(1 << attempt.min(10)).min(5_000);
            let waits: Vec<Duration> = (0..400).map(|_| jittered_backoff(attempt)).collect();
            assert!(waits.iter().all(|w| *w <= Duration::from_millis(cap)));
            // Full jitter: uniform in [0, cap], so the mean is near cap / 2 (400 draws: well
            // within a third to two thirds), and the waits are spread, not one value.
            let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
            assert!(
                mean >= Duration::from_millis(cap / 3)
                    && mean <= Duration::from_millis(cap * 2 / 3),
                "attempt {attempt}: mean {mean:?} for a cap of {cap} ms"
            );
            assert!(waits.iter().any(|w| *w > Duration::from_millis(cap / 2)));
        }
    }
}
