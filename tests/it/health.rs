//! Table health over many small commits: 500 micro-batch commits leave a table that opens
//! from a log checkpoint plus at most `checkpoint_interval` commit files, and compaction
//! (run every 100 commits, as a worker's schedule would, and once more while another writer
//! keeps appending) cuts the file count without changing a row.
//!
//! Without compaction each commit gets slower with the table's file count (delta-rs
//! rebuilds its file list after every commit): in this test's dev build the 500th commit
//! took 0.6 s against 0.08 s for the 100th. Compaction keeps that bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use pinstream::clean::Kind;
use pinstream::delta::{self, Appended};
use pinstream::maintenance::{self, CompactOptions};
use pinstream::producer::generator::Generator;

use crate::support;

/// Versions of the commit files (`NNN.json`) in the log, and the last checkpoint's version.
fn log_files(table_dir: &std::path::Path) -> (Vec<u64>, Option<u64>) {
    let log = table_dir.join("_delta_log");
    let mut commits = Vec::new();
    for e in std::fs::read_dir(&log).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(v) = name.strip_suffix(".json").and_then(|v| v.parse().ok()) {
            commits.push(v);
        }
    }
    commits.sort_unstable();
    let last = std::fs::read_to_string(log.join("_last_checkpoint"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_u64());
    (commits, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_small_commits_open_from_a_checkpoint_and_compact_without_changing_rows() {
    let dir = support::tempdir();
    let settings = support::settings(
        &support::unique("health"),
        dir.path(),
        "[maintenance]\ncheckpoint_interval = 100\n",
    );
    let policy = settings.maintenance.clone();
    let root = &settings.table_root;
    let mut table = delta::open_or_create(root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let opts = CompactOptions {
        target_size: 64 * 1024 * 1024,
        min_age: Duration::ZERO,
        min_files: 10,
    };
    let mut g = Generator::new(7, 0.0);
    let mut last_a = 0;
    for i in 1..=500u64 {
        let batch = support::pin_batch(&mut g, "shardId-a", i, 3);
        let v = support::append_as(&mut table, batch, "shardId-a", &mut last_a).await;
        maintenance::after_commit(&table, v, &policy).await;
        if i % 100 == 50 {
            let files = table.snapshot().unwrap().log_data().num_files();
            let c = maintenance::compact(&mut table, &opts).await.unwrap();
            assert_eq!((c.files_removed, c.files_added), (files, 1), "{c:?}");
        }
    }
    let table_dir = dir.path().join("pin");
    let (commits, checkpoint) = log_files(&table_dir);
    assert_eq!(checkpoint, Some(500), "a checkpoint every 100 commits");
    let after_checkpoint = commits.iter().filter(|v| **v > 500).count();
    assert!(
        after_checkpoint <= 100,
        "opening reads the checkpoint and {after_checkpoint} commit files, never all 500"
    );
    let before = support::key_counts(&support::read_table(dir.path(), "pin").await);
    assert_eq!(before.len(), 1500);
    assert_eq!(
        table.snapshot().unwrap().log_data().num_files(),
        51,
        "the files of the last 50 appends and one compacted file"
    );

    // Compaction on its own handle while another writer appends 20 more commits.
    let appender = {
        let root = root.clone();
        tokio::spawn(async move {
            let mut t = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
                .await
                .unwrap();
            let mut g = Generator::new(8, 0.0);
            let mut last_b = 0;
            for i in 1..=20u64 {
                let batch = support::pin_batch(&mut g, "shardId-b", i, 3);
                support::append_as(&mut t, batch, "shardId-b", &mut last_b).await;
            }
        })
    };
    let mut compacting = delta::open_or_create(root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let report = maintenance::compact(&mut compacting, &opts).await.unwrap();
    appender.await.unwrap();
    assert!(report.version.is_some(), "{report:?}");
    assert!(report.files_removed >= 51, "{report:?}");
    assert_eq!(report.files_added, 1, "{report:?}");
    assert!(report.rows >= 1500, "{report:?}");

    compacting.update_state().await.unwrap();
    let files = compacting.snapshot().unwrap().log_data().num_files();
    assert!(
        files <= 21,
        "500 small files became one (+ at most 20 new ones): {files}"
    );
    let after = support::key_counts(&support::read_table(dir.path(), "pin").await);
    assert_eq!(after.len(), 1560, "every row of both writers");
    assert!(after.values().all(|n| *n == 1), "no row twice");
    let old: BTreeMap<_, _> = after
        .iter()
        .filter(|((shard, _, _), _)| shard == "shardId-a")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(old, before, "compaction changed no row");
    // The txn versions the exactly-once protocol relies on are untouched.
    assert_eq!(
        delta::txn_version(&mut compacting, "health/pin/shardId-a")
            .await
            .unwrap(),
        Some(last_a)
    );
    let ops: Vec<String> = compacting
        .history(Some(30))
        .filter_map(|c| async move { c.unwrap().operation })
        .collect()
        .await;
    assert!(ops.iter().any(|o| o == "OPTIMIZE"), "{ops:?}");

    // Files younger than the minimum age are left alone: nothing qualifies now.
    let young = CompactOptions {
        min_age: Duration::from_secs(3600),
        ..opts
    };
    let again = maintenance::compact(&mut compacting, &young).await.unwrap();
    assert_eq!(again.version, None, "{again:?}");
}

/// A table of `n` small appends (3 rows each, shard `shardId-c`), and its directory.
async fn small_files_table(n: u64) -> (tempfile::TempDir, pinstream::config::TableRoot) {
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("compact"), dir.path(), "");
    let root = settings.table_root.clone();
    let mut table = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut g = Generator::new(9, 0.0);
    let mut last = 0;
    for i in 1..=n {
        support::append_as(
            &mut table,
            support::pin_batch(&mut g, "shardId-c", i, 3),
            "shardId-c",
            &mut last,
        )
        .await;
    }
    (dir, root)
}

const COMPACT_ALL: CompactOptions = CompactOptions {
    target_size: 64 * 1024 * 1024,
    min_age: Duration::ZERO,
    min_files: 2,
};

/// Three compactions read the same snapshot and rewrite the same 20 files; only then do
/// they commit, all at once. Exactly one may land; the others must give up, or every row
/// of the overlap is in the table twice. delta-rs's conflict check lets all three through
/// (it ignores removals with dataChange = false): with `commit_rewrite`'s check of the input
/// files disabled, this table ends with 180 rows for 60 keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_compactions_of_the_same_files_commit_once() {
    let (dir, root) = small_files_table(20).await;
    let mut handles = Vec::new();
    let mut rewrites = Vec::new();
    for _ in 0..3 {
        let mut t = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
        let r = maintenance::rewrite_small_files(&mut t, &COMPACT_ALL)
            .await
            .unwrap()
            .expect("20 small files qualify");
        handles.push(t);
        rewrites.push(r);
    }
    // The barrier: every rewrite is done before any commit starts; then all race.
    let commits = handles
        .iter_mut()
        .zip(rewrites)
        .map(|(t, r)| maintenance::commit_rewrite(t, r));
    let results: Vec<_> = futures::future::join_all(commits)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let landed = results.iter().filter(|c| c.version.is_some()).count();
    assert_eq!(landed, 1, "exactly one compaction commits: {results:?}");
    assert_eq!(
        results.iter().filter(|c| c.conflict).count(),
        2,
        "{results:?}"
    );
    let keys = support::key_counts(&support::read_table(dir.path(), "pin").await);
    assert_eq!(keys.len(), 60, "every row is still there");
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "rows twice after compaction: {}",
        twice.len()
    );
}

/// An append lands between a compaction's snapshot and its commit (forced: the append runs
/// after the rewrite and before the commit). The compaction still commits, on top of the
/// append, and every row of both is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_commits_over_an_append_that_landed_after_its_snapshot() {
    let (dir, root) = small_files_table(10).await;
    let mut compacting = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let rewrite = maintenance::rewrite_small_files(&mut compacting, &COMPACT_ALL)
        .await
        .unwrap()
        .expect("10 small files qualify");
    let read_at = compacting.version().unwrap();

    let mut appender = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut g = Generator::new(10, 0.0);
    let mut last = 0;
    let appended = support::append_as(
        &mut appender,
        support::pin_batch(&mut g, "shardId-d", 1, 3),
        "shardId-d",
        &mut last,
    )
    .await;
    assert_eq!(
        appended,
        read_at + 1,
        "the append landed after the compaction's snapshot"
    );

    let c = maintenance::commit_rewrite(&mut compacting, rewrite)
        .await
        .unwrap();
    assert_eq!(c.version, Some(read_at + 2), "{c:?}");
    assert!(!c.conflict);
    let keys = support::key_counts(&support::read_table(dir.path(), "pin").await);
    assert_eq!(keys.len(), 33, "30 compacted rows and the 3 appended");
    assert!(keys.values().all(|n| *n == 1), "no row twice");
    let files = compacting.snapshot().unwrap().log_data().num_files();
    assert_eq!(files, 2, "the compacted file and the append's");
}

