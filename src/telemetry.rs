//! The operator-facing HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text from
//! the `metrics` facade), `/healthz` (the process is up) and `/readyz` (it can reach its
//! lease table and its commits are not failing). A deliberately tiny HTTP/1.1 responder:
//! one request per connection, GET only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness signals, written by the worker loop and the sinks.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Millis since start of the last successful lease scan (-1: none yet).
    last_lease_scan: AtomicI64,
    /// Millis since start when flushes began failing (-1: they are not).
    flush_failing_since: AtomicI64,
    /// The lease table must have answered within this long.
    lease_bound: Duration,
    /// Flushes may fail (and be retried) for this long before the worker is not ready
    /// (zero: not ready as soon as one fails).
    commit_bound: Duration,
}

impl Health {
    pub fn new(lease_bound: Duration, commit_bound: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_lease_scan: AtomicI64::new(-1),
            flush_failing_since: AtomicI64::new(-1),
            lease_bound,
            commit_bound,
        }
    }

    fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    pub fn lease_scan_ok(&self) {
        self.last_lease_scan.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn flush_ok(&self) {
        self.flush_failing_since.store(-1, Ordering::Relaxed);
    }

    pub fn flush_failed(&self) {
        let now = self.now_ms();
        let _ = self.flush_failing_since.compare_exchange(
            -1,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `Ok(())` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        let now = self.now_ms();
        let scan = self.last_lease_scan.load(Ordering::Relaxed);
        if scan < 0 {
            return Err("no lease table scan has succeeded yet".into());
        }
        if now - scan > self.lease_bound.as_millis() as i64 {
            return Err(format!(
                "the lease table has not answered for {} ms",
                now - scan
            ));
        }
        let failing = self.flush_failing_since.load(Ordering::Relaxed);
        if failing >= 0 && now - failing >= self.commit_bound.as_millis() as i64 {
            return Err(format!(
                "Delta commits have been failing for {} ms",
                now - failing
            ));
        }
        Ok(())
    }
}

/// Installs the Prometheus recorder for the `metrics` facade (once per process), with each
/// histogram's buckets in its own unit and every metric's help text
/// ([`crate::instrumentation::METRICS`]).
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    use crate::instrumentation::{Kind, METRICS};
    let mut builder = PrometheusBuilder::new();
    for m in METRICS {
        if let Kind::Histogram(unit) = m.kind {
            builder = builder
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(m.name.to_owned()),
                    unit.buckets(),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    crate::instrumentation::describe_all();
    Ok(handle)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((mut sock, _)) = conn else { continue };
            let (handle, health) = (handle.clone(), health.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded; we need only the request line).
                while n < buf.len() {
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut parts = head.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                    ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
                    ("GET", "/readyz") => match health.ready() {
                        Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
                        Err(why) => (
                            "503 Service Unavailable",
                            "text/plain",
                            format!("not ready: {why}\n"),
                        ),
                    },
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                    _ => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET only\n".to_owned(),
                    ),
                };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_recent_scan_and_no_long_failing_commits() {
        let h = Health::new(Duration::from_secs(60), Duration::ZERO);
        assert!(h.ready().is_err(), "no scan yet");
        h.lease_scan_ok();
        assert!(h.ready().is_ok());
        h.flush_failed();
        assert!(h.ready().unwrap_err().contains("commits"));
        h.flush_ok();
        assert!(h.ready().is_ok());
    }
}
