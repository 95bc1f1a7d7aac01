//! Table health for tables written every few seconds for months: a Delta log checkpoint
//! every `checkpoint_interval` commits with cleanup of log files older than
//! `log_retention` (aligned to a checkpoint, so time travel within the retention keeps
//! working); compaction of small files into files of about `compact_target_size`,
//! leaving files younger than `compact_min_age` alone; and a `vacuum` of data files no
//! longer in the table. Workers run compaction (and vacuum, when configured) on a schedule;
//! `pinstream maintain` runs everything on demand for all six tables.
//!
//! Compaction is safe while workers append and while other compactions run: it rewrites
//! only files of the snapshot it read and commits their removal and the new files as one
//! `OPTIMIZE` commit with `dataChange = false` (streaming readers skip it), at the first
//! free version after that snapshot, having read every commit in between
//! ([`commit_rewrite`]); if another writer removed one of the inputs (or changed the
//! table's metadata) first, it commits nothing and the next run tries again. Appends only
//! add files, so they never stop a compaction.

use std::time::Duration;

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::kernel::Action;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use deltalake::arrow::datatypes::SchemaRef;

use std::collections::{BTreeSet, HashSet};

use crate::clean::{self, Kind};
use crate::config::{MaintenancePolicy, Settings};
use crate::delta::features::TableUse;
use crate::delta::{self, DeltaError};

/// What a maintenance pass did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub version: u64,
    pub checkpointed: bool,
    pub logs_removed: usize,
    pub files_vacuumed: usize,
    pub compaction: Option<Compaction>,
}

/// What one compaction did to a table.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq)]
pub struct Compaction {
    /// The OPTIMIZE commit's version; `None` when there was nothing worth compacting.
    pub version: Option<u64>,
    pub files_removed: usize,
    pub files_added: usize,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    pub rows: u64,
    /// Another writer removed some of the files first: nothing was committed.
    pub conflict: bool,
}

/// Which files compaction rewrites.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files at or above this size are left alone; new files are cut near it.
    pub target_size: u64,
    /// Files written more recently than this are left alone (they may still be read by
    /// streaming consumers catching up, and the next run gets them).
    pub min_age: Duration,
    /// Do nothing unless at least this many files qualify.
    pub min_files: usize,
}

impl CompactOptions {
    pub fn from_policy(p: &MaintenancePolicy) -> Self {
        CompactOptions {
            target_size: p.compact_target_size,
            min_age: p.compact_min_age,
            min_files: p.compact_min_files,
        }
    }
}

/// Bin-packs the table's small, old-enough files into files of about `target_size` and
/// commits the swap as one OPTIMIZE commit: [`rewrite_small_files`] then
/// [`commit_rewrite`]. Safe however many compactions of the table run at once, in any
/// process: see [`commit_rewrite`].
pub async fn compact(
    table: &mut DeltaTable,
    opts: &CompactOptions,
) -> Result<Compaction, DeltaTableError> {
    match rewrite_small_files(table, opts).await? {
        Some(rewrite) => commit_rewrite(table, rewrite).await,
        None => Ok(Compaction::default()),
    }
}

/// Files rewritten by a compaction, not yet committed.
pub struct Rewrite {
    /// The version of the snapshot the inputs were picked from.
    read_at: u64,
    /// Paths of the files the new ones replace (decoded, as the snapshot gives them).
    inputs: HashSet<String>,
    actions: Vec<Action>,
    target_size: u64,
    report: Compaction,
}

