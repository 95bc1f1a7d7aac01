//! Enhanced fan-out consumers on `kinesis-local` (the emulator with RegisterStreamConsumer):
//! workers starting at once register one consumer between them, and `pinstream consumers`
//! lists, registers and deregisters it as an operator would.

use std::time::Duration;

use pinstream::fanout::consumer;

use crate::support;

/// Clients for kinesis-local (the fan-out emulator) and the suite's DynamoDB.
async fn fanout_aws() -> (pinstream::aws::AwsClients, String) {
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
