//! `pinstream loadtest` end to end on stacks of their own (other port ranges): it measures
//! worker processes from outside and proves exactly once, also while workers are killed and
//! shards split (`--chaos`). Short runs; the figures in the README come from longer runs of
//! the same command.

/// Runs `pinstream loadtest` with `args` on its own emulators (on a free port range the
/// stack script picks) and returns its JSON report, after checking with this suite's own reader that
/// the tables hold exactly `produced` distinct records, none twice (not only the load
/// test's count); panics with the workers' logs if it fails.
fn loadtest(args: &[&str]) -> serde_json::Value {
    let dir = crate::support::tempdir();
    let report = run_with_json_report(args, dir.path());
    let produced = report["produced"].as_u64().unwrap() as usize;
    let distinct = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(independent_count(&tables_of_the_run(dir.path())));
    assert_eq!(
        distinct, produced,
        "records in the tables, read independently: {report}"
    );
    report
}

/// `pinstream loadtest ARGS --report json` with its data under `data_dir`, on a free port
/// range; its report, or a panic with its output and the workers' logs.
fn run_with_json_report(args: &[&str], data_dir: &std::path::Path) -> serde_json::Value {
    let out = crate::support::pinstream()
        .arg("loadtest")
        .args(args)
        .args(["--report", "json", "--data-dir"])
        .arg(data_dir)
        .env("PINSTREAM_STACK_PORT_BASE", "auto")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("loadtest failed: {stderr}\n{}", worker_logs(data_dir));
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The tables of the one load test run under `data_dir`.
fn tables_of_the_run(data_dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("loadtest-"))
        .expect("the run directory")
        .path()
        .join("tables")
}

/// Distinct records over the six tables, each kind's cleaned and rejects tables together;
/// panics on a record found twice.
async fn independent_count(root: &std::path::Path) -> usize {
    let mut total = 0;
    for kind in pinstream::clean::Kind::ALL {
        let mut keys =
            crate::support::key_counts(&crate::support::read_table(root, kind.name()).await);
        for (k, n) in crate::support::key_counts(
            &crate::support::read_table(root, kind.rejects_table()).await,
        ) {
            *keys.entry(k).or_insert(0) += n;
        }
        let twice = keys.values().filter(|n| **n > 1).count();
        assert_eq!(twice, 0, "{kind}: records twice");
        total += keys.len();
    }
    total
}

/// The last 40 lines of every worker log under the run directory.
fn worker_logs(dir: &std::path::Path) -> String {
    let mut logs = String::new();
    for run in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().ends_with(".log") {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                logs.push_str(&format!("--- {}\n", f.path().display()));
                for l in tail.into_iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
        }
    }
    logs
}