/// First step of a compaction: reads the latest snapshot, picks the files below the target
/// size and older than the minimum age, and writes their rows into new files, one input
/// file at a time (memory is about one output file). `None` when too few files qualify.
/// Nothing is committed: the new files are not part of the table yet.
pub async fn rewrite_small_files(
    table: &mut DeltaTable,
    opts: &CompactOptions,
) -> Result<Option<Rewrite>, DeltaTableError> {
    table.update_state().await?;
    let unhonoured = delta::features::unhonoured(table, TableUse::Compact)?;
    if !unhonoured.is_empty() {
        tracing::info!(table = %table.table_url(), features = %unhonoured.join(", "), "not compacting: the table uses features compaction does not honour");
        return Ok(None);
    }
    let snapshot = table.snapshot()?.clone();
    let cutoff = chrono::Utc::now().timestamp_millis() - opts.min_age.as_millis() as i64;
    // A file with a deletion vector is left as it is: its Parquet holds rows another
    // engine deleted, which a rewrite of the file would bring back.
    let mut candidates: Vec<_> = snapshot
        .log_data()
        .iter()
        .filter(|f| (f.size() as u64) < opts.target_size && f.modification_time() <= cutoff)
        .filter(|f| f.deletion_vector_descriptor().is_none())
        .collect();
    if candidates.len() < opts.min_files.max(2) {
        return Ok(None);
    }
    // Oldest first, so rows keep roughly their arrival order.
    candidates.sort_by_key(|f| (f.modification_time(), f.path().into_owned()));
    let mut bins: Vec<Vec<_>> = vec![Vec::new()];
    let mut bin_bytes = 0u64;
    for f in candidates {
        let size = f.size() as u64;
        if bin_bytes + size > opts.target_size && !bins.last().is_some_and(Vec::is_empty) {
            bins.push(Vec::new());
            bin_bytes = 0;
        }
        bin_bytes += size;
        bins.last_mut().expect("one bin at least").push(f);
    }
    // A bin of one file would rewrite it unchanged.
    bins.retain(|b| b.len() > 1);
    if bins.iter().map(Vec::len).sum::<usize>() < opts.min_files.max(2) {
        return Ok(None);
    }
    let store = table.log_store().object_store(None);
    let mut report = Compaction::default();
    let mut actions = Vec::new();
    let mut inputs = HashSet::new();
    for bin in &bins {
        let mut writer = RecordBatchWriter::for_table(table)?
            .with_writer_properties(crate::delta::writer_properties());
        for f in bin {
            let bytes = store
                .get_opts(&f.object_store_path(), Default::default())
                .await?
                .bytes()
                .await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
                .with_batch_size(64 * 1024)
                .build()?;
            for batch in reader {
                let batch = batch?;
                report.rows += batch.num_rows() as u64;
                writer.write(batch).await?;
            }
            report.files_removed += 1;
            report.bytes_removed += f.size() as u64;
            inputs.insert(f.path().into_owned());
            actions.push(Action::Remove(f.remove_action(false)));
        }
        for mut add in writer.flush().await? {
            add.data_change = false;
            report.files_added += 1;
            report.bytes_added += add.size as u64;
            actions.push(Action::Add(add));
        }
    }
    Ok(Some(Rewrite {
        read_at: snapshot.version(),
        inputs,
        actions,
        target_size: opts.target_size,
        report,
    }))
}

/// Second step of a compaction: commits the swap as ONE OPTIMIZE commit with
/// `dataChange = false`, at the version after the snapshot it read, and only while every
/// input file is still in the table. When another writer took that version first, its
/// commit entry is read ([`delta::entry::removed_by`]): an append only adds files and the
/// compaction tries the next version; a commit that removed one of the inputs (another
/// compaction, a delete) or changed the table's metadata or protocol makes it give up
/// (`version: None`, `conflict: true`), so no row is ever in the table twice. The new files
/// are then orphans that vacuum deletes.
///
/// A lost race costs one read of a small entry, not a reload of the table's state: on a
/// table taking several appends a second, a reload (a listing and a replay of the log,
/// 60-220 ms in a loaded test build) let the next append in before every retry, and
/// compactions starved. delta-rs's own conflict check is not relied on either: it lets a
/// second compaction of the same files through (it ignores removals with
/// `dataChange = false`).
pub async fn commit_rewrite(
    table: &mut DeltaTable,
    rewrite: Rewrite,
) -> Result<Compaction, DeltaTableError> {
    let Rewrite {
        read_at,
        inputs,
        actions,
        target_size,
        mut report,
    } = rewrite;
    let operation_id = uuid::Uuid::new_v4();
    for version in (read_at + 1..).take(COMMIT_ATTEMPTS) {
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: target_size as i64,
        };
        let props = delta::entry::identified("compaction", operation_id);
        if delta::entry::write_at(
            table,
            version,
            actions.clone(),
            props,
            operation,
            operation_id,
        )
        .await?
        {
            report.version = Some(version);
            if let Err(e) = table.update_state().await {
                tracing::warn!(version, error = %e, "loading the table after its compaction failed");
            }
            return Ok(report);
        }
        let removed = delta::entry::removed_by(table, version).await?;
        if removed.is_none_or(|paths| paths.iter().any(|p| inputs.contains(p))) {
            tracing::info!(
                files = inputs.len(),
                version,
                "another writer removed files this compaction rewrote, or changed the table's metadata; giving it up"
            );
            metrics::counter!("pinstream_compaction_conflicts_total").increment(1);
            return Ok(Compaction {
                version: None,
                conflict: true,
                ..Compaction::default()
            });
        }
    }
    Err(DeltaTableError::Generic(format!(
        "compaction lost the race to other writers {COMMIT_ATTEMPTS} times in a row"
    )))
}

