//! Arrow schemas of the cleaned tables and of the rejects tables: column names, order,
//! types and nullability exactly as `docs/cleaning.md` lists them, followed by the
//! `_` ingestion metadata columns. The Delta tables are created from these schemas.

use std::sync::{Arc, LazyLock};

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Microsecond UTC timestamps, the Delta `timestamp` type.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The item field of `coordinates`; named `element` as Delta/Parquet name list items.
pub fn coordinate_item() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Float64, true))
}

/// The ingestion metadata columns every cleaned and rejects table ends with; together
/// they are the record's unique key.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new("_shard_id", DataType::Utf8, false),
        Field::new("_sequence_number", DataType::Utf8, false),
        Field::new("_sub_sequence_number", DataType::Int64, false),
        Field::new("_approximate_arrival_timestamp", timestamp_type(), true),
    ]
}

fn with_metadata(mut cleaned: Vec<Field>) -> SchemaRef {
    cleaned.extend(metadata_fields());
    Arc::new(Schema::new(cleaned))
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

pub static PIN: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_metadata(vec![
        Field::new("ind", DataType::Int64, false),
        text("unique_id"),
        text("title"),
        text("description"),
        Field::new("follower_count", DataType::Int64, true),
        text("poster_name"),
        text("tag_list"),
        text("is_image_or_video"),
        text("image_src"),
        text("save_location"),
        text("category"),
    ])
});

pub static GEO: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_metadata(vec![
        Field::new("ind", DataType::Int64, false),
        text("country"),
        Field::new("coordinates", DataType::List(coordinate_item()), true),
        Field::new("timestamp", timestamp_type(), true),
    ])
});

pub static USER: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_metadata(vec![
        Field::new("ind", DataType::Int64, false),
        text("user_name"),
        Field::new("age", DataType::Int64, true),
        Field::new("date_joined", timestamp_type(), true),
    ])
});

/// Rejects tables (`pin_rejects`, ...): the raw record unchanged, why it was refused, and
/// where it came from.
pub static REJECTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        // The record's data: the text itself when it is UTF-8, else base64 of the bytes.
        text("raw_data"),
        Field::new("raw_data_is_base64", DataType::Boolean, false),
        // Machine-readable reason (invalid_json, not_an_object, missing_key, invalid_value, ...).
        Field::new("reason", DataType::Utf8, false),
        // The field at fault, when one is.
        text("field"),
        // What was wrong, for people.
        Field::new("detail", DataType::Utf8, false),
        Field::new("_stream", DataType::Utf8, false),
    ];
    fields.extend(metadata_fields());
    Arc::new(Schema::new(fields))
});
