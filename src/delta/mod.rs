//! Delta tables: open or create a table from its Arrow schema, append a micro-batch as
//! ONE fenced commit carrying a `txn` per shard and each shard's position in the commit
//! metadata ([`Appender`], in `append.rs`: a writer's appends without delta-rs rebuilding
//! the file list at each), write and read one commit entry at exactly one version
//! ([`entry`]: how appends and compactions race other writers for the next version), and
//! read back a shard's txn version and position for recovery. Knows nothing of leases,
//! sinks or cleaning.
//!
//! Local disk and S3 (conditional-put commits; unsafe renames are never enabled).

mod append;
pub mod entry;
pub mod features;
mod in_data;
mod storage_error;
#[cfg(test)]
pub(crate) mod watched_store;

use std::collections::HashMap;

pub use append::{Appender, StagedAppend};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt as _;
pub use in_data::last_record_of_shard;
use serde_json::{json, Value};

use crate::config::TableRoot;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("table {table}: {}", storage_error::one_line(source))]
    Delta {
        table: String,
        source: DeltaTableError,
    },
    #[error("table {table}: cannot use location {location}: {message}; fix: point `table_root` (or `--table-root`) at a directory this user can create and write, or at s3://bucket/prefix")]
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
    /// The shard's txn app id (see `lease::Lease::app_id`).
    pub app_id: String,
    /// The lease key the position belongs to.
    pub lease_key: String,
    /// The shard's txn version after the commit: the table version of the commit itself.
    pub version: i64,
    pub last_sequence: String,
    pub last_sub_sequence: i64,
    /// The shard was read to its end with this commit.
    pub shard_end: bool,
}

/// One shard's part in an append: the txn version the table must still hold for it (the
/// fence) and where its rows end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCommit {
    /// The shard's txn app id (see `lease::Lease::app_id`).
    pub app_id: String,
    pub lease_key: String,
    /// The shard's txn version as this writer last read or wrote it (0: none yet). If the
    /// table holds another, someone else committed for the shard and nothing is committed.
    pub expected: i64,
    pub last_sequence: String,
    pub last_sub_sequence: i64,
    pub shard_end: bool,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Committed as this table version, which is now every shard's txn version.
    Committed(i64),
    /// These shards' txn versions are not the expected ones (lease keys): another writer
    /// committed for them. Nothing was committed.
    Fenced(Vec<String>),
}

/// How many times a commit goes back to the latest version after losing a race to another
/// writer before it gives up (the caller keeps its rows and retries later).
const COMMIT_ATTEMPTS: usize = 100;

/// Key of pinstream's entry in the Delta commit info.
const COMMIT_INFO_KEY: &str = "pinstream";

/// The URL delta-rs should open for `table` under `root`. Local paths are made absolute
/// against the current directory; nothing is created.
pub fn table_url(root: &TableRoot, table: &str) -> Result<url::Url, DeltaError> {
    let loc = root.table_url(table);
    let err = |message: String| DeltaError::Location {
        table: table.into(),
        location: loc.clone(),
        message,
    };
    match root {
        TableRoot::Local(_) => {
            let path = std::path::absolute(&loc).map_err(|e| err(e.to_string()))?;
            url::Url::from_directory_path(&path).map_err(|()| err("not an absolute path".into()))
        }
        TableRoot::S3(_) => url::Url::parse(&loc).map_err(|e| err(e.to_string())),
    }
}

