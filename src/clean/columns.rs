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
use super::{Kind, Object, RecordMeta, Reject};

/// The `_` metadata columns, shared by cleaned and rejects tables.
pub(super) struct MetaColumns {
    shard_id: StringBuilder,
    sequence_number: StringBuilder,
    sub_sequence_number: Int64Builder,
    arrival: TimestampMicrosecondBuilder,
}

impl Default for MetaColumns {
    fn default() -> Self {
        MetaColumns {
            shard_id: StringBuilder::new(),
            sequence_number: StringBuilder::new(),
            sub_sequence_number: Int64Builder::new(),
            arrival: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
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
pub struct TableColumns {
    kind: Kind,
    cols: KindColumns,
    meta: MetaColumns,
    rows: usize,
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
        }
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

    /// Cleans `obj` and appends it, or returns why it cannot be cleaned (nothing appended).
    pub fn push(&mut self, obj: &Object<'_>, meta: &RecordMeta<'_>) -> Result<(), Reject> {
        match &mut self.cols {
            KindColumns::Pin(c) => c.append(PinRow::parse(obj)?),
            KindColumns::Geo(c) => c.append(GeoRow::parse(obj)?),
            KindColumns::User(c) => c.append(UserRow::parse(obj)?),
        }
        self.meta.append(meta);
        self.rows += 1;
        Ok(())
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
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
