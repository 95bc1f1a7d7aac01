//! The producer against kinesalite: every record it reports sent is in the stream exactly
//! once (plain and KPL-aggregated), also when PutRecords entries fail (injected by a proxy)
//! and are retried; aggregated records round-trip through the worker and through the
//! Python KPL de-aggregator (`aws-kinesis-agg` over boto3); the rate limiter holds the rate.

use std::collections::BTreeMap;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::kpl::{self, Decoded};
use pinstream::producer::generator::Generator;
use pinstream::producer::{self, ProduceOptions, Source};
use pinstream::worker::{self};
use tokio_util::sync::CancellationToken;

use crate::{flaky, support};

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
            for r in f.records.iter() {
                match kpl::decode(r.data).unwrap() {
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
    let started = std::time::Instant::now();
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
    // Over the time the run really took, measured here (not the nominal 10 s, and not the
    // producer's own figure).
    let took = started.elapsed().as_secs_f64();
    let rate = report.sent as f64 / took;
    assert!(
        (285.0..=315.0).contains(&rate),
        "asked 300 rec/s, got {rate:.1} over {took:.2} s ({report:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partially_failed_batches_resend_only_the_failed_entries_once_each() {
    let aws = support::aws().await;
    let proxy =
        flaky::FlakyKinesis::start(&std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap(), 7).await;
    let via_proxy = pinstream::aws::AwsClients::for_emulators(
        &proxy.url,
        &std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap(),
    )
    .await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("prod-flaky"), dir.path(), "");
    support::create_streams(&aws, &settings, 2).await;
    let count = 1000;
    let report = producer::produce(
        via_proxy.kinesis.clone(),
        options(&settings, count, None, None, None),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let (throttled, internal, entries) = proxy.counts();
    let injected = throttled + internal;
    assert!(
        throttled > 100 && internal > 100,
        "the proxy failed entries of both kinds: {throttled} throttled, {internal} internal"
    );
    assert_eq!((report.sent, report.failed), (3 * count, 0), "{report:?}");
    assert_eq!(
        report.retries, injected,
        "each failed entry resent once: {report:?}"
    );
    assert_eq!(report.throttled, throttled, "{report:?}");
    assert_eq!(
        entries,
        3 * count + injected,
        "only the failed entries of a batch were resent, not the whole batch"
    );
    let want = expected(count);
    for (kind, stream) in &settings.streams {
        assert_eq!(
            read_back(&aws, stream).await,
            want[kind],
            "{kind}: every record in the stream exactly once despite the failures"
        );
    }
}

/// Reads a stream with boto3 and de-aggregates with `aws_kinesis_agg`, the library KCL-less
/// Python consumers use; prints each user record's data, base64, one per line.
const BOTO3_READ: &str = r#"
import base64, sys, boto3
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
k = boto3.client("kinesis")
stream = sys.argv[1]
aggregated = 0
for shard in k.list_shards(StreamName=stream)["Shards"]:
    it = k.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    while it:
        out = k.get_records(ShardIterator=it, Limit=10000)
        for r in iter_deaggregate_records(out["Records"], data_format="Boto3"):
            aggregated += bool(r["kinesis"].get("aggregated"))
            print(r["kinesis"]["data"].decode() if r["kinesis"].get("aggregated") else base64.b64encode(r["kinesis"]["data"]).decode())
        it = out.get("NextShardIterator")
        if not out["Records"] and out.get("MillisBehindLatest", 0) == 0:
            break
print("aggregated", aggregated, file=sys.stderr)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_boto3_and_aws_kinesis_agg_read_the_aggregated_records() {
    use base64::Engine;
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("prod-py"), dir.path(), "");
    support::create_streams(&aws, &settings, 2).await;
    let count = 600;
    let report = producer::produce(
        aws.kinesis.clone(),
        options(&settings, count, None, None, Some(40)),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.sent, 3 * count);
    let want = expected(count);
    for (kind, stream) in &settings.streams {
        let out = std::process::Command::new(support::python())
            .arg("-c")
            .arg(BOTO3_READ)
            .arg(stream)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "boto3 reader failed: {stderr}");
        assert!(
            stderr.contains(&format!("aggregated {count}")),
            "{kind}: every user record came out of a KPL aggregate: {stderr}"
        );
        let mut got: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(line)
                .unwrap();
            *got.entry(data).or_insert(0) += 1;
        }
        assert_eq!(
            got, want[kind],
            "{kind}: boto3 + aws_kinesis_agg read each record once"
        );
    }
}

/// `pinstream produce` as a user runs it: `--from FILE --loop` starts the file over (5,000
/// records from a file of 3,675, each sample record there once or twice), `--report json`
/// prints the report as JSON, and an interrupt (SIGINT) of an endless run stops it cleanly
/// with the totals so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_produce_command_loops_replays_reports_json_and_prints_totals_on_interrupt() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("producecli"), dir.path(), "");
    support::create_streams(&aws, &settings, 1).await;
    let pin = settings.streams[&Kind::Pin].clone();
    let sample = support::sample_data().join("pin.ndjson");
    let out = support::pinstream()
        .args(["produce", "--stream", &format!("pin={pin}"), "--from"])
        .arg(format!("pin={}", sample.display()))
        .args(["--loop", "--count", "5000", "--report", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], 5000, "{report}");
    let records = read_back(&aws, &pin).await;
    assert_eq!(records.values().sum::<usize>(), 5000);
    assert_eq!(
        records.len(),
        3675,
        "every sample record, the first 1,325 twice"
    );
    assert!(records.values().all(|n| *n == 1 || *n == 2));

    // Endless (no --count or --duration), interrupted once records are flowing.
    let geo = settings.streams[&Kind::Geo].clone();
    let mut cmd = support::pinstream();
    cmd.args(["produce", "--rate", "200"]);
    for (k, s) in &settings.streams {
        cmd.args(["--stream", &format!("{k}={s}")]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::KillOnDrop::new)
        .unwrap();
    support::wait_for("records flowing", Duration::from_secs(30), || async {
        (!read_back(&aws, &geo).await.is_empty()).then_some(())
    })
    .await;
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = support::wait_exit(
        &mut child,
        "produce stops on SIGINT",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(status.code(), Some(0));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    let sent: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("totals printed: {text}"));
    assert!(text.starts_with("sent ") && sent > 0, "{text}");
    let mut held = read_back(&aws, &geo).await.values().sum::<usize>() as u64;
    for kind in [Kind::Pin, Kind::User] {
        held += read_back(&aws, &settings.streams[&kind])
            .await
            .values()
            .sum::<usize>() as u64;
    }
    assert_eq!(
        held,
        sent + 5000,
        "the totals are what the streams hold (besides the 5,000 looped pins)"
    );
}
