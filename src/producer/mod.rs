//! The load producer: synthetic or replayed records into the three streams with
//! PutRecords (at most 500 records and 5 MiB a call, several calls in flight per stream),
//! retrying only the failed entries with exponential backoff and jitter, paced to a
//! target rate or flat out, with progress lines and a final report.

pub mod generator;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::ServiceError;
use crate::clean::Kind;
use generator::Generator;

pub const MAX_RECORDS_PER_CALL: usize = 500;
pub const MAX_BYTES_PER_CALL: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot read replay file {path}: {source}")]
    Replay {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing to produce: {0}")]
    Nothing(String),
}

/// Where records come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Generated triples sharing an `ind`.
    Synthetic { seed: u64, dirty_rate: f64 },
    /// NDJSON files, one record a line, sent as they are.
    Replay {
        files: Vec<(Kind, PathBuf)>,
        looping: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub streams: BTreeMap<Kind, String>,
    pub source: Source,
    /// Total records per second over all streams; `None` is flat out.
    pub rate: Option<f64>,
    /// Records per stream; `None` with no duration: until stopped (or the files end).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// One partition key for every record (as the original emulation did); default spreads
    /// records over all shards.
    pub partition_key: Option<String>,
    /// PutRecords calls in flight per stream.
    pub in_flight: usize,
    /// Print a progress line every this often (None: quiet).
    pub progress_every: Option<Duration>,
}

/// Counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub calls: AtomicU64,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProduceReport {
    pub sent: u64,
    pub failed: u64,
    pub retries: u64,
    pub throttled: u64,
    pub calls: u64,
    pub per_stream: BTreeMap<String, u64>,
    pub elapsed_seconds: f64,
    pub records_per_second: f64,
}

/// A record ready to send.
struct Item {
    kind: Kind,
    key: String,
    data: Vec<u8>,
}

/// Yields records from the configured source.
enum Feed {
    Synthetic(Box<Generator>, Vec<Item>),
    Replay {
        lines: Vec<(Kind, Vec<Vec<u8>>)>,
        pos: Vec<usize>,
        looping: bool,
        turn: usize,
        n: u64,
    },
}

impl Feed {
    fn new(source: &Source, streams: &BTreeMap<Kind, String>) -> Result<Self, ProduceError> {
        match source {
            Source::Synthetic { seed, dirty_rate } => Ok(Feed::Synthetic(
                Box::new(Generator::new(*seed, *dirty_rate)),
                Vec::new(),
            )),
            Source::Replay { files, looping } => {
                let mut lines = Vec::new();
                for (kind, path) in files {
                    if !streams.contains_key(kind) {
                        continue;
                    }
                    let f = std::fs::File::open(path).map_err(|source| ProduceError::Replay {
                        path: path.clone(),
                        source,
                    })?;
                    let mut v = Vec::new();
                    for line in std::io::BufReader::new(f).split(b'\n') {
                        let line = line.map_err(|source| ProduceError::Replay {
                            path: path.clone(),
                            source,
                        })?;
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            v.push(line);
                        }
                    }
                    lines.push((*kind, v));
                }
                if lines.iter().all(|(_, v)| v.is_empty()) {
                    return Err(ProduceError::Nothing(
                        "the replay files hold no records".into(),
                    ));
                }
                let pos = vec![0; lines.len()];
                Ok(Feed::Replay {
                    lines,
                    pos,
                    looping: *looping,
                    turn: 0,
                    n: 0,
                })
            }
        }
    }

    fn next(&mut self) -> Option<Item> {
        match self {
            Feed::Synthetic(g, pending) => {
                if pending.is_empty() {
                    let (ind, triple) = g.next_triple();
                    // Reverse so pop() yields pin, geo, user in order.
                    pending.extend(triple.into_iter().rev().map(|(kind, data)| Item {
                        kind,
                        key: ind.to_string(),
                        data,
                    }));
                }
                pending.pop()
            }
            Feed::Replay {
                lines,
                pos,
                looping,
                turn,
                n,
            } => {
                for _ in 0..lines.len() {
                    let i = *turn % lines.len();
                    *turn += 1;
                    let (kind, v) = &lines[i];
                    if pos[i] >= v.len() {
                        if *looping && !v.is_empty() {
                            pos[i] = 0;
                        } else {
                            continue;
                        }
                    }
                    let data = v[pos[i]].clone();
                    pos[i] += 1;
                    *n += 1;
                    return Some(Item {
                        kind: *kind,
                        key: n.to_string(),
                        data,
                    });
                }
                None
            }
        }
    }
}

