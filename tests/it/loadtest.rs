//! `pinstream loadtest` end to end on a stack of its own (a second port range): it measures
//! worker processes from outside and proves exactly once. A short smoke run; the figures in
//! the README come from longer runs of the same command.

#[test]
fn loadtest_reports_throughput_latency_memory_and_exactly_once() {
    let dir = crate::support::tempdir();
    // Its own emulators, beside the suite's: the base port of the suite's stack + 10.
    let base: u16 = std::env::var("PINSTREAM_STACK_PORT_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14566);
    let out = crate::support::pinstream()
        .args([
            "loadtest",
            "--duration",
            "3s",
            "--rate",
            "600",
            "--shards",
            "1",
            // Two workers: one starts first and takes every lease, the other steals its
            // share, so shards move between processes mid-run (this caught a sink that
            // committed rejects from a stale snapshot and stalled for good).
            "--workers",
            "2",
            "--report",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("PINSTREAM_STACK_PORT_BASE", (base + 10).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The workers' own logs say why (they live in the run directory).
        let mut logs = String::new();
        for run in std::fs::read_dir(dir.path()).unwrap().flatten() {
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
        panic!("loadtest failed: {stderr}\n{logs}");
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let usage = r["worker_usage"].as_array().unwrap();
    assert_eq!(usage.len(), 2, "{r}");
    for u in usage {
        assert!(u["peak_rss_mib"].as_f64().unwrap() > 1.0, "{u}");
        assert!(u["cpu_seconds"].as_f64().unwrap() > 0.0, "{u}");
    }
}
