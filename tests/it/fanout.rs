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

/// Fan-out settings for a test pipeline: commits every 500 ms, a quiet subscription given
/// up after 4 s (kinesis-local sends an event every second), closed shards noticed within
/// 1 s, a short failover.
fn fanout_settings(name: &str, root: &std::path::Path, extra: &str) -> Settings {
    support::settings(
        name,
        root,
        &format!("[flush]\nmax_batch_age = \"500ms\"\n[lease]\nfailover_time = \"4s\"\nshard_sync_interval = \"1s\"\n[reader]\nmode = \"fan-out\"\nquiet_timeout = \"4s\"\nidle_poll_interval = \"200ms\"\n{extra}"),
    )
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
    let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap();
    let through_cutter = AwsClients::for_emulators(&cutter.url, &dynamodb).await;
    let (stop, running) =
        support::spawn_worker(&settings, &through_cutter, support::run_options(false));
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
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(dir.path(), 120, "fan-out with cuts").await;

    let subs = cutter.subscribed();
    assert!(
        subs.len() >= 9,
        "subscriptions were cut and renewed: {subs:#?}"
    );
    // Renewals start after the last continuation, never from the lease's start again.
    let renewed: Vec<_> = subs.iter().skip(3).collect();
    assert!(
        renewed
            .iter()
            .all(|s| s.position["Type"] == "AFTER_SEQUENCE_NUMBER"),
        "renewals start after a sequence number: {renewed:#?}"
    );
    // The half-open one was given up within the quiet timeout (4 s) plus a second or two
    // of backoff while the emulator frees the slot.
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
        waited <= Duration::from_secs(7),
        "a half-open subscription was renewed {waited:?} after it went quiet (quiet_timeout 4s)"
    );
}
