//! Delta tables: open or create a table from its Arrow schema, append a micro-batch as
//! ONE commit carrying a `txn` per shard and each shard's position in the commit
//! metadata, and read back a shard's txn version and position for recovery.
//!
//! Local disk and S3 (conditional-put commits; unsafe renames are never enabled).

use std::collections::HashMap;

use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::config::TableRoot;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("table {table}: {source}")]
    Delta {
        table: String,
        source: DeltaTableError,
    },
    #[error("table {table}: cannot use location {location}: {message}")]
    Location {
        table: String,
        location: String,
        message: String,
    },
    #[error("table {table}: schema: {message}")]
    Schema { table: String, message: String },
}

/// Where a shard's rows stand in a table: the txn version and the last record committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPosition {
    /// `<application>/<stream>/<shard_id>`
    pub app_id: String,
    /// The lease key the position belongs to.
    pub lease_key: String,
    pub version: i64,
    pub last_sequence: String,
    pub last_sub_sequence: i64,
    /// The shard was read to its end with this commit.
    pub shard_end: bool,
}

/// Key of pinstream's entry in the Delta commit info.
const COMMIT_INFO_KEY: &str = "pinstream";

/// The URL delta-rs should open for `table` under `root`.
pub fn table_url(root: &TableRoot, table: &str) -> Result<url::Url, DeltaError> {
    let loc = root.table_url(table);
    let err = |message: String| DeltaError::Location {
        table: table.into(),
        location: loc.clone(),
        message,
    };
    match root {
        TableRoot::Local(_) => {
            let path = std::path::Path::new(&loc);
            std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
            let abs = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
            url::Url::from_directory_path(&abs).map_err(|()| err("not an absolute path".into()))
        }
        TableRoot::S3(_) => url::Url::parse(&loc).map_err(|e| err(e.to_string())),
    }
}

pub(crate) fn storage_options(root: &TableRoot) -> HashMap<String, String> {
    match root {
        TableRoot::Local(_) => HashMap::new(),
        TableRoot::S3(_) => {
            // delta-rs learns the s3:// scheme once per process.
            static S3_HANDLERS: std::sync::Once = std::sync::Once::new();
            S3_HANDLERS.call_once(|| deltalake::aws::register_handlers(None));
            crate::aws::s3_storage_options()
        }
    }
}

/// Opens `table` under `root`, creating it with `schema` on first use. Safe when several
/// workers race to create it: the loser of the version-0 commit opens the winner's table.
pub async fn open_or_create(
    root: &TableRoot,
    table: &str,
    schema: &SchemaRef,
) -> Result<DeltaTable, DeltaError> {
    let url = table_url(root, table)?;
    let opts = storage_options(root);
    let de = |source| DeltaError::Delta {
        table: table.into(),
        source,
    };
    if let Some(t) = try_open(&url, &opts).await.map_err(de)? {
        return Ok(t);
    }
    let kernel: StructType = schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| DeltaError::Schema {
            table: table.into(),
            message: e.to_string(),
        })?;
    let created = CreateBuilder::new()
        .with_location(url.as_str())
        .with_table_name(table)
        .with_storage_options(opts.clone())
        .with_columns(kernel.fields().cloned())
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => {
            tracing::info!(table, location = %url, "created Delta table");
            Ok(t)
        }
        Err(e) => match try_open(&url, &opts).await.map_err(de)? {
            Some(t) => Ok(t),
            None => Err(de(e)),
        },
    }
}

