//! A proxy in front of a real emulator (kinesalite, dynalite) that swallows answers, as a
//! load balancer that drops a reply or a half-open NAT entry does: the request is read,
//! nothing is ever answered, and the connection stays open and silent until the client
//! closes it. Only the calls it is told to watch (GetRecords by default) can be swallowed;
//! every other call, and every watched call while the proxy is not swallowing, passes
//! through. It notes each watched call in order: on which client connection, and whether it
//! was swallowed, so a test can tell a retry on a fresh connection from one on the dead
//! connection.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::flaky::{header, listen, read_message, write_message};

/// One watched call the proxy saw.
#[derive(Debug, Clone)]
pub struct Call {
    /// The client connection it came on (numbered from 0 in accept order).
    pub connection: u64,
    pub swallowed: bool,
}

struct State {
    /// Whether a call (its `x-amz-target`) is watched.
    watched: fn(&str) -> bool,
    /// Swallow this many more GetRecords calls.
    swallow_next: AtomicUsize,
    /// Swallow every GetRecords call while set.
    swallow_all: AtomicBool,
    connections: AtomicU64,
    calls: Mutex<Vec<Call>>,
}

pub struct SwallowingKinesis {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SwallowingKinesis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SwallowingKinesis {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`),
    /// watching GetRecords calls, swallowing nothing until told to.
    pub async fn start(upstream: &str) -> Self {
        Self::watching(upstream, |target| target.ends_with(".GetRecords")).await
    }

    /// Like [`SwallowingKinesis::start`], watching the calls whose `x-amz-target` `watched`
    /// accepts.
    pub async fn watching(upstream: &str, watched: fn(&str) -> bool) -> Self {
        let state = Arc::new(State {
            watched,
            swallow_next: AtomicUsize::new(0),
            swallow_all: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
        });
        let (url, task) = listen(upstream, state.clone(), |conn, upstream, s| async move {
            let id = s.connections.fetch_add(1, Ordering::Relaxed);
            let _ = serve(conn, id, &upstream, &s).await;
        })
        .await;
        SwallowingKinesis { url, state, task }
    }

    /// Swallows the answers to the next `n` watched calls.
    pub fn swallow_next(&self, n: usize) {
        self.state.swallow_next.store(n, Ordering::SeqCst);
    }

    /// Swallows every watched call's answer from now until [`SwallowingKinesis::answer_again`].
    pub fn swallow_all(&self) {
        self.state.swallow_all.store(true, Ordering::SeqCst);
    }

    pub fn answer_again(&self) {
        self.state.swallow_all.store(false, Ordering::SeqCst);
        self.state.swallow_next.store(0, Ordering::SeqCst);
    }

    /// Every watched call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }
}

/// Whether to swallow this watched call (and notes it).
fn swallow_this(state: &State, connection: u64) -> bool {
    let swallowed = state.swallow_all.load(Ordering::SeqCst)
        || state
            .swallow_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    state.calls.lock().unwrap().push(Call {
        connection,
        swallowed,
    });
    swallowed
}

async fn serve(
    mut client: TcpStream,
    connection: u64,
    upstream: &str,
    state: &State,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    let (mut from_client, mut from_up) = (Vec::new(), Vec::new());
    while let Some((head, body)) = read_message(&mut client, &mut from_client).await? {
        let target = header(&head, "x-amz-target").unwrap_or_default();
        if (state.watched)(target) && swallow_this(state, connection) {
            // Silence: hold the connection open, answer nothing, until the client gives
            // up on it and closes it.
            let mut rest = [0u8; 4096];
            while client.read(&mut rest).await? > 0 {}
            return Ok(());
        }
        write_message(&mut up, &head, &body).await?;
        let Some((h, b)) = read_message(&mut up, &mut from_up).await? else {
            return Ok(());
        };
        write_message(&mut client, &h, &b).await?;
    }
    Ok(())
}