/// Two writers of one shard (a zombie and the lease's new owner) both staged files against
/// the same txn version; only one may commit, the other is fenced, whichever order the
/// commits take. The commit at version N carries txn version N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_of_one_shard_commit_once() {
    let (dir, root) = small_files_table(1).await;
    let mut a = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut b = delta::open_or_create(&root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut g = Generator::new(11, 0.0);
    let expected = delta::txn_version(&mut a, "health/pin/shardId-c")
        .await
        .unwrap()
        .unwrap();
    let shard = [support::shard_commit("shardId-c", expected)];
    let staged_a = delta::stage_append(
        &mut a,
        "a",
        &[support::pin_batch(&mut g, "shardId-c", 2, 3)],
        &shard,
    )
    .await
    .unwrap()
    .unwrap_or_else(|f| panic!("fenced early: {f:?}"));
    let staged_b = delta::stage_append(
        &mut b,
        "b",
        &[support::pin_batch(&mut g, "shardId-c", 3, 3)],
        &shard,
    )
    .await
    .unwrap()
    .unwrap_or_else(|f| panic!("fenced early: {f:?}"));
    let first = delta::commit_staged(&mut a, staged_a).await.unwrap();
    let second = delta::commit_staged(&mut b, staged_b).await.unwrap();
    let Appended::Committed(v) = first else {
        panic!("the first commit goes in: {first:?}");
    };
    assert_eq!(second, Appended::Fenced(vec!["pin:shardId-c".into()]));
    assert_eq!(
        delta::txn_version(&mut b, "health/pin/shardId-c")
            .await
            .unwrap(),
        Some(v),
        "the shard's txn version is the commit's table version"
    );
    // A writer that is behind is fenced before it writes any file.
    let stale = delta::append(
        &mut b,
        "b",
        &[support::pin_batch(&mut g, "shardId-c", 4, 3)],
        &shard,
    )
    .await
    .unwrap();
    assert_eq!(stale, Appended::Fenced(vec!["pin:shardId-c".into()]));
    let keys = support::key_counts(&support::read_table(dir.path(), "pin").await);
    assert_eq!(
        keys.len(),
        6,
        "the first writer's 3 rows beside the 3 before"
    );
}