/// How many times a compaction tries the next version after another writer's append took
/// the one it tried.
const COMMIT_ATTEMPTS: usize = 100;

/// Writes a checkpoint at the table's current version and removes log files older than
/// `log_retention` that the checkpoint makes unnecessary.
pub async fn checkpoint_and_clean(
    table: &DeltaTable,
    log_retention: Duration,
) -> Result<usize, DeltaTableError> {
    create_checkpoint(table, None).await?;
    let version = table.version().unwrap_or(0);
    let cutoff = chrono::Utc::now().timestamp_millis() - log_retention.as_millis() as i64;
    cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None).await
}

/// Called by the sink after each of its appends: checkpoints on every
/// `checkpoint_interval`-th version, from the whole state loaded at that version (the
/// appender's own state lags its commits; loaded once per interval). A failure is logged,
/// never fatal: the commit itself has landed.
pub async fn after_append(table: &mut delta::Appender, version: u64, policy: &MaintenancePolicy) {
    if !checkpoint_due(version, policy) {
        return;
    }
    match table.loaded().await {
        Ok(loaded) => after_commit(loaded, version, policy).await,
        Err(e) => {
            tracing::warn!(version, error = %e, "loading the table for a log checkpoint failed; the next interval tries again")
        }
    }
}

/// After a commit at `version` on `table` (loaded at it): checkpoints on every
/// `checkpoint_interval`-th version. A failure is logged, never fatal: the commit itself
/// has landed.
pub async fn after_commit(table: &DeltaTable, version: u64, policy: &MaintenancePolicy) {
    if !checkpoint_due(version, policy) {
        return;
    }
    match checkpoint_and_clean(table, policy.log_retention).await {
        Ok(removed) => tracing::info!(
            version,
            logs_removed = removed,
            "wrote a Delta log checkpoint"
        ),
        Err(e) => {
            tracing::warn!(version, error = %e, "log checkpoint failed; the next interval tries again")
        }
    }
}

fn checkpoint_due(version: u64, policy: &MaintenancePolicy) -> bool {
    policy.checkpoint_interval != 0
        && version != 0
        && version.is_multiple_of(policy.checkpoint_interval)
}

/// `pinstream maintain`: compact, checkpoint, clean logs and (when `vacuum` is given) vacuum
/// every table. Vacuum honours the tables' own minimum retention (7 days by default).
pub async fn run(
    settings: &Settings,
    vacuum: Option<Duration>,
) -> Result<Vec<TableReport>, DeltaError> {
    let mut reports = Vec::new();
    for (_, name, schema) in tables(settings) {
        reports.push(maintain_one(settings, name, &schema, vacuum).await?);
    }
    Ok(reports)
}

/// Every table of the configured streams, cleaned and rejects, with its kind and schema.
fn tables(settings: &Settings) -> Vec<(Kind, &'static str, SchemaRef)> {
    settings
        .streams
        .keys()
        .flat_map(|&kind| {
            [
                (kind, kind.name(), kind.schema()),
                (kind, kind.rejects_table(), clean::schema::REJECTS.clone()),
            ]
        })
        .collect()
}

