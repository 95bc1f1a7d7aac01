//! Delta tables: open or create a table from its Arrow schema, append a micro-batch as
//! ONE fenced commit carrying a `txn` per shard and each shard's position in the commit
//! metadata, commit any actions at exactly one version (`commit_next`, also used by
//! compaction), and read back a shard's txn version and position for recovery. Knows
//! nothing of leases, sinks or cleaning.
//!
//! Local disk and S3 (conditional-put commits; unsafe renames are never enabled).

use std::collections::HashMap;

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

/// Data files written for an append, not yet committed.
pub struct StagedAppend {
    adds: Vec<Action>,
    shards: Vec<ShardCommit>,
    /// Who commits (a worker id), recorded in the commit info.
    writer: String,
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

/// The txn versions of the app ids a writer fences on, kept between its appends: each fence
/// reads only the commits after the version they were last exact at (one commit entry
/// each, normally the writer's own last commit), instead of delta-rs replaying every commit
/// since the last log checkpoint once per app id (12 shards: 14-40 ms per append). An app
/// id seen for the first time, or any doubt (a commit entry that cannot be read or parsed,
/// a table going back in versions, a table with a txn retention), goes to delta-rs.
#[derive(Debug, Default)]
pub struct TxnVersions {
    /// The table version `known` is exact at.
    at: Option<u64>,
    known: HashMap<String, Option<i64>>,
}

impl TxnVersions {
    /// The txn version of each of `app_ids` in `table`'s loaded snapshot, in order.
    pub async fn of(
        &mut self,
        table: &DeltaTable,
        app_ids: &[&str],
    ) -> Result<Vec<Option<i64>>, DeltaTableError> {
        let state = table.snapshot()?;
        if state
            .table_config()
            .set_transaction_retention_duration
            .is_some()
        {
            // Expired txns are not answered by delta-rs: leave that rule to it.
            self.known.clear();
            self.at = None;
            return loaded_txn_versions(table, app_ids).await;
        }
        let version = state.version();
        let exact = match self.at {
            Some(at) if at == version => true,
            Some(at) if at < version => self.catch_up(table, at, version).await,
            _ => false,
        };
        if !exact {
            self.known.clear();
        }
        self.at = Some(version);
        let missing: Vec<&str> = app_ids
            .iter()
            .copied()
            .filter(|id| !self.known.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            let found = loaded_txn_versions(table, &missing).await?;
            self.known
                .extend(missing.iter().map(|id| (*id).to_owned()).zip(found));
        }
        Ok(app_ids.iter().map(|id| self.known[*id]).collect())
    }

    /// Applies the txns of commits `from + 1 ..= to` to the known app ids, newest last;
    /// false when a commit entry could not be read or parsed.
    async fn catch_up(&mut self, table: &DeltaTable, from: u64, to: u64) -> bool {
        let log_store = table.log_store();
        for version in from + 1..=to {
            let Ok(Some(entry)) = log_store.read_commit_entry(version).await else {
                return false;
            };
            for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if memchr::memmem::find(line, b"\"txn\"").is_none() {
                    continue;
                }
                let Ok(action) = serde_json::from_slice::<Value>(line) else {
                    return false;
                };
                let Some(txn) = action.get("txn") else {
                    continue;
                };
                let (Some(app_id), Some(txn_version)) = (
                    txn.get("appId").and_then(Value::as_str),
                    txn.get("version").and_then(Value::as_i64),
                ) else {
                    return false;
                };
                if let Some(known) = self.known.get_mut(app_id) {
                    *known = Some(txn_version);
                }
            }
        }
        true
    }
}