/// Creates a local table's directory (delta-rs writes into it); nothing to do on S3.
fn create_local_dir(root: &TableRoot, table: &str) -> Result<(), DeltaError> {
    if let TableRoot::Local(_) = root {
        let loc = root.table_url(table);
        std::fs::create_dir_all(&loc).map_err(|e| DeltaError::Location {
            table: table.into(),
            location: loc.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
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
    create_local_dir(root, table)?;
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
    let mut table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(opts.clone())
        .build()?;
    // Look before loading: loading a location with no log makes delta-rs's kernel log an
    // ERROR line for what is only a table not created yet.
    if !table.verify_deltatable_existence().await? {
        return Ok(None);
    }
    match table.load().await.map(|()| table) {
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
    loaded_txn_versions(table, app_ids).await
}

/// The txn versions of several app ids in the table's loaded snapshot, in order.
async fn loaded_txn_versions(
    table: &DeltaTable,
    app_ids: &[&str],
) -> Result<Vec<Option<i64>>, DeltaTableError> {
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

/// Appends `batches` as ONE commit with a txn per shard in `shards`, fenced: the commit
/// goes in only while every shard's txn version in the table is still its `expected` one,
/// and each shard's txn version becomes the commit's own table version (so recovery reads
/// exactly one commit to learn a shard's position, and two writers' commits can never carry
/// the same txn version). A shard with no rows in this flush still gets its txn. `table`
/// is refreshed afterwards. A writer appending again and again keeps an [`Appender`].
///
/// A failed commit means "not committed": the caller keeps the rows and retries.
pub async fn append(
    table: &mut DeltaTable,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Appended, DeltaTableError> {
    let done = Appender::new(table.clone())
        .append(writer, batches, shards)
        .await?;
    table.update_state().await?;
    Ok(done)
}

/// First step of [`append`]: checks the fence on the latest version and writes the data
/// files (not yet part of the table). `Err(lease keys)` when the fence fails already.
pub async fn stage_append(
    table: &mut DeltaTable,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Result<StagedAppend, Vec<String>>, DeltaTableError> {
    table.update_state().await?;
    Appender::new(table.clone())
        .stage(writer, batches, shards)
        .await
}

/// Second step of [`append`]: commits staged files at exactly the version after the
/// table's loaded one; when another writer took that version first, checks the fence again
/// on its commit and tries the next one. `table` is refreshed afterwards.
pub async fn commit_staged(
    table: &mut DeltaTable,
    staged: StagedAppend,
) -> Result<Appended, DeltaTableError> {
    let done = Appender::new(table.clone()).commit(staged).await?;
    table.update_state().await?;
    Ok(done)
}

fn lost_every_race() -> DeltaTableError {
    DeltaTableError::Generic(format!(
        "another writer committed first {COMMIT_ATTEMPTS} times in a row; giving up for now"
    ))
}

/// Commit properties of an append at `version` by `writer`: a txn per shard set to
/// `version`, and each shard's position, the writer and the commit's id in the commit info.
fn commit_properties(
    writer: &str,
    commit_id: &str,
    shards: &[ShardCommit],
    version: i64,
) -> CommitProperties {
    let now = chrono::Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = shards
        .iter()
        .map(|s| Transaction::new_with_last_update(&s.app_id, version, Some(now)))
        .collect();
    let positions: serde_json::Map<String, Value> = shards
        .iter()
        .map(|s| {
            (
                s.lease_key.clone(),
                json!({"app_id": s.app_id, "version": version, "sequence": s.last_sequence, "sub_sequence": s.last_sub_sequence, "shard_end": s.shard_end}),
            )
        })
        .collect();
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([(
            COMMIT_INFO_KEY.to_owned(),
            json!({ "writer": writer, "commit": commit_id, "shards": positions }),
        )])
}

/// Commits `actions` through delta-rs as exactly the version after the table's loaded
/// snapshot, and loads the result. `Ok(None)`: another writer committed that version first;
/// nothing of ours is in the log. For writers with no race to run (the commit benchmark
/// builds its tables with it); racing writers use [`entry::write_at`].
pub async fn commit_next(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    props: CommitProperties,
    operation: DeltaOperation,
) -> Result<Option<i64>, DeltaTableError> {
    let res = CommitBuilder::from(props.with_max_retries(0))
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await;
    match res {
        Ok(done) => {
            table.state = Some(done.snapshot());
            Ok(Some(done.version() as i64))
        }
        Err(DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(_),
        })
        | Err(DeltaTableError::VersionAlreadyExists(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parquet settings of every file pinstream writes (appends and compaction): Snappy, as
/// delta-rs writes by default; one row group per flush (a flush is at most
/// `flush.max_batch_rows`, below the writer's row group limit).
///
/// Dictionaries only where values repeat. `_sequence_number` never repeats within a shard,
/// and in the real sample records (`tests/data/pin.ndjson`) 86-100 % of the values of
/// `unique_id`, `title`, `description`, `tag_list` and `image_src` are distinct: there a
/// dictionary costs a hash and an insert per row until it overflows and the writer falls
/// back to plain encoding anyway. The other text columns (names, categories, locations,
/// the shard id) repeat and keep theirs.
///
/// Statistics per column chunk, not per page: Delta's file statistics (min, max, null
/// count per column, for data skipping) are read from the chunk's; page statistics would
/// only feed a page index nobody reads in files of one small row group, and cost two
/// comparisons per value. Both measured on 100,000 real-shaped pin records
/// (docs/benchmarks.md, "Parquet settings").
pub fn writer_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_created_by(format!("pinstream {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for column in MOSTLY_DISTINCT_COLUMNS {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    props.build()
}

/// Columns whose values are (nearly) all distinct: written without a dictionary.
const MOSTLY_DISTINCT_COLUMNS: [&str; 6] = [
    "_sequence_number",
    "unique_id",
    "title",
    "description",
    "tag_list",
    "image_src",
];

/// The position a shard reached in the commit that set its txn to `version`. pinstream
/// sets a shard's txn version to the commit's own table version, so this reads that one
/// commit; tables written before that rule (txn versions counting 1, 2, 3 per shard) are
/// searched newest first.
pub async fn position_at(
    table: &DeltaTable,
    lease_key: &str,
    version: i64,
) -> Result<Option<ShardPosition>, DeltaTableError> {
    let entry = match u64::try_from(version) {
        Ok(v) => table.log_store().read_commit_entry(v).await?,
        Err(_) => None,
    };
    if let Some(bytes) = entry {
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Value = serde_json::from_slice(line).map_err(|json_err| {
                DeltaTableError::InvalidJsonLog {
                    json_err,
                    line: String::from_utf8_lossy(line).into_owned(),
                    version: version as u64,
                }
            })?;
            if let Some(p) = action
                .get("commitInfo")
                .and_then(|info| shard_entry(info, lease_key, version))
            {
                return Ok(Some(p));
            }
        }
    }
    let mut history = table.history(None);
    while let Some(info) = history.next().await {
        let info = info?;
        if let Some(p) = info
            .info
            .get(COMMIT_INFO_KEY)
            .and_then(|v| shard_entry_in(v, lease_key, version))
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The shard's entry in a commit info object, if it has one for txn `version`.
fn shard_entry(commit_info: &Value, lease_key: &str, version: i64) -> Option<ShardPosition> {
    shard_entry_in(commit_info.get(COMMIT_INFO_KEY)?, lease_key, version)
}

/// The shard's entry in pinstream's part of a commit info, if it is for txn `version`.
fn shard_entry_in(ours: &Value, lease_key: &str, version: i64) -> Option<ShardPosition> {
    let entry = ours.get("shards")?.get(lease_key)?;
    if entry.get("version").and_then(Value::as_i64) != Some(version) {
        return None;
    }
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(ShardPosition {
        app_id: text("app_id"),
        lease_key: lease_key.to_owned(),
        version,
        last_sequence: text("sequence"),
        last_sub_sequence: entry
            .get("sub_sequence")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        shard_end: entry
            .get("shard_end")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
    use deltalake::parquet::arrow::ArrowWriter;
    use deltalake::parquet::file::reader::{FileReader as _, SerializedFileReader};

    /// Pin rows of one shard, record `i` of `indexes` titled "title {i}" in category "art",
    /// with sequence number `4965{i:06}`.
    pub(crate) fn pin_rows(indexes: std::ops::Range<usize>) -> RecordBatch {
        let mut rows = TableColumns::new(Kind::Pin);
        let mut rejects = RejectsColumns::default();
        for i in indexes {
            let seq = format!("4965{i:06}");
            let meta = RecordMeta {
                shard_id: "shardId-000000000000",
                sequence_number: &seq,
                sub_sequence_number: 0,
                arrival_micros: Some(1),
            };
            let data = format!(r#"{{"index": {i}, "title": "title {i}", "category": "art"}}"#);
            clean_into(
                Kind::Pin,
                data.as_bytes(),
                &meta,
                "pin",
                &mut rows,
                &mut rejects,
            )
            .unwrap();
        }
        rows.finish().unwrap()
    }

    /// Shard `shardId-000000000000`'s part in an append, its rows ending at record `last`.
    pub(crate) fn shard_commit(expected: i64, last: usize) -> ShardCommit {
        ShardCommit {
            app_id: "test/pin/shardId-000000000000".into(),
            lease_key: "pin:shardId-000000000000".into(),
            expected,
            last_sequence: format!("4965{last:06}"),
            last_sub_sequence: 0,
            shard_end: false,
        }
    }

    #[test]
    fn distinct_columns_are_written_without_a_dictionary_and_repeated_ones_with_one() {
        let batch = pin_rows(0..100);
        let mut file = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut file, batch.schema(), Some(writer_properties())).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let row_group = reader.metadata().row_group(0);
        let column = |name: &str| {
            row_group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .clone()
        };
        let has_dictionary = |name: &str| column(name).dictionary_page_offset().is_some();
        assert!(!has_dictionary("_sequence_number"));
        assert!(!has_dictionary("title"));
        assert!(has_dictionary("category"));
        assert!(has_dictionary("_shard_id"));
        // Delta's file statistics come from the chunks' statistics: present on every column.
        let stats = column("title")
            .statistics()
            .cloned()
            .expect("title statistics");
        assert_eq!(stats.min_bytes_opt(), Some("title 0".as_bytes()));
        assert_eq!(stats.max_bytes_opt(), Some("title 99".as_bytes()));
        assert!(column("ind").statistics().is_some());
    }

    #[tokio::test]
    async fn appended_files_carry_delta_statistics_for_data_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let root = TableRoot::Local(dir.path().to_path_buf());
        let mut table = open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        let batch = pin_rows(0..10);
        let pos = shard_commit(0, 9);
        append(&mut table, "test", &[batch], &[pos]).await.unwrap();
        let log =
            std::fs::read_to_string(dir.path().join("pin/_delta_log/00000000000000000001.json"))
                .unwrap();
        let add = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find_map(|a| a.get("add").cloned())
            .expect("an add action");
        let stats: Value = serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 10);
        assert_eq!(stats["minValues"]["ind"], 0);
        assert_eq!(stats["maxValues"]["ind"], 9);
        assert_eq!(stats["minValues"]["title"], "title 0");
        assert_eq!(stats["nullCount"]["category"], 0);
    }
}