async fn maintain_one(
    settings: &Settings,
    name: &str,
    schema: &SchemaRef,
    vacuum: Option<Duration>,
) -> Result<TableReport, DeltaError> {
    let de = |source| DeltaError::Delta {
        table: name.to_owned(),
        source,
    };
    let mut table = delta::open_or_create(&settings.table_root, name, schema).await?;
    let compaction = compact(
        &mut table,
        &CompactOptions::from_policy(&settings.maintenance),
    )
    .await
    .map_err(de)?;
    let logs_removed = checkpoint_and_clean(&table, settings.maintenance.log_retention)
        .await
        .map_err(de)?;
    let mut report = TableReport {
        table: name.to_owned(),
        version: table.version().unwrap_or(0),
        checkpointed: true,
        logs_removed,
        files_vacuumed: 0,
        compaction: Some(compaction),
    };
    if let Some(retention) = vacuum {
        report.files_vacuumed = vacuum_one(&mut table, retention).await.map_err(de)?;
    }
    let c = report.compaction.as_ref();
    tracing::info!(
        table = name,
        version = report.version,
        compacted_files = c.map_or(0, |c| c.files_removed),
        logs_removed = report.logs_removed,
        files_vacuumed = report.files_vacuumed,
        "maintained"
    );
    Ok(report)
}

/// Deletes data files that are not in the table and have not been for `retention`: files
/// removed from it longer ago than that, and files never committed (a compaction whose
/// commit lost, a writer that died before its commit) older than that, as Spark's VACUUM
/// does (delta-rs's default "lite" mode would leave those forever). Returns how many.
pub async fn vacuum_one(
    table: &mut DeltaTable,
    retention: Duration,
) -> Result<usize, DeltaTableError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
    let (t, metrics) = table
        .clone()
        .vacuum()
        .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
        .with_retention_period(retention)
        .await?;
    *table = t;
    Ok(metrics.files_deleted.len())
}

/// Uniform in [0.8, 1.2] x `d`, so that workers started together drift apart and rarely
/// compact the same table at once (when they do, one commit wins and the others give up in
/// [`commit_rewrite`]; no row is ever committed twice).
fn jittered(d: Duration) -> Duration {
    use rand::Rng as _;
    d.mul_f64(rand::rng().random_range(0.8..=1.2))
}

