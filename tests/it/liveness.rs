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
async fn one_worker_recovers_from(fault: &str) {
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
    support::wait_all_landed(&root, per_stream as usize, "after the fault").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(fault.hits() >= 1, "the injected fault must have happened");
    support::assert_exactly_once(&root, per_stream as usize, "after the fault").await;
}

/// A reader that fails (here: an injected error after cleaning its first answer) used to
/// end as "cancelled": the worker kept renewing the lease and nobody read the shard again.
/// Now the lease is handed back and taken again. Fails with `on_reader_exit` ignoring
/// `ShardExit::Failed` (times out waiting for the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reader_hands_its_lease_back_and_the_shard_is_read() {
    one_worker_recovers_from("read:1:fail").await;
}

/// The same for a reader task that panics (a JoinError that names no lease before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reader_hands_its_lease_back_and_the_shard_is_read() {
    one_worker_recovers_from("read:1:panic").await;
}

/// A table sink that panics mid-flush: its buffered rows are gone, so its leases are handed
/// back and a new sink is started. Fails with `on_sink_exit` doing nothing (the readers'
/// sends fail and that kind is never committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_dies_is_restarted_and_its_shards_read_again() {
    one_worker_recovers_from("before_commit:1:panic").await;
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
    aws.kinesis
        .split_shard()
        .stream_name(&pin)
        .shard_to_split(&parent.shard_id)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap();
    support::wait_for(
        "pin ACTIVE after the split",
        Duration::from_secs(30),
        || async {
            let s = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
                .await
                .ok()?;
            (s.iter().filter(|s| !s.closed).count() == 2).then_some(())
        },
    )
    .await;
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
