//! Crash tests: a worker process aborts at a chosen point of a flush (before the commits,
//! between the rejects and the cleaned commit, between commit and checkpoint, after the
//! checkpoint); another worker then finishes the job. Every produced record must be in its
//! table or its rejects table exactly once, counted by the unique key.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pinstream::producer::{self};
use pinstream::worker::{self, RunOptions, RunProgress};
use tokio_util::sync::CancellationToken;

use crate::support;

const CONFIG: &str = "[flush]\nmax_batch_rows = 150\nmax_batch_age = \"30s\"\n[lease]\nfailover_time = \"2s\"\n[reader]\nmax_records = 100\nidle_poll_interval = \"100ms\"\n";

async fn crash_then_recover(point: &str) {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique(&format!("crash-{}", point.replace('_', "")));
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 2).await;
    let per_stream = 600u64;
    let opts = support::produce_options(&settings, 77, 0.05, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();

    // The crashing worker: a child process told to abort the second time a flush reaches
    // the point.
    let cfg = dir.path().join("crash.toml");
    let streams: String = settings
        .streams
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "application = \"{}\"\ntable_root = \"{}\"\n{CONFIG}[streams]\n{streams}",
            settings.application,
            root.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("crash.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--worker-id", "crasher", "--fault", &format!("{point}:2")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap();
    let status =
        support::wait_exit(&mut child, "the injected crash", Duration::from_secs(60)).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.code().is_none() && log_text.contains("injected fault"),
        "the worker must have aborted at {point}: {status:?}\n{log_text}"
    );

    // Another worker takes the expired leases, recovers, and finishes.
    let progress = Arc::new(RunProgress::default());
    let stop = CancellationToken::new();
    let run = RunOptions {
        available_now: false,
        worker_id: support::unique("recover"),
        shutdown_deadline: Duration::from_secs(30),
        progress,
        fault: None,
        health: None,
    };
    let recovering = tokio::spawn(worker::run(
        settings.clone(),
        aws.clone(),
        run,
        stop.clone(),
    ));
    support::wait_all_landed(&root, per_stream as usize, "after recovery").await;
    stop.cancel();
    recovering.await.unwrap().unwrap();
    let rejected = support::assert_exactly_once(&root, per_stream as usize, point).await;
    assert!(
        rejected.iter().all(|n| *n > 0),
        "{point}: the dirty records are in the rejects tables: {rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit() {
    crash_then_recover("before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_rejects_and_cleaned_commit() {
    crash_then_recover("between_commits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_checkpoint() {
    crash_then_recover("after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_checkpoint() {
    crash_then_recover("after_checkpoint").await;
}

/// The cleaned commit fails after the rejects commit landed (injected, in process): the
/// sink retries the batch, and the rejects it already committed are not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cleaned_commit_is_retried_without_committing_rejects_twice() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("retry-rejects");
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 600u64;
    let opts = support::produce_options(&settings, 78, 0.05, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();

    let fault = pinstream::fault::Fault::parse("between_commits:2:fail").unwrap();
    let run = RunOptions {
        fault: Some(fault.clone()),
        ..support::run_options(false)
    };
    let (stop, running) = support::spawn_worker(&settings, &aws, run);
    support::wait_all_landed(&root, per_stream as usize, "with one failed commit").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        fault.hits() >= 2,
        "the injected failure must have happened: {} rejects commits",
        fault.hits()
    );
    let rejected = support::assert_exactly_once(&root, per_stream as usize, "retry").await;
    assert!(
        rejected.iter().all(|n| *n > 0),
        "the dirty records are in the rejects tables: {rejected:?}"
    );
}

/// Writes a child worker's config for `settings` with `extra` TOML, returns its path.
fn child_config(
    dir: &std::path::Path,
    file: &str,
    settings: &pinstream::config::Settings,
    extra: &str,
) -> std::path::PathBuf {
    let cfg = dir.join(file);
    let streams: String = settings
        .streams
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let root = match &settings.table_root {
        pinstream::config::TableRoot::Local(p) => p.display().to_string(),
        other => panic!("local tables only: {other:?}"),
    };
    std::fs::write(
        &cfg,
        format!(
            "application = \"{}\"\ntable_root = \"{root}\"\n{extra}[streams]\n{streams}",
            settings.application,
        ),
    )
    .unwrap();
    cfg
}

/// Runs `pinstream run` with `config` and `--fault fault` until the fault aborts it.
async fn run_until_fault(dir: &std::path::Path, config: &std::path::Path, id: &str, fault: &str) {
    let log = dir.join(format!("{id}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--worker-id", id, "--fault", fault])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap();
    let status = support::wait_exit(&mut child, fault, Duration::from_secs(60)).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.code().is_none() && log_text.contains("injected fault"),
        "{id} must have aborted at {fault}: {status:?}\n{log_text}"
    );
}

/// Rejects committed, then a crash before the cleaned commit (worker A, which read the
/// whole shard in one batch); the next owner (B) commits a SMALLER cleaned batch, checkpoints
/// it and crashes; the third owner (C) finds both tables' txn versions equal. It must still
/// skip the rejects A committed beyond B's checkpoint. Fails (pin rejects committed twice)
/// when recovery derives the rejects position only while the rejects table is ahead of the
/// cleaned one (`rejects_committed` returning `None` unless R > T, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_are_not_written_twice_after_a_crash_and_two_lease_moves() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("rejects-moves");
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 300u64;
    // Only pin gets records: every flush below is pin's.
    let mut opts = support::produce_options(&settings, 79, 0.1, per_stream);
    opts.streams
        .retain(|k, _| *k == pinstream::clean::Kind::Pin);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();

    let timing = "[lease]\nfailover_time = \"2s\"\n[reader]\nidle_poll_interval = \"100ms\"\n";
    let whole = child_config(
        dir.path(),
        "a.toml",
        &settings,
        &format!("[flush]\nmax_batch_rows = 10000\nmax_batch_age = \"2s\"\n{timing}"),
    );
    run_until_fault(dir.path(), &whole, "a", "between_commits:1").await;
    let small = child_config(
        dir.path(),
        "b.toml",
        &settings,
        "[flush]\nmax_batch_rows = 50\nmax_batch_age = \"30s\"\n[lease]\nfailover_time = \"2s\"\n[reader]\nmax_records = 50\nidle_poll_interval = \"100ms\"\n",
    );
    run_until_fault(dir.path(), &small, "b", "after_checkpoint:1").await;

    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    let pin = pinstream::clean::Kind::Pin;
    support::wait_for(
        "every pin record after two moves",
        Duration::from_secs(60),
        || async { (support::landed(&root, pin).await >= per_stream as usize).then_some(()) },
    )
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let rejects = support::read_table(&root, pin.rejects_table()).await;
    let mut keys = support::key_counts(&support::read_table(&root, pin.name()).await);
    for (k, n) in support::key_counts(&rejects) {
        *keys.entry(k).or_insert(0) += n;
    }
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "committed twice: {twice:?}");
    assert_eq!(keys.len(), per_stream as usize, "every pin record once");
    assert!(
        support::count(&rejects) > 10,
        "malformed records were rejected"
    );
}
