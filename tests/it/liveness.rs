//! No shard is left unread while a worker lives: a reader that fails or panics, a table
//! sink that dies, and a closed parent whose SHARD_END checkpoint failed each end with the
//! shard read to the end by the same (only) worker, every record exactly once.

use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::fault::Fault;
use pinstream::producer;
use pinstream::worker::RunOptions;
use tokio_util::sync::CancellationToken;

use crate::support;

const CONFIG: &str = "[flush]\nmax_batch_age = \"1s\"\n[lease]\nfailover_time = \"2s\"\n[reader]\nidle_poll_interval = \"100ms\"\n";

/// One worker with `fault` over fresh streams of one shard with `per_stream` records each
/// (5 % malformed): every record must land exactly once, and the fault must have happened.
/// With `shows`, the lease records an error containing it (for `pinstream status`) until the
/// shard is read again.
async fn one_worker_recovers_from(fault: &str, shows: Option<&str>) {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("live");
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 300u64;
    let opts = support::produce_options(&settings, 31, 0.05, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let fault = Fault::parse(fault).unwrap();
    let run = RunOptions {
        fault: Some(fault.clone()),
        ..support::run_options(false)
    };
    let (stop, running) = support::spawn_worker(&settings, &aws, run);
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    if let Some(shown) = shows {
        // Between the failure and the retake (one failover time later), the lease says why.
        support::wait_for(
            "the failure recorded on the lease",
            Duration::from_secs(30),
            || async {
                let all = leases.scan().await.ok()?;
                all.iter()
                    .any(|l| l.last_error.as_deref().is_some_and(|e| e.contains(shown)))
                    .then_some(())
            },
        )
        .await;
    }
    support::wait_all_landed(&root, per_stream as usize, "after the fault").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(fault.hits() >= 1, "the injected fault must have happened");
    support::assert_exactly_once(&root, per_stream as usize, "after the fault").await;
    let all = leases.scan().await.unwrap();
    assert!(
        all.iter().all(|l| l.last_error.is_none()),
        "a checkpoint after the retake clears the error: {all:?}"
    );
}

/// A reader that fails (here: an injected error after cleaning its first answer) used to
/// end as "cancelled": the worker kept renewing the lease and nobody read the shard again.
/// Now the lease is handed back and taken again. Fails with `on_reader_exit` ignoring
/// `ShardExit::Failed` (times out waiting for the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reader_hands_its_lease_back_and_the_shard_is_read() {
    one_worker_recovers_from("read:1:fail", Some("injected failure")).await;
}

/// The same for a reader task that panics (a JoinError that names no lease before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reader_hands_its_lease_back_and_the_shard_is_read() {
    one_worker_recovers_from("read:1:panic", Some("panicked")).await;
}

/// A table sink that panics mid-flush: its buffered rows are gone, so its leases are handed
/// back and a new sink is started. Fails with `on_sink_exit` doing nothing (the readers'
/// sends fail and that kind is never committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_dies_is_restarted_and_its_shards_read_again() {
    one_worker_recovers_from("before_commit:1:panic", None).await;
}

/// A closed parent whose SHARD_END checkpoint fails once is handed back; the only worker
/// must take it again (recovery finds the end in the table) so that its children are
/// read. Fails when the drained set also applies to long-lived workers (the children's
/// records never land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_end_checkpoint_does_not_leave_the_children_unread() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("shardend");
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let half = 150u64;
    let produce = |seed| {
        let opts = support::produce_options(&settings, seed, 0.0, half);
        producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
    };
    produce(41).await.unwrap();
    let pin = settings.streams[&Kind::Pin].clone();
    let parent = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
        .await
        .unwrap()
        .remove(0);
    support::split_shard(&aws, &pin, &parent.shard_id).await;
    // The second half goes to the children (geo and user: to their only shard).
    let report = produce(42).await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");

    let fault = Fault::parse("shard_end_checkpoint:1:fail").unwrap();
    let run = RunOptions {
        fault: Some(fault.clone()),
        ..support::run_options(false)
    };
    let (stop, running) = support::spawn_worker(&settings, &aws, run);
    support::wait_all_landed(&root, 2 * half as usize, "parents then children").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(fault.hits() >= 1, "a SHARD_END checkpoint must have failed");
    support::assert_exactly_once(&root, 2 * half as usize, "after the split").await;
}

