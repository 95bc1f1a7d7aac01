//! [`Appender`]: one writer's fenced appends to a table, each costing the same whatever the
//! table's size.
//!
//! An append needs the table's schema and protocol, its latest version, and the txn version
//! of each shard it commits for (the fence). It never needs the file list, yet delta-rs
//! keeps one in every loaded state and rebuilds it at each update, the refresh before an
//! append and the state after a commit: an append cost O(files) (measured through delta-rs:
//! 43 ms at 100 files, 118 ms at 10,000). So the appender loads the table's state once and
//! leaves it; per append it reads the commit entries after the last version it knows until
//! one is missing (normally the first: its own last commit is known) for the txns of the
//! shards it fences on, without listing the log ([`PROBE_TRUST`]), and writes its commit
//! entry itself, at exactly the next version, through the log store's conditional put: the
//! same bytes delta-rs's commit writes.
//!
//! A commit entry with a `metaData` or `protocol` action (the schema, the table's
//! configuration or its features changed), one that cannot be parsed, or (when the
//! appender lists the log) a log that no longer holds the last known version makes the
//! appender load the state afresh before it goes on (a storage failure fails the append,
//! which the sink retries).
//! Files are written under the metadata the appender has loaded; when a commit that
//! changed it (another writer's, read after losing the put to it) comes between the files
//! and our commit, they are written again under the new metadata, never committed under it.
//! A shard seen for the first time is answered by delta-rs from a state loaded at the
//! appender's version. A table with `delta.setTransactionRetentionDuration` is refreshed
//! and fenced by delta-rs at every append (it expires txns: its rule, not ours).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::table::state::DeltaTableState;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use super::features::TableUse;
use super::{
    commit_properties, entry, lost_every_race, writer_properties, Appended, ShardCommit,
    COMMIT_ATTEMPTS,
};
use deltalake::arrow::record_batch::RecordBatch;

/// How many times an append writes its files again because another writer changed the
/// table's metadata while it was committing, before it gives up for now (the sink keeps
/// its rows and retries).
const RESTAGE_ATTEMPTS: usize = 5;

fn metadata_keeps_changing() -> DeltaTableError {
    DeltaTableError::Generic(format!(
        "the table's metadata changed under {RESTAGE_ATTEMPTS} appends in a row; giving up for now"
    ))
}

/// Data files written for an append, not yet committed.
pub struct StagedAppend {
    adds: Vec<Action>,
    shards: Vec<ShardCommit>,
    /// Who commits (a worker id), recorded in the commit info.
    writer: String,
    /// The version the fence was checked at.
    fenced_at: u64,
    /// The table's metadata and protocol the files were written under
    /// ([`Appender::metadata_now`]).
    metadata: String,
}

/// One writer's handle for fenced appends to one table (see the module doc).
pub struct Appender {
    /// The table with a state loaded at `table.version()` <= `version`: its schema, protocol
    /// and configuration are current (a change to them makes the appender reload), its file
    /// list may lag.
    table: DeltaTable,
    /// The latest version this appender knows: its own commits and the ones it read.
    version: u64,
    /// The txn versions of the app ids this appender fences on, exact at `version`.
    known: HashMap<String, Option<i64>>,
    /// When `version` was last known to be the latest (a refresh, or our own commit).
    confirmed_at: Option<Instant>,
}

/// How long after the appender last knew the latest version it finds newer commits by
/// reading the next version's entry until one is missing, instead of listing the log (on
/// local disk a listing walks every file the log keeps: up to `maintenance.log_retention`
/// of commits, hundreds of thousands at one commit per 5 s). A commit written after that
/// instant is younger than this bound, and log cleanup only deletes entries older than the
/// log retention (at least six times this bound: `maintenance.log_retention` is refused
/// under an hour, and a table's own shorter retention shortens the bound), so none of
/// them can be missing yet. An appender idle for longer lists the log once, which also
/// notices entries cleaned meanwhile.
const PROBE_TRUST: Duration = Duration::from_secs(600);

impl Appender {
    /// An appender starting from `table`'s loaded state.
    pub fn new(table: DeltaTable) -> Self {
        let version = table.version().unwrap_or(0);
        Appender {
            table,
            version,
            known: HashMap::new(),
            confirmed_at: None,
        }
    }