async fn try_open(
    url: &url::Url,
    opts: &HashMap<String, String>,
) -> Result<Option<DeltaTable>, DeltaTableError> {
    let builder = DeltaTableBuilder::from_url(url.clone())?.with_storage_options(opts.clone());
    match builder.load().await {
        Ok(t) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The txn version of `app_id` in the table's latest state (refreshed first).
pub async fn txn_version(
    table: &mut DeltaTable,
    app_id: &str,
) -> Result<Option<i64>, DeltaTableError> {
    Ok(txn_versions(table, &[app_id]).await?.pop().flatten())
}

/// The txn versions of several app ids, in order, after ONE refresh of the table state.
pub async fn txn_versions(
    table: &mut DeltaTable,
    app_ids: &[&str],
) -> Result<Vec<Option<i64>>, DeltaTableError> {
    table.update_state().await?;
    let log_store = table.log_store();
    let snapshot = table.snapshot()?;
    let mut out = Vec::with_capacity(app_ids.len());
    for app_id in app_ids {
        out.push(
            snapshot
                .transaction_version(log_store.as_ref(), *app_id)
                .await?,
        );
    }
    Ok(out)
}

/// Appends `batches` as one commit with a txn per shard in `shards`. A shard with no rows
/// in this flush still gets its txn, so the table's txn version always equals the lease's
/// `batch_version` after a checkpoint. Returns the new table version.
///
/// A failed commit means "not committed": the caller keeps the rows and retries.
pub async fn append(
    table: &mut DeltaTable,
    batches: &[RecordBatch],
    shards: &[ShardPosition],
) -> Result<u64, DeltaTableError> {
    let txns: Vec<Transaction> = shards
        .iter()
        .map(|s| {
            Transaction::new_with_last_update(
                &s.app_id,
                s.version,
                Some(chrono::Utc::now().timestamp_millis()),
            )
        })
        .collect();
    let positions: serde_json::Map<String, Value> = shards
        .iter()
        .map(|s| {
            (
                s.lease_key.clone(),
                json!({"app_id": s.app_id, "version": s.version, "sequence": s.last_sequence, "sub_sequence": s.last_sub_sequence, "shard_end": s.shard_end}),
            )
        })
        .collect();
    // Log checkpoints are pinstream's own (maintenance.checkpoint_interval), not delta-rs's.
    let props = CommitProperties::default()
        .with_create_checkpoint(false)
        .with_application_transactions(txns)
        .with_metadata([(COMMIT_INFO_KEY.to_owned(), json!({ "shards": positions }))]);
    let mut writer = RecordBatchWriter::for_table(table)?
        .with_writer_properties(writer_properties())
        .with_commit_properties(props);
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(b.clone()).await?;
    }
    writer.flush_and_commit(table).await
}

/// Parquet settings of every file pinstream writes (appends and compaction): Snappy and
/// dictionaries, as delta-rs writes by default; one row group per flush (a flush is at most
/// `flush.max_batch_rows`, below the writer's row group limit).
///
/// No dictionary for `_sequence_number`: Kinesis never gives two records of a shard the
/// same one, so a dictionary only costs a hash and an insert per row until it overflows
/// and the writer falls back to plain encoding anyway. The text columns that are mostly
/// unique in real data keep theirs: turning them off was measured 2.8x slower to encode on
/// the sample records (`cargo bench --bench worker -- parquet_encode`), which repeat.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(format!("pinstream {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(ColumnPath::from("_sequence_number"), false)
        .build()
}

/// Finds the position a shard reached in the commit that set its txn to `version`, by
/// reading the commit history newest first (used when the commit landed but the
/// checkpoint did not).
pub async fn position_at(
    table: &DeltaTable,
    lease_key: &str,
    version: i64,
) -> Result<Option<ShardPosition>, DeltaTableError> {
    let mut history = table.history(None);
    while let Some(info) = history.next().await {
        let info = info?;
        let Some(entry) = info
            .info
            .get(COMMIT_INFO_KEY)
            .and_then(|v| v.get("shards"))
            .and_then(|s| s.get(lease_key))
        else {
            continue;
        };
        if entry.get("version").and_then(Value::as_i64) == Some(version) {
            return Ok(Some(ShardPosition {
                app_id: entry
                    .get("app_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                lease_key: lease_key.to_owned(),
                version,
                last_sequence: entry
                    .get("sequence")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                last_sub_sequence: entry
                    .get("sub_sequence")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                shard_end: entry
                    .get("shard_end")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
    use deltalake::parquet::arrow::ArrowWriter;
    use deltalake::parquet::file::reader::{FileReader as _, SerializedFileReader};

    #[test]
    fn sequence_numbers_are_written_without_a_dictionary_and_text_with_one() {
        let mut rows = TableColumns::new(Kind::Pin);
        let mut rejects = RejectsColumns::default();
        let seqs: Vec<String> = (0..100)
            .map(|i| format!("4965000000000000{i:04}"))
            .collect();
        for seq in &seqs {
            let meta = RecordMeta {
                shard_id: "shardId-000000000000",
                sequence_number: seq,
                sub_sequence_number: 0,
                arrival_micros: Some(1),
            };
            let data = br#"{"index": 1, "title": "a title", "category": "art"}"#;
            clean_into(Kind::Pin, data, &meta, "pin", &mut rows, &mut rejects).unwrap();
        }
        let batch = rows.finish().unwrap();
        let mut file = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut file, batch.schema(), Some(writer_properties())).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let row_group = reader.metadata().row_group(0);
        let has_dictionary = |name: &str| {
            let column = row_group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap_or_else(|| panic!("no column {name}"));
            column.dictionary_page_offset().is_some()
        };
        assert!(!has_dictionary("_sequence_number"));
        assert!(has_dictionary("title"));
        assert!(has_dictionary("_shard_id"));
    }
}
