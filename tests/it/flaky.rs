//! A fault-injecting HTTP proxy in front of the real Kinesis emulator. kinesalite never fails
//! single PutRecords entries, so the proxy does what Kinesis does under load: it takes some
//! entries out of a PutRecords request before forwarding it, and answers them in the
//! response, at their positions, as `ProvisionedThroughputExceededException` or
//! `InternalFailure`. Every other call passes through untouched. Each distinct record fails
//! at most once, so a correct producer ends with every record in the stream exactly once.
//!
//! In its GetRecords mode it instead answers every GetRecords call with
//! `ProvisionedThroughputExceededException` for a while after the first one, and records
//! when each call came.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Fail one entry in `every`.
    every: u64,
    next: AtomicU64,
    failed_once: Mutex<HashSet<String>>,
    /// PutRecords entries received from the client, failed ones included.
    entries: AtomicU64,
    throttled: AtomicU64,
    internal: AtomicU64,
    /// GetRecords mode: throttle every GetRecords call this long after the first.
    throttle_get_records_for: Option<Duration>,
    /// Each GetRecords call: when it came, its shard iterator, whether it was throttled.
    get_records_calls: Mutex<Vec<GetRecordsCall>>,
}

pub struct FlakyKinesis {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyKinesis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyKinesis {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`),
    /// failing one PutRecords entry in `every`.
    pub async fn start(upstream: &str, every: u64) -> Self {
        Self::start_with(
            upstream,
            State {
                every,
                ..State::default()
            },
        )
        .await
    }

    /// Listens on a free loopback port and forwards to `upstream`, answering every
    /// GetRecords call as throttled for `window` after the first one.
    pub async fn throttling_get_records(upstream: &str, window: Duration) -> Self {
        Self::start_with(
            upstream,
            State {
                throttle_get_records_for: Some(window),
                ..State::default()
            },
        )
        .await
    }

    async fn start_with(upstream: &str, state: State) -> Self {
        let state = Arc::new(state);
        let (url, task) = listen(upstream, state.clone(), |conn, upstream, s| async move {
            let _ = serve(conn, &upstream, &s).await;
        })
        .await;
        FlakyKinesis { url, state, task }
    }

    /// Entries answered as throttled, as internal failures, and all entries received.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = &self.state;
        (
            s.throttled.load(Ordering::Relaxed),
            s.internal.load(Ordering::Relaxed),
            s.entries.load(Ordering::Relaxed),
        )
    }

    /// Every GetRecords call so far, in order.
    pub fn get_records_calls(&self) -> Vec<GetRecordsCall> {
        self.state.get_records_calls.lock().unwrap().clone()
    }
}

/// One GetRecords call the proxy saw.
#[derive(Debug, Clone)]
pub struct GetRecordsCall {
    pub at: Instant,
    /// The call's shard iterator: a reader retrying a throttled call sends the same one.
    pub iterator: String,
    pub throttled: bool,
}

/// In GetRecords mode: whether this GetRecords call is to be throttled (and noted).
fn throttle_this_get_records(state: &State, body: &[u8]) -> bool {
    let Some(window) = state.throttle_get_records_for else {
        return false;
    };
    let iterator = serde_json::from_slice::<Value>(body).unwrap_or_default()["ShardIterator"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut calls = state.get_records_calls.lock().unwrap();
    let at = Instant::now();
    let throttled = calls.first().is_none_or(|first| at < first.at + window);
    calls.push(GetRecordsCall {
        at,
        iterator,
        throttled,
    });
    throttled
}

async fn serve(mut client: TcpStream, upstream: &str, state: &State) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    let (mut from_client, mut from_up) = (Vec::new(), Vec::new());
    while let Some((head, body)) = read_message(&mut client, &mut from_client).await? {
        let target = header(&head, "x-amz-target").unwrap_or_default();
        if target.ends_with(".GetRecords") && throttle_this_get_records(state, &body) {
            let body = br#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected by the test proxy)"}"#;
            let head = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: flaky-proxy\r\nConnection: keep-alive";
            write_message(&mut client, head, body).await?;
            continue;
        }
        if !target.ends_with(".PutRecords") || state.every == 0 {
            write_message(&mut up, &head, &body).await?;
            let Some((h, b)) = read_message(&mut up, &mut from_up).await? else {
                return Ok(());
            };
            write_message(&mut client, &h, &b).await?;
            continue;
        }
        let mut req: Value = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
        let entries = req["Records"].as_array().cloned().unwrap_or_default();
        state
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        // Which positions fail, and with what.
        let injected: Vec<Option<&str>> = entries
            .iter()
            .map(|e| {
                let n = state.next.fetch_add(1, Ordering::Relaxed);
                let data = e["Data"].as_str().unwrap_or_default().to_owned();
                if !n.is_multiple_of(state.every) || !state.failed_once.lock().unwrap().insert(data)
                {
                    return None;
                }
                Some(if n.is_multiple_of(2 * state.every) {
                    state.throttled.fetch_add(1, Ordering::Relaxed);
                    "ProvisionedThroughputExceededException"
                } else {
                    state.internal.fetch_add(1, Ordering::Relaxed);
                    "InternalFailure"
                })
            })
            .collect();
        let kept: Vec<Value> = entries
            .iter()
            .zip(&injected)
            .filter(|(_, f)| f.is_none())
            .map(|(e, _)| e.clone())
            .collect();
        let mut forwarded = Vec::new();
        let mut failed_upstream = 0;
        if !kept.is_empty() {
            req["Records"] = Value::Array(kept);
            write_message(&mut up, &head, &serde_json::to_vec(&req)?).await?;
            let Some((h, b)) = read_message(&mut up, &mut from_up).await? else {
                return Ok(());
            };
            if !h.starts_with("HTTP/1.1 200") {
                // A whole-call error (throttling of the call, a bad stream): pass it on as is;
                // the client resends the whole batch, the injected entries included.
                write_message(&mut client, &h, &b).await?;
                continue;
            }
            let out: Value = serde_json::from_slice(&b).map_err(std::io::Error::other)?;
            failed_upstream = out["FailedRecordCount"].as_u64().unwrap_or(0);
            forwarded = out["Records"].as_array().cloned().unwrap_or_default();
        }
        let mut forwarded = forwarded.into_iter();
        let records: Vec<Value> = injected
            .iter()
            .map(|f| match f {
                Some(code) => {
                    json!({"ErrorCode": code, "ErrorMessage": "injected by the test proxy"})
                }
                None => forwarded.next().unwrap_or(Value::Null),
            })
            .collect();
        let failed = failed_upstream + injected.iter().filter(|f| f.is_some()).count() as u64;
        let body = serde_json::to_vec(&json!({"FailedRecordCount": failed, "Records": records}))?;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: flaky-proxy\r\nConnection: keep-alive";
        write_message(&mut client, head, &body).await?;
    }
    Ok(())
}

/// Listens on a free loopback port and hands each connection, with `upstream`'s
/// `host:port` and the proxy's state, to `serve` on a task of its own (a connection ends
/// when either side closes it; errors end it too). Returns the proxy's URL and its task.
pub(crate) async fn listen<S, F, Fut>(
    upstream: &str,
    state: Arc<S>,
    serve: F,
) -> (String, tokio::task::JoinHandle<()>)
where
    S: Send + Sync + 'static,
    F: Fn(TcpStream, String, Arc<S>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, upstream.clone(), state.clone()));
        }
    });
    (url, task)
}

pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One HTTP/1.1 message (head without the blank line, and a Content-Length body); `None`
/// when the peer closed between messages. Bytes past the message stay in `buf`.
pub(crate) async fn read_message(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Ok(Some((head, body)))
}

/// Writes `head` with its Content-Length replaced by the length of `body`.
pub(crate) async fn write_message(
    conn: &mut TcpStream,
    head: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = String::with_capacity(head.len() + 32);
    for line in head.lines() {
        let is_len = line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"));
        if !is_len {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.write_all(out.as_bytes()).await?;
    conn.write_all(body).await
}
