//! The Confluent REST Proxy v2 produce call the batch leg used: `POST /topics/{topic}`
//! (also under a stage prefix) with `Content-Type: application/vnd.kafka.json.v2+json` and
//! `{"records": [{"value": <JSON>, "key"?: <JSON>, "partition"?: n}]}`. A topic maps to a
//! stream by the part after its last dot (`12e255fc4fcd.pin` -> the pin stream) unless
//! `ingest.topics` names it. Answered in the proxy's shape: one offset per record, where
//! `partition` is the Kinesis shard's number and `offset` the record's sequence number (a
//! JSON integer of up to 128 digits).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::reply::{Api, Refusal};
use super::{parse_body, Ingest};
use crate::producer::send::EntryOutcome;

const MEDIA_TYPE: &str = "application/vnd.kafka.json.v2+json";

pub fn routes() -> Router<Ingest> {
    Router::new()
        .route("/topics/{topic}", post(produce))
        .route("/{stage}/topics/{topic}", post(produce))
}

#[derive(Deserialize)]
struct ProduceBody<'a> {
    #[serde(borrow)]
    records: Option<Vec<ProduceRecord<'a>>>,
}

#[derive(Deserialize)]
struct ProduceRecord<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    key: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Offset {
    partition: u32,
    /// The sequence number as a JSON number (up to 128 digits: wider than any integer
    /// type, so written as its decimal text).
    offset: Option<Box<RawValue>>,
    error_code: Option<u32>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Produced {
    offsets: Vec<Offset>,
    key_schema_id: Option<u32>,
    value_schema_id: Option<u32>,
}

async fn produce(
    State(ingest): State<Ingest>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let topic = &path["topic"];
    let stream = ingest.topic_stream(topic)?;
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(MEDIA_TYPE))
    {
        return Err(Refusal::media_type(ctype));
    }
    let admitted = ingest
        .admission
        .admit(Api::RestProxy, &headers, body)
        .await?;
    let req: ProduceBody = parse_body(Api::RestProxy, &admitted.body)?;
    let entries = req.records.filter(|r| !r.is_empty()).ok_or_else(|| {
        Refusal::bad_request(
            Api::RestProxy,
            "records must be a list of at least one {\"value\"}".into(),
        )
    })?;
    let mut records = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let value = e.value.ok_or_else(|| {
            Refusal::bad_request(Api::RestProxy, format!("records[{i}]: value is required"))
        })?;
        let key = e.key.map(|k| {
            // A string key is used as it is; any other JSON key by its text.
            serde_json::from_str::<String>(k.get()).unwrap_or_else(|_| k.get().to_owned())
        });
        records.push(ingest.record(
            Api::RestProxy,
            value.get(),
            Some(key.unwrap_or_else(random_key)),
            "key",
        )?);
    }
    let outcomes = ingest.store(&stream, records).await;
    let mut throttled_only = true;
    let mut failed = 0;
    let offsets: Vec<Offset> = outcomes
        .into_iter()
        .map(|o| match o {
            EntryOutcome::Stored {
                sequence_number,
                shard_id,
            } => Offset {
                partition: shard_number(&shard_id),
                offset: sequence_number
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| RawValue::from_string(sequence_number).ok())
                    .flatten(),
                error_code: None,
                error: None,
            },
            EntryOutcome::Failed { code, message } => {
                failed += 1;
                throttled_only &= code == "ProvisionedThroughputExceededException";
                Offset {
                    partition: 0,
                    offset: None,
                    error_code: Some(if throttled_only { 50302 } else { 50002 }),
                    error: Some(format!("{code}: {message}")),
                }
            }
        })
        .collect();
    let body = Produced {
        offsets,
        key_schema_id: None,
        value_schema_id: None,
    };
    if failed == 0 {
        return Ok(Api::RestProxy.ok(&body));
    }
    metrics::counter!("pinstream_ingest_refused_total", "reason" => "not_stored").increment(1);
    let status = if throttled_only {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Ok(Api::RestProxy.answer(status, &body, Some(1)))
}

/// Without a key, records spread over the shards (as the proxy spreads keyless records over
/// partitions).
fn random_key() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// `shardId-000000000003` -> 3.
fn shard_number(shard_id: &str) -> u32 {
    shard_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Ingest {
    /// The stream a topic writes to: `ingest.topics`, else the part after its last dot.
    pub(super) fn topic_stream(&self, topic: &str) -> Result<String, Refusal> {
        let kind = self
            .topics
            .get(topic)
            .copied()
            .or_else(|| crate::clean::Kind::parse(topic.rsplit('.').next().unwrap_or(topic)));
        kind.and_then(|k| self.streams.get(&k).cloned())
            .ok_or_else(|| Refusal::unknown_topic(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_numbers_come_from_the_shard_id() {
        assert_eq!(shard_number("shardId-000000000003"), 3);
        assert_eq!(shard_number("odd"), 0);
    }
}
