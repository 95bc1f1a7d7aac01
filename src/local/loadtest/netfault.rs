//! The network faults of `loadtest --chaos`: a TCP proxy of the load test's own in front of
//! each emulator the workers call (Kinesis, DynamoDB). It relays bytes both ways and, for a
//! small share of the chunks the emulator sends back, does what networks do: delays the
//! chunk, swallows the rest of the connection (nothing more is relayed, the connection stays
//! open and silent, as behind a load balancer that dropped a reply), or resets the
//! connection (RST). The workers only see answers that are late, never come, or break off.
//! Loopback only; the proxy stops with the load test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{io, LoadtestError};

/// How often each fault strikes, per chunk the emulator sends back.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    pub delay: f64,
    pub delay_by: Duration,
    pub swallow: f64,
    pub reset: f64,
}

impl FaultRates {
    /// `share` of the chunks faulted: half delayed by 1.5 s, a quarter swallowed, a quarter
    /// reset (`loadtest --network-faults`).
    pub fn chaos(share: f64) -> FaultRates {
        FaultRates {
            delay: share / 2.0,
            delay_by: Duration::from_millis(1500),
            swallow: share / 4.0,
            reset: share / 4.0,
        }
    }
}

/// Faults caused, by kind.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    delayed: AtomicU64,
    swallowed: AtomicU64,
    reset: AtomicU64,
}

/// What one proxy did.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct NetworkFaults {
    pub service: String,
    pub connections: u64,
    pub delayed: u64,
    pub swallowed: u64,
    pub reset: u64,
}

/// A fault proxy in front of one emulator.
pub struct FaultProxy {
    pub url: String,
    service: String,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and relays to `upstream` (`http://host:port`).
    pub async fn start(
        service: &str,
        upstream: &str,
        rates: FaultRates,
    ) -> Result<FaultProxy, LoadtestError> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding a fault proxy"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(io("binding a fault proxy"))?
        );
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let (c, s) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((conn, _)) => conn,
                        Err(_) => continue,
                    },
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let (c, s, upstream) = (c.clone(), s.clone(), upstream.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = relay(conn, &upstream, rates, &c) => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            url,
            service: service.to_owned(),
            counts,
            stop,
        })
    }

    pub fn report(&self) -> NetworkFaults {
        let c = &self.counts;
        NetworkFaults {
            service: self.service.clone(),
            connections: c.connections.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            swallowed: c.swallowed.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
        }
    }
}

/// The stack's environment with the Kinesis and DynamoDB endpoints replaced by fault
/// proxies in front of them (returned: they stop when dropped).
pub(super) async fn in_front_of(
    env: &[(String, String)],
    rates: FaultRates,
) -> Result<(Vec<(String, String)>, Vec<FaultProxy>), LoadtestError> {
    let mut env = env.to_vec();
    let mut proxies = Vec::new();
    for (service, var) in [
        ("Kinesis", "AWS_ENDPOINT_URL_KINESIS"),
        ("DynamoDB", "AWS_ENDPOINT_URL_DYNAMODB"),
    ] {
        let Some(i) = env.iter().position(|(k, _)| k == var) else {
            continue;
        };
        let proxy = FaultProxy::start(service, &env[i].1, rates).await?;
        env[i].1 = proxy.url.clone();
        proxies.push(proxy);
    }
    Ok((env, proxies))
}

/// What to do with one chunk of the emulator's answer.
enum Fate {
    Pass,
    Delay,
    Swallow,
    Reset,
}

fn fate(rates: &FaultRates) -> Fate {
    let x: f64 = rand::rng().random();
    if x < rates.swallow {
        Fate::Swallow
    } else if x < rates.swallow + rates.reset {
        Fate::Reset
    } else if x < rates.swallow + rates.reset + rates.delay {
        Fate::Delay
    } else {
        Fate::Pass
    }
}

/// Relays one client connection until either side closes it (or a fault ends it).
async fn relay(client: TcpStream, upstream: &str, rates: FaultRates, counts: &Counts) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
    };
    let answers = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match up_read.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            match fate(&rates) {
                Fate::Pass => {}
                Fate::Delay => {
                    counts.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(rates.delay_by).await;
                }
                Fate::Swallow => {
                    counts.swallowed.fetch_add(1, Ordering::Relaxed);
                    return Some(Fate::Swallow);
                }
                Fate::Reset => {
                    counts.reset.fetch_add(1, Ordering::Relaxed);
                    return Some(Fate::Reset);
                }
            }
            if client_write.write_all(&chunk[..n]).await.is_err() {
                return None;
            }
        }
    };
    tokio::pin!(requests);
    let ended = tokio::select! {
        _ = &mut requests => return,
        ended = answers => ended,
    };
    match ended {
        // Silence: keep reading the client's requests (and dropping them upstream's answers)
        // until the client gives up on the connection.
        Some(Fate::Swallow) => {
            let mut sink = vec![0u8; 64 * 1024];
            let drain_up =
                async { while matches!(up_read.read(&mut sink).await, Ok(n) if n > 0) {} };
            tokio::select! {
                _ = &mut requests => {}
                _ = drain_up => requests.await,
            }
        }
        Some(Fate::Reset) => {
            // Closing with a linger of 0 sends an RST instead of a FIN.
            #[allow(deprecated)]
            let _ = client_write.as_ref().set_linger(Some(Duration::ZERO));
        }
        _ => {}
    }
}
