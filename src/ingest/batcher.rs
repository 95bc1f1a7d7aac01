//! Records of concurrent requests share PutRecords calls: per stream, a batch collects
//! submissions for up to `ingest.linger` (or until 500 entries / 5 MiB), then goes out on a
//! task of its own with the producer's retry of failed entries. Each submission learns
//! where each of its records was stored, or why it could not be.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::producer::send::{put_with_retries, Destination, EntryOutcome, Pending, Stats};

/// PutRecords limits: entries and bytes (data and partition keys) per call.
pub const MAX_ENTRIES: usize = 500;
pub const MAX_BYTES: usize = 5 << 20;

struct Submission {
    stream: String,
    entries: Vec<Pending>,
    bytes: usize,
    reply: oneshot::Sender<Vec<EntryOutcome>>,
}

/// Hands records to the batching task. Clones share it; the task ends (after sending what
/// it holds) once every clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Submission>,
}

/// The bytes an entry counts for in PutRecords's 5 MiB.
pub fn entry_bytes(p: &Pending) -> usize {
    p.entry.data().as_ref().len() + p.entry.partition_key().map_or(0, str::len)
}

impl Batcher {
    /// Starts the batching task.
    pub fn start(
        client: aws_sdk_kinesis::Client,
        linger: Duration,
        stats: Arc<Stats>,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(batch_and_send(rx, client, linger, stats));
        (Batcher { tx }, task)
    }

    /// Stores `entries` in `stream`; resolves with each entry's outcome, in order, once
    /// Kinesis answered for all of them (retries included).
    pub async fn store(&self, stream: &str, entries: Vec<Pending>) -> Vec<EntryOutcome> {
        let mut replies = Vec::new();
        for part in split_for_calls(entries) {
            let (reply, answer) = oneshot::channel();
            let bytes = part.iter().map(entry_bytes).sum();
            let sub = Submission {
                stream: stream.to_owned(),
                entries: part,
                bytes,
                reply,
            };
            let n = sub.entries.len();
            if self.tx.send(sub).await.is_err() {
                replies.push(Err(n));
            } else {
                replies.push(Ok((answer, n)));
            }
        }
        let mut out = Vec::new();
        for r in replies {
            let lost = |n: usize| {
                std::iter::repeat_with(|| EntryOutcome::Failed {
                    code: "InternalFailure".into(),
                    message: "the server stopped before sending".into(),
                })
                .take(n)
                .collect::<Vec<_>>()
            };
            match r {
                // Every entry of a part gets an outcome, even when its call never answered.
                Ok((answer, n)) => out.extend(answer.await.unwrap_or_else(|_| lost(n))),
                Err(n) => out.extend(lost(n)),
            }
        }
        out
    }
}

/// Splits entries into parts that each fit one PutRecords call.
fn split_for_calls(entries: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut parts: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let b = entry_bytes(&e);
        match parts.last_mut() {
            Some(p) if p.len() < MAX_ENTRIES && bytes + b <= MAX_BYTES => {
                bytes += b;
                p.push(e);
            }
            _ => {
                bytes = b;
                parts.push(vec![e]);
            }
        }
    }
    parts
}

/// One stream's batch being filled.
struct Open {
    subs: Vec<Submission>,
    entries: usize,
    bytes: usize,
    due: Instant,
}

async fn batch_and_send(
    mut rx: mpsc::Receiver<Submission>,
    client: aws_sdk_kinesis::Client,
    linger: Duration,
    stats: Arc<Stats>,
) {
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut calls = JoinSet::new();
    let kinesis = Destination::Kinesis(client);
    let send = |calls: &mut JoinSet<()>, stream: String, batch: Open| {
        calls.spawn(send_batch(kinesis.clone(), stream, batch, stats.clone()));
    };
    loop {
        let next_due = open.values().map(|o| o.due).min();
        tokio::select! {
            sub = rx.recv() => {
                let Some(sub) = sub else { break };
                let stream = sub.stream.clone();
                // A submission that does not fit sends the batch before it.
                if open.get(&stream).is_some_and(|o| {
                    o.entries + sub.entries.len() > MAX_ENTRIES || o.bytes + sub.bytes > MAX_BYTES
                }) {
                    let batch = open.remove(&stream).expect("checked");
                    send(&mut calls, stream.clone(), batch);
                }
                let batch = open.entry(stream.clone()).or_insert_with(|| Open {
                    subs: Vec::new(),
                    entries: 0,
                    bytes: 0,
                    due: Instant::now() + linger,
                });
                batch.entries += sub.entries.len();
                batch.bytes += sub.bytes;
                batch.subs.push(sub);
                if batch.entries >= MAX_ENTRIES || linger.is_zero() {
                    let batch = open.remove(&stream).expect("just filled");
                    send(&mut calls, stream, batch);
                }
            }
            _ = sleep_until_opt(next_due) => {
                let now = Instant::now();
                let due: Vec<String> = open.iter().filter(|(_, o)| o.due <= now).map(|(s, _)| s.clone()).collect();
                for stream in due {
                    let batch = open.remove(&stream).expect("listed");
                    send(&mut calls, stream, batch);
                }
            }
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
        }
    }
    // Every sender is gone: send what is left and wait for every call.
    for (stream, batch) in open.drain() {
        send(&mut calls, stream, batch);
    }
    while calls.join_next().await.is_some() {}
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One PutRecords call (with retries of failed entries) for a batch; each submission gets
/// its share of the outcomes. Never cancelled: what a client was told is being stored is
/// either stored or answered as failed.
async fn send_batch(kinesis: Destination, stream: String, batch: Open, stats: Arc<Stats>) {
    let mut counts = Vec::with_capacity(batch.subs.len());
    let mut entries = Vec::with_capacity(batch.entries);
    let mut replies = Vec::with_capacity(batch.subs.len());
    for sub in batch.subs {
        counts.push(sub.entries.len());
        entries.extend(sub.entries);
        replies.push(sub.reply);
    }
    let outcomes = put_with_retries(
        &kinesis,
        &stream,
        entries,
        &stats,
        &CancellationToken::new(),
    )
    .await;
    let mut outcomes = outcomes.into_iter();
    for (n, reply) in counts.into_iter().zip(replies) {
        let _ = reply.send(outcomes.by_ref().take(n).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;

    fn pending(bytes: usize) -> Pending {
        Pending {
            entry: PutRecordsRequestEntry::builder()
                .data(Blob::new(vec![b'x'; bytes]))
                .partition_key("k")
                .build()
                .unwrap(),
            users: 1,
        }
    }

    #[test]
    fn parts_keep_to_the_put_records_limits_and_the_order() {
        let parts = split_for_calls((0..1203).map(|_| pending(10)).collect());
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            [500, 500, 203]
        );
        // 6 records of 1 MiB: 4 fit in 5 MiB with their keys, the rest go in the next call.
        let parts = split_for_calls((0..6).map(|_| pending(1 << 20)).collect());
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2]);
        assert!(split_for_calls(Vec::new()).is_empty());
    }
}
