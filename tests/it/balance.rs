//! Balancing by load: three workers on a 12-shard stream where two shards carry a quarter
//! of the records each and ten share the rest (beside two idle streams). Dealt by count,
//! one worker can end up with both hot shards (60/20/20); by load the fleet reaches
//! 35/35/30 at best. The most and least loaded workers (bytes/s, read from the lease
//! table as an operator would) must come within 1.3x in a bounded time, then stay put
//! while the load is steady; every record lands exactly once throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use pinstream::clean::Kind;
use pinstream::lease::{Lease, LeaseTable};
use pinstream::producer::generator::Generator;
use tokio_util::sync::CancellationToken;

use crate::support;

/// Puts pin records for `stop`, every 100 ms: 5 to each of the two hot shards and 1 to
/// each of the other ten (by explicit hash key), 200 records/s in all (light enough that
/// three debug-build workers keep up on a shared 2-core machine, so the loads they
/// measure are the offered loads). Returns how many it put.
async fn skewed_producer(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    stop: CancellationToken,
) -> u64 {
    let mut shards = pinstream::kinesis::list_shards(&kinesis, &stream)
        .await
        .unwrap();
    shards.sort_by_key(|s| s.hash_range.0);
    let mut g = Generator::new(99, 0.0);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.is_cancelled() {
        tick.tick().await;
        let mut entries = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let n = if i < 2 { 5 } else { 1 };
            for _ in 0..n {
                let (ind, triple) = g.next_triple();
                let pin = triple.into_iter().find(|(k, _)| *k == Kind::Pin).unwrap().1;
                entries.push(
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(pin))
                        .partition_key(ind.to_string())
                        .explicit_hash_key(shard.hash_range.0.to_string())
                        .build()
                        .unwrap(),
                );
            }
        }
        let out = kinesis
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.failed_record_count(),
            Some(0),
            "kinesalite took every record"
        );
        sent += out.records().len() as u64;
    }
    sent
}

/// Bytes/s per live worker, from the lease rows (unfinished leases).
fn loads(leases: &[Lease]) -> BTreeMap<String, f64> {
    pinstream::read::status::per_worker(leases)
        .into_iter()
        .map(|(w, (_, _, bps))| (w.to_owned(), bps))
        .collect()
}

fn spread(loads: &BTreeMap<String, f64>) -> f64 {
    let max = loads.values().copied().fold(0.0, f64::max);
    let min = loads.values().copied().fold(f64::MAX, f64::min);
    max / min.max(1e-9)
}

/// A fleet counts as balanced when its most and least loaded workers are within the
/// policy's own band (1 + 1.5 x balance_band) on loads averaged over 10 s, under the 1.3x
/// the issue asks for: a fleet truly at 40/30/30 (1.33x), which a busy machine reads as
/// 1.25x now and then, is still being balanced (the next steal takes it to 35/35/30).
const BALANCED: f64 = 1.225;

/// Each worker's load averaged over `readings`.
fn averaged(readings: &std::collections::VecDeque<BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for r in readings {
        for (w, load) in r {
            *sum.entry(w.clone()).or_default() += load;
        }
    }
    let n = readings.len().max(1) as f64;
    sum.into_iter().map(|(w, load)| (w, load / n)).collect()
}

