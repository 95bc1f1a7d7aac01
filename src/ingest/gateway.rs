//! The API Gateway Kinesis proxy the original project built, same paths and bodies, with or
//! without a stage prefix (`/{stage}/streams/...`):
//!
//! - `PUT /streams/{stream}/record`: `{"StreamName", "Data": <JSON>, "PartitionKey"}`; the
//!   record is the JSON text of `Data` (what the gateway base64-encoded for Kinesis).
//! - `PUT /streams/{stream}/records`: `{"StreamName", "records": [{"data", "partition-key"}]}`.
//! - `GET /streams`, `GET /streams/{stream}` (ListStreams, DescribeStream, limited to the
//!   configured streams); `POST` / `DELETE /streams/{stream}` only with
//!   `ingest.stream_admin`.
//!
//! Answers are Kinesis's JSON. Unlike the gateway, a request is answered 200 only when
//! every record in it was stored: a record Kinesis would not take after retries fails the
//! request (503 when throttled, else 500) with the per-record error.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::reply::{Api, Refusal};
use super::{parse_body, Ingest};
use crate::aws::ServiceError;
use crate::producer::send::EntryOutcome;

/// The gateway's routes, with and without a stage prefix.
pub fn routes() -> Router<Ingest> {
    let mut r = Router::new();
    for prefix in ["", "/{stage}"] {
        r = r
            .route(
                &format!("{prefix}/streams/{{stream}}/record"),
                put(put_record),
            )
            .route(
                &format!("{prefix}/streams/{{stream}}/records"),
                put(put_records),
            )
            .route(&format!("{prefix}/streams"), get(list_streams))
            .route(
                &format!("{prefix}/streams/{{stream}}"),
                get(describe_stream)
                    .post(create_stream)
                    .delete(delete_stream),
            );
    }
    r
}

#[derive(Deserialize)]
struct PutRecordBody<'a> {
    #[serde(rename = "Data", borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "PartitionKey")]
    partition_key: Option<String>,
}

#[derive(Deserialize)]
struct PutRecordsBody<'a> {
    #[serde(borrow)]
    records: Option<Vec<PutRecordsEntry<'a>>>,
}

#[derive(Deserialize)]
struct PutRecordsEntry<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "partition-key")]
    partition_key: Option<String>,
}

async fn put_record(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let stream = ingest.configured_stream(&path["stream"])?;
    let admitted = ingest.admission.admit(Api::Gateway, &headers, body).await?;
    let req: PutRecordBody = parse_body(Api::Gateway, &admitted.body)?;
    let data = req
        .data
        .ok_or_else(|| Refusal::bad_request(Api::Gateway, "Data is required".into()))?;
    let record = ingest.record(Api::Gateway, data.get(), req.partition_key, "PartitionKey")?;
    let outcome = ingest.store(&stream, vec![record]).await.remove(0);
    Ok(match outcome {
        EntryOutcome::Stored {
            sequence_number,
            shard_id,
        } => Api::Gateway.ok(&json!({"SequenceNumber": sequence_number, "ShardId": shard_id})),
        EntryOutcome::Failed { code, message } => not_stored(
            json!({"__type": code, "message": message}),
            &[code.as_str()],
        ),
    })
}

async fn put_records(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let stream = ingest.configured_stream(&path["stream"])?;
    let admitted = ingest.admission.admit(Api::Gateway, &headers, body).await?;
    let req: PutRecordsBody = parse_body(Api::Gateway, &admitted.body)?;
    let entries = req.records.filter(|r| !r.is_empty()).ok_or_else(|| {
        Refusal::bad_request(
            Api::Gateway,
            "records must be a list of at least one {\"data\", \"partition-key\"}".into(),
        )
    })?;
    let mut records = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let data = e.data.ok_or_else(|| {
            Refusal::bad_request(Api::Gateway, format!("records[{i}]: data is required"))
        })?;
        records.push(ingest.record(Api::Gateway, data.get(), e.partition_key, "partition-key")?);
    }
    let outcomes = ingest.store(&stream, records).await;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            EntryOutcome::Failed { code, .. } => Some(code.as_str()),
            EntryOutcome::Stored { .. } => None,
        })
        .collect();
    let answers: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            EntryOutcome::Stored {
                sequence_number,
                shard_id,
            } => json!({"SequenceNumber": sequence_number, "ShardId": shard_id}),
            EntryOutcome::Failed { code, message } => {
                json!({"ErrorCode": code, "ErrorMessage": message})
            }
        })
        .collect();
    let body = json!({"FailedRecordCount": failed.len(), "Records": answers});
    Ok(if failed.is_empty() {
        Api::Gateway.ok(&body)
    } else {
        not_stored(body, &failed)
    })
}