struct Buffer {
    entries: Vec<PutRecordsRequestEntry>,
    bytes: usize,
}

/// Runs the producer until the count, the duration, the end of the files, or `cancel`.
pub async fn produce(
    client: aws_sdk_kinesis::Client,
    opts: ProduceOptions,
    cancel: CancellationToken,
) -> Result<ProduceReport, ProduceError> {
    let mut feed = Feed::new(&opts.source, &opts.streams)?;
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    // Small batches when paced, so the rate is steady rather than bursts of 500.
    let batch_records = match opts.rate {
        Some(r) => ((r / opts.streams.len().max(1) as f64 / 20.0).ceil() as usize)
            .clamp(1, MAX_RECORDS_PER_CALL),
        None => MAX_RECORDS_PER_CALL,
    };
    let permits = Arc::new(Semaphore::new(
        opts.in_flight.max(1) * opts.streams.len().max(1),
    ));
    let mut calls: JoinSet<()> = JoinSet::new();
    let mut buffers: BTreeMap<Kind, Buffer> = opts
        .streams
        .keys()
        .map(|k| {
            (
                *k,
                Buffer {
                    entries: Vec::new(),
                    bytes: 0,
                },
            )
        })
        .collect();
    let mut per_stream: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut generated = 0u64;
    let progress = opts
        .progress_every
        .map(|every| spawn_progress(stats.clone(), every, cancel.child_token()));

    'feed: while let Some(item) = feed.next() {
        if cancel.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let Some(stream) = opts.streams.get(&item.kind) else {
            continue;
        };
        let n = per_stream.entry(item.kind).or_default();
        if opts.count.is_some_and(|c| *n >= c) {
            if per_stream.len() == opts.streams.len()
                && per_stream
                    .values()
                    .all(|v| opts.count.is_some_and(|c| *v >= c))
            {
                break;
            }
            continue;
        }
        *n += 1;
        if item.data.len() > MAX_RECORD_BYTES {
            tracing::warn!(stream = %stream, bytes = item.data.len(), "record larger than 1 MiB; not sent");
            stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let key = opts.partition_key.clone().unwrap_or(item.key);
        let size = item.data.len() + key.len();
        let buf = buffers.get_mut(&item.kind).expect("a buffer per stream");
        if buf.bytes + size > MAX_BYTES_PER_CALL {
            let entries = std::mem::take(&mut buf.entries);
            buf.bytes = 0;
            dispatch(
                &client, stream, entries, &stats, &permits, &mut calls, &cancel,
            )
            .await;
        }
        let entry = match PutRecordsRequestEntry::builder()
            .data(Blob::new(item.data))
            .partition_key(key)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a PutRecords entry");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        buf.entries.push(entry);
        buf.bytes += size;
        if buf.entries.len() >= batch_records {
            let entries = std::mem::take(&mut buf.entries);
            buf.bytes = 0;
            dispatch(
                &client, stream, entries, &stats, &permits, &mut calls, &cancel,
            )
            .await;
        }
        generated += 1;
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(generated as f64 / rate);
            if due > Instant::now() {
                tokio::select! {
                    _ = cancel.cancelled() => break 'feed,
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
        }
    }
    for (kind, buf) in buffers {
        if !buf.entries.is_empty() && !cancel.is_cancelled() {
            dispatch(
                &client,
                &opts.streams[&kind],
                buf.entries,
                &stats,
                &permits,
                &mut calls,
                &cancel,
            )
            .await;
        }
    }
    while calls.join_next().await.is_some() {}
    if let Some(p) = progress {
        p.cancel();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = stats.sent.load(Ordering::Relaxed);
    Ok(ProduceReport {
        sent,
        failed: stats.failed.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        throttled: stats.throttled.load(Ordering::Relaxed),
        calls: stats.calls.load(Ordering::Relaxed),
        per_stream: per_stream
            .into_iter()
            .map(|(k, v)| (opts.streams[&k].clone(), v))
            .collect(),
        elapsed_seconds: elapsed,
        records_per_second: if elapsed > 0.0 {
            sent as f64 / elapsed
        } else {
            0.0
        },
    })
}

async fn dispatch(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<PutRecordsRequestEntry>,
    stats: &Arc<Stats>,
    permits: &Arc<Semaphore>,
    calls: &mut JoinSet<()>,
    cancel: &CancellationToken,
) {
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return;
    };
    let (client, stream, stats, cancel) = (
        client.clone(),
        stream.to_owned(),
        stats.clone(),
        cancel.clone(),
    );
    calls.spawn(async move {
        put_with_retries(&client, &stream, entries, &stats, &cancel).await;
        drop(permit);
    });
    // Reap finished calls so the set stays small.
    while calls.try_join_next().is_some() {}
}

/// Sends one batch; on a partial failure resends only the failed entries, with exponential
/// backoff and full jitter, up to [`MAX_ATTEMPTS`] attempts.
pub async fn put_with_retries(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    mut pending: Vec<PutRecordsRequestEntry>,
    stats: &Stats,
    cancel: &CancellationToken,
) {
    let mut attempt = 0u32;
    while !pending.is_empty() {
        attempt += 1;
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let res = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(pending.clone()))
            .send()
            .await;
        match res {
            Ok(out) if out.failed_record_count().unwrap_or(0) == 0 => {
                stats
                    .sent
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                return;
            }
            Ok(out) => {
                let mut failed = Vec::new();
                for (entry, result) in pending.into_iter().zip(out.records()) {
                    match result.error_code() {
                        None => {
                            stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(code) => {
                            if code == "ProvisionedThroughputExceededException" {
                                stats.throttled.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("pinstream_put_records_throttles_total", "stream" => stream.to_owned()).increment(1);
                            }
                            failed.push(entry);
                        }
                    }
                }
                pending = failed;
            }
            Err(e) => {
                let e = ServiceError::kinesis("PutRecords", e);
                if e.is_throttle() {
                    stats
                        .throttled
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                }
                if !e.is_retryable() {
                    tracing::error!(%stream, error = %e, records = pending.len(), "PutRecords failed; not retryable");
                    stats
                        .failed
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    return;
                }
                tracing::debug!(%stream, error = %e, "PutRecords failed; retrying");
            }
        }
        if pending.is_empty() {
            return;
        }
        if attempt >= MAX_ATTEMPTS || cancel.is_cancelled() {
            tracing::warn!(%stream, records = pending.len(), attempts = attempt, "giving up on records after retries");
            stats
                .failed
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            return;
        }
        stats
            .retries
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        metrics::counter!("pinstream_put_records_retries_total", "stream" => stream.to_owned())
            .increment(pending.len() as u64);
        tokio::time::sleep(jittered_backoff(attempt)).await;
    }
}

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)], base 50 ms, cap 5 s.
pub fn jittered_backoff(attempt: u32) -> Duration {
    let ceiling = 50u64.saturating_mul(1 << attempt.min(10)).min(5_000);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

fn spawn_progress(
    stats: Arc<Stats>,
    every: Duration,
    stop: CancellationToken,
) -> CancellationToken {
    let handle = stop.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (0u64, Instant::now());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let sent = stats.sent.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (sent - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
            last = (sent, now);
            eprintln!(
                "produce: {:>6.1}s sent {sent} ({rate:.0} rec/s) failed {} throttled {} retries {}",
                started.elapsed().as_secs_f64(),
                stats.failed.load(Ordering::Relaxed),
                stats.throttled.load(Ordering::Relaxed),
                stats.retries.load(Ordering::Relaxed)
            );
        }
    });
    handle
}
