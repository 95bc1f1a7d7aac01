//! Downstream: the real records are ingested (the pin file a second time in part, so the
//! tables hold duplicate `ind`s), then every report is compared with an independent
//! computation of the same question in plain Python over the raw NDJSON (`reports.py`),
//! and with the reference numbers in `docs/queries.md`. `pinstream
//! query` is driven as a user would: output formats, time travel, a bad query's exit code.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::producer::{self, ProduceOptions, Source};
use pinstream::read::{query, report};
use pinstream::worker;
use tokio_util::sync::CancellationToken;

use crate::support;

/// Replays the sample records of `kinds` (`count` per stream, or all).
async fn replay(
    aws: &pinstream::aws::AwsClients,
    settings: &pinstream::config::Settings,
    kinds: &[Kind],
    count: Option<u64>,
) -> u64 {
    let files = kinds
        .iter()
        .map(|k| (*k, support::sample_data().join(format!("{k}.ndjson"))))
        .collect();
    replay_counted(aws, settings, files, count).await
}

/// Replays whole NDJSON files.
async fn replay_files(
    aws: &pinstream::aws::AwsClients,
    settings: &pinstream::config::Settings,
    files: Vec<(Kind, std::path::PathBuf)>,
) -> u64 {
    replay_counted(aws, settings, files, None).await
}

async fn replay_counted(
    aws: &pinstream::aws::AwsClients,
    settings: &pinstream::config::Settings,
    files: Vec<(Kind, std::path::PathBuf)>,
    count: Option<u64>,
) -> u64 {
    let opts = ProduceOptions {
        source: Source::Replay {
            files: files.into_iter().collect(),
            looping: false,
        },
        count,
        ..support::produce_options(settings, 0, 0.0, 0)
    };
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap()
        .sent
}

/// `pinstream COMMAND --table-root ROOT`.
fn pinstream(command: &str, root: &std::path::Path) -> Command {
    let mut c = support::pinstream();
    c.arg(command).arg("--table-root").arg(root);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_match_an_independent_computation_and_query_works_as_a_cli() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique("reports"), dir.path(), "");
    support::create_streams(&aws, &settings, 2).await;
    assert_eq!(
        replay(&aws, &settings, &Kind::ALL, None).await,
        3675 + 11154 + 11154
    );
    let run = |s: pinstream::config::Settings| {
        let aws = aws.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(300),
                worker::run(s, aws, support::run_options(true), CancellationToken::new()),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    run(settings.clone()).await;
    let between_runs = chrono::Utc::now();
    // The first 1000 pins again, arriving later and with other values (a copy edited
    // upstream): duplicates of `ind` the reports must count once, keeping the row that
    // arrived first. A rule that kept the last row would put these values in the answers.
    let late = dir.path().join("pin-late-copy.ndjson");
    let text = std::fs::read_to_string(support::sample_data().join("pin.ndjson")).unwrap();
    let copies: Vec<String> = text
        .lines()
        .take(1000)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["category"] = "zz-late-copy".into();
            v["follower_count"] = "999M".into();
            v["poster_name"] = "Late Copy".into();
            v.to_string()
        })
        .collect();
    std::fs::write(&late, copies.join("\n") + "\n").unwrap();
    assert_eq!(
        replay_files(&aws, &settings, vec![(Kind::Pin, late)]).await,
        1000
    );
    let summary = run(settings.clone()).await;
    assert_eq!(summary.rows["pin"], 1000, "the duplicates landed as rows");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/reports.py");
    let python = support::run_python(&[script, support::sample_data()]);
    let expected: BTreeMap<String, Vec<Vec<String>>> = serde_json::from_str(&python).unwrap();

    let ctx = query::session(&settings.table_root, None).await.unwrap();
    let pins = query::run(
        &ctx,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT ind) AS d FROM pin",
    )
    .await
    .unwrap();
    assert_eq!(
        query::rows_as_strings(&pins).unwrap(),
        [["4675", "3675"]],
        "pin holds the duplicates"
    );
    let mut got = BTreeMap::new();
    for r in report::REPORTS {
        let batches = report::run(&ctx, r).await.unwrap();
        let names: Vec<_> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, r.columns, "{}: columns", r.name);
        let rows = query::rows_as_strings(&batches).unwrap();
        assert_eq!(
            rows, expected[r.name],
            "{}: the report differs from the independent computation",
            r.name
        );
        got.insert(r.name, rows);
    }
    // The reference numbers of docs/queries.md for the same records and definitions.
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(got["top-country"], [s(&["Anguilla", "15000000"])]);
    assert_eq!(
        got["median-followers-by-age-group"],
        [
            s(&["+50", "2000"]),
            s(&["18-24", "130000"]),
            s(&["25-35", "22000"]),
            s(&["36-50", "8000"])
        ]
    );
    assert_eq!(got["category-by-year"][0], s(&["2018", "christmas", "75"]));
    assert_eq!(
        got["category-by-age-group"][1],
        s(&["18-24", "tattoos", "194"])
    );
    assert_eq!(
        got["median-followers-by-join-year"],
        [
            s(&["2015", "163000"]),
            s(&["2016", "19000"]),
            s(&["2017", "4000"])
        ]
    );
    assert_eq!(
        got["category-by-country"][2],
        s(&["Algeria", "quotes", "92"])
    );

    // The CLI: formats.
    let sql =
        "SELECT ind, category FROM pin WHERE ind IN (1, 2) ORDER BY ind, _sequence_number LIMIT 2";
    let out = pinstream("query", dir.path())
        .args(["--format", "csv", sql])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(csv.lines().next(), Some("ind,category"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let out = pinstream("query", dir.path())
        .args(["--format", "json", sql])
        .output()
        .unwrap();
    let json: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["ind"], 1);
    let out = pinstream("query", dir.path())
        .args(["--format", "ndjson", sql])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = pinstream("report", dir.path())
        .args(["top-country"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| Anguilla") && table.contains("15000000") && table.contains("1 row"),
        "{table}"
    );
    let out = pinstream("report", dir.path())
        .args(["--list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        report::REPORTS.len()
    );

    // Time travel: version 1 of pin is the first commit of the first run, before the duplicates.
    let count_at = |as_of: &str| {
        let out = pinstream("query", dir.path())
            .args(["--format", "csv", "--as-of", as_of])
            .arg("SELECT COUNT(*) AS n FROM pin")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(count_at("0"), 0, "version 0 is the empty table");
    assert!(count_at("1") > 0 && count_at("1") <= 3675);
    assert_eq!(
        count_at(&chrono::Utc::now().to_rfc3339()),
        4675,
        "as of now: everything"
    );
    assert_eq!(
        count_at(&between_runs.to_rfc3339()),
        3675,
        "as of a time between the two runs: the first run's rows only"
    );

    // A bad query: DataFusion's message, exit code 2, no panic.
    let out = pinstream("query", dir.path())
        .args(["SELECT nope FROM pin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nope") && !err.contains("panicked"), "{err}");
    let out = pinstream("query", dir.path())
        .args(["SELEC 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pinstream("query", dir.path())
        .args(["--as-of", "99999", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
