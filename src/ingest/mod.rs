//! `pinstream ingest`: the HTTP entry points the original project's producers used, in
//! front of the same Kinesis streams the workers read, so their scripts and clients work by
//! changing only the base URL.
//!
//! - [`gateway`]: the API Gateway Kinesis proxy (`PUT /streams/{stream}/record(s)`, the
//!   stream calls).
//! - [`rest_proxy`]: the Confluent REST Proxy v2 produce call (`POST /topics/{topic}`).
//! - [`admission`]: body size limits and the bound on bytes in flight (413, 429).
//! - [`access`]: the optional API key.
//! - [`batcher`]: records of concurrent requests share PutRecords calls.
//! - [`reply`]: answers and refusals in each API's shape.
//!
//! A request is answered 200 only after Kinesis stored every record in it. On SIGTERM the
//! server stops accepting connections, answers the requests it has (their records are
//! sent, retried, answered), and exits.

pub mod access;
pub mod admission;
pub mod batcher;
pub mod gateway;
pub mod reply;
pub mod rest_proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clean::Kind;
use crate::config::Settings;
use crate::producer::send::{EntryOutcome, Pending, Stats};
use crate::telemetry::Readiness;
use access::ApiKey;
use admission::Admission;
use batcher::Batcher;
use reply::{Api, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    ApiKey(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("requests were still being answered {0:?} after the signal (--shutdown-timeout); their clients get no answer and should retry")]
    ShutdownTimeout(Duration),
}

/// How `pinstream ingest` runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub listen: SocketAddr,
    /// How long answering the requests in hand may take after the signal.
    pub shutdown_timeout: Duration,
}

/// What a run stored.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestSummary {
    pub records_stored: u64,
    pub records_not_stored: u64,
}

/// Shared by every request handler.
#[derive(Clone)]
pub struct Ingest {
    streams: Arc<BTreeMap<Kind, String>>,
    topics: Arc<BTreeMap<String, Kind>>,
    kinesis: aws_sdk_kinesis::Client,
    batcher: Batcher,
    admission: Admission,
    key: ApiKey,
    stream_admin: bool,
    max_record: usize,
    draining: Arc<AtomicBool>,
}

/// Ready while not shutting down.
struct IngestReadiness(Arc<AtomicBool>);

impl Readiness for IngestReadiness {
    fn ready(&self) -> Result<(), String> {
        if self.0.load(Ordering::Relaxed) {
            Err("shutting down".into())
        } else {
            Ok(())
        }
    }
}

/// Parses a JSON body: invalid JSON and valid JSON of the wrong shape are told apart.
pub(crate) fn parse_body<'a, T: serde::Deserialize<'a>>(
    api: Api,
    body: &'a [u8],
) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refusal::bad_request(
            api,
            format!("the body does not have the expected fields: {e}"),
        ),
        _ => Refusal::bad_json(api, &e),
    })
}

impl Ingest {
    /// One record to store: its data (the JSON text the client sent) and partition key,
    /// both checked against Kinesis's limits.
    fn record(
        &self,
        api: Api,
        data: &str,
        partition_key: Option<String>,
        key_field: &str,
    ) -> Result<Pending, Refusal> {
        let key = partition_key
            .ok_or_else(|| Refusal::bad_request(api, format!("{key_field} is required")))?;
        if key.is_empty() || key.chars().count() > 256 {
            return Err(Refusal::bad_request(
                api,
                format!("{key_field} must be 1 to 256 characters"),
            ));
        }
        let size = data.len() + key.len();
        if size > self.max_record {
            return Err(Refusal::too_large(
                api,
                format!("a record of {size} bytes (data and partition key) is over the {} bytes Kinesis takes", self.max_record),
            ));
        }
        let entry = PutRecordsRequestEntry::builder()
            .data(Blob::new(data.as_bytes().to_vec()))
            .partition_key(key)
            .build()
            .map_err(|e| Refusal::bad_request(api, e.to_string()))?;
        Ok(Pending { entry, users: 1 })
    }

    /// Stores records in `stream`, counting what was stored.
    async fn store(&self, stream: &str, records: Vec<Pending>) -> Vec<EntryOutcome> {
        let bytes: Vec<usize> = records
            .iter()
            .map(|p| p.entry.data().as_ref().len())
            .collect();
        let outcomes = self.batcher.store(stream, records).await;
        let (mut n, mut b) = (0u64, 0u64);
        for (o, size) in outcomes.iter().zip(bytes) {
            if matches!(o, EntryOutcome::Stored { .. }) {
                n += 1;
                b += size as u64;
            }
        }
        metrics::counter!("pinstream_ingest_records_total", "stream" => stream.to_owned())
            .increment(n);
        metrics::counter!("pinstream_ingest_bytes_total", "stream" => stream.to_owned())
            .increment(b);
        outcomes
    }
}

