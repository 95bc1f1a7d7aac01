//! Producer -> Kinesis emulator -> worker -> Delta, read back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::producer::{self, ProduceOptions, Source};
use pinstream::worker::{self, RunOptions, RunProgress};
use tokio_util::sync::CancellationToken;

use crate::support::{self, count, key_counts};

fn options(available_now: bool) -> RunOptions {
    support::run_options(available_now)
}

async fn produce(
    aws: &pinstream::aws::AwsClients,
    settings: &pinstream::config::Settings,
    source: Source,
    count: Option<u64>,
) -> producer::ProduceReport {
    let opts = ProduceOptions {
        streams: settings.streams.clone(),
        source,
        rate: None,
        count,
        duration: None,
        partition_key: None,
        in_flight: 4,
        progress_every: None,
        aggregate: None,
    };
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_now_lands_every_record_exactly_once_and_a_rerun_adds_nothing() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("e2e");
    // Small batches and a checkpoint every 2 commits, so the log gets checkpoints.
    let settings = support::settings(
        &name,
        dir.path(),
        "[flush]\nmax_batch_rows = 200\n[reader]\nmax_records = 100\n[maintenance]\ncheckpoint_interval = 2\n",
    );
    support::create_streams(&aws, &settings, 2).await;
    let report = produce(
        &aws,
        &settings,
        Source::Synthetic {
            seed: 5,
            dirty_rate: 0.05,
        },
        Some(600),
    )
    .await;
    assert_eq!((report.sent, report.failed), (1800, 0));

    let first = tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            settings.clone(),
            aws.clone(),
            options(true),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("available-now finishes")
    .unwrap();
    assert_eq!(first.records_read, 1800);

    for kind in Kind::ALL {
        let rows = support::read_table(dir.path(), kind.name()).await;
        let rejects = support::read_table(dir.path(), kind.rejects_table()).await;
        assert_eq!(
            count(&rows) + count(&rejects),
            600,
            "{kind}: every record is in its table or its rejects table"
        );
        assert!(
            count(&rejects) > 0,
            "{kind}: the dirty records went to rejects"
        );
        let mut keys = key_counts(&rows);
        for (k, n) in key_counts(&rejects) {
            *keys.entry(k).or_insert(0) += n;
        }
        assert_eq!(keys.len(), 600, "{kind}: 600 distinct records");
        assert!(keys.values().all(|n| *n == 1), "{kind}: no record twice");
        assert_eq!(first.rows[kind.name()], count(&rows) as u64);
    }
    // Cleaned values really are cleaned: the ind of pin rows are the generated indexes.
    let pin = support::read_table(dir.path(), "pin").await;
    let inds: BTreeSet<i64> = support::i64_column(&pin, "ind").into_iter().collect();
    assert!(
        inds.len() > 500,
        "most generated indexes are in the pin table: {}",
        inds.len()
    );
    assert!(inds.iter().all(|i| (0..600).contains(i)));

    assert!(
        dir.path().join("pin/_delta_log/_last_checkpoint").is_file(),
        "a log checkpoint every 2 commits"
    );
    let second = worker::run(
        settings.clone(),
        aws.clone(),
        options(true),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(second.records_read, 0);
    assert_eq!(second.rows.values().sum::<u64>(), 0);
    for kind in Kind::ALL {
        let rows = support::read_table(dir.path(), kind.name()).await;
        let rejects = support::read_table(dir.path(), kind.rejects_table()).await;
        assert_eq!(
            count(&rows) + count(&rejects),
            600,
            "{kind}: the second run appended nothing"
        );
    }

    // Records produced after the first runs are picked up from the checkpoints.
    produce(
        &aws,
        &settings,
        Source::Synthetic {
            seed: 6,
            dirty_rate: 0.0,
        },
        Some(100),
    )
    .await;
    let third = worker::run(
        settings.clone(),
        aws.clone(),
        options(true),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(third.records_read, 300);
    for kind in Kind::ALL {
        let rows = support::read_table(dir.path(), kind.name()).await;
        let rejects = support::read_table(dir.path(), kind.rejects_table()).await;
        assert_eq!(count(&rows) + count(&rejects), 700, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_consumes_while_the_producer_sends_then_stops_gracefully() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("live");
    let settings = support::settings(
        &name,
        dir.path(),
        "[flush]\nmax_batch_age = \"300ms\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 3).await;
    let progress = Arc::new(RunProgress::default());
    let stop = CancellationToken::new();
    let opts = RunOptions {
        progress: progress.clone(),
        ..options(false)
    };
    let running = tokio::spawn(worker::run(
        settings.clone(),
        aws.clone(),
        opts,
        stop.clone(),
    ));
    let report = produce(
        &aws,
        &settings,
        Source::Synthetic {
            seed: 9,
            dirty_rate: 0.0,
        },
        Some(1000),
    )
    .await;
    assert_eq!(report.sent, 3000);
    let p = progress.clone();
    support::wait_for("all records committed", Duration::from_secs(90), || {
        let p = p.clone();
        async move {
            (p.rows_committed.load(std::sync::atomic::Ordering::Relaxed) >= 3000).then_some(())
        }
    })
    .await;
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("graceful stop in time")
        .unwrap()
        .unwrap();
    assert_eq!(summary.records_read, 3000);
    // Every lease was released on the way out.
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table)
        .scan()
        .await
        .unwrap();
    assert_eq!(leases.len(), 9);
    assert!(leases.iter().all(|l| l.owner.is_none()), "{leases:?}");
    for kind in Kind::ALL {
        let rows = support::read_table(dir.path(), kind.name()).await;
        assert_eq!(count(&rows), 1000, "{kind}");
        assert!(key_counts(&rows).values().all(|n| *n == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sample_records_replay_and_clean_without_rejects() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("real");
    let settings = support::settings(&name, dir.path(), "");
    support::create_streams(&aws, &settings, 2).await;
    let data = support::sample_data();
    let files = Kind::ALL
        .iter()
        .map(|k| (*k, data.join(format!("{k}.ndjson"))))
        .collect();
    let report = produce(
        &aws,
        &settings,
        Source::Replay {
            files,
            looping: false,
        },
        None,
    )
    .await;
    assert_eq!(report.sent, 3675 + 11154 + 11154);
    let summary = tokio::time::timeout(
        Duration::from_secs(300),
        worker::run(settings, aws, options(true), CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.rows["pin"], 3675);
    assert_eq!(summary.rows["geo"], 11154);
    assert_eq!(summary.rows["user"], 11154);
    for kind in Kind::ALL {
        assert_eq!(
            summary.rows[kind.rejects_table()],
            0,
            "{kind}: real records never reject"
        );
    }
    let geo = support::read_table(dir.path(), "geo").await;
    let inds: BTreeSet<i64> = support::i64_column(&geo, "ind").into_iter().collect();
    assert_eq!(inds, (0..11154).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_position_at_timestamp_and_latest_skip_older_records() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("initpos");
    let base = support::settings(&name, dir.path(), "");
    support::create_streams(&aws, &base, 1).await;
    produce(
        &aws,
        &base,
        Source::Synthetic {
            seed: 1,
            dirty_rate: 0.0,
        },
        Some(40),
    )
    .await;
    // Kinesis arrival timestamps have millisecond precision; keep a clear gap around the cut.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    produce(
        &aws,
        &base,
        Source::Synthetic {
            seed: 2,
            dirty_rate: 0.0,
        },
        Some(25),
    )
    .await;

    let at = support::settings(
        &name,
        dir.path(),
        &format!(
            "[lease]\ninitial_position = \"AT_TIMESTAMP:{}\"\n",
            cut.to_rfc3339()
        ),
    );
    let summary = worker::run(at, aws.clone(), options(true), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        summary.records_read, 75,
        "only the 25 records per stream after the cut"
    );
    for kind in Kind::ALL {
        assert_eq!(
            count(&support::read_table(dir.path(), kind.name()).await),
            25,
            "{kind}"
        );
    }

    // LATEST: a fresh application on the same streams reads only what arrives after it started.
    let dir2 = support::tempdir();
    let mut latest = support::settings(&format!("{name}-latest"), dir2.path(), "[lease]\ninitial_position = \"LATEST\"\n[flush]\nmax_batch_age = \"200ms\"\n[reader]\nidle_poll_interval = \"100ms\"\n");
    latest.streams = base.streams.clone();
    let progress = Arc::new(RunProgress::default());
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker::run(
        latest.clone(),
        aws.clone(),
        RunOptions {
            progress: progress.clone(),
            ..options(false)
        },
        stop.clone(),
    ));
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &latest.lease_table);
    // A lag written at renewal means the shard's reader has its iterator and has polled.
    support::wait_for(
        "the LATEST worker polls all three shards",
        Duration::from_secs(30),
        || async {
            let all = leases.scan().await.unwrap_or_default();
            (all.len() == 3
                && all
                    .iter()
                    .all(|l| l.owner.is_some() && l.millis_behind_latest.is_some()))
            .then_some(())
        },
    )
    .await;
    produce(
        &aws,
        &latest,
        Source::Synthetic {
            seed: 3,
            dirty_rate: 0.0,
        },
        Some(10),
    )
    .await;
    let p = progress.clone();
    support::wait_for("the 30 new records", Duration::from_secs(30), || {
        let p = p.clone();
        async move { (p.rows_committed.load(std::sync::atomic::Ordering::Relaxed) >= 30).then_some(()) }
    })
    .await;
    stop.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.records_read, 30, "none of the 195 older records");
}

/// With a memory budget far below what the streams hold and flush limits that never fire
/// within the test, readers wait for room and the sinks commit early: all but at most a
/// budget's worth of records land long before `max_batch_age`; after a graceful stop and
/// a draining run, every record is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_memory_budget_makes_sinks_flush_early_and_loses_nothing() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("budget");
    let root = dir.path().join("tables");
    let settings = support::settings(
        &name,
        &root,
        "[flush]\nmax_batch_age = \"10m\"\nmax_batch_rows = 1000000\nmax_buffered_bytes = 32768\n[reader]\nmax_records = 50\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 2).await;
    let per_stream = 800usize;
    let opts = support::produce_options(&settings, 79, 0.02, per_stream as u64);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();

    let (stop, running) = support::spawn_worker(&settings, &aws, options(false));
    // 32 KiB of Arrow is under 200 records of any kind: without the flushes called by
    // waiting readers nothing would be committed for 10 minutes.
    support::wait_all_landed(&root, per_stream - 200, "(all but a budget's worth)").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    // A reader stopped while waiting for room left its records to the next run (they are
    // past the checkpoint): a draining run picks them up.
    worker::run(
        settings.clone(),
        aws.clone(),
        support::run_options(true),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    support::assert_exactly_once(&root, per_stream, "budget").await;
}

/// Commits in `table`'s log so far.
fn commits(root: &std::path::Path, table: &str) -> usize {
    std::fs::read_dir(root.join(table).join("_delta_log"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// While one stream works off a backlog that keeps the memory budget full, the streams
/// with only live traffic keep their own commit pace: memory pressure makes the sinks
/// holding the most flush, not every sink that holds a few new rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_one_stream_does_not_make_the_others_commit_at_every_call_for_room() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("trickle");
    let root = dir.path().join("tables");
    let age = Duration::from_secs(2);
    let settings = support::settings(
        &name,
        &root,
        "[flush]\nmax_batch_age = \"2s\"\nmax_buffered_bytes = 262144\n[reader]\nmax_records = 50\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let backlog = 6000usize;
    let mut opts = support::produce_options(&settings, 83, 0.0, backlog as u64);
    opts.streams.retain(|k, _| *k == Kind::Pin);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();

    let (stop, running) = support::spawn_worker(&settings, &aws, options(false));
    // Live traffic on geo and user while pin catches up: 20 records/s each.
    let mut live = support::produce_options(&settings, 84, 0.0, 0);
    live.streams.retain(|k, _| *k != Kind::Pin);
    live.count = None;
    live.rate = Some(40.0);
    let live_stop = CancellationToken::new();
    let live_task = tokio::spawn(producer::produce(
        aws.kinesis.clone(),
        live,
        live_stop.clone(),
    ));
    support::wait_for("the geo table", Duration::from_secs(60), || async {
        (commits(&root, "geo") > 0).then_some(())
    })
    .await;
    let (started, geo_before) = (std::time::Instant::now(), commits(&root, "geo"));
    support::wait_for(
        &format!("pin: the backlog of {backlog}"),
        Duration::from_secs(120),
        || async { (support::landed(&root, Kind::Pin).await >= backlog).then_some(()) },
    )
    .await;
    let catch_up = started.elapsed();
    let geo_commits = commits(&root, "geo") - geo_before;
    // Less the commit that created the table.
    let pin_commits = commits(&root, "pin") - 1;
    live_stop.cancel();
    live_task.await.unwrap().unwrap();
    stop.cancel();
    running.await.unwrap().unwrap();

    // 256 KiB holds a few hundred pins, so the backlog kept readers waiting for room and
    // pin committed far more often than its flush age alone would have it do.
    let catch_up_ages = catch_up.as_secs_f64() / age.as_secs_f64();
    assert!(
        pin_commits as f64 >= 2.0 * catch_up_ages,
        "the backlog took {catch_up:?} and only {pin_commits} pin commits: not under pressure"
    );
    // geo commits about once a flush age (plus the odd call for room at a moment pin held
    // nothing), not at every call for room.
    assert!(
        geo_commits <= catch_up_ages.ceil() as usize + 3,
        "geo committed {geo_commits} times in {catch_up:?} while pin caught up ({pin_commits} commits)"
    );
}

/// While records flow, each lease shows its shard's lag and records/s (written by the
/// lease's keeper at renewal), and `pinstream status --json` reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lag_and_records_per_second_while_records_flow() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(
        &support::unique("status"),
        dir.path(),
        "[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let opts = pinstream::producer::ProduceOptions {
        rate: Some(300.0),
        duration: Some(Duration::from_secs(15)),
        ..support::produce_options(&settings, 97, 0.0, u64::MAX)
    };
    let client = aws.kinesis.clone();
    let producing = tokio::spawn(async move {
        pinstream::producer::produce(client, opts, CancellationToken::new()).await
    });
    let (stop, running) = support::spawn_worker(&settings, &aws, options(false));
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    // 300 rec/s over three streams: about 100 rec/s a shard.
    support::wait_for(
        "records/s and lag on every lease",
        Duration::from_secs(30),
        || async {
            let all = leases.scan().await.ok()?;
            (all.len() == 3
                && all.iter().all(|l| {
                    l.records_per_second.is_some_and(|r| r > 20.0)
                        && l.millis_behind_latest.is_some()
                }))
            .then_some(())
        },
    )
    .await;
    let out = support::pinstream()
        .args(["status", "--json", "--app", &settings.application])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().any(
            |r| r["records_per_second"].as_f64().is_some_and(|x| x > 0.0)
                && r["millis_behind_latest"].is_i64()
        ),
        "{json}"
    );
    producing.abort();
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// While the worker keeps up, a record is visible (its commit made) within
/// `flush.max_batch_age` plus the commit itself: measured per row from its Kinesis arrival
/// to the timestamp of the commit that added it, read from the Delta log, not from the
/// worker's own bookkeeping. The producer trickles for ~5 s, so each table takes several
/// age-triggered commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_visible_within_max_batch_age_plus_the_commit_while_the_worker_keeps_up() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique("visible"),
        &root,
        "[flush]\nmax_batch_age = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let (stop, running) = support::spawn_worker(&settings, &aws, options(false));
    let per_stream = 100;
    let opts = ProduceOptions {
        rate: Some(60.0),
        ..support::produce_options(&settings, 17, 0.0, per_stream)
    };
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, per_stream as usize, "the trickle").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let a = pinstream::local::loadtest::analyse(&root).unwrap();
    assert_eq!((a.distinct, a.duplicates), (3 * per_stream, 0), "{a:?}");
    assert_eq!(a.latencies_ms.len(), 3 * per_stream as usize);
    for kind in Kind::ALL {
        assert!(
            commits(&root, kind.name()) >= 2,
            "{kind}: the trickle took several age-triggered commits"
        );
    }
    let worst = a.latencies_ms.iter().copied().max().unwrap();
    assert!(
        worst <= 3_000 + 2_500,
        "every row visible within max_batch_age (3 s) + 2.5 s for reading and committing; the slowest took {worst} ms"
    );
}
