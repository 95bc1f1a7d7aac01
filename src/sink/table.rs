//! The sink's handle on one Delta table, reloaded from the latest log checkpoint every
//! [`RELOAD_AFTER_VERSIONS`] versions.
//!
//! Why: a loaded delta-rs table keeps its file list as one batch of file metadata per
//! commit it has seen since it was loaded, and every update (the refresh before each append
//! and the state after each commit) re-reads all of those batches. An append's cost would
//! grow with the age of the handle, without bound: measured 5 ms at the first append and
//! 160 ms after 350 appends to a 100-file table (docs/benchmarks.md, "Commit cost"). A
//! fresh load reads the latest checkpoint (one batch for the whole file list) and the
//! commits after it, so reloading every so often bounds the cost whatever the uptime.

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::table::state::DeltaTableState;
use deltalake::{DeltaTable, DeltaTableError};

use crate::delta::{self, Appended, ShardCommit, TxnVersions};

/// Versions a handle advances (by anyone's commits) before it is loaded afresh: the default
/// log checkpoint interval, so a reload reads at most about that many commits after the
/// latest checkpoint.
pub const RELOAD_AFTER_VERSIONS: u64 = 100;

pub struct SinkTable {
    table: DeltaTable,
    /// The txn versions the sink's fences read, kept between appends.
    txns: TxnVersions,
    /// The version the state was last loaded at from scratch.
    loaded_at: u64,
    reload_after: u64,
}

impl SinkTable {
    pub fn new(table: DeltaTable) -> Self {
        let loaded_at = table.version().unwrap_or(0);
        Self {
            table,
            txns: TxnVersions::default(),
            loaded_at,
            reload_after: RELOAD_AFTER_VERSIONS,
        }
    }

    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut DeltaTable {
        &mut self.table
    }

    /// One fenced append ([`delta::append`]) with the txn versions kept between appends.
    pub async fn append(
        &mut self,
        writer: &str,
        batches: &[RecordBatch],
        shards: &[ShardCommit],
    ) -> Result<Appended, DeltaTableError> {
        delta::append_with(&mut self.table, &mut self.txns, writer, batches, shards).await
    }

    /// The txn versions of `app_ids` after one refresh of the table state, answered from
    /// the versions kept between appends (as [`delta::txn_versions`] answers them).
    pub async fn txn_versions(
        &mut self,
        app_ids: &[&str],
    ) -> Result<Vec<Option<i64>>, DeltaTableError> {
        self.table.update_state().await?;
        self.txns.of(&self.table, app_ids).await
    }

    /// The version the state was last loaded at from scratch.
    pub fn loaded_at(&self) -> u64 {
        self.loaded_at
    }

    /// Loads the table's state afresh once it has advanced [`RELOAD_AFTER_VERSIONS`] since
    /// the last load. On failure the current state stays (it is correct, only slower to
    /// update) and the next commit tries again.
    pub async fn reload_if_aged(&mut self) -> Result<bool, DeltaTableError> {
        let version = self.table.version().unwrap_or(0);
        if version < self.loaded_at + self.reload_after {
            return Ok(false);
        }
        let log_store = self.table.log_store();
        let state = DeltaTableState::try_new(log_store.as_ref(), None).await?;
        self.loaded_at = state.version() as u64;
        self.table.state = Some(state);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::Kind;
    use crate::config::TableRoot;
    use crate::delta::tests::{pin_rows, shard_commit};

    #[tokio::test]
    async fn a_handle_is_loaded_afresh_as_it_ages_and_keeps_the_table_and_the_fence() {
        let dir = tempfile::tempdir().unwrap();
        let root = TableRoot::Local(dir.path().to_path_buf());
        let table = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        let mut handle = SinkTable::new(table);
        handle.reload_after = 4;
        let (mut expected, mut reloads) = (0, 0);
        for i in 0..10 {
            let done = handle
                .append("test", &[pin_rows(i..i + 1)], &[shard_commit(expected, i)])
                .await
                .unwrap();
            let Appended::Committed(v) = done else {
                panic!("fenced: {done:?}")
            };
            expected = v;
            reloads += usize::from(handle.reload_if_aged().await.unwrap());
        }
        // Versions 1..=10 committed on a table created at 0: loaded afresh at 4 and 8.
        assert_eq!(reloads, 2);
        assert_eq!(handle.loaded_at(), 8);
        // The reloaded state is the table's: every file, and the shard's txn version.
        assert_eq!(
            handle.table().snapshot().unwrap().log_data().num_files(),
            10
        );
        let app_id = "test/pin/shardId-000000000000";
        assert_eq!(
            delta::txn_version(handle.table_mut(), app_id)
                .await
                .unwrap(),
            Some(expected)
        );
        // The sink's pre-flush fence reads the kept versions: the same answer.
        assert_eq!(
            handle.txn_versions(&[app_id]).await.unwrap(),
            [Some(expected)]
        );
        // A writer with a stale expectation is still fenced after the reloads.
        let stale = handle
            .append(
                "test",
                &[pin_rows(99..100)],
                &[shard_commit(expected - 1, 99)],
            )
            .await
            .unwrap();
        assert_eq!(
            stale,
            Appended::Fenced(vec!["pin:shardId-000000000000".into()])
        );
    }
}
