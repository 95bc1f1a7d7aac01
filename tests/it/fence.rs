//! The sink's fence, deterministically: another writer commits for a shard while a worker
//! holds rows of it; and a table behind its lease is refused, loudly.

use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::delta::{self, Appended, ShardCommit};
use pinstream::lease::LeaseTable;
use pinstream::producer;
use tokio_util::sync::CancellationToken;

use crate::support;

/// Worker A reads pin records and buffers them (30 s flush age). Meanwhile another writer
/// (as a new owner of the shard would) commits for the shard, while the lease table still
/// names A. When A flushes, its fence must see the shard's txn version moved: A commits
/// none of its rows, gives the lease back, and the table holds the other writer's rows
/// only. Fails with the fence disabled (fence_cleaned and the commit's own check): A's 200
/// pin rows land beside the other writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_shard_was_committed_by_another_writer_commits_nothing_for_it() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique("fence"),
        &root,
        "[flush]\nmax_batch_age = \"30s\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let mut opts = support::produce_options(&settings, 93, 0.0, 200);
    opts.streams.retain(|k, _| *k == Kind::Pin);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let run = support::run_options(false);
    let progress = run.progress.clone();
    let me = run.worker_id.clone();
    let (stop, running) = support::spawn_worker(&settings, &aws, run);
    support::wait_for(
        "A read the pin records",
        Duration::from_secs(30),
        || async {
            (progress
                .records_read
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 200)
                .then_some(())
        },
    )
    .await;

    // The other writer: commits 3 rows for the pin shard, fenced on what the table says.
    let leases = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    let pin = settings.streams[&Kind::Pin].clone();
    let lease = leases
        .scan()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.stream == pin)
        .unwrap();
    assert_eq!(
        lease.owner.as_deref(),
        Some(me.as_str()),
        "A holds the pin lease"
    );
    let app_id = lease.app_id(&settings.application);
    let mut table = delta::open_or_create(&settings.table_root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let mut g = pinstream::producer::generator::Generator::new(94, 0.0);
    let other = ShardCommit {
        app_id: app_id.clone(),
        lease_key: lease.key.clone(),
        expected: lease.batch_version,
        last_sequence: "1".into(),
        last_sub_sequence: 0,
        shard_end: false,
    };
    let committed = delta::append(
        &mut table,
        "other",
        &[support::pin_batch(&mut g, "other", 1, 3)],
        &[other],
    )
    .await
    .unwrap();
    assert!(matches!(committed, Appended::Committed(_)), "{committed:?}");

    // A flushes on the way out: fenced.
    stop.cancel();
    running.await.unwrap().unwrap();
    let keys = support::key_counts(&support::read_table(&root, "pin").await);
    assert_eq!(
        keys.len(),
        3,
        "only the other writer's rows: {}",
        keys.len()
    );
    assert!(keys.keys().all(|(shard, _, _)| shard == "other"));
    let after = leases
        .scan()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.key == lease.key)
        .unwrap();
    assert_eq!(after.owner, None, "A handed the lease back");
    assert_eq!(
        after.batch_version, lease.batch_version,
        "A checkpointed nothing for the shard"
    );
}

/// A table behind its lease (the lease records a commit the table does not have: the table
/// was replaced or rolled back) is refused: nothing is read for the shard, the reason is on
/// the lease, and the other streams go on. Fails (no such reason on the lease) without the
/// `T < B` refusal in recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_behind_its_lease_is_refused_with_the_reason_on_the_lease() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique("rolledback"),
        &root,
        "[flush]\nmax_batch_age = \"500ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, 1).await;
    let opts = support::produce_options(&settings, 95, 0.0, 100);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    // The pin lease says its shard was committed at version 99: no such commit exists.
    let leases = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    leases.ensure_exists(Duration::from_secs(30)).await.unwrap();
    let pin = settings.streams[&Kind::Pin].clone();
    let shard = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
        .await
        .unwrap()
        .remove(0)
        .shard_id;
    let created = pinstream::kinesis::stream_created(&aws.kinesis, &pin)
        .await
        .unwrap();
    let app_id = pinstream::lease::Lease::app_id_for(&settings.application, &pin, created, &shard);
    let th = pinstream::lease::Checkpoint::TrimHorizon;
    leases
        .create_lease(&pin, &shard, &[], &th, Some((created, &app_id)))
        .await
        .unwrap();
    let key = pinstream::lease::Lease::key_of(&pin, &shard);
    let c = leases.take(&key, "setup", 0, None).await.unwrap();
    let position = pinstream::lease::CommittedPosition {
        checkpoint: &th,
        sub_sequence: 0,
        batch_version: 99,
        rejects: None,
        load: None,
        read_stall: None,
    };
    let c = leases
        .checkpoint(&key, "setup", c, &position)
        .await
        .unwrap();
    leases.release(&key, "setup", c, None).await.unwrap();

    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    for kind in [Kind::Geo, Kind::User] {
        support::wait_for(
            &format!("{kind} lands"),
            Duration::from_secs(60),
            || async { (support::landed(&root, kind).await >= 100).then_some(()) },
        )
        .await;
    }
    let refused = support::wait_for(
        "the reason on the pin lease",
        Duration::from_secs(30),
        || async {
            let all = leases.scan().await.ok()?;
            all.into_iter()
                .find(|l| l.key == key)
                .and_then(|l| l.last_error)
                .filter(|e| e.contains("is behind the lease's batch_version 99"))
        },
    )
    .await;
    assert!(refused.contains("replaced or rolled back"), "{refused}");
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        support::landed(&root, Kind::Pin).await,
        0,
        "nothing read for the refused shard"
    );
}
