//! The producer against kinesalite: every record it reports sent is in the stream exactly
//! once (plain and KPL-aggregated), aggregated records round-trip through the worker, and
//! the rate limiter holds the asked rate.

use std::collections::BTreeMap;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::kpl::{self, Decoded};
use pinstream::producer::generator::Generator;
use pinstream::producer::{self, ProduceOptions, Source};
use pinstream::worker::{self};
use tokio_util::sync::CancellationToken;

use crate::support;

fn options(
    settings: &pinstream::config::Settings,
    count: u64,
    rate: Option<f64>,
    duration: Option<Duration>,
    aggregate: Option<usize>,
) -> ProduceOptions {
    ProduceOptions {
        streams: settings.streams.clone(),
        source: Source::Synthetic {
            seed: 99,
            dirty_rate: 0.02,
        },
        rate,
        count: Some(count),
        duration,
        partition_key: None,
        in_flight: 4,
        progress_every: None,
        aggregate,
    }
}

/// Every user record in the stream, de-aggregated, as data -> occurrences.
async fn read_back(aws: &pinstream::aws::AwsClients, stream: &str) -> BTreeMap<Vec<u8>, usize> {
    let mut out = BTreeMap::new();
    for shard in pinstream::kinesis::list_shards(&aws.kinesis, stream)
        .await
        .unwrap()
    {
        let mut reader = pinstream::kinesis::ShardReader::new(
            aws.kinesis.clone(),
            stream,
            &shard.shard_id,
            pinstream::kinesis::StartAt::TrimHorizon,
            10_000,
        );
        loop {
            let f = reader.next().await.unwrap();
            for r in &f.records {
                match kpl::decode(r.data().as_ref()).unwrap() {
                    Decoded::Plain(d) => *out.entry(d.to_vec()).or_insert(0) += 1,
                    Decoded::Aggregated(users) => {
                        for d in users {
                            *out.entry(d.to_vec()).or_insert(0) += 1;
                        }
                    }
                }
            }
            if f.records.is_empty() && f.millis_behind_latest.unwrap_or(0) == 0 {
                break;
            }
        }
    }
    out
}

/// What the generator produces for `count` triples with the test's seed, per kind.
fn expected(count: u64) -> BTreeMap<Kind, BTreeMap<Vec<u8>, usize>> {
    let mut g = Generator::new(99, 0.02);
    let mut m: BTreeMap<Kind, BTreeMap<Vec<u8>, usize>> = BTreeMap::new();
    for _ in 0..count {
        for (kind, data) in g.next_triple().1 {
            *m.entry(kind).or_default().entry(data).or_insert(0) += 1;
        }
    }
    m
}

async fn sent_once(aggregate: Option<usize>) {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique(if aggregate.is_some() {
        "prod-agg"
    } else {
        "prod"
    });
    let settings = support::settings(&name, dir.path(), "");
    support::create_streams(&aws, &settings, 2).await;
    let count = 1500;
    let report = producer::produce(
        aws.kinesis.clone(),
        options(&settings, count, None, None, aggregate),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((report.sent, report.failed), (3 * count, 0));
    assert!(
        report.put_records_latency.p99_ms >= report.put_records_latency.p50_ms
            && report.put_records_latency.p50_ms > 0.0
    );
    if aggregate.is_some() {
        assert!(
            report.calls < 3 * count / 500 + 10,
            "aggregates make few calls: {}",
            report.calls
        );
    }
    let want = expected(count);
    for (kind, stream) in &settings.streams {
        let got = read_back(&aws, stream).await;
        assert_eq!(
            got.values().sum::<usize>(),
            count as usize,
            "{kind}: record count in the stream"
        );
        assert_eq!(
            &got, &want[kind],
            "{kind}: exactly the generated records, each once"
        );
    }
    if aggregate.is_some() {
        // The worker splits the aggregates again: every user record lands once.
        let run = support::run_options(true);
        let summary = worker::run(settings.clone(), aws.clone(), run, CancellationToken::new())
            .await
            .unwrap();
        for kind in Kind::ALL {
            assert_eq!(
                summary.rows[kind.name()] + summary.rows[kind.rejects_table()],
                count,
                "{kind}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_sent_is_in_the_stream_exactly_once() {
    sent_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_records_round_trip_through_the_stream_and_the_worker() {
    sent_once(Some(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_holds_the_asked_rate_within_five_percent() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("rate"), dir.path(), "");
    support::create_streams(&aws, &settings, 1).await;
    let report = producer::produce(
        aws.kinesis.clone(),
        options(
            &settings,
            u64::MAX,
            Some(300.0),
            Some(Duration::from_secs(10)),
            None,
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let rate = report.sent as f64 / 10.0;
    assert!(
        (285.0..=315.0).contains(&rate),
        "asked 300 rec/s over 10 s, got {rate:.1} ({report:?})"
    );
}