/// Appends `batches` as ONE commit with a txn per shard in `shards`, fenced: the commit
/// goes in only while every shard's txn version in the table is still its `expected` one,
/// and each shard's txn version becomes the commit's own table version (so recovery reads
/// exactly one commit to learn a shard's position, and two writers' commits can never carry
/// the same txn version). A shard with no rows in this flush still gets its txn.
///
/// A failed commit means "not committed": the caller keeps the rows and retries.
pub async fn append(
    table: &mut DeltaTable,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Appended, DeltaTableError> {
    let txns = &mut TxnVersions::default();
    append_with(table, txns, writer, batches, shards).await
}

/// [`append`] with the writer's [`TxnVersions`] kept between its appends.
pub async fn append_with(
    table: &mut DeltaTable,
    txns: &mut TxnVersions,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Appended, DeltaTableError> {
    match stage(table, txns, writer, batches, shards).await? {
        Ok(staged) => commit(table, txns, staged).await,
        Err(fenced) => Ok(Appended::Fenced(fenced)),
    }
}

/// First step of [`append`]: refreshes the table, checks the fence, and writes the data
/// files (not yet part of the table). `Err(lease keys)` when the fence fails already.
pub async fn stage_append(
    table: &mut DeltaTable,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Result<StagedAppend, Vec<String>>, DeltaTableError> {
    stage(table, &mut TxnVersions::default(), writer, batches, shards).await
}

async fn stage(
    table: &mut DeltaTable,
    txns: &mut TxnVersions,
    writer: &str,
    batches: &[RecordBatch],
    shards: &[ShardCommit],
) -> Result<Result<StagedAppend, Vec<String>>, DeltaTableError> {
    table.update_state().await?;
    let fenced = fenced_shards(table, txns, shards).await?;
    if !fenced.is_empty() {
        return Ok(Err(fenced));
    }
    let mut files =
        RecordBatchWriter::for_table(table)?.with_writer_properties(writer_properties());
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        files.write(b.clone()).await?;
    }
    let adds = files.flush().await?.into_iter().map(Action::Add).collect();
    Ok(Ok(StagedAppend {
        adds,
        shards: shards.to_vec(),
        writer: writer.to_owned(),
    }))
}

/// Second step of [`append`]: commits staged files at exactly the version after the
/// table's loaded snapshot; when another writer took that version first, reloads, checks
/// the fence again and tries the next one. delta-rs's own conflict resolution is never
/// used: whether a commit may go in is decided here, from the latest snapshot.
pub async fn commit_staged(
    table: &mut DeltaTable,
    staged: StagedAppend,
) -> Result<Appended, DeltaTableError> {
    commit(table, &mut TxnVersions::default(), staged).await
}

async fn commit(
    table: &mut DeltaTable,
    txns: &mut TxnVersions,
    staged: StagedAppend,
) -> Result<Appended, DeltaTableError> {
    let operation = || DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    for _ in 0..COMMIT_ATTEMPTS {
        let version = table.version().unwrap_or(0) as i64 + 1;
        let props = commit_properties(&staged.writer, &staged.shards, version);
        if let Some(v) = commit_next(table, staged.adds.clone(), props, operation()).await? {
            return Ok(Appended::Committed(v));
        }
        table.update_state().await?;
        let fenced = fenced_shards(table, txns, &staged.shards).await?;
        if !fenced.is_empty() {
            return Ok(Appended::Fenced(fenced));
        }
    }
    Err(lost_every_race())
}

fn lost_every_race() -> DeltaTableError {
    DeltaTableError::Generic(format!(
        "another writer committed first {COMMIT_ATTEMPTS} times in a row; giving up for now"
    ))
}

/// The shards (lease keys) whose txn version in the loaded snapshot is not the expected one.
async fn fenced_shards(
    table: &DeltaTable,
    txns: &mut TxnVersions,
    shards: &[ShardCommit],
) -> Result<Vec<String>, DeltaTableError> {
    let app_ids: Vec<&str> = shards.iter().map(|s| s.app_id.as_str()).collect();
    let versions = txns.of(table, &app_ids).await?;
    Ok(shards
        .iter()
        .zip(versions)
        .filter(|(s, v)| v.unwrap_or(0) != s.expected)
        .map(|(s, _)| s.lease_key.clone())
        .collect())
}

/// Commit properties of an append at `version` by `writer`: a txn per shard set to
/// `version`, and each shard's position and the writer in the commit info.
fn commit_properties(writer: &str, shards: &[ShardCommit], version: i64) -> CommitProperties {
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
    // Log checkpoints and log cleanup are pinstream's own (maintenance.checkpoint_interval,
    // after a checkpoint), not delta-rs's: its cleanup lists the whole log after every
    // commit (a LIST request per commit on S3).
    CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
        .with_application_transactions(txns)
        .with_metadata([(
            COMMIT_INFO_KEY.to_owned(),
            json!({ "writer": writer, "shards": positions }),
        )])
}

/// Commits `actions` as exactly the version after the table's loaded snapshot, and loads
/// the result. `Ok(None)`: another writer committed that version first; nothing of ours is
/// in the log.
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

    #[tokio::test]
    async fn kept_txn_versions_see_another_writers_commits_and_fence_a_stale_writer() {
        let dir = tempfile::tempdir().unwrap();
        let root = TableRoot::Local(dir.path().to_path_buf());
        let mut a = open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        let mut b = open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        let mut kept = TxnVersions::default();
        // Writer a commits for the shard twice through its kept versions (the second fence
        // answered from them and from a's own commit entry).
        let first = append_with(
            &mut a,
            &mut kept,
            "a",
            &[pin_rows(0..1)],
            &[shard_commit(0, 0)],
        )
        .await
        .unwrap();
        assert_eq!(first, Appended::Committed(1));
        let second = append_with(
            &mut a,
            &mut kept,
            "a",
            &[pin_rows(1..2)],
            &[shard_commit(1, 1)],
        )
        .await
        .unwrap();
        assert_eq!(second, Appended::Committed(2));
        // The shard moves to writer b, which commits for it; then two commits for another
        // shard follow, so the kept versions are two commits behind.
        let took = append(&mut b, "b", &[pin_rows(2..3)], &[shard_commit(2, 2)])
            .await
            .unwrap();
        assert_eq!(took, Appended::Committed(3));
        for (i, expected) in [(3, 0), (4, 4)] {
            let mut other = shard_commit(expected, i);
            other.app_id = "test/pin/shardId-000000000001".into();
            other.lease_key = "pin:shardId-000000000001".into();
            let done = append(&mut b, "b", &[pin_rows(i..i + 1)], &[other])
                .await
                .unwrap();
            assert_eq!(done, Appended::Committed(i as i64 + 1));
        }
        // Writer a, still expecting its own version 2, is fenced: nothing committed.
        let stale = append_with(
            &mut a,
            &mut kept,
            "a",
            &[pin_rows(9..10)],
            &[shard_commit(2, 9)],
        )
        .await
        .unwrap();
        assert_eq!(
            stale,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
        assert_eq!(
            kept.of(&a, &["test/pin/shardId-000000000000"])
                .await
                .unwrap(),
            [Some(3)]
        );
        // And with the version b set, a commits.
        let resumed = append_with(
            &mut a,
            &mut kept,
            "a",
            &[pin_rows(9..10)],
            &[shard_commit(3, 9)],
        )
        .await
        .unwrap();
        assert_eq!(resumed, Appended::Committed(6));
        b.update_state().await.unwrap();
        assert_eq!(b.snapshot().unwrap().log_data().num_files(), 6);
    }
}
