//! The alerting rules and the dashboard the project ships (`infra/monitoring/`), tested with
//! the real tools from Debian's `prometheus` package: `promtool check rules` and `promtool
//! test rules` (series for every alert, firing and not), the metric names checked against
//! the worker's own list, and a real Prometheus server scraping a real worker whose shards
//! stop being read (a proxy swallows every GetRecords answer): the stall alert fires, then
//! resolves once answers come back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support;
use crate::swallow::SwallowingKinesis;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/monitoring")
}

/// promtool and prometheus on PATH, installed by the project's script when missing.
fn ensure_prometheus() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(monitoring().join("ensure-promtool.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "infra/monitoring/ensure-promtool.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// Every `pinstream_...` name in `text`, histogram series suffixes taken off.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("pinstream_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(name.to_owned());
        i = end;
    }
    names
}

#[test]
fn the_shipped_rules_pass_promtool_and_name_only_metrics_the_worker_exposes() {
    ensure_prometheus();
    let dir = monitoring();
    let checked = promtool(&["check", "rules", "pinstream-alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts-test.yml"], &dir.join("tests"));
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules = std::fs::read_to_string(dir.join("pinstream-alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("pinstream-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 20, "a panel per concern: {}", exprs.len());
    let known: Vec<&str> = pinstream::instrumentation::METRICS
        .iter()
        .map(|m| m.name)
        .collect();
    for (what, text) in [("rules", rules.clone()), ("dashboard", exprs.join("\n"))] {
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{what} name metrics");
        for name in names {
            assert!(
                known.contains(&name.as_str()),
                "the {what} name `{name}`, which the worker does not expose (src/instrumentation.rs)"
            );
        }
    }
    // Every alert's runbook is a section of docs/operations.md.
    let operations =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap()
            .to_lowercase();
    for line in rules.lines().filter(|l| l.contains("runbook:")) {
        let anchor = line.split('#').nth(1).unwrap().trim_end_matches('"');
        let heading = format!("### {}", anchor.replace('-', " "));
        assert!(
            operations.contains(&heading),
            "docs/operations.md has a `{heading}` section for {line}"
        );
    }
}

/// A port nothing listens on now (bound, then freed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The state of `alert` in Prometheus's `/api/v1/alerts` (`None`: not pending nor firing).
fn alert_state(prometheus: &str, alert: &str) -> Option<String> {
    let (_, body) = support::http_get(prometheus, "/api/v1/alerts")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == alert)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_the_stall_alert_while_get_records_goes_unanswered_then_resolves() {
    ensure_prometheus();
    let aws = support::aws().await;
    let proxy = SwallowingKinesis::start(&std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap()).await;
    let dir = support::tempdir();
    let root = dir.path().join("tables");
    let settings = support::settings(&support::unique("alert"), &root, "");
    support::create_streams(&aws, &settings, 1).await;
    // Reading stalls after 5 s; the lease is handed back at 10 s.
    let extra = "[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\nquiet_timeout = \"2s\"\nstall_timeout = \"5s\"\n[network.kinesis]\nattempt_timeout = \"1s\"\noperation_timeout = \"2s\"\n";
    let config = support::write_config(dir.path(), &settings, extra);
    let log = dir.path().join("w.log");
    let (_worker, worker) =
        support::spawn_served_run(&config, &log, &[("AWS_ENDPOINT_URL_KINESIS", &proxy.url)]).await;
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pinstream\n    static_configs:\n      - targets: ['{worker}']\n",
            monitoring().join("pinstream-alerts.yml").display()
        ),
    )
    .unwrap();
    let prometheus = format!("127.0.0.1:{}", free_port());
    let _server = support::KillOnDrop::new(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let p = prometheus.clone();
    support::wait_for(
        "Prometheus scraping the worker",
        Duration::from_secs(60),
        || {
            let up = support::http_get(
                &p,
                "/api/v1/query?query=pinstream_reader_stall_timeout_seconds",
            );
            async move {
                up.filter(|(c, b)| *c == 200 && b.contains("\"5\""))
                    .map(|_| ())
            }
        },
    )
    .await;
    assert_eq!(
        alert_state(&prometheus, "PinstreamShardNotRead"),
        None,
        "reading: quiet"
    );

    proxy.swallow_all();
    let p = prometheus.clone();
    support::wait_for("the stall alert firing", Duration::from_secs(60), || {
        let state = alert_state(&p, "PinstreamShardNotRead");
        async move { (state.as_deref() == Some("firing")).then_some(()) }
    })
    .await;
    proxy.answer_again();
    let p = prometheus.clone();
    support::wait_for("the stall alert resolved", Duration::from_secs(90), || {
        let state = alert_state(&p, "PinstreamShardNotRead");
        async move { state.is_none().then_some(()) }
    })
    .await;
}
