//! The load producer: synthetic or replayed records into the three streams with
//! PutRecords (at most 500 records and 5 MiB a call, several calls in flight per stream),
//! retrying only the failed entries with exponential backoff and jitter, paced to a
//! target rate or flat out, with progress lines and a final report.

pub mod generator;
pub mod http;
pub mod send;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clean::Kind;
use crate::kpl;
use generator::Generator;
pub use send::{Latency, Pending, Stats};

/// How far behind its schedule a paced producer may fall before it sends full batches.
const CATCH_UP: Duration = Duration::from_millis(100);

pub const MAX_RECORDS_PER_CALL: usize = 500;
pub const MAX_BYTES_PER_CALL: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;

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
    /// Pack up to this many user records into one KPL aggregated record.
    pub aggregate: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProduceReport {
    pub sent: u64,
    pub failed: u64,
    pub retries: u64,
    pub throttled: u64,
    /// PutRecords calls (with `--via-http`: HTTP requests), retries included.
    pub calls: u64,
    pub per_stream: BTreeMap<String, u64>,
    pub elapsed_seconds: f64,
    pub records_per_second: f64,
    pub calls_per_second: f64,
    /// Latency of each call (or request).
    pub put_records_latency: Latency,
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

    /// The kinds this feed yields records of (of the configured streams).
    fn kinds(&self, streams: &BTreeMap<Kind, String>) -> usize {
        match self {
            Feed::Synthetic(..) => streams.len(),
            Feed::Replay { lines, .. } => lines.iter().filter(|(_, v)| !v.is_empty()).count(),
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

/// Entries waiting for the next PutRecords call of one stream.
#[derive(Default)]
struct Buffer {
    entries: Vec<Pending>,
    bytes: usize,
}

/// User records waiting to be packed into one KPL aggregate.
#[derive(Default)]
struct Aggregator {
    records: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

/// Aggregates stay well under the 1 MiB record limit.
const MAX_AGGREGATE_BYTES: usize = 256 << 10;

impl Aggregator {
    /// Adds a user record; returns the aggregate it completes (one too full to take this
    /// record, or one that reached `max` records), if any.
    fn add(&mut self, key: String, data: Vec<u8>, max: usize) -> Option<(String, Vec<u8>, u64)> {
        let size = data.len() + key.len();
        if self.bytes + size > MAX_AGGREGATE_BYTES {
            let full = self.take();
            self.bytes = size;
            self.records.push((key, data));
            return full;
        }
        self.bytes += size;
        self.records.push((key, data));
        if self.records.len() >= max {
            self.take()
        } else {
            None
        }
    }

    fn take(&mut self) -> Option<(String, Vec<u8>, u64)> {
        if self.records.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.records);
        self.bytes = 0;
        let refs: Vec<(&str, &[u8])> = records
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_slice()))
            .collect();
        Some((
            records[0].0.clone(),
            kpl::encode(&refs),
            records.len() as u64,
        ))
    }
}

/// Runs the producer into Kinesis until the count, the duration, the end of the files, or
/// `cancel`.
pub async fn produce(
    client: aws_sdk_kinesis::Client,
    opts: ProduceOptions,
    cancel: CancellationToken,
) -> Result<ProduceReport, ProduceError> {
    produce_to(send::Destination::Kinesis(client), opts, cancel).await
}

/// Runs the producer into `destination` (Kinesis, or an HTTP gateway in front of it).
pub async fn produce_to(
    destination: send::Destination,
    opts: ProduceOptions,
    cancel: CancellationToken,
) -> Result<ProduceReport, ProduceError> {
    let mut feed = Feed::new(&opts.source, &opts.streams)?;
    let feeding = feed.kinds(&opts.streams);
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut outbox = Outbox::new(destination, &opts, stats.clone(), cancel.clone());
    let mut counts = Counts::default();
    let progress = opts
        .progress_every
        .map(|every| send::spawn_progress(stats.clone(), every, cancel.child_token()));

    while let Some(item) = feed.next() {
        if cancel.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if !opts.streams.contains_key(&item.kind) {
            continue;
        }
        match counts.take(item.kind, opts.count, feeding) {
            Take::Send => {}
            Take::Skip => continue,
            Take::Done => break,
        }
        if item.data.len() > MAX_RECORD_BYTES {
            tracing::warn!(stream = %opts.streams[&item.kind], bytes = item.data.len(), "record larger than 1 MiB; not sent");
            stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // When this record is due at the asked rate (paced runs only).
        let due = opts
            .rate
            .map(|rate| started + Duration::from_secs_f64(counts.generated as f64 / rate));
        let key = opts.partition_key.clone().unwrap_or(item.key);
        outbox.add(item.kind, key, item.data, due).await;
        if let Some(due) = due.filter(|d| *d > Instant::now()) {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }
    if !cancel.is_cancelled() {
        outbox.send_the_rest().await;
    }
    outbox.finish().await;
    if let Some(p) = progress {
        p.cancel();
        // Let the live line print its last state.
        tokio::task::yield_now().await;
    }
    Ok(report(
        &stats,
        counts.per_stream,
        &opts.streams,
        started.elapsed(),
    ))
}

/// Records taken from the feed, per stream and in all.
#[derive(Default)]
struct Counts {
    per_stream: BTreeMap<Kind, u64>,
    generated: u64,
}

enum Take {
    Send,
    /// This stream has its count; others do not yet.
    Skip,
    /// Every stream the feed yields for has its count.
    Done,
}

impl Counts {
    fn take(&mut self, kind: Kind, count: Option<u64>, feeding: usize) -> Take {
        let n = self.per_stream.entry(kind).or_default();
        if count.is_some_and(|c| *n >= c) {
            // Done when every stream the feed yields for has its count (a replay of only
            // the pin file never yields geo or user records: with --loop it would go on).
            let all = self.per_stream.len() >= feeding
                && self
                    .per_stream
                    .values()
                    .all(|v| count.is_some_and(|c| *v >= c));
            return if all { Take::Done } else { Take::Skip };
        }
        *n += 1;
        self.generated += 1;
        Take::Send
    }
}

/// Where records wait for their PutRecords call: KPL aggregation (with `--aggregate`), then
/// a buffer per stream sent in batches.
struct Outbox {
    calls: send::Calls,
    streams: BTreeMap<Kind, String>,
    buffers: BTreeMap<Kind, Buffer>,
    aggregators: BTreeMap<Kind, Aggregator>,
    aggregate: Option<usize>,
    /// Entries per call: small when paced, so the rate is steady rather than bursts of 500.
    batch_records: usize,
}

impl Outbox {
    fn new(
        destination: send::Destination,
        opts: &ProduceOptions,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> Self {
        let batch_records = match opts.rate {
            Some(r) => ((r / opts.streams.len().max(1) as f64 / 20.0).ceil() as usize)
                .clamp(1, MAX_RECORDS_PER_CALL),
            None => MAX_RECORDS_PER_CALL,
        };
        let in_flight = opts.in_flight.max(1) * opts.streams.len().max(1);
        Outbox {
            calls: send::Calls::new(destination, stats, in_flight, cancel),
            streams: opts.streams.clone(),
            buffers: opts
                .streams
                .keys()
                .map(|k| (*k, Buffer::default()))
                .collect(),
            aggregators: opts
                .streams
                .keys()
                .map(|k| (*k, Aggregator::default()))
                .collect(),
            aggregate: opts.aggregate,
            batch_records,
        }
    }

    /// Adds one user record of `kind`; `due` is when it is due at the asked rate.
    async fn add(&mut self, kind: Kind, key: String, data: Vec<u8>, due: Option<Instant>) {
        // One entry per user record, or one per full aggregate.
        let ready = match self.aggregate {
            None => Some((key, data, 1)),
            Some(max) => self
                .aggregators
                .get_mut(&kind)
                .expect("an aggregator per stream")
                .add(key, data, max),
        };
        let Some((key, data, users)) = ready else {
            return;
        };
        // Paced but behind schedule (slow or throttled calls held the feed up): full
        // batches until caught up, so the rate is made up instead of lost.
        let batch = match due {
            Some(due) if due + CATCH_UP < Instant::now() => MAX_RECORDS_PER_CALL,
            _ => self.batch_records,
        };
        let buf = self.buffers.get_mut(&kind).expect("a buffer per stream");
        add_entry(
            &mut self.calls,
            &self.streams[&kind],
            buf,
            key,
            data,
            users,
            batch,
        )
        .await;
    }

    /// Sends the aggregates and buffers still filling.
    async fn send_the_rest(&mut self) {
        for (kind, agg) in self.aggregators.iter_mut() {
            if let Some((key, data, users)) = agg.take() {
                let buf = self.buffers.get_mut(kind).expect("a buffer per stream");
                let stream = &self.streams[kind];
                add_entry(
                    &mut self.calls,
                    stream,
                    buf,
                    key,
                    data,
                    users,
                    self.batch_records,
                )
                .await;
            }
        }
        for (kind, buf) in self.buffers.iter_mut() {
            if !buf.entries.is_empty() {
                let entries = std::mem::take(&mut buf.entries);
                buf.bytes = 0;
                self.calls.dispatch(&self.streams[kind], entries).await;
            }
        }
    }

    /// Waits for every call in flight.
    async fn finish(&mut self) {
        self.calls.finish().await;
    }
}

fn report(
    stats: &Stats,
    per_stream: BTreeMap<Kind, u64>,
    streams: &BTreeMap<Kind, String>,
    elapsed: Duration,
) -> ProduceReport {
    let elapsed = elapsed.as_secs_f64();
    let sent = stats.sent.load(Ordering::Relaxed);
    ProduceReport {
        sent,
        failed: stats.failed.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        throttled: stats.throttled.load(Ordering::Relaxed),
        calls: stats.calls.load(Ordering::Relaxed),
        per_stream: per_stream
            .into_iter()
            .map(|(k, v)| (streams[&k].clone(), v))
            .collect(),
        elapsed_seconds: elapsed,
        records_per_second: sent as f64 / elapsed.max(1e-9),
        calls_per_second: stats.calls.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
        put_records_latency: stats.latency(),
    }
}

/// Adds one entry to a stream's buffer, sending the buffer first when the entry would push
/// it past 5 MiB, and after when it holds `batch_records` entries.
async fn add_entry(
    calls: &mut send::Calls,
    stream: &str,
    buf: &mut Buffer,
    key: String,
    data: Vec<u8>,
    users: u64,
    batch_records: usize,
) {
    let size = data.len() + key.len();
    if buf.bytes + size > MAX_BYTES_PER_CALL && !buf.entries.is_empty() {
        buf.bytes = 0;
        calls
            .dispatch(stream, std::mem::take(&mut buf.entries))
            .await;
    }
    match PutRecordsRequestEntry::builder()
        .data(Blob::new(data))
        .partition_key(key)
        .build()
    {
        Ok(entry) => {
            buf.entries.push(Pending { entry, users });
            buf.bytes += size;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot build a PutRecords entry");
            calls.stats().failed.fetch_add(users, Ordering::Relaxed);
        }
    }
    if buf.entries.len() >= batch_records {
        buf.bytes = 0;
        calls
            .dispatch(stream, std::mem::take(&mut buf.entries))
            .await;
    }
}
