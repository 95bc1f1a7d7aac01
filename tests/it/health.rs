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

use deltalake::arrow::array::RecordBatch;
use futures::StreamExt as _;
use pinstream::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
use pinstream::maintenance::{self, CompactOptions};
use pinstream::producer::generator::Generator;
use pinstream::sink::delta::{self, ShardPosition};

use crate::support;

/// `rows` cleaned pin rows with keys (`shard`, `<batch>-<row>`, 0).
fn pin_batch(g: &mut Generator, shard: &str, batch: u64, rows: usize) -> RecordBatch {
    let mut cols = TableColumns::new(Kind::Pin);
    let mut rejects = RejectsColumns::default();
    let mut made = 0;
    while made < rows {
        let (_, records) = g.next_triple();
        let (_, data) = records.into_iter().find(|(k, _)| *k == Kind::Pin).unwrap();
        let seq = format!("{batch:08}-{made:04}");
        let meta = RecordMeta {
            shard_id: shard,
            sequence_number: &seq,
            sub_sequence_number: 0,
            arrival_micros: None,
        };
        if clean_into(Kind::Pin, &data, &meta, "pin", &mut cols, &mut rejects).is_ok() {
            made += 1;
        }
    }
    cols.finish().unwrap()
}

fn position(shard: &str, version: i64) -> ShardPosition {
    ShardPosition {
        app_id: format!("health/pin/{shard}"),
        lease_key: format!("pin:{shard}"),
        version,
        last_sequence: String::new(),
        last_sub_sequence: 0,
        shard_end: false,
    }
}

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
    for i in 1..=500u64 {
        let batch = pin_batch(&mut g, "shardId-a", i, 3);
        let v = delta::append(&mut table, &[batch], &[position("shardId-a", i as i64)])
            .await
            .unwrap();
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
            for i in 1..=20u64 {
                let batch = pin_batch(&mut g, "shardId-b", i, 3);
                delta::append(&mut t, &[batch], &[position("shardId-b", i as i64)])
                    .await
                    .unwrap();
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
        Some(500)
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
