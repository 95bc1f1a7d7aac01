//! Cleaning: pure, synchronous streaming operators that turn one decoded record (JSON
//! bytes plus where it came from) into a row of the cleaned table or a row of the rejects
//! table, never both and never neither. Implements `shared/spec/cleaning.md`.
//!
//! Must not know about Kinesis clients, Delta or DynamoDB: callers hand in bytes and a
//! [`RecordMeta`], and take Arrow record batches out.

mod columns;
mod geo;
mod pin;
mod rejects;
pub mod schema;
mod user;
pub mod values;

use std::fmt;

use deltalake::arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

pub use columns::TableColumns;
pub use rejects::RejectsColumns;
use values::ValueError;

/// One of the three event streams and its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pin,
    Geo,
    User,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pin, Kind::Geo, Kind::User];

    /// The kind's name: default stream name and cleaned table name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pin => "pin",
            Kind::Geo => "geo",
            Kind::User => "user",
        }
    }

    pub fn rejects_table(self) -> &'static str {
        match self {
            Kind::Pin => "pin_rejects",
            Kind::Geo => "geo_rejects",
            Kind::User => "user_rejects",
        }
    }

    /// Schema of the cleaned table, metadata columns included.
    pub fn schema(self) -> SchemaRef {
        match self {
            Kind::Pin => schema::PIN.clone(),
            Kind::Geo => schema::GEO.clone(),
            Kind::User => schema::USER.clone(),
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a record came from; becomes the `_` metadata columns.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
    /// Index of the user record inside a KPL aggregate; 0 for plain records.
    pub sub_sequence_number: i64,
    /// Kinesis ApproximateArrivalTimestamp, microseconds since the epoch.
    pub arrival_micros: Option<i64>,
}

/// Machine-readable reject reasons; the `reason` column and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingKey,
    InvalidKey,
    InvalidValue,
    CorruptAggregate,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingKey => "missing_key",
            RejectReason::InvalidKey => "invalid_key",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::CorruptAggregate => "corrupt_aggregate",
        }
    }
}

/// Why a record goes to the rejects table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub field: Option<&'static str>,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Reject { reason, field, detail: detail.into() }
    }

    fn value(field: &'static str, e: ValueError) -> Self {
        Reject::new(RejectReason::InvalidValue, Some(field), e.to_string())
    }
}

/// Converts one field, naming it in the reject when it cannot be converted.
fn field<T>(
    obj: &Map<String, Value>,
    name: &'static str,
    convert: impl FnOnce(Option<&Value>) -> Result<T, ValueError>,
) -> Result<T, Reject> {
    convert(obj.get(name)).map_err(|e| Reject::value(name, e))
}

/// The required integer key (`index` for pin, `ind` for geo and user).
fn required_key(obj: &Map<String, Value>, name: &'static str) -> Result<i64, Reject> {
    match values::integer(obj.get(name)) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Reject::new(RejectReason::MissingKey, Some(name), format!("required key `{name}` is missing or empty"))),
        Err(e) => Err(Reject::new(RejectReason::InvalidKey, Some(name), e.to_string())),
    }
}

/// Parses record data into a JSON object, or says why it is not one.
pub fn parse_object(data: &[u8]) -> Result<Map<String, Value>, Reject> {
    let text = std::str::from_utf8(data)
        .map_err(|e| Reject::new(RejectReason::InvalidUtf8, None, format!("data is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Reject::new(
            RejectReason::NotAnObject,
            None,
            format!("expected a JSON object, got {}", json_type(&other)),
        )),
        Err(e) => Err(Reject::new(RejectReason::InvalidJson, None, format!("invalid JSON: {e}"))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The streaming operator: cleans one record into `rows`, or routes it whole to `rejects`.
/// Returns whether it was accepted.
pub fn clean_into(
    kind: Kind,
    data: &[u8],
    meta: &RecordMeta<'_>,
    stream: &str,
    rows: &mut TableColumns,
    rejects: &mut RejectsColumns,
) -> bool {
    match parse_object(data).and_then(|obj| rows.push(&obj, meta)) {
        Ok(()) => true,
        Err(reject) => {
            debug_assert_eq!(rows.kind(), kind);
            rejects.push(data, &reject, stream, meta);
            false
        }
    }
}
