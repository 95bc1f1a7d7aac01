//! What one sink flush's Delta append costs as a table grows: the fence before the flush
//! (`Appender::txn_versions` of the 12 shards it carries) and `Appender::append` (list the
//! log for newer versions, fence again, write the Parquet file, write the commit entry at
//! the next version with a txn per shard) of 1,000 pin rows, on tables that already hold
//! 100, 1,000 and 10,000 data files (no compaction).
//!
//! The tables are built as the sink builds them, only faster: commits of 100 files each
//! (copies of one small Parquet file), each carrying a txn for one of 12 shards, and a log
//! checkpoint every 100 commits and at the end (as `maintenance.checkpoint_interval` does).
//! Each measured append adds one file, so the table grows by the sample count at most; a
//! log checkpoint follows every 100th version, as in the sink (the appender loads the
//! whole state for it: its share is in the mean).
//!
//! `append_long_log` measures it on a 100-file table whose `_delta_log` keeps 20,000
//! commit entries (log cleanup keeps `maintenance.log_retention` of them: 30 days by
//! default, 500,000 entries at one commit per 5 s).
//!
//! A last group measures the same append after `AGE` appends: through one [`Appender`],
//! and through `delta::append` on a `DeltaTable` whose delta-rs state follows every commit
//! (it keeps one batch of file metadata per commit seen and re-reads them all at each
//! update: what the sink did before it kept an appender).
//!
//! Run: `cargo bench --bench commit`.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;
use pinstream::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
use pinstream::config::TableRoot;
use pinstream::delta::{self, Appender, ShardCommit};

const SHARDS: usize = 12;
const FILES_PER_COMMIT: usize = 100;
const ROWS_PER_FLUSH: usize = 1_000;
/// Appends through one handle before the aged group measures (a few in test mode, where
/// benches run once unoptimised).
const AGE: usize = if cfg!(debug_assertions) { 3 } else { 400 };
/// Commit entries kept in the long log group's `_delta_log` (a few in test mode).
const LONG_LOG: usize = if cfg!(debug_assertions) { 20 } else { 20_000 };

/// `n` real pin records (tests/data) cleaned into one batch, with sequence numbers from
/// `first`.
fn pin_batch(n: usize, first: usize) -> RecordBatch {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pin.ndjson");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = TableColumns::new(Kind::Pin);
    let mut rejects = RejectsColumns::default();
    for (i, line) in text.lines().cycle().take(n).enumerate() {
        let seq = format!("4965{:052}", first + i);
        let meta = RecordMeta {
            shard_id: "shardId-000000000000",
            sequence_number: &seq,
            sub_sequence_number: 0,
            arrival_micros: Some(1_700_000_000_000_000),
        };
        clean_into(
            Kind::Pin,
            line.as_bytes(),
            &meta,
            "pin",
            &mut rows,
            &mut rejects,
        )
        .unwrap();
    }
    rows.finish().unwrap()
}

fn shard(i: usize, expected: i64) -> ShardCommit {
    ShardCommit {
        app_id: format!("bench/pin/shard-{i}"),
        lease_key: format!("pin/shard-{i}"),
        expected,
        last_sequence: format!("{}", 1000 + i),
        last_sub_sequence: 0,
        shard_end: false,
    }
}

/// A pin table under `root` holding `files` data files, checkpointed; returns it and each
/// shard's txn version.
async fn table_with_files(root: &TableRoot, name: &str, files: usize) -> (DeltaTable, Vec<i64>) {
    let mut table = delta::open_or_create(root, name, &Kind::Pin.schema())
        .await
        .unwrap();
    let mut versions = vec![0i64; SHARDS];
    // One real file written by an append; the rest are copies of it.
    let v = match delta::append(&mut table, "bench", &[pin_batch(10, 0)], &[shard(0, 0)])
        .await
        .unwrap()
    {
        delta::Appended::Committed(v) => v,
        other => panic!("{other:?}"),
    };
    versions[0] = v;
    let TableRoot::Local(dir) = root else {
        unreachable!()
    };
    // The add action of that file, from its commit in the log.
    let log = dir.join(name).join(format!("_delta_log/{v:020}.json"));
    let template: Add = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|a| serde_json::from_value(a.get("add")?.clone()).ok())
        .unwrap();
    let source = dir.join(name).join(&template.path);
    let mut made = 1;
    let mut commits = 0;
    while made < files {
        let batch = FILES_PER_COMMIT.min(files - made);
        let mut actions = Vec::with_capacity(batch);
        for _ in 0..batch {
            let path = format!("part-copy-{made:06}.parquet");
            std::fs::copy(&source, dir.join(name).join(&path)).unwrap();
            let mut add = template.clone();
            add.path = path;
            actions.push(Action::Add(add));
            made += 1;
        }
        let version = table.version().unwrap_or(0) as i64 + 1;
        let s = commits % SHARDS;
        versions[s] = version;
        let props = CommitProperties::default()
            .with_create_checkpoint(false)
            .with_application_transactions(vec![Transaction::new(
                format!("bench/pin/shard-{s}"),
                version,
            )]);
        let op = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        delta::commit_next(&mut table, actions, props, op)
            .await
            .unwrap()
            .expect("no other writer");
        commits += 1;
        if commits % 100 == 0 {
            deltalake::checkpoints::create_checkpoint(&table, None)
                .await
                .unwrap();
        }
    }
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .unwrap();
    table.update_state().await.unwrap();
    (table, versions)
}

