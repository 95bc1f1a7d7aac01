//! Arrow builders for one cleaned table: the kind's own columns plus the metadata columns.
//! A record is parsed whole before anything is appended, so a reject never leaves half a
//! row behind.

use deltalake::arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use std::sync::Arc;

use super::geo::{GeoColumns, GeoRow};
use super::pin::{PinColumns, PinRow};
use super::user::{UserColumns, UserRow};
use super::{parse_object, Kind, RecordMeta, Reject};

/// The `_` metadata columns, shared by cleaned and rejects tables.
pub(super) struct MetaColumns {
    shard_id: StringBuilder,
    sequence_number: StringBuilder,
    sub_sequence_number: Int64Builder,
    arrival: TimestampMicrosecondBuilder,
}

/// Empty builders that allocate nothing until rows come (an Arrow builder's default is room
/// for 1,024 rows, more than a small chunk uses; see [`TableColumns::reserve`]).
impl Default for MetaColumns {
    fn default() -> Self {
        MetaColumns {
            shard_id: StringBuilder::with_capacity(0, 0),
            sequence_number: StringBuilder::with_capacity(0, 0),
            sub_sequence_number: Int64Builder::with_capacity(0),
            arrival: TimestampMicrosecondBuilder::with_capacity(0).with_timezone("UTC"),
        }
    }
}

impl MetaColumns {
    pub(super) fn append(&mut self, m: &RecordMeta<'_>) {
        self.shard_id.append_value(m.shard_id);
        self.sequence_number.append_value(m.sequence_number);
        self.sub_sequence_number.append_value(m.sub_sequence_number);
        self.arrival.append_option(m.arrival_micros);
    }

    fn text_columns(&mut self) -> [&mut StringBuilder; 2] {
        [&mut self.shard_id, &mut self.sequence_number]
    }

    pub(super) fn finish_into(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.shard_id.finish()));
        cols.push(Arc::new(self.sequence_number.finish()));
        cols.push(Arc::new(self.sub_sequence_number.finish()));
        cols.push(Arc::new(self.arrival.finish()));
    }
}

enum KindColumns {
    Pin(Box<PinColumns>),
    Geo(GeoColumns),
    User(UserColumns),
}

/// Builders for one cleaned table. `push` cleans and appends one record; `finish` hands
/// out a record batch in the table's schema and starts over.
///
/// Kept for the life of a shard reader, it learns how many bytes of each text column a
/// byte of input makes, so that [`TableColumns::reserve`] can size the next batch's
/// builders before it starts (a builder growing by doubling copies its data again each
/// time, and the worker's profile showed it).
pub struct TableColumns {
    kind: Kind,
    cols: KindColumns,
    meta: MetaColumns,
    rows: usize,
    /// Input bytes of the rows appended since the last `finish`.
    input_bytes: usize,
    /// Text bytes per input byte for each text column (kind's, then metadata), as of the
    /// last finished batch; empty before the first.
    text_per_input_byte: Vec<f64>,
}

impl TableColumns {
    pub fn new(kind: Kind) -> Self {
        let cols = match kind {
            Kind::Pin => KindColumns::Pin(Box::default()),
            Kind::Geo => KindColumns::Geo(GeoColumns::default()),
            Kind::User => KindColumns::User(UserColumns::default()),
        };
        TableColumns {
            kind,
            cols,
            meta: MetaColumns::default(),
            rows: 0,
            input_bytes: 0,
            text_per_input_byte: Vec::new(),
        }
    }

    /// The text columns' builders, kind's then metadata, in a fixed order.
    fn text_columns(&mut self) -> Vec<&mut StringBuilder> {
        let mut out: Vec<&mut StringBuilder> = match &mut self.cols {
            KindColumns::Pin(c) => c.text_columns().into(),
            KindColumns::Geo(c) => c.text_columns().into(),
            KindColumns::User(c) => c.text_columns().into(),
        };
        out.extend(self.meta.text_columns());
        out
    }

    /// Sizes empty builders for about `records` rows made of `input_bytes` bytes of input,
    /// from the text sizes of the last finished batch (a little over, so a batch like the
    /// last one never grows). Does nothing before the first batch or once rows were added.
    pub fn reserve(&mut self, records: usize, input_bytes: usize) {
        if self.rows > 0 || self.text_per_input_byte.is_empty() {
            return;
        }
        let per_byte = std::mem::take(&mut self.text_per_input_byte);
        for (b, share) in self.text_columns().into_iter().zip(&per_byte) {
            let bytes = (share * input_bytes as f64 * 1.05) as usize + 64;
            *b = StringBuilder::with_capacity(records, bytes);
        }
        self.text_per_input_byte = per_byte;
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Decodes and cleans one record's data and appends it, or returns why it cannot be
    /// cleaned (nothing appended).
    pub fn push(&mut self, data: &[u8], meta: &RecordMeta<'_>) -> Result<(), Reject> {
        match &mut self.cols {
            KindColumns::Pin(c) => c.append(PinRow::parse(&parse_object(data)?)?),
            KindColumns::Geo(c) => c.append(GeoRow::parse(&parse_object(data)?)?),
            KindColumns::User(c) => c.append(UserRow::parse(&parse_object(data)?)?),
        }
        self.input_bytes += data.len();
        self.meta.append(meta);
        self.rows += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        if self.input_bytes > 0 {
            let input = self.input_bytes as f64;
            let per_byte = self
                .text_columns()
                .iter()
                .map(|b| b.values_slice().len() as f64 / input)
                .collect();
            self.text_per_input_byte = per_byte;
            self.input_bytes = 0;
        }
        let mut cols = match &mut self.cols {
            KindColumns::Pin(c) => c.finish(),
            KindColumns::Geo(c) => c.finish(),
            KindColumns::User(c) => c.finish(),
        };
        self.meta.finish_into(&mut cols);
        self.rows = 0;
        RecordBatch::try_new(self.kind.schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_are_sized_from_the_last_batch() {
        let rec = br#"{"index": 1, "title": "a title of some length", "description": "and a longer description than the title"}"#;
        let meta = RecordMeta {
            shard_id: "shardId-000000000000",
            sequence_number: "49650000000000000000000000000000000000000000000000000001",
            sub_sequence_number: 0,
            arrival_micros: Some(1),
        };
        let mut rows = TableColumns::new(Kind::Pin);
        let fill = |rows: &mut TableColumns| {
            for _ in 0..1000 {
                rows.push(rec, &meta).unwrap();
            }
            rows.finish().unwrap()
        };
        let first = fill(&mut rows);
        rows.reserve(1000, 1000 * rec.len());
        let second = fill(&mut rows);
        assert_eq!(first, second);
        assert!(second.get_array_memory_size() < first.get_array_memory_size());
    }
}