    /// The latest version this appender knows of.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version of the loaded state (schema, protocol, file list).
    pub fn loaded_version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    /// Appends `batches` as ONE commit with a txn per shard, fenced (see [`super::append`]).
    pub async fn append(
        &mut self,
        writer: &str,
        batches: &[RecordBatch],
        shards: &[ShardCommit],
    ) -> Result<Appended, DeltaTableError> {
        for _ in 0..RESTAGE_ATTEMPTS {
            let staged = match self.stage(writer, batches, shards).await? {
                Ok(staged) => staged,
                Err(fenced) => return Ok(Appended::Fenced(fenced)),
            };
            match self.commit_or_restage(staged).await? {
                Some(done) => return Ok(done),
                None => tracing::info!(
                    table = %self.table.table_url(),
                    "another writer changed the table's metadata while this append was committing; writing its files again under the new metadata"
                ),
            }
        }
        Err(metadata_keeps_changing())
    }

    /// First step of an append: reads the commits since the last known version, checks the
    /// fence, and writes the data files (not yet part of the table). `Err(lease keys)` when
    /// the fence fails already.
    pub async fn stage(
        &mut self,
        writer: &str,
        batches: &[RecordBatch],
        shards: &[ShardCommit],
    ) -> Result<Result<StagedAppend, Vec<String>>, DeltaTableError> {
        self.refresh().await?;
        let unhonoured = super::features::unhonoured(&self.table, TableUse::Append)?;
        if !unhonoured.is_empty() {
            return Err(super::features::refusal(
                &self.table,
                TableUse::Append,
                &unhonoured,
            ));
        }
        let fenced = self.fenced(shards).await?;
        if !fenced.is_empty() {
            return Ok(Err(fenced));
        }
        let mut files =
            RecordBatchWriter::for_table(&self.table)?.with_writer_properties(writer_properties());
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            files.write(b.clone()).await?;
        }
        let adds = files.flush().await?.into_iter().map(Action::Add).collect();
        Ok(Ok(StagedAppend {
            adds,
            shards: shards.to_vec(),
            writer: writer.to_owned(),
            fenced_at: self.version,
            metadata: self.metadata_now()?,
        }))
    }

    /// The table's metadata (schema, partitioning, properties) and protocol as loaded, in
    /// one comparable text: files written under one must not be committed under another.
    fn metadata_now(&self) -> Result<String, DeltaTableError> {
        let state = self.table.snapshot()?;
        Ok(format!("{:?}\n{:?}", state.metadata(), state.protocol()))
    }

    /// Second step: commits staged files at exactly the version after the last known one;
    /// when another writer took it first, reads its commit, checks the fence again and tries
    /// the next one. delta-rs's conflict resolution is never used: whether a commit may go
    /// in is decided here, from the txns in the log.
    /// Files staged under metadata that changed meanwhile are refused (an error: stage
    /// them again).
    pub async fn commit(&mut self, staged: StagedAppend) -> Result<Appended, DeltaTableError> {
        self.commit_or_restage(staged).await?.ok_or_else(|| {
            DeltaTableError::Generic(
                "another writer changed the table's metadata (schema, partitioning, properties or protocol) after these files were written; stage them again".into(),
            )
        })
    }

    /// [`Appender::commit`]; `None` when the table's metadata is no longer the one the
    /// files were written under (nothing was committed).
    async fn commit_or_restage(
        &mut self,
        staged: StagedAppend,
    ) -> Result<Option<Appended>, DeltaTableError> {
        if self.metadata_now()? != staged.metadata {
            return Ok(None);
        }
        if self.version != staged.fenced_at {
            // The appender learnt of other commits since the fence was checked (or is not
            // the one that staged): check it again where the commit will land.
            let fenced = self.fenced(&staged.shards).await?;
            if !fenced.is_empty() {
                return Ok(Some(Appended::Fenced(fenced)));
            }
        }
        for _ in 0..COMMIT_ATTEMPTS {
            let version = self.version + 1;
            if self
                .write_commit(version, &staged, uuid::Uuid::new_v4())
                .await?
            {
                self.version = version;
                self.confirmed_at = Some(Instant::now());
                for s in &staged.shards {
                    self.known.insert(s.app_id.clone(), Some(version as i64));
                }
                return Ok(Some(Appended::Committed(version as i64)));
            }
            // Another writer's commit holds that version: a metadata or protocol change
            // in it makes the refresh load the new state.
            self.refresh().await?;
            if self.metadata_now()? != staged.metadata {
                return Ok(None);
            }
            let fenced = self.fenced(&staged.shards).await?;
            if !fenced.is_empty() {
                return Ok(Some(Appended::Fenced(fenced)));
            }
        }
        Err(lost_every_race())
    }

    /// The txn versions of `app_ids` at the table's latest version, in order.
    pub async fn txn_versions(
        &mut self,
        app_ids: &[&str],
    ) -> Result<Vec<Option<i64>>, DeltaTableError> {
        self.refresh().await?;
        self.known_versions(app_ids).await
    }

    /// The table with its whole state loaded at this appender's version (a log checkpoint
    /// is written from it): loaded afresh from the latest log checkpoint when it lags.
    pub async fn loaded(&mut self) -> Result<&DeltaTable, DeltaTableError> {
        if self.loaded_version() != self.version {
            self.load(Some(self.version)).await?;
        }
        Ok(&self.table)
    }

    /// Learns the commits after the last known version: their txns, or (a metadata or
    /// protocol change, an entry that cannot be parsed) a fresh state at the latest version.
    async fn refresh(&mut self) -> Result<(), DeltaTableError> {
        if self.expires_txns()? {
            self.table.update_state().await?;
            self.version = self.loaded_version();
            self.known.clear();
            return Ok(());
        }
        let checked = Instant::now();
        let log_store = self.table.log_store();
        let trust = self.probe_trust()?;
        let probe = self.confirmed_at.is_some_and(|t| t.elapsed() < trust);
        let latest = if probe {
            None
        } else {
            match log_store.get_latest_version(self.version).await {
                Ok(v) => Some(v),
                // Most likely the log no longer holds the last known version (cleaned after
                // a checkpoint, or the table was replaced): start afresh. A storage failure
                // fails the load too, and the append with it.
                Err(_) => {
                    self.load(None).await?;
                    self.confirmed_at = Some(checked);
                    return Ok(());
                }
            }
        };
        // Versions are contiguous and written once each: read them in order, up to the
        // listed latest or (probing) the first that does not exist.
        let mut version = self.version;
        let mut txns = Vec::new();
        while latest.is_none_or(|l| version < l) {
            let Some(entry) = log_store.read_commit_entry(version + 1).await? else {
                if latest.is_some() {
                    // Listed but gone: cleaned under our feet. Start afresh.
                    return self.load(None).await;
                }
                break;
            };
            match entry::txns(&entry) {
                Some(t) => txns.extend(t),
                None => {
                    self.load(None).await?;
                    self.confirmed_at = Some(checked);
                    return Ok(());
                }
            }
            version += 1;
        }
        for (app_id, v) in txns {
            if let Some(known) = self.known.get_mut(&app_id) {
                *known = Some(v);
            }
        }
        self.version = version;
        self.confirmed_at = Some(checked);
        Ok(())
    }

    /// Loads the state at `version` (`None`: the latest). Known txn versions stay only when
    /// the appender's version does not move.
    async fn load(&mut self, version: Option<u64>) -> Result<(), DeltaTableError> {
        let state = DeltaTableState::try_new(self.table.log_store().as_ref(), version).await?;
        self.table.state = Some(state);
        let loaded = self.loaded_version();
        if loaded != self.version {
            self.known.clear();
            self.version = loaded;
        }
        Ok(())
    }

    /// How long the appender reads ahead without listing after it last knew its version:
    /// [`PROBE_TRUST`], shortened for a table whose own `delta.logRetentionDuration` (which
    /// other engines clean by) is under six times that. pinstream's own cleanup keeps at
    /// least an hour (`maintenance.log_retention`, checked at start).
    fn probe_trust(&self) -> Result<Duration, DeltaTableError> {
        let retention = self
            .table
            .snapshot()?
            .table_config()
            .log_retention_duration();
        Ok(PROBE_TRUST.min(retention / 6))
    }

    /// Whether the table expires txns (`delta.setTransactionRetentionDuration`).
    fn expires_txns(&self) -> Result<bool, DeltaTableError> {
        Ok(self
            .table
            .snapshot()?
            .table_config()
            .set_transaction_retention_duration
            .is_some())
    }

    /// The shards (lease keys) whose txn version is not the expected one.
    async fn fenced(&mut self, shards: &[ShardCommit]) -> Result<Vec<String>, DeltaTableError> {
        let app_ids: Vec<&str> = shards.iter().map(|s| s.app_id.as_str()).collect();
        let versions = self.known_versions(&app_ids).await?;
        Ok(shards
            .iter()
            .zip(versions)
            .filter(|(s, v)| v.unwrap_or(0) != s.expected)
            .map(|(s, _)| s.lease_key.clone())
            .collect())
    }

    /// The txn versions of `app_ids` at the appender's version; ids not known yet are asked
    /// of delta-rs, from a state loaded at that version.
    async fn known_versions(
        &mut self,
        app_ids: &[&str],
    ) -> Result<Vec<Option<i64>>, DeltaTableError> {
        if self.expires_txns()? {
            // Not kept: delta-rs answers every time on such a table.
            let table = self.loaded().await?;
            return super::loaded_txn_versions(table, app_ids).await;
        }
        let missing: Vec<&str> = app_ids
            .iter()
            .copied()
            .filter(|id| !self.known.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            let table = self.loaded().await?;
            let found = super::loaded_txn_versions(table, &missing).await?;
            self.known
                .extend(missing.iter().map(|id| (*id).to_owned()).zip(found));
        }
        Ok(app_ids.iter().map(|id| self.known[*id]).collect())
    }

    /// Writes the commit entry of `staged` as `version` ([`entry::write_at`]). `false`:
    /// another writer's commit holds that version; nothing of ours is in the log.
    async fn write_commit(
        &self,
        version: u64,
        staged: &StagedAppend,
        operation_id: uuid::Uuid,
    ) -> Result<bool, DeltaTableError> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let props = commit_properties(
            &staged.writer,
            &operation_id.to_string(),
            &staged.shards,
            version as i64,
        );
        entry::write_at(
            &self.table,
            version,
            staged.adds.clone(),
            props,
            operation,
            operation_id,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::Kind;
    use crate::config::TableRoot;
    use crate::delta::tests::{pin_rows, shard_commit};
    use crate::delta::watched_store::WatchedStore;
    use crate::delta::{append, open_or_create, txn_version};

    async fn new_table(dir: &std::path::Path) -> DeltaTable {
        open_or_create(
            &TableRoot::Local(dir.to_path_buf()),
            "pin",
            &Kind::Pin.schema(),
        )
        .await
        .unwrap()
    }

    /// Shard `n`'s part in an append (`shard_commit` is shard 0).
    fn shard(n: usize, expected: i64, last: usize) -> ShardCommit {
        let mut s = shard_commit(expected, last);
        s.app_id = format!("test/pin/shardId-{n:012}");
        s.lease_key = format!("pin:shardId-{n:012}");
        s
    }

    #[tokio::test]
    async fn appends_leave_the_loaded_state_alone_and_a_checkpoint_loads_it_at_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = Appender::new(new_table(dir.path()).await);
        let mut expected = 0;
        for i in 0..5 {
            let done = appender
                .append("test", &[pin_rows(i..i + 1)], &[shard_commit(expected, i)])
                .await
                .unwrap();
            let Appended::Committed(v) = done else {
                panic!("fenced: {done:?}")
            };
            expected = v;
        }
        // Five commits, none of them rebuilding the file list: the loaded state is still
        // the one of the table's creation.
        assert_eq!((appender.version(), appender.loaded_version()), (5, 0));
        // The sink's log checkpoint every 5 versions loads the state at the commit first.
        let policy = crate::config::MaintenancePolicy {
            checkpoint_interval: 5,
            log_retention: std::time::Duration::from_secs(3600),
            compact_interval: None,
            compact_min_age: std::time::Duration::ZERO,
            compact_target_size: 1 << 20,
            compact_min_files: 2,
            vacuum_interval: None,
            vacuum_retention: std::time::Duration::from_secs(3600),
        };
        crate::maintenance::after_append(&mut appender, 5, &policy).await;
        let checkpoint = dir
            .path()
            .join("pin/_delta_log/00000000000000000005.checkpoint.parquet");
        assert!(checkpoint.exists(), "a log checkpoint at version 5");
        let loaded = appender.loaded().await.unwrap();
        assert_eq!(loaded.version(), Some(5));
        assert_eq!(loaded.snapshot().unwrap().log_data().num_files(), 5);
        // The fence still answers from the kept versions, as delta-rs does.
        let app_id = "test/pin/shardId-000000000000";
        assert_eq!(
            appender.txn_versions(&[app_id]).await.unwrap(),
            [Some(expected)]
        );
        let mut table = new_table(dir.path()).await;
        assert_eq!(txn_version(&mut table, app_id).await.unwrap(), Some(5));
    }

    #[tokio::test]
    async fn kept_txn_versions_see_another_writers_commits_and_fence_a_stale_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::new(new_table(dir.path()).await);
        let mut b = new_table(dir.path()).await;
        // Writer a commits for the shard twice (the second fence answered from its own
        // commit).
        for (i, expected) in [(0, 0), (1, 1)] {
            let done = a
                .append("a", &[pin_rows(i..i + 1)], &[shard(0, expected, i)])
                .await
                .unwrap();
            assert_eq!(done, Appended::Committed(i as i64 + 1));
        }
        // The shard moves to writer b, which commits for it; then two commits for another
        // shard follow, so writer a is three commits behind.
        let took = append(&mut b, "b", &[pin_rows(2..3)], &[shard(0, 2, 2)])
            .await
            .unwrap();
        assert_eq!(took, Appended::Committed(3));
        for (i, expected) in [(3, 0), (4, 4)] {
            let done = append(&mut b, "b", &[pin_rows(i..i + 1)], &[shard(1, expected, i)])
                .await
                .unwrap();
            assert_eq!(done, Appended::Committed(i as i64 + 1));
        }
        // Writer a, still expecting its own version 2, is fenced: nothing committed.
        let stale = a
            .append("a", &[pin_rows(9..10)], &[shard(0, 2, 9)])
            .await
            .unwrap();
        assert_eq!(
            stale,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
        assert_eq!(
            a.txn_versions(&["test/pin/shardId-000000000000"])
                .await
                .unwrap(),
            [Some(3)]
        );
        // With the version b set, a commits, after b's last commit.
        let resumed = a
            .append("a", &[pin_rows(9..10)], &[shard(0, 3, 9)])
            .await
            .unwrap();
        assert_eq!(resumed, Appended::Committed(6));
        b.update_state().await.unwrap();
        assert_eq!(b.snapshot().unwrap().log_data().num_files(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_appenders_per_shard_racing_for_every_version_commit_each_shard_once() {
        // Six shards, two writers each (an owner and a zombie that both believe they hold
        // the shard), all racing for the same versions on four threads. Whichever commits
        // first for a shard owns it: the other is fenced from then on.
        let dir = tempfile::tempdir().unwrap();
        let (shards, appends) = (6, 6);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..shards * 2 {
            let mut appender = Appender::new(new_table(dir.path()).await);
            tasks.spawn(async move {
                let (n, mut expected, mut committed) = (w / 2, 0, Vec::new());
                for i in 0..appends {
                    let row = w * 100 + i;
                    let done = appender
                        .append("w", &[pin_rows(row..row + 1)], &[shard(n, expected, row)])
                        .await
                        .unwrap();
                    match done {
                        Appended::Committed(v) => {
                            expected = v;
                            committed.push(v);
                        }
                        Appended::Fenced(_) => break,
                    }
                }
                (n, committed)
            });
        }
        let mut by_shard: HashMap<usize, Vec<Vec<i64>>> = HashMap::new();
        while let Some(done) = tasks.join_next().await {
            let (n, committed) = done.unwrap();
            by_shard.entry(n).or_default().push(committed);
        }
        let mut table = new_table(dir.path()).await;
        for (n, mut pair) in by_shard {
            pair.sort_by_key(Vec::len);
            assert!(
                pair[0].is_empty() && pair[1].len() == appends,
                "shard {n}: one writer commits all its appends, the other none: {pair:?}"
            );
            let app_id = format!("test/pin/shardId-{n:012}");
            let last = *pair[1].last().unwrap();
            assert_eq!(txn_version(&mut table, &app_id).await.unwrap(), Some(last));
        }
        // One commit per append that went in, each with its one file, nothing twice.
        assert_eq!(table.version(), Some((shards * appends) as u64));
        let state = table.snapshot().unwrap();
        assert_eq!(state.log_data().num_files(), shards * appends);
    }

    #[tokio::test]
    async fn a_staged_append_is_fenced_again_when_the_appender_learnt_of_a_newer_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::new(new_table(dir.path()).await);
        let staged = match a
            .stage("a", &[pin_rows(0..1)], &[shard(0, 0, 0)])
            .await
            .unwrap()
        {
            Ok(staged) => staged,
            Err(f) => panic!("fenced early: {f:?}"),
        };
        // Meanwhile another writer commits for the shard, and a learns of it.
        let mut b = new_table(dir.path()).await;
        let took = append(&mut b, "b", &[pin_rows(1..2)], &[shard(0, 0, 1)])
            .await
            .unwrap();
        assert_eq!(took, Appended::Committed(1));
        let app_id = "test/pin/shardId-000000000000";
        assert_eq!(a.txn_versions(&[app_id]).await.unwrap(), [Some(1)]);
        // The staged commit would land at version 2 without a conflict: still fenced.
        let done = a.commit(staged).await.unwrap();
        assert_eq!(
            done,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
        b.update_state().await.unwrap();
        assert_eq!(b.version(), Some(1));
    }

    #[tokio::test]
    async fn a_put_answered_as_a_conflict_after_it_landed_is_known_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::new(new_table(dir.path()).await);
        let Ok(staged) = a
            .stage("a", &[pin_rows(0..1)], &[shard(0, 0, 0)])
            .await
            .unwrap()
        else {
            panic!("fenced early")
        };
        let id = uuid::Uuid::new_v4();
        assert!(a.write_commit(1, &staged, id).await.unwrap());
        // The store's retry of the same put finds the version taken, by our own entry.
        assert!(a.write_commit(1, &staged, id).await.unwrap());
        // Another writer's entry is not ours.
        assert!(!a
            .write_commit(1, &staged, uuid::Uuid::new_v4())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn appends_following_each_other_read_the_next_entry_and_list_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let (table, store) = WatchedStore::open(&new_table(dir.path()).await, None).await;
        let listed = |store: &WatchedStore| store.log_listings();
        let opened = listed(&store);
        let mut appender = Appender::new(table);
        let mut other = new_table(dir.path()).await;
        let mut expected = 0;
        for i in 0..6 {
            let done = appender
                .append("a", &[pin_rows(i..i + 1)], &[shard(0, expected, i)])
                .await
                .unwrap();
            let Appended::Committed(v) = done else {
                panic!("fenced: {done:?}")
            };
            expected = v;
            // Another writer commits for another shard between two of ours.
            let done = append(
                &mut other,
                "b",
                &[pin_rows(50 + i..51 + i)],
                &[shard(1, if i == 0 { 0 } else { v - 1 }, 50 + i)],
            )
            .await
            .unwrap();
            assert_eq!(done, Appended::Committed(v + 1));
        }
        // The first append lists the log once (nothing confirmed the loaded version yet);
        // the next ones read the entries after their last known version, the other
        // writer's included, until one is missing.
        assert_eq!(listed(&store) - opened, 1);
        assert_eq!((appender.version(), expected), (11, 11));
        // An appender idle for longer than it trusts its version lists the log again.
        appender.confirmed_at = Instant::now().checked_sub(PROBE_TRUST);
        let done = appender
            .append("a", &[pin_rows(9..10)], &[shard(0, expected, 9)])
            .await
            .unwrap();
        assert_eq!(done, Appended::Committed(13));
        assert_eq!(listed(&store) - opened, 2);
    }

    #[tokio::test]
    async fn a_table_keeping_its_log_briefly_shortens_the_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let table = new_table(dir.path()).await;
        assert_eq!(Appender::new(table).probe_trust().unwrap(), PROBE_TRUST);
        // Another engine cleaning this table's log after 30 minutes: trusted for 5.
        let table = new_table(dir.path())
            .await
            .set_tbl_properties()
            .with_properties(HashMap::from([(
                "delta.logRetentionDuration".to_owned(),
                "interval 30 minutes".to_owned(),
            )]))
            .await
            .unwrap();
        assert_eq!(
            Appender::new(table).probe_trust().unwrap(),
            Duration::from_secs(300)
        );
    }

    #[tokio::test]
    async fn another_writers_metadata_change_is_loaded_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = Appender::new(new_table(dir.path()).await);
        let append_at = |expected: i64, i: usize| (pin_rows(i..i + 1), shard(0, expected, i));
        let set = |key: &str, value: &str| {
            let (key, value) = (key.to_owned(), value.to_owned());
            let dir = dir.path().to_path_buf();
            async move {
                new_table(&dir)
                    .await
                    .set_tbl_properties()
                    .with_properties(HashMap::from([(key, value)]))
                    .await
                    .unwrap()
                    .version()
            }
        };
        let (rows, s) = append_at(0, 0);
        let done = appender.append("a", &[rows], &[s]).await.unwrap();
        assert_eq!(done, Appended::Committed(1));
        // Another writer changes the table's configuration: a metaData action at version 2.
        assert_eq!(
            set("delta.logRetentionDuration", "interval 60 days").await,
            Some(2)
        );
        let (rows, s) = append_at(1, 1);
        let done = appender.append("a", &[rows], &[s]).await.unwrap();
        assert_eq!(done, Appended::Committed(3));
        // The appender loaded it, and still fences from its kept versions.
        assert_eq!(appender.loaded_version(), 2);
        assert!(!appender.expires_txns().unwrap());
        let (rows, s) = append_at(1, 2);
        let stale = appender.append("a", &[rows], &[s]).await.unwrap();
        assert_eq!(
            stale,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
        // A txn retention (version 4) leaves the fence to delta-rs from then on.
        assert_eq!(
            set("delta.setTransactionRetentionDuration", "interval 7 days").await,
            Some(4)
        );
        let (rows, s) = append_at(3, 3);
        let done = appender.append("a", &[rows], &[s]).await.unwrap();
        assert_eq!(done, Appended::Committed(5));
        assert!(appender.expires_txns().unwrap());
        let (rows, s) = append_at(3, 4);
        let stale = appender.append("a", &[rows], &[s]).await.unwrap();
        assert_eq!(
            stale,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
    }

    /// Another engine changes the table's properties (a metaData action) just before our
    /// commit entry is put, at the version we were about to take. The staged files were
    /// written under the old metadata: `commit` refuses them (nothing lands; before, they
    /// were committed at the next version as if nothing had changed), and `append` writes
    /// them again under the new metadata and commits that, once.
    #[tokio::test]
    async fn files_staged_before_another_writers_metadata_change_are_written_again_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let table = new_table(&path).await;
        let changes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = changes.clone();
        let hook: crate::delta::watched_store::BeforeCommit = Box::new(move |version| {
            let (path, c) = (path.clone(), c.clone());
            Box::pin(async move {
                // Versions 2 and 4: a property change lands first.
                if version % 2 == 0 {
                    let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let landed = new_table(&path)
                        .await
                        .set_tbl_properties()
                        .with_properties(HashMap::from([(
                            "delta.logRetentionDuration".to_owned(),
                            format!("interval {} days", 40 + n),
                        )]))
                        .await
                        .unwrap()
                        .version();
                    assert_eq!(landed, Some(version));
                }
            })
        });
        let (watched, _store) = WatchedStore::open(&table, Some(hook)).await;
        let mut appender = Appender::new(watched);
        // Version 1: no change before it.
        let done = appender
            .append("a", &[pin_rows(0..1)], &[shard(0, 0, 0)])
            .await
            .unwrap();
        assert_eq!(done, Appended::Committed(1));
        let staged = appender
            .stage("a", &[pin_rows(1..2)], &[shard(0, 1, 1)])
            .await
            .unwrap()
            .unwrap();
        let refused = appender.commit(staged).await.unwrap_err().to_string();
        assert!(refused.contains("metadata"), "{refused}");
        assert_eq!(
            new_table(dir.path()).await.version(),
            Some(2),
            "nothing of ours landed"
        );
        // The change before version 4 makes the append stage again, then land at 5.
        let done = appender
            .append("a", &[pin_rows(1..2)], &[shard(0, 1, 1)])
            .await
            .unwrap();
        assert_eq!(done, Appended::Committed(3), "version 3 was free");
        let done = appender
            .append("a", &[pin_rows(2..3)], &[shard(0, 3, 2)])
            .await
            .unwrap();
        assert_eq!(done, Appended::Committed(5));
        assert_eq!(changes.load(std::sync::atomic::Ordering::SeqCst), 2);
        let mut t = new_table(dir.path()).await;
        let id = "test/pin/shardId-000000000000";
        assert_eq!(txn_version(&mut t, id).await.unwrap(), Some(5));
    }
}
