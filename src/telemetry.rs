//! The operator-facing HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text from
//! the `metrics` facade), `/healthz` (the process is up) and `/readyz` (it can reach its
//! lease table, its commits are not failing and every shard it holds is being read),
//! served with axum.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` asks: `Ok(())` when ready, else why not.
pub trait Readiness: Send + Sync + 'static {
    fn ready(&self) -> Result<(), String>;
}

impl Readiness for Health {
    fn ready(&self) -> Result<(), String> {
        Health::ready(self)
    }
}

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
    /// Shards whose readers have had no answer past `reader.stall_timeout`, and why.
    stalled: Mutex<BTreeMap<String, String>>,
    /// Tables pinstream refuses to write to until they change (a table feature it cannot
    /// honour), and why.
    refused: Mutex<BTreeMap<String, String>>,
}

impl Health {
    pub fn new(lease_bound: Duration, commit_bound: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_lease_scan: AtomicI64::new(-1),
            flush_failing_since: AtomicI64::new(-1),
            lease_bound,
            commit_bound,
            stalled: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    /// Appends to `table` are refused until the table changes (`Some(why)`), or go again.
    pub fn table_refused(&self, table: &str, why: Option<&str>) {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) => refused.insert(table.to_owned(), why.to_owned()),
            None => refused.remove(table),
        };
    }

    /// A shard's reader has had no answer past its bound (`Some(why)`), or reads again.
    pub fn shard_stalled(&self, lease: &str, why: Option<&str>) {
        let mut stalled = self.stalled.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) => stalled.insert(lease.to_owned(), why.to_owned()),
            None => stalled.remove(lease),
        };
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
        if let Some((table, why)) = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .next()
        {
            return Err(format!("appends to table {table} are refused: {why}"));
        }
        if let Some((lease, why)) = self
            .stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .next()
        {
            return Err(format!("shard {lease} is not being read: {why}"));
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

/// The operator routes: `/metrics`, `/healthz`, `/readyz` (GET only; other methods 405).
pub fn routes(handle: PrometheusHandle, health: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/metrics", {
            let health = health.clone();
            get(move || {
                // Readiness as a metric too, so that an alert can watch it.
                let ready = health.ready().is_ok();
                metrics::gauge!("pinstream_ready").set(if ready { 1.0 } else { 0.0 });
                let body = handle.render();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            })
        })
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = match health.ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                };
                async move { answer }
            }),
        )
}

/// Binds `addr` and serves `router` on it until `stop` (in-flight requests finish); returns
/// the bound address (port 0 picks a free one).
pub async fn serve_router(
    addr: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok((local, task))
}

/// Serves the operator routes on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let (local, _task) = serve_router(addr, routes(handle, health), stop).await?;
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
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
        h.shard_stalled("pin:shardId-1", Some("no successful GetRecords for 61 s"));
        let why = h.ready().unwrap_err();
        assert!(
            why.contains("pin:shardId-1") && why.contains("GetRecords"),
            "{why}"
        );
        h.shard_stalled("pin:shardId-1", None);
        assert!(h.ready().is_ok());
    }
}