/// Every API request: refused while draining or without the API key; counted and timed
/// by API and status.
async fn guard(
    State((ingest, api, label)): State<(Ingest, Api, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let answer = if ingest.draining.load(Ordering::Relaxed) {
        Refusal::draining(api).into_response()
    } else {
        match ingest.key.check(api, req.headers()) {
            Ok(()) => next.run(req).await,
            Err(refusal) => refusal.into_response(),
        }
    };
    metrics::counter!("pinstream_ingest_requests_total", "api" => label, "status" => answer.status().as_u16().to_string()).increment(1);
    metrics::histogram!("pinstream_ingest_request_duration_seconds", "api" => label)
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!("pinstream_ingest_in_flight_bytes").set(ingest.admission.in_flight() as f64);
    answer
}

/// Serves the ingest APIs and the operator routes on `opts.listen` until `stop`, then
/// answers the requests in hand and returns.
pub async fn serve(
    settings: &Settings,
    kinesis: aws_sdk_kinesis::Client,
    metrics: PrometheusHandle,
    opts: IngestOptions,
    stop: CancellationToken,
) -> Result<IngestSummary, IngestError> {
    let policy = &settings.ingest;
    let key = ApiKey::load(policy.api_key_file.as_deref()).map_err(IngestError::ApiKey)?;
    let stats = Arc::new(Stats::default());
    let (batcher, batching) = Batcher::start(kinesis.clone(), policy.linger, stats.clone());
    let draining = Arc::new(AtomicBool::new(false));
    let ingest = Ingest {
        streams: Arc::new(settings.streams.clone()),
        topics: Arc::new(policy.topics.clone()),
        kinesis,
        batcher,
        admission: Admission::new(policy.max_in_flight_bytes, policy.max_request_bytes),
        key,
        stream_admin: policy.stream_admin,
        max_record: policy.max_record_bytes,
        draining: draining.clone(),
    };
    let api = |routes: Router<Ingest>, api: Api, label: &'static str| {
        routes
            .layer(axum::middleware::from_fn_with_state(
                (ingest.clone(), api, label),
                guard,
            ))
            .with_state(ingest.clone())
    };
    let router = Router::new()
        .merge(api(gateway::routes(), Api::Gateway, "gateway"))
        .merge(api(rest_proxy::routes(), Api::RestProxy, "rest_proxy"))
        .merge(crate::telemetry::routes(
            metrics,
            Arc::new(IngestReadiness(draining.clone())),
        ));
    let key_set = ingest.key.is_set();
    drop(ingest);
    // The server stops accepting at the signal and finishes the requests it has.
    let server_stop = CancellationToken::new();
    let (addr, server) = crate::telemetry::serve_router(opts.listen, router, server_stop.clone())
        .await
        .map_err(|source| IngestError::Listen {
            addr: opts.listen,
            source,
        })?;
    tracing::info!(%addr, api_key = key_set, "serving ingest: API Gateway paths /streams/..., REST Proxy /topics/..., and /metrics, /healthz, /readyz");
    stop.cancelled().await;
    draining.store(true, Ordering::Relaxed);
    tracing::info!("stopping: no new connections; answering the requests in hand");
    server_stop.cancel();
    let finish = async {
        let served = server.await.unwrap_or(Ok(()));
        // Every handler (and its batcher handle) is gone: the batcher sends what is left.
        let _ = batching.await;
        served
    };
    match tokio::time::timeout(opts.shutdown_timeout, finish).await {
        Err(_) => return Err(IngestError::ShutdownTimeout(opts.shutdown_timeout)),
        Ok(Err(e)) => return Err(IngestError::Serve(e)),
        Ok(Ok(())) => {}
    }
    let summary = IngestSummary {
        records_stored: stats.sent.load(Ordering::Relaxed),
        records_not_stored: stats.failed.load(Ordering::Relaxed),
    };
    tracing::info!(
        stored = summary.records_stored,
        not_stored = summary.records_not_stored,
        "ingest stopped"
    );
    Ok(summary)
}
