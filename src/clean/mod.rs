//! Cleaning: pure, synchronous streaming operators that turn one decoded record (JSON
//! bytes plus where it came from) into a row of the cleaned table or a row of the rejects
//! table, never both and never neither. Implements `docs/cleaning.md`.
//!
//! Must not know about Kinesis clients, Delta or DynamoDB: callers hand in bytes and a
//! [`RecordMeta`], and take Arrow record batches out.

mod columns;
mod geo;
pub mod json;
mod pin;
mod rejects;
pub mod schema;
mod user;
pub mod values;

use std::fmt;

use deltalake::arrow::datatypes::SchemaRef;

pub use columns::TableColumns;
pub use geo::GeoKeys;
pub use json::{Field, Keys, Object};
pub use pin::PinKeys;
pub use rejects::RejectsColumns;
pub use user::UserKeys;
use values::ValueError;

// Every operator's keys fit the parsed object's slots (an index past them would panic).
const _: () = assert!(
    PinKeys::NAMES.len() <= json::MAX_KEYS
        && GeoKeys::NAMES.len() <= json::MAX_KEYS
        && UserKeys::NAMES.len() <= json::MAX_KEYS
);

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
    pub const ALL: [RejectReason; 7] = [
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingKey,
        RejectReason::InvalidKey,
        RejectReason::InvalidValue,
        RejectReason::CorruptAggregate,
    ];

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
    pub fn new(
        reason: RejectReason,
        field: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        Reject {
            reason,
            field,
            detail: detail.into(),
        }
    }

    fn value(field: &'static str, e: ValueError) -> Self {
        Reject::new(RejectReason::InvalidValue, Some(field), e.to_string())
    }
}

/// Converts one field, naming it in the reject when it cannot be converted. Always inlined,
/// so that each key's slot is found at compile time.
#[inline(always)]
fn field<'v, 'a, K: Keys, T>(
    obj: &'v Object<'a, K>,
    name: &'static str,
    convert: impl FnOnce(Option<&'v Field<'a>>) -> Result<T, ValueError>,
) -> Result<T, Reject> {
    convert(obj.get(name)).map_err(|e| Reject::value(name, e))
}

/// The required integer key (`index` for pin, `ind` for geo and user).
#[inline(always)]
fn required_key<K: Keys>(obj: &Object<'_, K>, name: &'static str) -> Result<i64, Reject> {
    match values::integer(obj.get(name)) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Reject::new(
            RejectReason::MissingKey,
            Some(name),
            format!("required key `{name}` is missing or empty"),
        )),
        Err(e) => Err(Reject::new(
            RejectReason::InvalidKey,
            Some(name),
            e.to_string(),
        )),
    }
}

/// Parses record data into a JSON object with the keys `K` names (borrowing from `data`),
/// or says why it is not one.
pub fn parse_object<K: Keys>(data: &[u8]) -> Result<Object<'_, K>, Reject> {
    let text = std::str::from_utf8(data).map_err(|e| {
        Reject::new(
            RejectReason::InvalidUtf8,
            None,
            format!("data is not UTF-8: {e}"),
        )
    })?;
    // The fast path first, returned directly (the object is a few hundred bytes: each
    // wrapper it passes through is a copy).
    if let Some(obj) = json::parse_flat(text) {
        return Ok(obj);
    }
    match json::parse_with_serde_json(text) {
        Ok(json::TopLevel::Object(obj)) => Ok(obj),
        Ok(json::TopLevel::Other(kind)) => Err(Reject::new(
            RejectReason::NotAnObject,
            None,
            format!("expected a JSON object, got {kind}"),
        )),
        Err(e) => Err(Reject::new(
            RejectReason::InvalidJson,
            None,
            format!("invalid JSON: {e}"),
        )),
    }
}