/// The fault run: 2 workers, one killed with SIGKILL (and replaced) every 4 s, a shard of
/// every stream split halfway, workers compacting every 3 s, 5 % of the answers from
/// Kinesis and DynamoDB delayed, swallowed or reset on the way; every record exactly once
/// and every closed shard read to its end.
#[test]
fn loadtest_chaos_kills_workers_and_splits_shards_without_losing_or_doubling_a_record() {
    let r = loadtest(&[
        "--duration",
        "16s",
        "--rate",
        "300",
        "--shards",
        "1",
        "--workers",
        "2",
        "--chaos",
        "--kill-every",
        "4s",
        "--split",
        "--network-faults",
        "0.05",
    ]);
    let produced = r["produced"].as_u64().unwrap();
    assert!(produced >= 3000, "about 300 rec/s for 16 s: {r}");
    assert_eq!(r["committed"].as_u64(), Some(produced), "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert!(r["chaos"]["kills"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(r["chaos"]["splits"].as_u64(), Some(3), "{r}");
    let network = r["chaos"]["network"].as_array().unwrap();
    assert_eq!(
        network.len(),
        2,
        "Kinesis and DynamoDB behind fault proxies: {r}"
    );
    let faults = |kind: &str| -> u64 { network.iter().map(|n| n[kind].as_u64().unwrap()).sum() };
    assert!(
        faults("swallowed") + faults("reset") >= 2 && faults("delayed") >= 2,
        "answers were swallowed, reset and delayed: {r}"
    );
    assert_eq!(r["unfinished_closed_shards"], serde_json::json!([]), "{r}");
    assert_eq!(
        r["worker_usage"].as_array().unwrap().len(),
        2 + r["chaos"]["kills"].as_u64().unwrap() as usize,
        "every worker measured, killed ones too: {r}"
    );
}

#[test]
fn loadtest_reports_throughput_latency_memory_and_exactly_once() {
    // Two workers: one starts first and takes every lease, the other steals its share, so
    // shards move between processes mid-run (this caught a sink that committed rejects
    // from a stale snapshot and stalled for good).
    let r = loadtest(&[
        "--duration",
        "3s",
        "--rate",
        "600",
        "--shards",
        "1",
        "--workers",
        "2",
    ]);
    let produced = r["produced"].as_u64().unwrap();
    assert!(produced >= 1500, "about 600 rec/s for 3 s: {r}");
    assert_eq!(r["committed"].as_u64(), Some(produced), "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(r["latency_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["latency_p99_ms"].as_f64() >= r["latency_p50_ms"].as_f64(),
        "{r}"
    );
    assert!(r["delta_files"].as_u64().unwrap() > 0 && r["delta_bytes"].as_u64().unwrap() > 0);
    // Read delay, scraped from the workers' histograms: polling waits up to one poll.
    assert_eq!(r["reader"], "polling");
    assert!(r["read_delay_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["read_delay_p99_ms"].as_f64() >= r["read_delay_p50_ms"].as_f64(),
        "{r}"
    );
    // The lease table's cost, from the workers' own counts of consumed capacity: every
    // worker scanned and renewed, so both are above zero.
    assert!(
        r["dynamodb_read_units_per_shard_hour"].as_f64().unwrap() > 0.0
            && r["dynamodb_write_units_per_shard_hour"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let usage = r["worker_usage"].as_array().unwrap();
    assert_eq!(usage.len(), 2, "{r}");
    for u in usage {
        // A worker process (tokio, the AWS SDK, delta-rs) cannot peak below ~20 MiB; under
        // 512 MiB it keeps the memory budget.
        let rss = u["peak_rss_mib"].as_f64().unwrap();
        assert!(rss > 20.0 && rss < 512.0, "{u}");
        assert!(u["cpu_seconds"].as_f64().unwrap() > 0.0, "{u}");
    }
}

/// The fan-out reader on kinesis-local (slow to store records: a low rate): every record
/// once, and the read delay measured the same way as polling's.
#[test]
fn loadtest_reads_by_fan_out_on_kinesis_local_and_reports_the_read_delay() {
    let r = loadtest(&[
        "--reader",
        "fan-out",
        "--duration",
        "4s",
        "--rate",
        "60",
        "--shards",
        "1",
        "--workers",
        "1",
    ]);
    assert_eq!(r["reader"], "fan-out", "{r}");
    let produced = r["produced"].as_u64().unwrap();
    assert!(produced >= 150, "about 60 rec/s for 4 s: {r}");
    assert_eq!(r["committed"].as_u64(), Some(produced), "{r}");
    let (p50, p99) = (
        r["read_delay_p50_ms"].as_f64().unwrap(),
        r["read_delay_p99_ms"].as_f64().unwrap(),
    );
    // kinesis-local pushes an event every second: records wait up to about that long (a
    // busy machine adds to it).
    assert!(p50 > 0.0 && p99 >= p50 && p99 < 5_000.0, "{r}");
}

/// `loadtest --backlog`: the drain benchmark on a small backlog with malformed records.
/// The worker drains it exactly once (checked again here with this suite's own reader),
/// its CPU and memory are measured from outside, and the pandas baseline cleans the same
/// records to the same number of rows, so the ratio compares equal work.
#[test]
fn a_backlog_is_drained_once_and_measured_beside_the_pandas_baseline() {
    let dir = crate::support::tempdir();
    let args = ["--backlog", "3000", "--shards", "3", "--dirty-rate", "0.02"];
    let r = run_with_json_report(&args, dir.path());
    assert_eq!(r["records"], 3000, "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let rows = r["worker_rows"].as_u64().unwrap();
    assert!(
        (2800..3000).contains(&rows),
        "about 2 % of the records are malformed and rejected: {r}"
    );
    assert_eq!(
        r["baseline_rows"].as_u64(),
        Some(rows),
        "the baseline cleans the same records to the same rows: {r}"
    );
    for who in ["worker", "baseline"] {
        let cost = &r[who];
        assert!(cost["cpu_seconds"].as_f64().unwrap() > 0.0, "{who}: {r}");
        assert!(cost["peak_rss_mib"].as_f64().unwrap() > 5.0, "{who}: {r}");
    }
    assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    // The baseline's own account of its CPU, step by step: every step took some, and
    // together they are what was measured from outside, less the exit.
    let steps = &r["baseline_steps"];
    let mut spent = 0.0;
    for step in ["start", "read", "clean", "write"] {
        let s = steps[step].as_f64().unwrap_or(-1.0);
        assert!(s > 0.0, "{step}: {r}");
        spent += s;
    }
    let measured = r["baseline"]["cpu_seconds"].as_f64().unwrap();
    assert!(
        spent <= measured + 0.05 && spent >= measured * 0.5,
        "the steps add up to {spent} s, measured {measured} s: {r}"
    );
    let distinct = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(independent_count(&tables_of_the_run(dir.path())));
    assert_eq!(
        distinct, 3000,
        "records in the tables, read independently: {r}"
    );
}
