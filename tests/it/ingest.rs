//! `pinstream ingest` as the original project's producers meet it: a Python script written
//! like their `user_posting_emulation` scripts (the `requests` library, the API Gateway's
//! and the REST Proxy's URLs and bodies) posts real and malformed rows, refused requests of
//! every kind, from concurrent clients, while a worker consumes; every acknowledged record
//! must be in its table (or rejects table) exactly once, and nothing refused anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use deltalake::arrow::array::AsArray;
use pinstream::clean::Kind;
use pinstream::config::Settings;
use serde_json::Value;

use crate::support;

const API_KEY: &str = "test-key-7c1d";

/// `pinstream ingest` on a free port for `settings`' streams, with the API key; returns
/// the child and its address.
async fn spawn_ingest(settings: &Settings, dir: &Path) -> (support::KillOnDrop, String) {
    let log = dir.join("ingest.log");
    let mut cmd = support::pinstream();
    cmd.args(["--log-format", "json", "ingest", "--listen", "127.0.0.1:0"]);
    for (kind, name) in &settings.streams {
        cmd.args(["--stream", &format!("{kind}={name}")]);
    }
    let child = cmd
        .env("PINSTREAM_INGEST_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap();
    let addr = support::logged_addr(&log, "serving ingest").await;
    (child, addr)
}

/// `pinstream ingest` and an in-process worker on fresh streams of `shards` shards.
struct Fixture {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    settings: Settings,
    ingest: support::KillOnDrop,
    addr: String,
    stop: tokio_util::sync::CancellationToken,
    running: tokio::task::JoinHandle<
        Result<pinstream::worker::RunSummary, pinstream::worker::WorkerError>,
    >,
}

async fn ingest_beside_a_worker(prefix: &str, shards: i32) -> Fixture {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(
        &support::unique(prefix),
        &root,
        "[flush]\nmax_batch_age = \"500ms\"\n[reader]\nidle_poll_interval = \"100ms\"\n",
    );
    support::create_streams(&aws, &settings, shards).await;
    let (ingest, addr) = spawn_ingest(&settings, dir.path()).await;
    let (stop, running) = support::spawn_worker(&settings, &aws, support::run_options(false));
    Fixture {
        dir,
        root,
        settings,
        ingest,
        addr,
        stop,
        running,
    }
}

/// Runs the emulation script with `args` and returns its report.
fn post_like_the_original_scripts(
    addr: &str,
    settings: &Settings,
    dir: &Path,
    args: &[&str],
) -> Value {
    let report = dir.join(format!("report-{}.json", support::unique("r")));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/user_posting_emulation.py");
    let mut cmd = Command::new(support::python());
    cmd.arg(script)
        .args([
            "--gateway",
            &format!("http://{addr}/test"),
            "--proxy",
            &format!("http://{addr}"),
        ])
        .args([
            "--topic-prefix",
            "12e255fc4fcd",
            "--api-key",
            API_KEY,
            "--data",
        ])
        .arg(support::sample_data())
        .arg("--report")
        .arg(&report);
    for (kind, name) in &settings.streams {
        cmd.args(["--stream", &format!("{kind}={name}")]);
    }
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

fn keys(report: &Value, section: &str, kind: Kind) -> Vec<i64> {
    report[section][kind.name()]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Every key in a kind's cleaned table (its `ind`) and in its rejects table (the key field
/// of the raw record), with how often it appears.
async fn landed_keys(root: &Path, kind: Kind) -> BTreeMap<i64, usize> {
    let mut n = BTreeMap::new();
    for k in support::i64_column(&support::read_table(root, kind.name()).await, "ind") {
        *n.entry(k).or_insert(0) += 1;
    }
    let field = if kind == Kind::Pin { "index" } else { "ind" };
    for b in support::read_table(root, kind.rejects_table()).await {
        let raw = b.column_by_name("raw_data").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            let v: Value = serde_json::from_str(raw.value(i)).unwrap_or_default();
            *n.entry(v[field].as_i64().unwrap_or(-1)).or_insert(0) += 1;
        }
    }
    n
}

/// Waits until every kind holds at least the acknowledged number of records, then checks
/// that they are exactly the acknowledged keys, each once (good ones cleaned, malformed
/// ones in rejects).
async fn assert_acknowledged_landed_once(root: &Path, report: &Value) {
    for kind in Kind::ALL {
        let good = keys(report, "acked", kind);
        let malformed = keys(report, "acked_malformed", kind);
        let want = good.len() + malformed.len();
        support::wait_for(
            &format!("{kind}: {want} acknowledged records landed"),
            Duration::from_secs(90),
            || async move { (support::landed(root, kind).await >= want).then_some(()) },
        )
        .await;
        let landed = landed_keys(root, kind).await;
        let expected: BTreeSet<i64> = good.iter().chain(&malformed).copied().collect();
        assert_eq!(
            expected.len(),
            want,
            "{kind}: the script acknowledged each key once"
        );
        let got: BTreeSet<i64> = landed.keys().copied().collect();
        assert_eq!(
            got, expected,
            "{kind}: exactly the acknowledged keys landed"
        );
        assert!(landed.values().all(|n| *n == 1), "{kind}: no record twice");
        let rejected = support::count(&support::read_table(root, kind.rejects_table()).await);
        assert_eq!(
            rejected,
            malformed.len(),
            "{kind}: the malformed ones are the rejects"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_clients_post_through_both_apis_and_every_acknowledged_record_lands_once() {
    let Fixture {
        dir,
        root,
        settings,
        mut ingest,
        addr,
        stop,
        running,
    } = ingest_beside_a_worker("ingest", 2).await;

    let report = post_like_the_original_scripts(
        &addr,
        &settings,
        dir.path(),
        &["--rows", "40", "--threads", "4"],
    );
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "every check holds: {failed:#?}");
    for kind in Kind::ALL {
        assert_eq!(
            keys(&report, "acked", kind).len(),
            80,
            "{kind}: 40 rows through each API"
        );
        assert_eq!(keys(&report, "acked_malformed", kind).len(), 10, "{kind}");
    }
    assert_acknowledged_landed_once(&root, &report).await;
    stop.cancel();
    running.await.unwrap().unwrap();

    let (_, metrics) = support::http_get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("pinstream_ingest_refused_total{reason=\"too_large\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("pinstream_ingest_refused_total{reason=\"unauthorized\"}"));
    Command::new("kill")
        .args(["-TERM", &ingest.id().to_string()])
        .status()
        .unwrap();
    let status = support::wait_exit(&mut ingest, "ingest exit", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("ingest.log")).unwrap();
    assert!(!log.contains(API_KEY), "the API key is never logged");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

/// SIGTERM while clients post flat out: the server stops accepting, answers what it has,
/// exits 0; every record it acknowledged lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_loses_no_acknowledged_record() {
    let Fixture {
        dir,
        root,
        settings,
        mut ingest,
        addr,
        stop,
        running,
    } = ingest_beside_a_worker("ingest-term", 1).await;
    let pid = ingest.id().to_string();
    let terminator = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    });
    let report = post_like_the_original_scripts(
        &addr,
        &settings,
        dir.path(),
        &["--mode", "load", "--seconds", "20", "--threads", "4"],
    );
    terminator.join().unwrap();
    let status = support::wait_exit(&mut ingest, "ingest exit", Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "a graceful stop");
    let acked: usize = Kind::ALL
        .iter()
        .map(|k| keys(&report, "acked", *k).len())
        .sum();
    assert!(
        acked > 30,
        "records were acknowledged before the signal: {report}"
    );
    assert!(
        report["seconds"].as_f64().unwrap() < 15.0,
        "the clients saw the server go: {report}"
    );
    assert_acknowledged_landed_once(&root, &report).await;
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// `pinstream produce --via-http` drives the HTTP leg: 200 records per stream (5 %
/// malformed) through `pinstream ingest` as a gateway client would send them; the report
/// gives requests/s, records/s and p50/p99 request latency, and every record lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_via_http_reports_requests_records_and_latency_and_every_record_lands_once() {
    let Fixture {
        dir: _dir,
        root,
        settings,
        mut ingest,
        addr,
        stop,
        running,
    } = ingest_beside_a_worker("via-http", 1).await;
    let mut cmd = support::pinstream();
    cmd.args(["produce", "--via-http", &format!("http://{addr}/test")])
        .args([
            "--count",
            "200",
            "--dirty-rate",
            "0.05",
            "--rate",
            "600",
            "--report",
            "json",
        ])
        .env("PINSTREAM_INGEST_API_KEY", API_KEY);
    for (kind, name) in &settings.streams {
        cmd.args(["--stream", &format!("{kind}={name}")]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "produce --via-http: {} records in {:.1}s, {:.0} requests/s, {:.0} records/s, request latency p50 {} ms, p99 {} ms",
        r["sent"], r["elapsed_seconds"].as_f64().unwrap(), r["calls_per_second"].as_f64().unwrap(),
        r["records_per_second"].as_f64().unwrap(), r["put_records_latency"]["p50_ms"], r["put_records_latency"]["p99_ms"]
    );
    assert_eq!(
        (r["sent"].as_u64(), r["failed"].as_u64()),
        (Some(600), Some(0)),
        "{r}"
    );
    assert!(
        r["calls"].as_u64().unwrap() >= 3 && r["calls_per_second"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let (p50, p99) = (
        r["put_records_latency"]["p50_ms"].as_f64().unwrap(),
        r["put_records_latency"]["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{r}");
    support::wait_all_landed(&root, 200, "through the HTTP leg").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    support::assert_exactly_once(&root, 200, "through the HTTP leg").await;
    let rejects = support::count(&support::read_table(&root, "pin_rejects").await);
    assert!(rejects > 0, "the malformed ones arrived, as rejects");
    let _ = ingest.kill();
}
