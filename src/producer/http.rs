//! `produce --via-http URL`: records go through `pinstream ingest` (or any server with the
//! API Gateway Kinesis-proxy paths) instead of straight to Kinesis: one
//! `PUT {URL}/streams/{stream}/records` per batch, the way a client of the original gateway
//! would batch. A record that is JSON is sent as the JSON value it is; one that is not (a
//! malformed record of `--dirty-rate`) as a JSON string of its text, the only way the
//! gateway's body can carry it.

use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::send::{EntryOutcome, Pending};
use crate::aws::ServiceError;

/// An API Gateway-shaped HTTP endpoint in front of the streams.
#[derive(Clone)]
pub struct HttpGateway {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "StreamName")]
    stream_name: &'a str,
    records: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    data: Data<'a>,
    #[serde(rename = "partition-key")]
    partition_key: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Json(&'a RawValue),
    Text(String),
}

impl HttpGateway {
    /// `base` is the gateway's URL with its stage, e.g. `http://127.0.0.1:8080/test`; the
    /// API key (`x-api-key`) is sent when given.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!(
                "--via-http {base}: an http:// URL (TLS belongs to a proxy in front of pinstream ingest)"
            ));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(HttpGateway {
            client,
            base,
            api_key,
        })
    }

    fn error(&self, code: Option<String>, message: String) -> ServiceError {
        ServiceError {
            service: "ingest",
            op: "PUT /streams/{stream}/records",
            code,
            message,
        }
    }

    /// One PUT of `entries` to `stream`: each entry's outcome, or the call's own error.
    pub async fn put_records(
        &self,
        stream: &str,
        entries: &[&Pending],
    ) -> Result<Vec<EntryOutcome>, ServiceError> {
        let records = entries
            .iter()
            .map(|p| {
                let bytes = p.entry.data().as_ref();
                let data = match serde_json::from_slice::<&RawValue>(bytes) {
                    Ok(raw) => Data::Json(raw),
                    Err(_) => Data::Text(String::from_utf8_lossy(bytes).into_owned()),
                };
                Entry {
                    data,
                    partition_key: p.entry.partition_key().unwrap_or("-"),
                }
            })
            .collect();
        let body = serde_json::to_vec(&Body {
            stream_name: stream,
            records,
        })
        .map_err(|e| self.error(None, e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri(format!("{}/streams/{stream}/records", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("x-api-key", key);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.error(None, e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| self.error(None, format!("{}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.error(None, e.to_string()))?
            .to_bytes();
        let answer: Value = serde_json::from_slice(&text).unwrap_or_default();
        // 200, or 500/503 with the per-record outcomes: retry only the failed entries.
        if let Some(records) = answer["Records"].as_array() {
            if records.len() == entries.len() {
                return Ok(records.iter().map(outcome).collect());
            }
        }
        let code = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Some("ThrottlingException".to_owned())
            }
            s if s.is_server_error() => None,
            _ => answer["__type"]
                .as_str()
                .map(str::to_owned)
                .or(Some(status.to_string())),
        };
        let message = answer["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(self.error(code, message))
    }
}

fn outcome(r: &Value) -> EntryOutcome {
    match r["ErrorCode"].as_str() {
        Some(code) => EntryOutcome::Failed {
            code: code.to_owned(),
            message: r["ErrorMessage"].as_str().unwrap_or_default().to_owned(),
        },
        None => EntryOutcome::Stored {
            sequence_number: r["SequenceNumber"].as_str().unwrap_or_default().to_owned(),
            shard_id: r["ShardId"].as_str().unwrap_or_default().to_owned(),
        },
    }
}
