//! Compaction with the concurrency a fleet has: several `pinstream maintain` processes at
//! once on a table of many small files, and workers compacting on a short schedule while an
//! operator runs `maintain` beside them and records keep arriving. Every row once, always.
//! (The deterministic race, three compactions committing at once, is in `health.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use pinstream::clean::Kind;
use pinstream::delta;
use pinstream::producer::generator::Generator;
use pinstream::producer::{self, ProduceOptions};
use tokio_util::sync::CancellationToken;

use crate::support;

/// How many OPTIMIZE commits the table's log holds.
async fn optimize_commits(root: &std::path::Path, table: &str) -> usize {
    let url =
        url::Url::from_directory_path(std::fs::canonicalize(root.join(table)).unwrap()).unwrap();
    let t = deltalake::open_table(url).await.unwrap();
    t.history(None)
        .filter(|c| {
            let op = c.as_ref().ok().and_then(|c| c.operation.clone());
            async move { op.as_deref() == Some("OPTIMIZE") }
        })
        .count()
        .await
}

/// 30 appends of 20 rows, then three `pinstream maintain` started together: each exits 0,
/// and the table still has each of its 600 rows exactly once (delta-rs alone let all three
/// commit: 1,800 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_maintain_commands_at_once_keep_every_row_once() {
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("maint3"), &root, "");
    let mut table = delta::open_or_create(&settings.table_root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut g = Generator::new(12, 0.0);
    let mut last = 0;
    for i in 1..=30 {
        let batch = support::pin_batch(&mut g, "shardId-m", i, 20);
        support::append_as(&mut table, batch, "shardId-m", &mut last).await;
    }
    let cfg = dir.path().join("maintain.toml");
    std::fs::write(
        &cfg,
        format!(
            "table_root = \"{}\"\n[maintenance]\ncompact_min_age = \"0s\"\ncompact_min_files = 2\n",
            root.display()
        ),
    )
    .unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            support::pinstream()
                .args(["maintain", "--json", "--config"])
                .arg(&cfg)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map(support::KillOnDrop::new)
                .unwrap()
        })
        .collect();
    let mut committed = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "maintain failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pin = reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == "pin")
            .unwrap();
        if pin["compaction"]["version"].is_u64() {
            committed += 1;
        }
    }
    assert!(committed >= 1, "at least one compaction committed");
    let keys = support::key_counts(&support::read_table(&root, "pin").await);
    assert_eq!(keys.len(), 600);
    let twice = keys.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "rows in the table twice after concurrent maintain"
    );
    assert_eq!(
        optimize_commits(&root, "pin").await,
        committed,
        "the OPTIMIZE commits are the ones maintain reported"
    );
}

/// Three workers compact on a 1 s schedule (min age 0) while records arrive in waves of
/// about 3 s and an operator runs `maintain` (in process) over and over beside them. The
/// waves go on (at least three, for at most two minutes) until compactions of `pin` have
/// committed between appends three times and `maintain` has run twice: a test build on a
/// loaded 2-core machine takes seconds per maintenance pass, so a fixed span of traffic
/// would test less on a slower machine. Every record lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_compacting_on_a_short_schedule_beside_maintain_keep_every_record_once() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique("compactfleet"),
        &root,
        "[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n[maintenance]\ncompact_interval = \"1s\"\ncompact_min_age = \"0s\"\ncompact_min_files = 2\n",
    );
    support::create_streams(&aws, &settings, 2).await;
    let workers: Vec<_> = (0..3)
        .map(|_| support::spawn_worker(&settings, &aws, support::run_options(false)))
        .collect();
    let stop_operator = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let operator = tokio::spawn(run_maintain_until(
        settings.clone(),
        runs.clone(),
        stop_operator.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (per_wave, mut waves) = (300u64, 0u64);
    loop {
        let opts = ProduceOptions {
            rate: Some(300.0),
            ..support::produce_options(&settings, 71 + waves, 0.02, per_wave)
        };
        let report = producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.failed, 0);
        waves += 1;
        let between_appends = compactions_between_appends(&root, "pin").await;
        let operator_runs = runs.load(Ordering::Relaxed);
        if waves >= 3 && between_appends >= 3 && operator_runs >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {waves} waves: {between_appends} compactions of pin between appends, \
             {operator_runs} maintain runs"
        );
    }
    let per_stream = (per_wave * waves) as usize;
    support::wait_all_landed(&root, per_stream, "while compacting").await;
    stop_operator.cancel();
    operator.await.unwrap();
    for (stop, running) in workers {
        stop.cancel();
        running.await.unwrap().unwrap();
    }
    support::assert_exactly_once(&root, per_stream, "compacting fleet").await;
}

/// The operator: `pinstream maintain` (in process) every half second once the tables
/// exist, until `stop`, counting its runs in `runs`.
async fn run_maintain_until(
    settings: pinstream::config::Settings,
    runs: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let pinstream::config::TableRoot::Local(root) = &settings.table_root else {
        panic!("local tables")
    };
    while !stop.is_cancelled() {
        // Tables appear with the workers' first commits.
        if root.join("pin_rejects/_delta_log").exists() {
            pinstream::maintenance::run(&settings, None).await.unwrap();
            runs.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How many OPTIMIZE commits of the table have an append after them.
async fn compactions_between_appends(root: &std::path::Path, table: &str) -> usize {
    let url =
        url::Url::from_directory_path(std::fs::canonicalize(root.join(table)).unwrap()).unwrap();
    let t = deltalake::open_table(url).await.unwrap();
    let ops: Vec<String> = t
        .history(None)
        .filter_map(|c| async move { c.ok().and_then(|c| c.operation) })
        .collect()
        .await;
    // Newest first: the compactions older than the newest append.
    let newest_append = ops.iter().position(|op| op == "WRITE");
    newest_append.map_or(0, |i| {
        ops[i..].iter().filter(|op| *op == "OPTIMIZE").count()
    })
}