/// The worker's scheduled maintenance: compaction each `compact_interval`, vacuum each
/// `vacuum_interval` (off by default), both jittered, of the tables of the kinds in `owned`:
/// the kinds whose maintenance this worker owns through the lease table (see
/// `worker::maintenance_owned`), so that a fleet does not compact the same table from every
/// worker at once. (Were two to overlap in a hand-over, [`commit_rewrite`] lets one commit.)
/// Failures are logged and retried at the next run; they never stop the worker. `None`
/// when both are off.
pub fn spawn_scheduled(
    settings: &Settings,
    stop: tokio_util::sync::CancellationToken,
    owned: tokio::sync::watch::Receiver<BTreeSet<Kind>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let policy = settings.maintenance.clone();
    if policy.compact_interval.is_none() && policy.vacuum_interval.is_none() {
        return None;
    }
    let settings = settings.clone();
    Some(tokio::spawn(async move {
        let now = tokio::time::Instant::now();
        let mut next_compact = policy.compact_interval.map(|i| now + jittered(i));
        let mut next_vacuum = policy.vacuum_interval.map(|i| now + jittered(i));
        loop {
            let Some(next) = [next_compact, next_vacuum].into_iter().flatten().min() else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            let now = tokio::time::Instant::now();
            let compact_now = next_compact.is_some_and(|t| t <= now);
            let vacuum_now = next_vacuum.is_some_and(|t| t <= now);
            for (kind, name, schema) in tables(&settings) {
                if !owned.borrow().contains(&kind) {
                    tracing::debug!(table = name, "maintenance owned by another worker");
                    continue;
                }
                let mut table = match delta::open_or_create(&settings.table_root, name, &schema)
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, "scheduled maintenance cannot open the table");
                        continue;
                    }
                };
                if compact_now {
                    let started = std::time::Instant::now();
                    match compact(&mut table, &CompactOptions::from_policy(&policy)).await {
                        Ok(c) if c.version.is_some() => {
                            metrics::counter!("pinstream_compactions_total", "table" => name)
                                .increment(1);
                            metrics::counter!("pinstream_compaction_files_removed_total", "table" => name)
                                .increment(c.files_removed as u64);
                            tracing::info!(
                                table = name,
                                version = c.version,
                                files_removed = c.files_removed,
                                files_added = c.files_added,
                                rows = c.rows,
                                seconds = started.elapsed().as_secs_f64(),
                                "compacted"
                            );
                        }
                        Ok(c) if c.conflict => {
                            tracing::debug!(table = name, "compaction gave way to another writer")
                        }
                        Ok(_) => tracing::debug!(table = name, "nothing to compact"),
                        Err(e) => {
                            tracing::warn!(table = name, error = %e, "compaction failed; the next run tries again")
                        }
                    }
                }
                if vacuum_now {
                    match vacuum_one(&mut table, policy.vacuum_retention).await {
                        Ok(n) => {
                            metrics::counter!("pinstream_vacuum_files_deleted_total", "table" => name).increment(n as u64);
                            tracing::info!(table = name, files_deleted = n, "vacuumed");
                        }
                        Err(e) => {
                            tracing::warn!(table = name, error = %e, "vacuum failed; the next run tries again")
                        }
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if compact_now {
                next_compact = policy.compact_interval.map(|i| now + jittered(i));
            }
            if vacuum_now {
                next_vacuum = policy.vacuum_interval.map(|i| now + jittered(i));
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::config::TableRoot;
    use crate::delta::tests::{pin_rows, shard_commit};
    use crate::delta::watched_store::{BeforeCommit, WatchedStore};
    use crate::delta::{Appended, ShardCommit};

    const EVERY_SMALL_FILE: CompactOptions = CompactOptions {
        target_size: 1 << 30,
        min_age: Duration::ZERO,
        min_files: 2,
    };

    async fn table_of_appends(dir: &std::path::Path, appends: usize) -> DeltaTable {
        let root = TableRoot::Local(dir.to_path_buf());
        let mut table = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        for i in 0..appends {
            let shard = shard_commit(i as i64, i);
            let done = delta::append(&mut table, "a", &[pin_rows(i..i + 1)], &[shard])
                .await
                .unwrap();
            assert_eq!(done, Appended::Committed(i as i64 + 1));
        }
        table
    }

    /// Two handles on `table`, each with a rewrite of all its small files staged.
    async fn two_rewrites(table: &DeltaTable) -> [(DeltaTable, Rewrite); 2] {
        let mut staged = Vec::new();
        for _ in 0..2 {
            let mut t = table.clone();
            let r = rewrite_small_files(&mut t, &EVERY_SMALL_FILE)
                .await
                .unwrap()
                .expect("small files to compact");
            staged.push((t, r));
        }
        staged.try_into().ok().expect("two rewrites")
    }

    /// Another writer's handle on the same table appending for shard 1, one row a time.
    struct OtherWriter {
        table: tokio::sync::Mutex<(DeltaTable, i64)>,
        appends_left: AtomicUsize,
    }

    impl OtherWriter {
        async fn new(table: &DeltaTable, appends: usize) -> Arc<Self> {
            let mut table = table.clone();
            table.update_state().await.unwrap();
            Arc::new(OtherWriter {
                table: tokio::sync::Mutex::new((table, 0)),
                appends_left: AtomicUsize::new(appends),
            })
        }

        /// Appends one row unless it has made all its appends.
        async fn append(&self) {
            let more = self
                .appends_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if more.is_err() {
                return;
            }
            let mut guard = self.table.lock().await;
            let (table, expected) = &mut *guard;
            let i = 100 + *expected as usize;
            let shard = ShardCommit {
                app_id: "test/pin/shardId-000000000001".into(),
                lease_key: "pin:shardId-000000000001".into(),
                ..shard_commit(*expected, i)
            };
            match delta::append(table, "b", &[pin_rows(i..i + 1)], &[shard])
                .await
                .unwrap()
            {
                Appended::Committed(v) => *expected = v,
                fenced => panic!("the other writer was fenced: {fenced:?}"),
            }
        }

        /// A hook that lets this writer append just before each commit entry is put.
        fn before_every_commit(self: &Arc<Self>) -> BeforeCommit {
            let me = self.clone();
            Box::new(move |_| {
                let me = me.clone();
                Box::pin(async move { me.append().await })
            })
        }
    }

    /// An append lands just before each of the compaction's first five puts, as on a table
    /// taking appends faster than the compaction reloads it. The compaction reads each
    /// winner's entry, commits at the sixth version it tries, and lists the log once: to
    /// load the table after its commit. (Reloading the state after each lost race, as
    /// before, lists the log at every one of them.)
    #[tokio::test]
    async fn a_compaction_losing_races_to_appends_reads_their_entries_without_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let table = table_of_appends(dir.path(), 4).await;
        let other = OtherWriter::new(&table, 5).await;
        let (mut compacting, store) =
            WatchedStore::open(&table, Some(other.before_every_commit())).await;
        let rewrite = rewrite_small_files(&mut compacting, &EVERY_SMALL_FILE)
            .await
            .unwrap()
            .expect("four small files");
        let listed = store.log_listings();
        let report = commit_rewrite(&mut compacting, rewrite).await.unwrap();
        assert_eq!(
            report.version,
            Some(10),
            "after the five appends: {report:?}"
        );
        assert_eq!((report.files_removed, report.rows), (4, 4));
        assert_eq!(store.log_listings() - listed, 1, "listings of the log");
        assert_eq!(compacting.version(), Some(10));
        let files = compacting.snapshot().unwrap().log_data().num_files();
        assert_eq!(
            files,
            1 + 5,
            "the compacted file and the five appended after"
        );
    }

    /// A commit that changed the table's metadata between the compaction's snapshot and its
    /// commit makes it give up: its files were written under the old metadata. (Reloading
    /// the state and checking only that the inputs are still there let it commit.)
    #[tokio::test]
    async fn a_compaction_gives_way_to_a_metadata_change_committed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = table_of_appends(dir.path(), 3).await;
        let rewrite = rewrite_small_files(&mut table, &EVERY_SMALL_FILE)
            .await
            .unwrap()
            .expect("three small files");
        let mut other = table.clone();
        other.update_state().await.unwrap();
        let other = other
            .set_tbl_properties()
            .with_properties(std::collections::HashMap::from([(
                "delta.logRetentionDuration".to_owned(),
                "interval 2 days".to_owned(),
            )]))
            .await
            .unwrap();
        assert_eq!(other.version(), Some(4));
        let report = commit_rewrite(&mut table, rewrite).await.unwrap();
        assert_eq!(
            (report.version, report.conflict),
            (None, true),
            "{report:?}"
        );
        let log = dir.path().join("pin/_delta_log");
        assert!(
            !log.join("00000000000000000005.json").exists(),
            "nothing committed"
        );
    }

    /// The commits checked are the ones after the snapshot the inputs were picked from, not
    /// after whatever the handle was loaded at by commit time: a handle refreshed past
    /// another compaction of the same files still gives way to it.
    #[tokio::test]
    async fn a_compaction_checks_every_commit_since_its_own_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let table = table_of_appends(dir.path(), 3).await;
        let [(mut first, a), (mut second, b)] = two_rewrites(&table).await;
        assert_eq!(
            commit_rewrite(&mut second, b).await.unwrap().version,
            Some(4)
        );
        first.update_state().await.unwrap();
        let lost = commit_rewrite(&mut first, a).await.unwrap();
        assert_eq!((lost.version, lost.conflict), (None, true), "{lost:?}");
    }

    /// A compaction that lost to another compaction of the same files gives up, whichever
    /// version the other one took after appends.
    #[tokio::test]
    async fn a_compaction_gives_way_to_another_that_removed_its_inputs_after_appends() {
        let dir = tempfile::tempdir().unwrap();
        let table = table_of_appends(dir.path(), 4).await;
        let [(mut first, a), (mut second, b)] = two_rewrites(&table).await;
        let other = OtherWriter::new(&table, 2).await;
        other.append().await;
        assert_eq!(
            commit_rewrite(&mut first, a).await.unwrap().version,
            Some(6)
        );
        other.append().await;
        let lost = commit_rewrite(&mut second, b).await.unwrap();
        assert_eq!((lost.version, lost.conflict), (None, true), "{lost:?}");
        second.update_state().await.unwrap();
        assert_eq!(second.version(), Some(7));
    }

    /// Another engine turns row tracking on (Databricks does by default on new tables):
    /// every file must then carry its rows' ids, which a rewrite would renumber and an
    /// append would leave out. Compaction leaves the table alone; an append is refused with an error naming the feature, the table and the fix,
    /// which the sink tells from a failure worth retrying. Before, both went ahead (delta-rs
    /// let the commits through).
    #[tokio::test]
    async fn a_table_using_a_feature_pinstream_cannot_honour_is_neither_compacted_nor_appended_to()
    {
        let dir = tempfile::tempdir().unwrap();
        let mut table = table_of_appends(dir.path(), 4).await;
        let mut metadata: serde_json::Value =
            serde_json::to_value(table.snapshot().unwrap().metadata()).unwrap();
        metadata["configuration"]["delta.enableRowTracking"] = "true".into();
        let protocol = serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 7,
            "writerFeatures": ["rowTracking", "domainMetadata"]});
        let entry = format!(
            "{}\n{}\n",
            serde_json::json!({"protocol": protocol}),
            serde_json::json!({"metaData": metadata})
        );
        std::fs::write(
            dir.path().join("pin/_delta_log/00000000000000000005.json"),
            entry,
        )
        .unwrap();
        let done = compact(&mut table, &EVERY_SMALL_FILE).await.unwrap();
        assert_eq!(done.version, None, "not compacted: {done:?}");
        assert_eq!(table.version(), Some(5));
        let mut appender = delta::Appender::new(table);
        let refused = appender
            .append("a", &[pin_rows(4..5)], &[shard_commit(5, 4)])
            .await
            .unwrap_err();
        assert!(delta::features::is_refusal(&refused), "{refused}");
        let text = refused.to_string();
        assert!(
            text.contains("rowTracking") && text.contains("pin") && text.contains("fix:"),
            "{text}"
        );
        assert_eq!(appender.version(), 5, "nothing appended");
    }

    /// Rows the table holds, read through its current files (DataFusion over delta-rs).
    async fn rows_in(table: &DeltaTable) -> i64 {
        use deltalake::arrow::array::AsArray as _;
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches[0]
            .column(0)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
            .value(0)
    }

    /// The hazard docs/tables.md warns of, pinned: delta-rs's own `optimize`, run by another
    /// process on a snapshot taken before pinstream's compaction committed, rewrites the
    /// files that compaction already replaced, and delta-rs's conflict check lets it commit
    /// (it does not count removals with `dataChange = false` as conflicts): every row of
    /// the overlap is then in the table twice. So only pinstream (`maintain`, or the
    /// workers' schedule) compacts pinstream's tables, or an engine whose OPTIMIZE conflicts
    /// on a concurrent removal (Spark, Databricks). Should delta-rs start refusing such a
    /// commit, this test fails, and the page can say so.
    #[tokio::test]
    async fn delta_rs_optimize_on_a_snapshot_older_than_our_compaction_commits_its_rows_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = table_of_appends(dir.path(), 4).await;
        let stale = table.clone();
        let ours = compact(&mut table, &EVERY_SMALL_FILE).await.unwrap();
        assert_eq!(ours.version, Some(5), "{ours:?}");
        assert_eq!(rows_in(&table).await, 4);
        let theirs = stale.optimize().await;
        let mut now = table.clone();
        now.update_state().await.unwrap();
        assert!(
            theirs.is_ok(),
            "delta-rs now refuses the stale optimize: {:?}",
            theirs.err()
        );
        assert_eq!(now.version(), Some(6), "delta-rs's optimize committed");
        assert_eq!(
            rows_in(&now).await,
            8,
            "every row of the overlap is there twice"
        );
    }
}