/// Leases owned by `me`: lease key -> counter; `None` while the table cannot be read (the
/// worker creates it).
async fn owned_by(
    leases: &pinstream::lease::LeaseTable,
    me: &str,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let all = leases.scan().await.ok()?;
    Some(
        all.into_iter()
            .filter(|l| l.owner.as_deref() == Some(me))
            .map(|l| (l.key, l.counter))
            .collect(),
    )
}

/// A worker with `fault` over fresh streams of one shard each and no records, with a
/// failover time of 3 s (renewals every second): its id, stop token, task and lease table.
async fn idle_worker_with(
    fault: &str,
    name: &str,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<pinstream::worker::RunSummary, pinstream::worker::WorkerError>>,
    pinstream::lease::LeaseTable,
    tempfile::TempDir,
) {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(
        &support::unique(name),
        &dir.path().join("tables"),
        "[lease]\nfailover_time = \"3s\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let run = RunOptions {
        fault: Some(Fault::parse(fault).unwrap()),
        ..support::run_options(false)
    };
    let me = run.worker_id.clone();
    let (stop, running) = support::spawn_worker(&settings, &aws, run);
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    (me, stop, running, leases, dir)
}

/// Renewals run on their own schedule: while the coordinator spends 8 s working out where
/// a newly taken shard resumes (an injected stall, as a slow Delta log read would be), the
/// lease it took before keeps being renewed (failover 3 s: renewed every second). Fails on
/// the coordinator-driven renewals of c5dbb0c (no renewal during the stall: the lease
/// expires for every other worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_continue_while_the_coordinator_is_busy() {
    let (me, stop, running, leases, _dir) = idle_worker_with("recover:2:stall=8s", "renew").await;
    // Two leases taken: the first recovered, the second's recovery stalls.
    let first = support::wait_for("two leases taken", Duration::from_secs(20), || async {
        let mine = owned_by(&leases, &me).await?;
        (mine.len() == 2).then(|| mine.into_iter().next().unwrap())
    })
    .await;
    let (key, counter) = first;
    support::wait_for(
        "the first lease renewed 3 times during the stall",
        Duration::from_secs(6),
        || async {
            let now = owned_by(&leases, &me).await?;
            (now.len() == 2 && now.get(&key).is_some_and(|c| *c >= counter + 3)).then_some(())
        },
    )
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// Renewals that fail (DynamoDB errors, not refusals) for the failover time make the lease
/// lost: the worker stops reading it and hands it back (then takes it again, and so on, as
/// every renewal fails here). Fails when a failed renewal is only logged: the lease's
/// counter never moves again and the worker goes on reading a lease others may take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_renewals_keep_failing_is_given_up_within_the_failover_time() {
    let (me, stop, running, leases, _dir) = idle_worker_with("renew:1+:fail", "renewfail").await;
    let taken = support::wait_for("three leases taken", Duration::from_secs(20), || async {
        let mine = owned_by(&leases, &me).await?;
        (mine.len() == 3).then_some(mine)
    })
    .await;
    let started = tokio::time::Instant::now();
    // Released (counter + 1) and taken again (+ 1) within failover_time plus a cycle or two.
    support::wait_for(
        "every lease handed back",
        Duration::from_secs(6),
        || async {
            let all = leases.scan().await.ok()?;
            all.iter()
                .all(|l| taken.get(&l.key).is_some_and(|c| l.counter >= c + 2))
                .then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before renewals had a chance to fail"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A lease whose shard is not in the stream (aged out past retention, or never there)
/// blocks its children until it is finished. The worker treats the missing shard as ended,
/// reads the child, and deletes the finished lease once `lease.cleanup_after` has passed;
/// the leases of listed shards stay. Fails when a GetShardIterator ResourceNotFound is
/// only retried (the child's records never land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_shard_gone_from_the_stream_is_ended_and_its_lease_cleaned_up() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("gone");
    let root = dir.path().join("tables");
    let settings = support::settings(
        &name,
        &root,
        "[flush]\nmax_batch_age = \"1s\"\n[lease]\nfailover_time = \"2s\"\nshard_sync_interval = \"1s\"\ncleanup_after = \"2s\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 100u64;
    let opts = support::produce_options(&settings, 51, 0.0, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    // Before any worker: the pin shard's lease names a parent the stream does not have.
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    leases.ensure_exists(Duration::from_secs(30)).await.unwrap();
    let pin = settings.streams[&Kind::Pin].clone();
    let shard = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
        .await
        .unwrap()
        .remove(0)
        .shard_id;
    let ghost = "shardId-000000000099".to_string();
    let start = pinstream::lease::Checkpoint::TrimHorizon;
    assert!(leases
        .create_if_absent(&pin, &ghost, &[], &start)
        .await
        .unwrap());
    assert!(leases
        .create_if_absent(&pin, &shard, std::slice::from_ref(&ghost), &start)
        .await
        .unwrap());

    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    support::wait_all_landed(&root, per_stream as usize, "behind a vanished parent").await;
    let ghost_key = pinstream::lease::Lease::key_of(&pin, &ghost);
    support::wait_for(
        "the vanished parent's finished lease deleted",
        Duration::from_secs(30),
        || async {
            let all = leases.scan().await.ok()?;
            (!all.iter().any(|l| l.key == ghost_key)).then_some(all)
        },
    )
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let all = leases.scan().await.unwrap();
    assert_eq!(all.len(), 3, "the listed shards' leases stay: {all:?}");
    support::assert_exactly_once(&root, per_stream as usize, "behind a vanished parent").await;
}

/// Throttled GetRecords calls are retried with growing waits, by the reader itself (the
/// SDK's own retries are off for GetRecords, so each throttle is seen and counted): a
/// fault proxy throttles every GetRecords call for 5 s, each shard's retries of one iterator
/// come at least 150 ms, 300 ms, 600 ms, ... apart, and every record still lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_get_records_back_off_and_every_record_still_lands_once() {
    let aws = support::aws().await;
    let proxy = crate::flaky::FlakyKinesis::throttling_get_records(
        &std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let via_proxy = pinstream::aws::AwsClients::for_emulators(
        &proxy.url,
        &std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap(),
    )
    .await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("throttle"), &root, CONFIG);
    support::create_streams(&aws, &settings, 1).await;
    let per_stream = 200u64;
    let opts = support::produce_options(&settings, 41, 0.0, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let (stop, running) = support::spawn_worker(&settings, &via_proxy, support::run_options(false));
    support::wait_all_landed(&root, per_stream as usize, "after the throttling").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, per_stream as usize, "after the throttling").await;

    let calls = proxy.get_records_calls();
    let mut retries: std::collections::BTreeMap<&str, Vec<std::time::Instant>> = Default::default();
    for c in calls.iter().filter(|c| c.throttled) {
        retries.entry(&c.iterator).or_default().push(c.at);
    }
    let throttled: usize = retries.values().map(Vec::len).sum();
    assert!(throttled >= 3, "the proxy throttled calls: {throttled}");
    for (iterator, at) in &retries {
        for (k, pair) in at.windows(2).enumerate().take(5) {
            let gap = pair[1] - pair[0];
            let least = Duration::from_millis(150 << k);
            assert!(
                gap >= least,
                "retry {} of one iterator came {gap:?} after the previous call (at least {least:?} expected); calls: {:?} ({iterator})",
                k + 1,
                at.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
            );
        }
    }
}