/// The streaming operator: cleans one record into `rows`, or routes it whole to `rejects`
/// and says why.
pub fn clean_into(
    kind: Kind,
    data: &[u8],
    meta: &RecordMeta<'_>,
    stream: &str,
    rows: &mut TableColumns,
    rejects: &mut RejectsColumns,
) -> Result<(), RejectReason> {
    debug_assert_eq!(rows.kind(), kind);
    match rows.push(data, meta) {
        Ok(()) => Ok(()),
        Err(reject) => {
            rejects.push(data, &reject, stream, meta);
            Err(reject.reason)
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            "-?[0-9]{0,20}(\\.[0-9]{0,6})?[kKmMbB]?".prop_map(Value::String),
            "20[0-9]{2}-[01][0-9]-[0-3][0-9][T t][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][01][0-9]:[0-5][0-9])?".prop_map(Value::String),
            Just(json!("User Info Error")),
            Just(json!("")),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
            ]
        })
    }

    const KEYS: [&str; 20] = [
        "index",
        "ind",
        "unique_id",
        "title",
        "description",
        "poster_name",
        "follower_count",
        "tag_list",
        "is_image_or_video",
        "image_src",
        "downloaded",
        "save_location",
        "category",
        "timestamp",
        "latitude",
        "longitude",
        "country",
        "first_name",
        "last_name",
        "age",
    ];

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        let key = prop_oneof![
            (0..KEYS.len()).prop_map(|i| KEYS[i].to_owned()),
            Just("date_joined".to_owned()),
            "[a-z_]{1,8}"
        ];
        btree_map(key, value(), 0..12).prop_map(|m| m.into_iter().collect())
    }

    fn run(kind: Kind, data: &[u8]) -> (Result<(), RejectReason>, RecordBatch, RecordBatch) {
        let meta = RecordMeta {
            shard_id: "s",
            sequence_number: "1",
            sub_sequence_number: 0,
            arrival_micros: Some(1),
        };
        let mut rows = TableColumns::new(kind);
        let mut rejects = RejectsColumns::default();
        let res = clean_into(kind, data, &meta, "s", &mut rows, &mut rejects);
        (
            res,
            rows.finish().expect("rows batch"),
            rejects.finish().expect("rejects batch"),
        )
    }

    use deltalake::arrow::record_batch::RecordBatch;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any JSON object cleans or rejects (exactly one row somewhere), never panics, and
        /// the outcome is deterministic.
        #[test]
        fn any_object_cleans_or_rejects_deterministically(obj in object(), k in 0usize..3) {
            let kind = Kind::ALL[k];
            let data = serde_json::to_vec(&Value::Object(obj)).unwrap();
            let (res, rows, rejects) = run(kind, &data);
            prop_assert_eq!(rows.num_rows() + rejects.num_rows(), 1);
            prop_assert_eq!(res.is_ok(), rows.num_rows() == 1);
            let (res2, rows2, rejects2) = run(kind, &data);
            prop_assert_eq!(res, res2);
            prop_assert_eq!(rows, rows2);
            prop_assert_eq!(rejects, rejects2);
        }

        /// The borrowed parse sees exactly what `serde_json::Value` sees, key by key.
        #[test]
        fn borrowed_objects_agree_with_value(obj in object()) {
            let text = serde_json::to_vec(&Value::Object(obj)).unwrap();
            // The reference is serde_json's own parse of the same text (floats need not
            // round-trip exactly through text without serde_json's `float_roundtrip`).
            let reference: Map<String, Value> = serde_json::from_slice(&text).unwrap();
            fn agree<K: Keys>(text: &[u8], reference: &Map<String, Value>) -> Result<(), TestCaseError> {
                let parsed = parse_object::<K>(text).unwrap();
                for k in K::NAMES {
                    let expected = reference.get(*k).map(Field::from_value);
                    prop_assert_eq!(parsed.get(k), expected.as_ref());
                }
                Ok(())
            }
            agree::<PinKeys>(&text, &reference)?;
            agree::<GeoKeys>(&text, &reference)?;
            agree::<UserKeys>(&text, &reference)?;
        }

        /// Arbitrary bytes never panic and never vanish.
        #[test]
        fn any_bytes_land_somewhere(data in vec(any::<u8>(), 0..256), k in 0usize..3) {
            let (_, rows, rejects) = run(Kind::ALL[k], &data);
            prop_assert_eq!(rows.num_rows() + rejects.num_rows(), 1);
        }
    }
}
