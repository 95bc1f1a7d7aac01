//! Unanswered calls: a proxy in front of kinesalite swallows GetRecords answers (the
//! connection stays open and silent). Every call is bounded, so the reader times out,
//! retries on a fresh connection and reads on; a shard whose answers never come shows in
//! the metrics, `/readyz`, `pinstream status` and the log, its lease is handed back, and it
//! is read again once answers come back. Every record lands once throughout.

use std::time::Duration;

use pinstream::producer;
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::swallow::SwallowingKinesis;

/// Short bounds so that the tests take seconds: a GetRecords attempt 1 s, a whole call 3 s.
const BOUNDS: &str = "[network.kinesis]\nattempt_timeout = \"1s\"\noperation_timeout = \"3s\"\n";

fn kinesis_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap()
}

/// The run: two GetRecords answers swallowed, then 50 records per stream put. Before
/// calls were bounded, the two readers waited forever on their silent connections while
/// their leases kept renewing, and none of their records landed. Now each swallowed call
/// times out after its attempt timeout, the retry goes out on another connection, and every
/// record lands once within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_get_records_calls_time_out_and_are_retried_on_a_fresh_connection() {
    let aws = support::aws().await;
    let proxy = SwallowingKinesis::start(&kinesis_endpoint()).await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let config = format!("[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\nquiet_timeout = \"3s\"\nstall_timeout = \"30s\"\n{BOUNDS}");
    let settings = support::settings(&support::unique("silent"), &root, &config);
    let via_proxy = pinstream::aws::AwsClients::for_emulators_with(
        &proxy.url,
        &std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap(),
        &settings.network,
    )
    .await;
    support::create_streams(&aws, &settings, 1).await;
    let (stop, running) = support::spawn_worker(&settings, &via_proxy, support::run_options(false));
    support::wait_for("the three readers polling", Duration::from_secs(60), || {
        let n = proxy.calls().len();
        async move { (n >= 6).then_some(()) }
    })
    .await;
    proxy.swallow_next(2);
    support::wait_for("two answers swallowed", Duration::from_secs(10), || {
        let n = proxy.calls().iter().filter(|c| c.swallowed).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    let per_stream = 50u64;
    let opts = support::produce_options(&settings, 71, 0.0, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let put = std::time::Instant::now();
    support::wait_all_landed(&root, per_stream as usize, "after two swallowed answers").await;
    let took = put.elapsed();
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, per_stream as usize, "after two swallowed answers").await;
    assert!(
        took < Duration::from_secs(20),
        "records landed {took:?} after they were put (an attempt times out after 1 s)"
    );
    let calls = proxy.calls();
    for (i, c) in calls.iter().enumerate().filter(|(_, c)| c.swallowed) {
        let reused = calls[i + 1..]
            .iter()
            .any(|later| later.connection == c.connection);
        assert!(
            !reused,
            "a call went out on the silent connection {} again: {calls:?}",
            c.connection
        );
    }
}

/// The sum of every sample of `name` whose labels contain `labels` in a Prometheus scrape.
fn sample_sum(scrape: &str, name: &str, labels: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every GetRecords answer swallowed for a while, a worker process serving its metrics:
/// the read age of the shards grows past `reader.stall_timeout`, the timeouts are counted,
/// `/readyz` answers 503 naming a shard, `pinstream status` shows the stall, the log warns
/// once per shard, and at twice the bound the lease is handed back (its last error says
/// why). Once answers come back, every shard is read again: records put meanwhile land
/// once and the worker is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_left_unanswered_shows_everywhere_an_operator_looks_and_is_read_again() {
    let aws = support::aws().await;
    let proxy = SwallowingKinesis::start(&kinesis_endpoint()).await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("stall"), &root, "");
    support::create_streams(&aws, &settings, 1).await;
    let extra = format!("[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\nquiet_timeout = \"3s\"\nstall_timeout = \"5s\"\n{BOUNDS}");
    let config = support::write_config(dir.path(), &settings, &extra);
    let log = dir.path().join("w.log");
    let (_worker, addr) =
        support::spawn_served_run(&config, &log, &[("AWS_ENDPOINT_URL_KINESIS", &proxy.url)]).await;
    let a = addr.clone();
    support::wait_for("/readyz 200 while reading", Duration::from_secs(60), || {
        let r = support::http_get(&a, "/readyz");
        async move { r.filter(|(c, _)| *c == 200) }
    })
    .await;
    // A first batch lands: the readers are reading.
    let first = 20u64;
    let opts = support::produce_options(&settings, 72, 0.0, first);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, first as usize, "before the silence").await;

    proxy.swallow_all();
    let a = addr.clone();
    // (Another reason may come first on a loaded machine: a lease scan slower than the
    // failover time. Wait for the stall's.)
    let unready = support::wait_for(
        "/readyz 503 naming a stall",
        Duration::from_secs(60),
        || {
            let r = support::http_get(&a, "/readyz");
            async move {
                r.filter(|(c, b)| *c == 503 && b.contains("is not being read"))
                    .map(|(_, b)| b)
            }
        },
    )
    .await;
    assert!(
        unready.contains("is not being read") && unready.contains("GetRecords"),
        "readiness names the stalled shard and the call: {unready}"
    );
    let pin = settings.streams[&pinstream::clean::Kind::Pin].clone();
    let scrape = support::http_get(&addr, "/metrics").unwrap().1;
    let age = sample_sum(
        &scrape,
        "pinstream_shard_read_age_seconds",
        &format!("stream=\"{pin}\""),
    );
    assert!(
        age >= 4.0,
        "the pin shard's read age grows while it is not read: {age}\n{scrape}"
    );
    let timeouts = sample_sum(
        &scrape,
        "pinstream_call_timeouts_total",
        "operation=\"GetRecords\"",
    );
    assert!(
        timeouts >= 3.0,
        "timed-out GetRecords attempts are counted: {timeouts}"
    );
    let stalls = sample_sum(&scrape, "pinstream_reader_stalls_total", "");
    assert!(stalls >= 1.0, "stalls are counted: {stalls}");
    // The stall is on the lease row, for `pinstream status` (written at the next renewal).
    let status = support::wait_for("status showing a stall", Duration::from_secs(30), || {
        let out = support::pinstream()
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { text.contains("STALLED").then_some(text) }
    })
    .await;
    assert!(
        status.contains("GetRecords"),
        "status names the call: {status}"
    );
    // At twice the bound the reader gives its lease up; the lease row says why.
    let handed_back = support::wait_for("a lease handed back", Duration::from_secs(60), || {
        let aws = aws.clone();
        let s = settings.clone();
        let pin = pin.clone();
        async move {
            support::leases_of(&aws, &s, &pin)
                .await
                .into_iter()
                .find_map(|l| l.last_error.filter(|e| e.contains("handed back")))
        }
    })
    .await;
    assert!(handed_back.contains("GetRecords"), "{handed_back}");
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("the shard is not being read") && l.contains(&pin))
        .count();
    assert!(
        warnings >= 1,
        "the log names the stalled pin shard:\n{text}"
    );
    assert!(
        !text.contains("\"level\":\"ERROR\""),
        "a stall is a warning, not an error:\n{text}"
    );

    // Answers come back: every shard is read again.
    proxy.answer_again();
    let second = 30u64;
    let opts = support::produce_options(&settings, 73, 0.0, second);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, (first + second) as usize, "after the silence").await;
    let a = addr.clone();
    support::wait_for("/readyz 200 again", Duration::from_secs(60), || {
        let r = support::http_get(&a, "/readyz");
        async move { r.filter(|(c, _)| *c == 200) }
    })
    .await;
    support::wait_for(
        "the stall gone from status",
        Duration::from_secs(30),
        || {
            let out = support::pinstream()
                .args(["status", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { (!text.contains("STALLED")).then_some(()) }
        },
    )
    .await;
    support::assert_exactly_once(&root, (first + second) as usize, "after the silence").await;
}

/// Every DynamoDB answer swallowed for a while (lease renewals, checkpoints, scans), a
/// worker process running: each call times out after its attempt timeout (counted), the
/// leases are given up once their renewals have failed for the failover time, nothing
/// hangs (the process stays healthy), and once answers come back the worker takes the
/// leases again and every record, those put during the silence too, lands once. Before
/// DynamoDB calls were bounded, a checkpoint left unanswered held the lease's keeper (and
/// the sink waiting on it) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_lease_table_calls_time_out_and_the_worker_reads_on_once_they_answer() {
    let aws = support::aws().await;
    let proxy = SwallowingKinesis::watching(
        &std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap(),
        |target| target.starts_with("DynamoDB_"),
    )
    .await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("silent-ddb"), &root, "");
    support::create_streams(&aws, &settings, 1).await;
    let extra = "[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n[network.dynamodb]\nattempt_timeout = \"1s\"\noperation_timeout = \"2s\"\n";
    let config = support::write_config(dir.path(), &settings, extra);
    let log = dir.path().join("w.log");
    let (_worker, addr) =
        support::spawn_served_run(&config, &log, &[("AWS_ENDPOINT_URL_DYNAMODB", &proxy.url)])
            .await;
    let first = 20u64;
    let opts = support::produce_options(&settings, 74, 0.0, first);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    support::wait_all_landed(&root, first as usize, "before the silence").await;

    proxy.swallow_all();
    let second = 30u64;
    let opts = support::produce_options(&settings, 75, 0.0, second);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let a = addr.clone();
    support::wait_for(
        "timed-out DynamoDB calls and a lease given up",
        Duration::from_secs(60),
        || {
            let scrape = support::http_get(&a, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            async move {
                let timeouts = sample_sum(
                    &scrape,
                    "pinstream_call_timeouts_total",
                    "service=\"DynamoDB\"",
                );
                let lost = sample_sum(&scrape, "pinstream_leases_lost_total", "");
                (timeouts >= 3.0 && lost >= 1.0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        support::http_get(&addr, "/healthz").map(|(c, _)| c),
        Some(200),
        "the worker is alive through the silence"
    );
    proxy.answer_again();
    let all = (first + second) as usize;
    support::wait_all_landed(&root, all, "after the lease table answered again").await;
    support::assert_exactly_once(&root, all, "after the lease table answered again").await;
}
