//! A worker process with `--metrics-addr`: the Prometheus endpoint is scraped during a run
//! and the pipeline's metrics are found moving; `/healthz` and `/readyz` answer.

use std::process::{Command, Stdio};
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::producer::{self};
use tokio_util::sync::CancellationToken;

use crate::support;

/// The sum of every sample of `name` (any labels) in a Prometheus scrape.
fn samples(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the first sample of `name` (any labels) in a Prometheus scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A worker process with `--metrics-addr 127.0.0.1:0` on fresh streams (one shard each),
/// reading up to 50 records a call (chunks far smaller than any budget below),
/// with `extra_toml` appended to its config and `args` after `run`; returns the child, the
/// address it logged, its settings and its directory (log in `w.log`).
async fn spawn_served_worker(
    aws: &pinstream::aws::AwsClients,
    prefix: &str,
    extra_toml: &str,
    args: &[&str],
) -> (
    support::KillOnDrop,
    String,
    pinstream::config::Settings,
    tempfile::TempDir,
) {
    let dir = support::tempdir();
    let name = support::unique(prefix);
    let settings = support::settings(&name, &dir.path().join("tables"), "");
    support::create_streams(aws, &settings, 1).await;
    let cfg = dir.path().join("w.toml");
    let streams: String = settings
        .streams
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!("application = \"{name}\"\ntable_root = \"{}\"\n[flush]\nmax_batch_age = \"300ms\"\n{extra_toml}[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\nmax_records = 50\n[streams]\n{streams}", dir.path().join("tables").display()),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        // Port 0: the worker binds a free port and logs the address it got (no port picked
        // here, freed, and raced for by the time the worker binds it).
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("w.log")).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap();
    let addr = support::logged_addr(&dir.path().join("w.log"), "serving /metrics").await;
    (child, addr, settings, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served_during_a_run() {
    let aws = support::aws().await;
    let (mut child, addr, settings, dir) = spawn_served_worker(&aws, "metrics", "", &[]).await;

    let a = addr.clone();
    support::wait_for("/healthz", Duration::from_secs(30), || {
        let r = support::http_get(&a, "/healthz");
        async move { r.filter(|(c, _)| *c == 200) }
    })
    .await;
    let a = addr.clone();
    support::wait_for("/readyz", Duration::from_secs(30), || {
        let r = support::http_get(&a, "/readyz");
        async move { r.filter(|(c, _)| *c == 200) }
    })
    .await;

    let opts = support::produce_options(&settings, 4, 0.1, 300);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    const NAMES: [&str; 9] = [
        "pinstream_bytes_received_total",
        "pinstream_delta_commits_total",
        "pinstream_delta_commit_duration_seconds_bucket",
        "pinstream_flush_rows",
        "pinstream_flush_bytes",
        "pinstream_buffer_rows",
        "pinstream_millis_behind_latest",
        "pinstream_leases_held",
        "pinstream_leases_taken_total",
    ];
    let a = addr.clone();
    let scrape = support::wait_for(
        "every metric in the scrape, moving",
        Duration::from_secs(60),
        || {
            let r = support::http_get(&a, "/metrics");
            async move {
                let (_, body) = r?;
                let received = sample(&body, "pinstream_records_received_total")?;
                let written = sample(&body, "pinstream_records_written_total")?;
                let all = NAMES.iter().all(|n| body.contains(n))
                    && body.contains("pinstream_records_rejected_total");
                (received > 0.0 && written > 0.0 && all).then_some(body)
            }
        },
    )
    .await;
    assert!(
        scrape.contains("reason=\""),
        "rejects are labelled by reason"
    );
    // Histograms have buckets in their own unit: rows per flush up to a million, not the
    // seconds-sized buckets every histogram once had.
    assert!(
        scrape.contains("pinstream_flush_rows_bucket") && scrape.contains("le=\"200000\""),
        "row-sized buckets for pinstream_flush_rows"
    );
    assert!(
        scrape.contains("# HELP pinstream_records_written_total Cleaned rows committed."),
        "help text from the metric list"
    );
    assert_eq!(support::http_get(&addr, "/nope").map(|(c, _)| c), Some(404));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = support::wait_exit(&mut child, "worker exit", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    // JSON logs: one object per line, with the shard span's fields on the commit lines.
    let log = std::fs::read_to_string(dir.path().join("w.log")).unwrap();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(log.contains("\"message\":\"committed\""), "{log}");
    assert!(
        !log.contains("first_name"),
        "no record payloads in info logs"
    );
}

/// A worker whose Delta commits keep failing turns `/readyz` to 503, naming the failure,
/// once they have failed for `flush.failing_commits_unready_after`; it was ready before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_commits_keep_failing() {
    let aws = support::aws().await;
    let (mut child, addr, settings, _dir) = spawn_served_worker(
        &aws,
        "unready",
        "failing_commits_unready_after = \"1s\"\n",
        &["--fault", "before_commit:1+:fail"],
    )
    .await;
    let a = addr.clone();
    support::wait_for(
        "/readyz 200 before any commit",
        Duration::from_secs(30),
        || {
            let r = support::http_get(&a, "/readyz");
            async move { r.filter(|(c, _)| *c == 200) }
        },
    )
    .await;
    let opts = support::produce_options(&settings, 2, 0.0, 100);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let a = addr.clone();
    let body = support::wait_for("/readyz 503", Duration::from_secs(60), || {
        let r = support::http_get(&a, "/readyz");
        async move { r.filter(|(c, _)| *c == 503).map(|(_, b)| b) }
    })
    .await;
    assert!(
        body.contains("Delta commits have been failing"),
        "the reason is named: {body}"
    );
    // Still alive: failing commits are retried, not fatal.
    assert_eq!(
        support::http_get(&addr, "/healthz").map(|(c, _)| c),
        Some(200)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Under a backlog that keeps the memory budget full, the budget's gauge never shows more
/// held than the budget (every scrape during the run), the budget did fill (pressure
/// flushes), and scheduled compaction ran and counted the files it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_bound_and_scheduled_compaction_show_in_the_metrics() {
    let aws = support::aws().await;
    let budget = 262_144.0;
    let (mut child, addr, settings, dir) = spawn_served_worker(
        &aws,
        "budget",
        "max_buffered_bytes = 262144\n[maintenance]\ncompact_interval = \"1s\"\ncompact_min_age = \"0s\"\ncompact_min_files = 2\n",
        &[],
    )
    .await;
    let per_stream = 3000;
    let opts = support::produce_options(&settings, 5, 0.0, per_stream);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let root = dir.path().join("tables");
    let (mut most_held, mut scrapes) = (0.0f64, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let last = loop {
        let body = support::http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let used = sample(&body, "pinstream_memory_budget_used_bytes").unwrap_or(0.0);
        assert!(
            used <= budget,
            "{used} bytes reserved, over the {budget}-byte budget"
        );
        // What the sinks report holding (measured from their buffers, not the budget's own
        // count) stays inside the budget too.
        let buffered = samples(&body, "pinstream_buffer_bytes");
        assert!(
            buffered <= budget,
            "{buffered} bytes buffered, over the budget ({used} reserved)"
        );
        (most_held, scrapes) = (most_held.max(used), scrapes + 1);
        let compacted = sample(&body, "pinstream_compaction_files_removed_total").unwrap_or(0.0);
        if compacted > 0.0 && support::landed(&root, Kind::Pin).await >= per_stream as usize {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {compacted} files compacted; {scrapes} scrapes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sample(&last, "pinstream_memory_budget_bytes"), Some(budget));
    assert!(
        most_held > budget / 4.0 && sample(&last, "pinstream_pressure_flushes_total") > Some(0.0),
        "the backlog filled the budget: at most {most_held} bytes held over {scrapes} scrapes"
    );
    assert!(sample(&last, "pinstream_compactions_total") > Some(0.0));
    child.kill().unwrap();
    child.wait().unwrap();
    support::assert_exactly_once(&root, per_stream as usize, "after compactions").await;
}
