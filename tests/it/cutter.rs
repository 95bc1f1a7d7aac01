//! A proxy in front of kinesis-local that cuts enhanced fan-out subscriptions, as networks
//! and load balancers do: every SubscribeToShard answer is relayed for `cut_after`, then its
//! connection is closed on both sides (the reader sees the stream fail and subscribes
//! again). Chosen subscriptions are made half-open instead: the proxy closes the emulator's
//! side (which frees the consumer's slot on the shard) and keeps the reader's side open
//! without sending a byte more, which only a watchdog on the reader's side can notice.
//! Every other call passes through. The proxy notes each subscription: when, which shard,
//! from where, and when it was cut or made half-open.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::flaky::{header, listen, read_message, write_message};

/// One SubscribeToShard the proxy relayed.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub at: Instant,
    /// The consumer's ARN (it names the stream) and the shard.
    pub consumer_arn: String,
    pub shard_id: String,
    /// The request's StartingPosition, as sent.
    pub position: Value,
    /// When the proxy cut it or made it half-open (`None`: still relayed, or the reader
    /// closed it first).
    pub cut_at: Option<Instant>,
    pub half_open: bool,
}

struct State {
    cut_after: Duration,
    /// Which subscriptions to make half-open, counting (from 0) only those relayed for the
    /// whole window (refused ones, such as ResourceInUse, end early).
    half_open: HashSet<usize>,
    full_windows: std::sync::atomic::AtomicUsize,
    subscribed: Mutex<Vec<Subscribed>>,
}

pub struct SubscriptionCutter {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SubscriptionCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubscriptionCutter {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, cut_after: Duration, half_open: &[usize]) -> Self {
        let state = Arc::new(State {
            cut_after,
            half_open: half_open.iter().copied().collect(),
            full_windows: Default::default(),
            subscribed: Mutex::new(Vec::new()),
        });
        let (url, task) = listen(upstream, state.clone(), |conn, upstream, s| async move {
            let _ = serve(conn, &upstream, &s).await;
        })
        .await;
        SubscriptionCutter { url, state, task }
    }

    /// Every subscription so far, in order.
    pub fn subscribed(&self) -> Vec<Subscribed> {
        self.state.subscribed.lock().unwrap().clone()
    }
}

async fn serve(mut client: TcpStream, upstream: &str, state: &State) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    let (mut from_client, mut from_up) = (Vec::new(), Vec::new());
    while let Some((head, body)) = read_message(&mut client, &mut from_client).await? {
        let target = header(&head, "x-amz-target").unwrap_or_default();
        write_message(&mut up, &head, &body).await?;
        if !target.ends_with(".SubscribeToShard") {
            let Some((h, b)) = read_message(&mut up, &mut from_up).await? else {
                return Ok(());
            };
            write_message(&mut client, &h, &b).await?;
            continue;
        }
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let n = {
            let mut all = state.subscribed.lock().unwrap();
            all.push(Subscribed {
                at: Instant::now(),
                consumer_arn: req["ConsumerARN"].as_str().unwrap_or_default().to_owned(),
                shard_id: req["ShardId"].as_str().unwrap_or_default().to_owned(),
                position: req["StartingPosition"].clone(),
                cut_at: None,
                half_open: false,
            });
            all.len() - 1
        };
        let relayed = relay_for(&mut up, &mut client, state.cut_after).await;
        let half_open = relayed.is_ok()
            && state.half_open.contains(
                &state
                    .full_windows
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            );
        if relayed.is_ok() {
            let mut all = state.subscribed.lock().unwrap();
            all[n].cut_at = Some(Instant::now());
            all[n].half_open = half_open;
        }
        drop(up);
        if half_open {
            // Nothing more reaches the reader; its side stays open until it gives up.
            let mut sink = [0u8; 1024];
            while client.read(&mut sink).await.unwrap_or(0) > 0 {}
        }
        return Ok(());
    }
    Ok(())
}

/// Relays the emulator's bytes to the reader for `window`. `Err` when either side closed
/// first.
async fn relay_for(
    up: &mut TcpStream,
    client: &mut TcpStream,
    window: Duration,
) -> std::io::Result<()> {
    let until = tokio::time::Instant::now() + window;
    let (mut buf, mut ignored) = ([0u8; 16 * 1024], [0u8; 1024]);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Ok(()),
            n = up.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                client.write_all(&buf[..n]).await?;
            }
            n = client.read(&mut ignored) => {
                // The reader closed its side (or sent something it should not).
                if n? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}
