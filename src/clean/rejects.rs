//! Arrow builders for a rejects table: the raw record unchanged, the reason, and where it
//! came from.

use std::sync::Arc;

use base64::Engine as _;
use deltalake::arrow::array::{ArrayRef, BooleanBuilder, StringBuilder};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

use super::columns::MetaColumns;
use super::{schema, RecordMeta, Reject};

pub struct RejectsColumns {
    raw_data: StringBuilder,
    raw_data_is_base64: BooleanBuilder,
    reason: StringBuilder,
    field: StringBuilder,
    detail: StringBuilder,
    stream: StringBuilder,
    meta: MetaColumns,
    rows: usize,
}

/// Empty builders that allocate nothing until a reject comes: most chunks have none, and
/// an Arrow builder's default room for 1,024 rows made every chunk's empty rejects batch
/// hold 53 KB, which the memory budget counted until the chunk was committed.
impl Default for RejectsColumns {
    fn default() -> Self {
        let text = || StringBuilder::with_capacity(0, 0);
        RejectsColumns {
            raw_data: text(),
            raw_data_is_base64: BooleanBuilder::with_capacity(0),
            reason: text(),
            field: text(),
            detail: text(),
            stream: text(),
            meta: MetaColumns::default(),
            rows: 0,
        }
    }
}

impl RejectsColumns {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, data: &[u8], reject: &Reject, stream: &str, meta: &RecordMeta<'_>) {
        match std::str::from_utf8(data) {
            Ok(text) => {
                self.raw_data.append_value(text);
                self.raw_data_is_base64.append_value(false);
            }
            Err(_) => {
                self.raw_data
                    .append_value(base64::engine::general_purpose::STANDARD.encode(data));
                self.raw_data_is_base64.append_value(true);
            }
        }
        self.reason.append_value(reject.reason.as_str());
        self.field.append_option(reject.field);
        self.detail.append_value(&reject.detail);
        self.stream.append_value(stream);
        self.meta.append(meta);
        self.rows += 1;
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.raw_data.finish()),
            Arc::new(self.raw_data_is_base64.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.stream.finish()),
        ];
        self.meta.finish_into(&mut cols);
        self.rows = 0;
        RecordBatch::try_new(schema::REJECTS.clone(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::{clean_into, Kind, RecordMeta, TableColumns};
    use deltalake::arrow::array::{Array, AsArray};

    const META: RecordMeta<'static> = RecordMeta {
        shard_id: "shardId-000000000000",
        sequence_number: "4955",
        sub_sequence_number: 0,
        arrival_micros: Some(1),
    };

    fn run(kind: Kind, data: &[u8]) -> (usize, RecordBatch) {
        let mut rows = TableColumns::new(kind);
        let mut rejects = RejectsColumns::default();
        let _ = clean_into(kind, data, &META, "s", &mut rows, &mut rejects);
        (rows.len(), rejects.finish().unwrap())
    }

    #[test]
    fn every_bad_shape_lands_in_rejects_with_its_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "invalid_json"),
            (b"[1,2]", "not_an_object"),
            (b"\xff\xfe", "invalid_utf8"),
            (br#"{"title":"x"}"#, "missing_key"),
            (br#"{"index":"seven"}"#, "invalid_key"),
            (br#"{"index":1,"follower_count":"abc"}"#, "invalid_value"),
        ];
        for (data, reason) in cases {
            let (accepted, b) = run(Kind::Pin, data);
            assert_eq!(accepted, 0, "{reason}");
            assert_eq!(b.num_rows(), 1, "{reason}");
            let col = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_string::<i32>()
                    .value(0)
                    .to_owned()
            };
            assert_eq!(col("reason"), reason);
            assert_eq!(col("_shard_id"), "shardId-000000000000");
            assert_eq!(col("_stream"), "s");
        }
    }

    #[test]
    fn raw_data_is_kept_unchanged_or_base64() {
        let (_, b) = run(Kind::Geo, b"{bad");
        assert_eq!(
            b.column_by_name("raw_data")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "{bad"
        );
        assert!(!b
            .column_by_name("raw_data_is_base64")
            .unwrap()
            .as_boolean()
            .value(0));
        let (_, b) = run(Kind::Geo, b"\xff");
        assert_eq!(
            b.column_by_name("raw_data")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "/w=="
        );
        assert!(b
            .column_by_name("raw_data_is_base64")
            .unwrap()
            .as_boolean()
            .value(0));
        assert!(b.column_by_name("field").unwrap().is_null(0));
    }

    #[test]
    fn a_good_record_is_not_rejected() {
        let (accepted, b) = run(
            Kind::User,
            br#"{"ind": 3, "first_name": "A", "last_name": "B", "age": 20}"#,
        );
        assert_eq!((accepted, b.num_rows()), (1, 0));
    }

    #[test]
    fn a_chunk_without_rejects_holds_almost_no_memory() {
        // The memory budget counts every chunk's rejects batch until it is committed.
        let empty = RejectsColumns::default().finish().unwrap();
        assert_eq!(empty.num_rows(), 0);
        assert!(
            empty.get_array_memory_size() < 4096,
            "{} bytes",
            empty.get_array_memory_size()
        );
    }
}