/// Writes `n` commit entries holding only a commit info after the table's latest version
/// (cheaper than real commits; they count the same in a listing of the log), then a log
/// checkpoint.
async fn add_empty_commits(table: &mut DeltaTable, root: &TableRoot, name: &str, n: usize) {
    let TableRoot::Local(dir) = root else {
        unreachable!()
    };
    let first = table.version().unwrap_or(0) + 1;
    for v in first..first + n as u64 {
        let path = dir.join(name).join(format!("_delta_log/{v:020}.json"));
        let info = serde_json::json!({"commitInfo": {"timestamp": 1_700_000_000_000u64 + v, "operation": "WRITE", "operationParameters": {"mode": "Append"}}});
        std::fs::write(path, info.to_string()).unwrap();
    }
    table.update_state().await.unwrap();
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .unwrap();
    table.update_state().await.unwrap();
}

/// One sink flush through `handle` carrying every shard: the fence before the flush, then
/// the append fenced on each shard's last version, then the log checkpoint the sink writes
/// every 100 versions.
fn sink_append(
    rt: &tokio::runtime::Runtime,
    handle: &mut Appender,
    versions: &mut [i64],
    batch: &RecordBatch,
) {
    let commits: Vec<ShardCommit> = (0..SHARDS).map(|s| shard(s, versions[s])).collect();
    let app_ids: Vec<&str> = commits.iter().map(|s| s.app_id.as_str()).collect();
    let fence = rt.block_on(handle.txn_versions(&app_ids)).unwrap();
    assert!(fence
        .iter()
        .zip(versions.iter())
        .all(|(t, v)| t.unwrap_or(0) == *v));
    let done = rt
        .block_on(handle.append("bench", std::slice::from_ref(batch), &commits))
        .unwrap();
    match done {
        delta::Appended::Committed(v) => {
            versions.fill(v);
            // The sink's log checkpoints (maintenance.checkpoint_interval).
            if v % 100 == 0 {
                let table = rt.block_on(handle.loaded()).unwrap();
                rt.block_on(deltalake::checkpoints::create_checkpoint(table, None))
                    .unwrap();
            }
        }
        other => panic!("{other:?}"),
    }
}

/// The same flush through `delta::append` on a table whose state follows every commit.
fn state_following_append(
    rt: &tokio::runtime::Runtime,
    table: &mut DeltaTable,
    versions: &mut [i64],
    batch: &RecordBatch,
) {
    let commits: Vec<ShardCommit> = (0..SHARDS).map(|s| shard(s, versions[s])).collect();
    let done = rt
        .block_on(delta::append(
            table,
            "bench",
            std::slice::from_ref(batch),
            &commits,
        ))
        .unwrap();
    match done {
        delta::Appended::Committed(v) => versions.fill(v),
        other => panic!("{other:?}"),
    }
}

fn append_as_the_table_grows(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = TableRoot::Local(dir.path().to_path_buf());
    let batch = pin_batch(ROWS_PER_FLUSH, 1_000_000);
    let mut g = c.benchmark_group("append");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for files in [100, 1_000, 10_000] {
        let (table, mut versions) =
            rt.block_on(table_with_files(&root, &format!("pin_{files}"), files));
        let mut handle = Appender::new(table);
        g.bench_with_input(BenchmarkId::new("files", files), &files, |b, _| {
            b.iter(|| sink_append(&rt, &mut handle, &mut versions, &batch))
        });
    }
    g.finish();

    // The same append on a 100-file table whose log keeps LONG_LOG commit entries (a log
    // checkpoint after them, as the sink writes; cleanup keeps `maintenance.log_retention`
    // of entries: 30 days by default).
    let mut g = c.benchmark_group("append_long_log");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let (table, mut versions) = rt.block_on(async {
        let (mut table, versions) = table_with_files(&root, "long_log", 100).await;
        add_empty_commits(&mut table, &root, "long_log", LONG_LOG).await;
        (table, versions)
    });
    let mut handle = Appender::new(table);
    g.bench_function(BenchmarkId::new("files_100_log_entries", LONG_LOG), |b| {
        b.iter(|| sink_append(&rt, &mut handle, &mut versions, &batch))
    });
    g.finish();

    // The same append after AGE appends, through one appender or a state following them.
    let mut g = c.benchmark_group("append_aged");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let (table, mut versions) = rt.block_on(table_with_files(&root, "aged_appender", 100));
    let mut handle = Appender::new(table);
    for _ in 0..AGE {
        sink_append(&rt, &mut handle, &mut versions, &batch);
    }
    g.bench_function(BenchmarkId::new("files_100", "appender"), |b| {
        b.iter(|| sink_append(&rt, &mut handle, &mut versions, &batch))
    });
    let (mut table, mut versions) = rt.block_on(table_with_files(&root, "aged_state", 100));
    for _ in 0..AGE {
        state_following_append(&rt, &mut table, &mut versions, &batch);
    }
    g.bench_function(
        BenchmarkId::new("files_100", "state_following_commits"),
        |b| b.iter(|| state_following_append(&rt, &mut table, &mut versions, &batch)),
    );
    g.finish();
}

criterion_group!(benches, append_as_the_table_grows);
criterion_main!(benches);