/// Some record could not be stored: 503 (retry later) when every failure was throttling,
/// else 500; the body carries the per-record errors.
fn not_stored(body: Value, codes: &[&str]) -> Response {
    metrics::counter!("pinstream_ingest_refused_total", "reason" => "not_stored").increment(1);
    let throttled = codes
        .iter()
        .all(|c| *c == "ProvisionedThroughputExceededException");
    let status = if throttled {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Api::Gateway.answer(status, &body, Some(1))
}

async fn list_streams(State(ingest): State<Ingest>) -> Response {
    match crate::kinesis::list_stream_names(&ingest.kinesis).await {
        Ok(names) => {
            let ours: Vec<&String> = names
                .iter()
                .filter(|n| ingest.streams.values().any(|s| s == *n))
                .collect();
            Api::Gateway.ok(&json!({"StreamNames": ours, "HasMoreStreams": false}))
        }
        Err(e) => kinesis_error(&e),
    }
}

async fn describe_stream(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let stream = ingest.configured_stream(&path["stream"])?;
    Ok(match describe(&ingest.kinesis, &stream).await {
        Ok(description) => Api::Gateway.ok(&json!({"StreamDescription": description})),
        Err(e) => kinesis_error(&e),
    })
}

#[derive(Deserialize, Default)]
struct CreateStreamBody {
    #[serde(rename = "ShardCount")]
    shard_count: Option<i32>,
}

async fn create_stream(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let stream = ingest.configured_stream(&path["stream"])?;
    ingest.stream_admin_allowed()?;
    let admitted = ingest.admission.admit(Api::Gateway, &headers, body).await?;
    let req: CreateStreamBody = if admitted.body.iter().all(u8::is_ascii_whitespace) {
        CreateStreamBody::default()
    } else {
        parse_body(Api::Gateway, &admitted.body)?
    };
    let res = ingest
        .kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(req.shard_count.unwrap_or(5))
        .send()
        .await;
    Ok(match res {
        Ok(_) => Api::Gateway.ok(&json!({})),
        Err(e) => kinesis_error(&ServiceError::kinesis("CreateStream", e)),
    })
}

async fn delete_stream(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let stream = ingest.configured_stream(&path["stream"])?;
    ingest.stream_admin_allowed()?;
    let res = ingest
        .kinesis
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await;
    Ok(match res {
        Ok(_) => Api::Gateway.ok(&json!({})),
        Err(e) => kinesis_error(&ServiceError::kinesis("DeleteStream", e)),
    })
}

/// DescribeStream's answer as Kinesis's JSON.
async fn describe(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<Value, ServiceError> {
    let out = client
        .describe_stream()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| ServiceError::kinesis("DescribeStream", e))?;
    let Some(d) = out.stream_description() else {
        return Ok(json!({}));
    };
    let shards: Vec<Value> = d
        .shards()
        .iter()
        .map(|s| {
            json!({
                "ShardId": s.shard_id(),
                "ParentShardId": s.parent_shard_id(),
                "AdjacentParentShardId": s.adjacent_parent_shard_id(),
                "HashKeyRange": s.hash_key_range().map(|h| json!({
                    "StartingHashKey": h.starting_hash_key(),
                    "EndingHashKey": h.ending_hash_key(),
                })),
                "SequenceNumberRange": s.sequence_number_range().map(|r| json!({
                    "StartingSequenceNumber": r.starting_sequence_number(),
                    "EndingSequenceNumber": r.ending_sequence_number(),
                })),
            })
        })
        .collect();
    Ok(json!({
        "StreamName": d.stream_name(),
        "StreamARN": d.stream_arn(),
        "StreamStatus": d.stream_status().as_str(),
        "Shards": shards,
        "HasMoreShards": d.has_more_shards(),
        "RetentionPeriodHours": d.retention_period_hours(),
        "StreamCreationTimestamp": d.stream_creation_timestamp().secs(),
        "EncryptionType": d.encryption_type().map(|e| e.as_str()),
    }))
}

/// A Kinesis error as the gateway passed it on: 400 with its type and message (500 when
/// Kinesis could not be reached).
fn kinesis_error(e: &ServiceError) -> Response {
    let (status, error_type) = match &e.code {
        Some(code) => (StatusCode::BAD_REQUEST, code.clone()),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure".to_owned(),
        ),
    };
    tracing::warn!(error = %e, "Kinesis call for an ingest request failed");
    Api::Gateway.answer(
        status,
        &json!({"__type": error_type, "message": e.message}),
        None,
    )
}

impl Ingest {
    pub(super) fn stream_admin_allowed(&self) -> Result<(), Refusal> {
        if self.stream_admin {
            Ok(())
        } else {
            Err(Refusal::forbidden(
                Api::Gateway,
                "creating and deleting streams is off here; set ingest.stream_admin = true to allow it",
            ))
        }
    }

    /// The configured stream the path names (404 for any other).
    pub(super) fn configured_stream(&self, name: &str) -> Result<String, Refusal> {
        self.streams
            .values()
            .find(|s| *s == name)
            .cloned()
            .ok_or_else(|| Refusal::unknown_stream(name))
    }
}
