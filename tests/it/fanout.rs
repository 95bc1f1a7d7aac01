//! Enhanced fan-out on `kinesis-local` (the emulator with RegisterStreamConsumer and
//! SubscribeToShard): workers starting at once register one consumer between them;
//! `pinstream consumers` lists, registers and deregisters it as an operator would; workers
//! reading by fan-out commit every record exactly once while their subscriptions are cut,
//! go half-open, their shards split and merge, a worker is killed, and the mode changes.
//! kinesis-local stores at most a few hundred records per second: volumes stay small.

use std::time::Duration;

use pinstream::aws::AwsClients;
use pinstream::config::Settings;
use pinstream::fanout::consumer;
use pinstream::producer;
use tokio_util::sync::CancellationToken;

use crate::cutter::SubscriptionCutter;
use crate::support;

/// Clients for kinesis-local (the fan-out emulator) and the suite's DynamoDB.
async fn fanout_aws() -> (AwsClients, String) {
    let endpoint = std::env::var("PINSTREAM_KINESIS_FANOUT_ENDPOINT")
        .expect("the local stack exports PINSTREAM_KINESIS_FANOUT_ENDPOINT (kinesis-local)");
    let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap();
    (
        pinstream::aws::AwsClients::for_emulators(&endpoint, &dynamodb).await,
        endpoint,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_registering_at_once_end_with_one_active_consumer_and_the_operator_removes_it() {
    let (aws, endpoint) = fanout_aws().await;
    let stream = support::unique("fanout");
    pinstream::kinesis::ensure_stream(&aws.kinesis, &stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    // Five workers start together and each makes sure the consumer exists.
    let racers: Vec<_> = (0..5)
        .map(|_| {
            let (client, stream) = (aws.kinesis.clone(), stream.clone());
            tokio::spawn(async move {
                consumer::ensure(&client, &stream, "pinstream-app", Duration::from_secs(30)).await
            })
        })
        .collect();
    let mut arns = Vec::new();
    for r in racers {
        let c = r.await.unwrap().unwrap();
        assert_eq!(c.status, "ACTIVE");
        arns.push(c.arn);
    }
    arns.dedup();
    assert_eq!(
        arns.len(),
        1,
        "every worker got the same consumer: {arns:?}"
    );
    let listed = consumer::list(&aws.kinesis, &stream).await.unwrap();
    assert_eq!(listed.len(), 1, "one consumer registered: {listed:?}");

    // The operator's command lists it, then removes it; registering again works.
    let cli = |args: &[&str]| {
        let out = support::pinstream()
            .arg("consumers")
            .args([
                "--stream",
                &format!("pin={stream}"),
                "--stream",
                &format!("geo={stream}"),
                "--stream",
                &format!("user={stream}"),
            ])
            .args(["--consumer-name", "pinstream-app"])
            .args(args)
            .env("AWS_ENDPOINT_URL_KINESIS", &endpoint)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let shown = cli(&["--json"]);
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] == "pinstream-app" && c["status"] == "ACTIVE"),
        "{shown}"
    );
    let after = cli(&["--deregister", "--json"]);
    assert_eq!(after, serde_json::json!([]), "deregistered");
    assert!(consumer::list(&aws.kinesis, &stream)
        .await
        .unwrap()
        .is_empty());
    let again = cli(&["--register", "--json"]);
    assert_eq!(
        again.as_array().unwrap().len(),
        3,
        "one per --stream (the same stream three times): {again}"
    );
    consumer::deregister(
        &aws.kinesis,
        &stream,
        "pinstream-app",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

/// Fan-out timings: commits every 500 ms, a quiet subscription given up after 4 s
/// (kinesis-local sends an event every second), closed shards noticed within 1 s, a short
/// failover, count balance (these tests judge records, not load).
const FANOUT: &str = "[flush]\nmax_batch_age = \"500ms\"\n[lease]\nfailover_time = \"4s\"\nshard_sync_interval = \"1s\"\nbalance = \"count\"\n[reader]\nmode = \"fan-out\"\nquiet_timeout = \"4s\"\nidle_poll_interval = \"200ms\"\n";

/// Fan-out settings for a test pipeline, with `extra` TOML appended.
fn fanout_settings(name: &str, root: &std::path::Path, extra: &str) -> Settings {
    support::settings(name, root, &format!("{FANOUT}{extra}"))
}

/// A `pinstream run` process on `config` reading Kinesis at `endpoint`, logging warnings
/// and errors to `<dir>/<id>.log`.
fn start_worker(
    dir: &std::path::Path,
    config: &std::path::Path,
    endpoint: &str,
    id: &str,
) -> support::KillOnDrop {
    std::process::Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--worker-id", id])
        .env("AWS_ENDPOINT_URL_KINESIS", endpoint)
        // Warnings, and delta-rs quiet about commit races pinstream resolves (as by default).
        .env(
            "PINSTREAM_LOG",
            "warn,deltalake_core::kernel::transaction=off",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap()
}

/// `pinstream run --available-now` on `config` (Kinesis at `endpoint` when given, else the
/// suite's), plain text logs.
fn drain_process(
    config: &std::path::Path,
    endpoint: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pinstream"));
    cmd.args(["run", "--available-now"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1");
    if let Some(e) = endpoint {
        cmd.env("AWS_ENDPOINT_URL_KINESIS", e);
    }
    cmd.output().unwrap()
}

/// The run failed with exactly one error line, which says every one of `says`.
fn assert_refused_in_one_line(out: &std::process::Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        says.iter().all(|w| errors[0].contains(w)),
        "the line names the call and the fix ({says:?}): {stderr}"
    );
}

/// Sends `count` synthetic records (seeded by `seed`) to every stream of `settings`.
async fn produce(aws: &AwsClients, settings: &Settings, seed: u64, count: u64) {
    let opts = support::produce_options(settings, seed, 0.05, count);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reads_every_record_once_through_cut_and_half_open_subscriptions() {
    let (aws, endpoint) = fanout_aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-cut");
    let settings = fanout_settings(&name, dir.path(), "");
    support::create_streams(&aws, &settings, 1).await;
    // Every subscription is cut after 3 s; the fourth to last that long is made half-open
    // instead.
    let cutter = SubscriptionCutter::start(&endpoint, Duration::from_secs(3), &[3]).await;
    let config = support::write_config(dir.path(), &settings, FANOUT);
    let mut worker = start_worker(dir.path(), &config, &cutter.url, "cut");
    // Records arrive in waves while subscriptions come and go: before any subscription is
    // made half-open, and after (those of the half-open shard land only if it recovered).
    produce(&aws, &settings, 40, 40).await;
    support::wait_for(
        "a half-open subscription",
        Duration::from_secs(60),
        || async {
            cutter
                .subscribed()
                .iter()
                .any(|s| s.half_open)
                .then_some(())
        },
    )
    .await;
    for wave in 1..3u64 {
        produce(&aws, &settings, 40 + wave, 40).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    support::wait_all_landed(dir.path(), 120, "through cut subscriptions").await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    support::assert_exactly_once(dir.path(), 120, "fan-out with cuts").await;
    // Cut subscriptions are renewed quietly; refusals while the emulator still holds the
    // cut one (ResourceInUse) are waited out, never a failed shard. The only warning is
    // the half-open subscription's.
    let log = std::fs::read_to_string(dir.path().join("cut.log")).unwrap();
    let warned: Vec<_> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let subs = cutter.subscribed();
    assert!(
        !warned.is_empty() && warned.iter().all(|l| l.contains("half-open")),
        "worker log:\n{log}\nsubscriptions: {subs:#?}"
    );
    assert!(
        subs.len() >= 9,
        "subscriptions were cut and renewed: {subs:#?}"
    );
    // Renewals start after the last continuation, never from the lease's start again:
    // every subscription of a shard after one that was relayed for its whole window.
    for s in &subs {
        let after_a_full_one = subs.iter().any(|f| {
            f.consumer_arn == s.consumer_arn
                && f.shard_id == s.shard_id
                && f.cut_at.is_some()
                && f.at < s.at
        });
        assert!(
            !after_a_full_one || s.position["Type"] == "AFTER_SEQUENCE_NUMBER",
            "a renewal starts after a sequence number: {s:#?}"
        );
    }
    // The half-open one was given up within the quiet timeout (4 s) plus a few seconds of
    // backoff while the emulator frees the slot (a busy machine adds to both).
    let half = subs
        .iter()
        .find(|s| s.half_open)
        .unwrap_or_else(|| panic!("one subscription was made half-open: {subs:#?}"));
    let cut_at = half.cut_at.unwrap();
    let next = subs
        .iter()
        .find(|s| {
            s.consumer_arn == half.consumer_arn && s.shard_id == half.shard_id && s.at > cut_at
        })
        .unwrap_or_else(|| {
            panic!(
                "the half-open subscription of {} was never renewed: {subs:#?}",
                half.shard_id
            )
        });
    let waited = next.at - cut_at;
    assert!(
        waited <= Duration::from_secs(10),
        "a half-open subscription was renewed {waited:?} after it went quiet (quiet_timeout 4s)"
    );
}

/// `count` records per stream at `rate` per second per stream, in the background.
fn produce_steadily(
    aws: &AwsClients,
    settings: &Settings,
    seed: u64,
    count: u64,
    rate: f64,
) -> tokio::task::JoinHandle<()> {
    let opts = producer::ProduceOptions {
        rate: Some(rate * settings.streams.len() as f64),
        ..support::produce_options(settings, seed, 0.0, count)
    };
    let client = aws.kinesis.clone();
    tokio::spawn(async move {
        let report = producer::produce(client, opts, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.failed, 0);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_follows_a_split_and_a_merge_reading_parents_first() {
    let (aws, _) = fanout_aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-reshard");
    let root = dir.path().join("tables");
    let settings = fanout_settings(&name, &root, "");
    support::create_streams(&aws, &settings, 1).await;
    let producing = produce_steadily(&aws, &settings, 61, 600, 25.0);
    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    support::split_then_merge(&aws, &settings, &root).await;
    producing.await.unwrap();
    support::wait_all_landed(&root, 600, "across the reshards").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, 600, "fan-out through a split and a merge").await;
    support::assert_pin_lineage_finished(&aws, &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_worker_killed_mid_subscription_has_its_shards_taken_and_read_once() {
    let (aws, endpoint) = fanout_aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-kill");
    let root = dir.path().join("tables");
    let settings = fanout_settings(&name, &root, "");
    support::create_streams(&aws, &settings, 2).await;
    let config = support::write_config(dir.path(), &settings, FANOUT);
    // Two worker processes start at once: both register the consumer of each stream.
    let start = |id: &str| start_worker(dir.path(), &config, &endpoint, id);
    let mut doomed = start("doomed");
    let mut survivor = start("survivor");
    let producing = produce_steadily(&aws, &settings, 71, 500, 20.0);
    // Kill one worker once both read and have committed something.
    let leases = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    support::wait_for(
        "both workers hold leases",
        Duration::from_secs(60),
        || async {
            let all = leases.scan().await.ok()?;
            let owners: std::collections::HashSet<_> =
                all.iter().filter_map(|l| l.owner.clone()).collect();
            (owners.len() == 2).then_some(())
        },
    )
    .await;
    support::wait_all_landed(&root, 100, "before the kill").await;
    doomed.kill().unwrap();
    let _ = doomed.wait();
    producing.await.unwrap();
    support::wait_all_landed(&root, 500, "after the kill").await;
    // The survivor holds every lease now.
    let all = leases.scan().await.unwrap();
    assert!(
        all.iter().all(|l| l.owner.as_deref() == Some("survivor")),
        "{all:?}"
    );
    assert!(
        survivor.try_wait().unwrap().is_none(),
        "the survivor is still running"
    );
    // Subscribing to a taken shard meets the dead worker's subscription until the service
    // closes it: ResourceInUse is waited out quietly, never a warning or a failed shard.
    let log = std::fs::read_to_string(dir.path().join("survivor.log")).unwrap();
    assert!(
        !log.contains("ResourceInUse") && !log.contains("ERROR"),
        "survivor log:\n{log}"
    );
    support::assert_exactly_once(&root, 500, "fan-out with a worker killed").await;
    let consumers = consumer::list(
        &aws.kinesis,
        &settings.streams[&pinstream::clean::Kind::Pin],
    )
    .await
    .unwrap();
    assert_eq!(
        consumers.len(),
        1,
        "one consumer for both workers: {consumers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_between_polling_and_fan_out_continues_from_the_checkpoints() {
    let (aws, _) = fanout_aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-switch");
    let fan_out = fanout_settings(&name, dir.path(), "");
    let mut polling = fan_out.clone();
    polling.reader.mode = pinstream::config::ReadMode::Polling;
    support::create_streams(&aws, &fan_out, 1).await;
    // Stop, change the mode, start: each run drains what came since the last one.
    for (run, settings) in [&polling, &fan_out, &polling].into_iter().enumerate() {
        produce(&aws, settings, 80 + run as u64, 40).await;
        let (_stop, running) = support::spawn_worker(settings, &aws, support::run_options(true));
        let summary = tokio::time::timeout(Duration::from_secs(120), running)
            .await
            .expect("an --available-now run ends")
            .unwrap()
            .unwrap();
        assert_eq!(
            summary.records_read, 120,
            "run {run} ({:?}) read exactly the 40 new records of each stream",
            settings.reader.mode
        );
    }
    support::assert_exactly_once(dir.path(), 120, "polling, fan-out, polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refusing_consumers_stops_the_worker_or_is_polled_when_fallback_says_so() {
    // kinesalite has no enhanced fan-out: registering a consumer fails as it would on a
    // stream at its limit of consumers or without the permission.
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-fallback");
    let root = dir.path().join("tables");
    let settings = support::settings(&name, &root, "");
    support::create_streams(&aws, &settings, 1).await;
    produce(&aws, &settings, 91, 20).await;
    let run = |extra: &str| {
        let config = support::write_config(dir.path(), &settings, extra);
        drain_process(&config, None, &["--reader", "fan-out"])
    };
    assert_refused_in_one_line(&run(""), &["StreamConsumer", "reader.fallback"]);
    assert!(!root.join("pin").exists(), "nothing was read");

    let polled = run("[reader]\nfallback = \"polling\"\n");
    let stderr = String::from_utf8_lossy(&polled.stderr);
    assert!(polled.status.success(), "{stderr}");
    assert!(
        stderr.contains("polling this stream instead"),
        "the fallback is said: {stderr}"
    );
    support::assert_exactly_once(&root, 20, "polled after the fallback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_its_twenty_consumers_taken_is_refused_or_polled_with_the_fallback() {
    let (aws, endpoint) = fanout_aws().await;
    let dir = support::tempdir();
    let name = support::unique("fo-limit");
    let root = dir.path().join("tables");
    let settings = fanout_settings(&name, &root, "");
    support::create_streams(&aws, &settings, 1).await;
    // Other applications hold the pin stream's 20 consumers.
    let pin = settings.streams[&pinstream::clean::Kind::Pin].clone();
    for i in 0..20 {
        consumer::ensure(
            &aws.kinesis,
            &pin,
            &format!("other-{i}"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    }
    produce(&aws, &settings, 101, 20).await;
    let run = |extra: &str| {
        let config = support::write_config(dir.path(), &settings, &format!("{FANOUT}{extra}"));
        drain_process(&config, Some(&endpoint), &[])
    };
    assert_refused_in_one_line(&run(""), &["LimitExceededException", "at most 20"]);

    let polled = run("fallback = \"polling\"\n");
    let stderr = String::from_utf8_lossy(&polled.stderr);
    assert!(polled.status.success(), "{stderr}");
    let warned: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("polling this stream instead"))
        .collect();
    assert!(
        warned.len() == 1 && warned[0].contains(&pin),
        "only the pin stream falls back: {stderr}"
    );
    support::assert_exactly_once(&root, 20, "pin polled, geo and user by fan-out").await;
}