/// How long no lease must change owner before the fleet counts as settled: longer than a
/// steal takes to be decided and made (three scans over twice the failover time, 18 s,
/// then the thief's wait of 0.4 x failover, 3.6 s), so a fleet still above the balancing
/// threshold (which can read under 1.3x for a while) is not taken for a settled one.
const SETTLED: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_balance_a_skewed_stream_by_load_and_then_stay_put() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique("balance"),
        &root,
        "[flush]\nmax_batch_age = \"1s\"\n[lease]\nfailover_time = \"9s\"\nscan_interval = \"1s\"\nshard_sync_interval = \"2s\"\nbalance = \"load\"\nbalance_cooldown = \"8s\"\n[reader]\nidle_poll_interval = \"200ms\"\n",
    );
    let pin = settings.streams[&Kind::Pin].clone();
    pinstream::kinesis::ensure_stream(&aws.kinesis, &pin, 12, Duration::from_secs(30))
        .await
        .unwrap();
    for kind in [Kind::Geo, Kind::User] {
        pinstream::kinesis::ensure_stream(
            &aws.kinesis,
            &settings.streams[&kind],
            1,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
    let stop_producing = CancellationToken::new();
    let producer = tokio::spawn(skewed_producer(
        aws.kinesis.clone(),
        pin.clone(),
        stop_producing.clone(),
    ));
    // The first worker takes every lease; the other two join and must take load from it.
    let mut workers = vec![support::spawn_worker(
        &settings,
        &aws,
        support::run_options(false),
    )];
    let table = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    support::wait_for(
        "the first worker holds every lease",
        Duration::from_secs(30),
        || async {
            let all = table.scan().await.ok()?;
            (all.len() == 14 && all.iter().all(|l| l.owner.is_some())).then_some(())
        },
    )
    .await;
    for _ in 0..2 {
        workers.push(support::spawn_worker(
            &settings,
            &aws,
            support::run_options(false),
        ));
    }

    // Converged: three live workers within 1.3x of each other by bytes/s, and no lease
    // changed owner for SETTLED.
    let owners = |all: &[Lease]| -> BTreeMap<String, Option<String>> {
        all.iter()
            .map(|l| (l.key.clone(), l.owner.clone()))
            .collect()
    };
    let started = Instant::now();
    let (mut last, mut stable_since, mut seen) = (BTreeMap::new(), Instant::now(), BTreeMap::new());
    let mut moves = 0;
    let mut changes: Vec<String> = Vec::new();
    let mut recent: std::collections::VecDeque<BTreeMap<String, f64>> = Default::default();
    while started.elapsed() < Duration::from_secs(240) {
        let all = table.scan().await.unwrap();
        let now = owners(&all);
        if now != seen {
            moves += 1;
            for (k, o) in &now {
                if seen.get(k) != Some(o) {
                    let tail = |o: &Option<String>| {
                        o.clone()
                            .unwrap_or_default()
                            .rsplit('-')
                            .next()
                            .unwrap_or("")
                            .to_owned()
                    };
                    changes.push(format!(
                        "{:.1}s {} {}->{} (error {:?})",
                        started.elapsed().as_secs_f64(),
                        k.rsplit(':').next().unwrap_or(k),
                        seen.get(k).map(tail).unwrap_or_default(),
                        tail(o),
                        all.iter()
                            .find(|l| &l.key == k)
                            .and_then(|l| l.last_error.clone())
                    ));
                }
            }
            (seen, stable_since) = (now, Instant::now());
        }
        last = loads(&all);
        recent.push_back(last.clone());
        if recent.len() > 20 {
            recent.pop_front();
        }
        if last.len() == 3
            && spread(&averaged(&recent)) <= BALANCED
            && stable_since.elapsed() >= SETTLED
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    let average = averaged(&recent);
    assert!(
        last.len() == 3 && spread(&average) <= BALANCED && stable_since.elapsed() >= SETTLED,
        "balanced by load and settled within 240 s: {average:?} (spread {:.2} averaged over the last 10 s); owner changes: {changes:#?}",
        spread(&average)
    );
    eprintln!(
        "balanced and settled in {took:?} after {moves} owner changes seen: {last:?} (spread {:.2})",
        spread(&last)
    );
    // Steady load: for 20 more seconds (two cooldowns) no lease goes from one worker to
    // another, and the balance holds, judged on each worker's load averaged over the
    // window (one reading on a shared machine wobbles by 10-20 %). A lease handed back in
    // between (lost to renewals a starved machine could not send in time) is reported, not
    // counted as balancing.
    let (mut steals, mut handed_back) = (Vec::new(), Vec::new());
    let mut summed: BTreeMap<String, f64> = BTreeMap::new();
    let mut readings = 0.0;
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all = table.scan().await.unwrap();
        for l in &all {
            match (seen.get(&l.key), &l.owner) {
                (Some(Some(a)), Some(b)) if a != b => steals.push(format!(
                    "{:.1}s {}: {a} -> {b} (load {:?})",
                    steady.elapsed().as_secs_f64(),
                    l.shard_id,
                    l.bytes_per_second
                )),
                (Some(Some(a)), None) => handed_back.push(format!("{}: {a}", l.shard_id)),
                _ => {}
            }
        }
        seen = owners(&all);
        last = loads(&all);
        for (w, load) in &last {
            *summed.entry(w.clone()).or_default() += load;
        }
        readings += 1.0;
    }
    let average: BTreeMap<String, f64> = summed
        .into_iter()
        .map(|(w, load)| (w, load / readings))
        .collect();
    if !handed_back.is_empty() {
        eprintln!("leases handed back during the steady window: {handed_back:?}");
    }
    assert!(
        steals.is_empty(),
        "no lease moves between workers while the load is steady: {steals:#?} (loads now {last:?})"
    );
    assert!(
        average.len() == 3 && spread(&average) <= 1.3,
        "balanced over the window: {average:?} (spread {:.2})",
        spread(&average)
    );

    stop_producing.cancel();
    let sent = producer.await.unwrap();
    support::wait_for(
        "every pin record landed",
        Duration::from_secs(60),
        || async { (support::landed(&root, Kind::Pin).await >= sent as usize).then_some(()) },
    )
    .await;
    for (stop, running) in workers {
        stop.cancel();
        running.await.unwrap().unwrap();
    }
    let rows = support::read_table(&root, "pin").await;
    assert_eq!(support::count(&rows), sent as usize, "every record once");
    assert!(
        support::key_counts(&rows).values().all(|n| *n == 1),
        "none twice"
    );
}
