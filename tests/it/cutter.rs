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
    /// When the proxy cut it or made it half-open (`None`: refused, still relayed, or the
    /// reader closed it first).
    pub cut_at: Option<Instant>,
    pub half_open: bool,
}

struct State {
    cut_after: Duration,
    /// Which subscriptions to make half-open, counting (from 0) only those relayed for the
    /// whole window (refused ones, such as ResourceInUse, are not windows).
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
        // A refusal is an ordinary answer on a connection the emulator keeps open: an HTTP
        // error, or (kinesis-local's ResourceInUse while the previous subscription still
        // closes) an event stream holding one exception and ending. Either is relayed
        // whole and never counted as a window: the reader is not waiting on it.
        let head = peek_head(&mut up, &mut from_up).await?;
        if !head.starts_with("HTTP/1.1 200") {
            let Some((h, b)) = read_message(&mut up, &mut from_up).await? else {
                return Ok(());
            };
            write_message(&mut client, &h, &b).await?;
            continue;
        }
        let body_start = head.len() + 4;
        let mut body = ChunkedBody::default();
        let relayed = match body.feed(&from_up[body_start..]) {
            Some(end) => {
                client.write_all(&from_up[..body_start + end]).await?;
                from_up.drain(..body_start + end);
                Ok(Relayed::Ended)
            }
            None => {
                client.write_all(&from_up).await?;
                from_up.clear();
                relay_for(
                    &mut up,
                    &mut client,
                    &mut body,
                    &mut from_up,
                    state.cut_after,
                )
                .await
            }
        };
        match relayed {
            Ok(Relayed::Ended) => continue,
            // Either side closed first: nothing to cut.
            Err(_) => return Ok(()),
            Ok(Relayed::Window) => {}
        }
        let half_open = state.half_open.contains(
            &state
                .full_windows
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        {
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

/// The head of the next message from `conn` (its status line and headers), read into `buf`
/// and left there.
async fn peek_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..i]).into_owned());
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How a relayed SubscribeToShard answer ended.
enum Relayed {
    /// Still open when the window ended: the proxy cuts it.
    Window,
    /// Its body ended within the window (the emulator ended the subscription itself).
    Ended,
}

/// Relays the emulator's answer to the reader for `window`, following its chunked body so
/// that an answer ending early is told apart from a subscription still open; bytes past
/// the body stay in `rest`. `Err` when either side closed first.
async fn relay_for(
    up: &mut TcpStream,
    client: &mut TcpStream,
    body: &mut ChunkedBody,
    rest: &mut Vec<u8>,
    window: Duration,
) -> std::io::Result<Relayed> {
    let until = tokio::time::Instant::now() + window;
    let (mut buf, mut ignored) = ([0u8; 16 * 1024], [0u8; 1024]);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Ok(Relayed::Window),
            n = up.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if let Some(end) = body.feed(&buf[..n]) {
                    client.write_all(&buf[..end]).await?;
                    rest.extend_from_slice(&buf[end..n]);
                    return Ok(Relayed::Ended);
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

/// Follows an HTTP/1.1 chunked body as its bytes pass, to find where it ends.
#[derive(Default)]
struct ChunkedBody {
    state: Chunk,
}

#[derive(Default, Clone, Copy)]
enum Chunk {
    /// A chunk's size line: hex digits so far.
    #[default]
    Start,
    Size(usize),
    /// A chunk extension, up to the line's end.
    Extension(usize),
    /// The size line's line feed.
    SizeEnd(usize),
    /// Bytes of the chunk still to come, then its CRLF.
    Data(usize),
    DataEnd,
    DataEndLf,
    /// After the last (empty) chunk: trailer lines, then an empty line.
    Trailer,
    TrailerLine,
    TrailerEnd,
}

impl ChunkedBody {
    /// Takes the body's next bytes; `Some(i)` when it ends with `bytes[..i]`.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Chunk::Start => size_line(0, b),
                Chunk::Size(n) => size_line(n, b),
                Chunk::Extension(n) if b == b'\r' => Chunk::SizeEnd(n),
                Chunk::Extension(n) => Chunk::Extension(n),
                Chunk::SizeEnd(0) => Chunk::Trailer,
                Chunk::SizeEnd(n) => Chunk::Data(n),
                Chunk::Data(n) => {
                    let take = n.min(bytes.len() - i);
                    i += take;
                    self.state = if take == n {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(n - take)
                    };
                    continue;
                }
                Chunk::DataEnd => Chunk::DataEndLf,
                Chunk::DataEndLf => Chunk::Start,
                Chunk::Trailer if b == b'\r' => Chunk::TrailerEnd,
                Chunk::Trailer | Chunk::TrailerLine if b == b'\n' => Chunk::Trailer,
                Chunk::Trailer | Chunk::TrailerLine => Chunk::TrailerLine,
                Chunk::TrailerEnd => return Some(i + 1),
            };
            i += 1;
        }
        None
    }
}

/// The next state of a chunk's size line after `b`, `n` being the size so far.
fn size_line(n: usize, b: u8) -> Chunk {
    match (b as char).to_digit(16) {
        Some(d) => Chunk::Size(n * 16 + d as usize),
        None if b == b';' => Chunk::Extension(n),
        None => Chunk::SizeEnd(n),
    }
}

#[test]
fn a_chunked_body_is_followed_to_its_end_whatever_the_reads() {
    let body = b"5\r\nhello\r\n3;ext=1\r\n\x00\r\n\r\n0\r\nx-trailer: 1\r\n\r\n";
    let next = b"HTTP/1.1 200 OK\r\n";
    let all = [&body[..], &next[..]].concat();
    for split in 0..all.len() {
        let mut b = ChunkedBody::default();
        let end = match b.feed(&all[..split]) {
            Some(end) => end,
            None => split + b.feed(&all[split..]).expect("the body ends"),
        };
        assert_eq!(end, body.len(), "split at {split}");
    }
    // A body still open (a subscription) never ends.
    let mut b = ChunkedBody::default();
    assert_eq!(
        b.feed(b"10\r\n0123456789abcdef\r\n8\r\n0\r\n\r\n0\r\n"),
        None
    );
}
