//! Tables that forget what recovery reads: a txn the table expired
//! (`delta.setTransactionRetentionDuration`) and a commit entry that log cleanup removed.
//! Either way the shard must resume exactly after its last committed record, found in the
//! table's rows, never be refused forever.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::producer;
use tokio_util::sync::CancellationToken;

use crate::support;

const CONFIG: &str = "[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"2s\"\n[reader]\nmax_records = 100\nidle_poll_interval = \"100ms\"\n";

async fn open(root: &std::path::Path, table: &str) -> deltalake::DeltaTable {
    let url =
        url::Url::from_directory_path(std::fs::canonicalize(root.join(table)).unwrap()).unwrap();
    deltalake::open_table(url).await.unwrap()
}

/// A table whose txn retention is shorter than a shard's idle time: the shard's txn is
/// gone when its next records come, so that flush is fenced (the table answers 0, the lease
/// says more) and its lease is handed back. Before, every later take refused the shard
/// (txn version 0 behind the lease's batch_version) and its records never landed; now the
/// take resumes after the shard's last record in the table's rows and every record lands
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_idle_past_the_tables_txn_retention_is_read_on() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("txn-retention"), &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    let first = 40u64;
    let opts = support::produce_options(&settings, 81, 0.05, first);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, first as usize, "before the retention").await;
    // Another engine sets a short txn retention on every table (as Spark users do to keep
    // the log's txns from growing without end).
    for kind in Kind::ALL {
        for table in [kind.name(), kind.rejects_table()] {
            open(&root, table)
                .await
                .set_tbl_properties()
                .with_properties(HashMap::from([(
                    "delta.setTransactionRetentionDuration".to_owned(),
                    "interval 1 seconds".to_owned(),
                )]))
                .await
                .unwrap();
        }
    }
    // Idle for longer than that: wait until the table no longer knows any shard's txn.
    let leases: Vec<_> = {
        let mut all = Vec::new();
        for kind in Kind::ALL {
            for l in support::leases_of(&aws, &settings, &settings.streams[&kind]).await {
                all.push((kind, l.app_id(&settings.application)));
            }
        }
        all
    };
    assert_eq!(leases.len(), 3, "one shard per stream: {leases:?}");
    support::wait_for("the txns expired", Duration::from_secs(30), || {
        let (root, leases) = (root.clone(), leases.clone());
        async move {
            for (kind, app_id) in &leases {
                let mut t = open(&root, kind.name()).await;
                if pinstream::delta::txn_version(&mut t, app_id)
                    .await
                    .unwrap()
                    .is_some()
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let second = 40u64;
    let opts = support::produce_options(&settings, 82, 0.05, second);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, (first + second) as usize, "after the txns expired").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, (first + second) as usize, "after the txns expired").await;
}

/// A worker commits and dies before its checkpoint (`--fault after_commit`); then log
/// cleanup (a short `delta.logRetentionDuration`, or another engine's) removes the commit
/// entries a log checkpoint covers, that commit's among them. Before, the next take read
/// that entry for the shard's position, found nothing and refused the shard forever (the
/// records put afterwards never landed); now it resumes after the shard's last record in
/// the rows: every record once, those put after the cleanup too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_checkpointed_whose_log_entry_was_cleaned_is_recovered_from_the_rows() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let name = support::unique("cleaned-log");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 300u64;
    let opts = support::produce_options(&settings, 83, 0.05, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let config = support::write_config(dir.path(), &settings, CONFIG);
    let log = dir.path().join("crash.log");
    let mut child = support::KillOnDrop::new(
        support::pinstream()
            .args(["run", "--config"])
            .arg(&config)
            .args(["--worker-id", "crasher", "--fault", "after_commit:2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status =
        support::wait_exit(&mut child, "the injected crash", Duration::from_secs(60)).await;
    assert!(
        status.code().is_none(),
        "aborted after a commit: {status:?}"
    );
    // Some table holds a commit its lease was never checkpointed at (T > B).
    let mut ahead = Vec::new();
    for kind in Kind::ALL {
        let stream = &settings.streams[&kind];
        for lease in support::leases_of(&aws, &settings, stream).await {
            let mut t = open(&root, kind.name()).await;
            let app_id = lease.app_id(&settings.application);
            let v = pinstream::delta::txn_version(&mut t, &app_id)
                .await
                .unwrap();
            if v.unwrap_or(0) > lease.batch_version {
                ahead.push((lease.key.clone(), v, lease.batch_version));
            }
        }
    }
    assert!(!ahead.is_empty(), "a commit was not checkpointed");
    // Log cleanup: a checkpoint at the latest version, and every commit entry it covers
    // removed but the first (what cleanup does once they are past the log retention).
    let mut removed = 0;
    for kind in Kind::ALL {
        for table in [kind.name(), kind.rejects_table()] {
            let t = open(&root, table).await;
            let latest = t.version().unwrap();
            deltalake::checkpoints::create_checkpoint(&t, None)
                .await
                .unwrap();
            for v in 1..=latest {
                let entry = root.join(table).join(format!("_delta_log/{v:020}.json"));
                if std::fs::remove_file(entry).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    assert!(removed >= 3, "commit entries were cleaned: {removed}");
    // More records come: the shards must be read on, after exactly what was committed.
    let more = 100u64;
    let opts = support::produce_options(&settings, 84, 0.05, more);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    let all = (per_stream + more) as usize;
    support::wait_all_landed(&root, all, "after the log cleanup").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, all, "after the log cleanup").await;
}
