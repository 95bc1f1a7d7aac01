//! The binary as a user meets it: help, and bad configuration refused at start.

use crate::support::pinstream;

#[test]
fn help_explains_every_command() {
    let out = pinstream().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "produce", "demo"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = pinstream().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--app",
        "--stream",
        "--lease-table",
        "--table-root",
        "--available-now",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}: {text}");
    }
}

#[test]
fn an_unknown_config_key_is_refused_by_name_with_exit_code_2() {
    let dir = crate::support::tempdir();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "application = \"x\"\n[flush]\nmax_batch_rowz = 10\n").unwrap();
    let out = pinstream()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_batch_rowz") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn a_bad_flag_value_is_refused_before_any_work() {
    let out = pinstream()
        .args(["run", "--stream", "pins=x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KIND is one of pin, geo, user"));
    let out = pinstream()
        .args(["run", "--table-root", "gs://bucket/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("table_root"));
}

#[tokio::test]
async fn status_lists_every_lease_as_text_and_json() {
    let aws = crate::support::aws().await;
    let table_name = crate::support::unique("status-leases");
    let table = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &table_name);
    table
        .ensure_exists(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let cp = pinstream::lease::Checkpoint::TrimHorizon;
    table
        .create_if_absent("pin", "shardId-000000000000", &[], &cp)
        .await
        .unwrap();
    table
        .create_if_absent(
            "pin",
            "shardId-000000000001",
            &["shardId-000000000000".to_owned()],
            &cp,
        )
        .await
        .unwrap();
    table
        .take("pin:shardId-000000000000", "worker-a", 0, None)
        .await
        .unwrap();

    let out = pinstream()
        .args(["status", "--json", "--lease-table", &table_name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leases = v.as_array().unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0]["owner"], "worker-a");
    assert_eq!(leases[0]["checkpoint"], "TRIM_HORIZON");
    assert_eq!(leases[1]["parent_shard_ids"][0], "shardId-000000000000");

    let out = pinstream()
        .args(["status", "--lease-table", &table_name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OWNER")
            && text.contains("BYTES/S")
            && text.contains("worker worker-a: 1 leases")
            && text.contains("2 leases, 1 owned by 1 workers"),
        "{text}"
    );
}

/// `maintain` on tables with data: every table checkpointed; `--vacuum 7d` deletes a data
/// file the table never committed once it is older than the retention (a lost compaction's
/// or a dead writer's output), keeps a younger one and every file the table references
/// however old, and the rows stay; a retention under the tables' minimum is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_checkpoints_every_table_and_vacuum_respects_retention() {
    use pinstream::clean::Kind;
    use pinstream::producer::generator::Generator;
    let dir = crate::support::tempdir();
    let root = dir.path().join("tables");
    let root_s = root.to_string_lossy().into_owned();
    let settings = crate::support::settings("maint", &root, "");
    let mut table =
        pinstream::delta::open_or_create(&settings.table_root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
    let (mut g, mut last) = (Generator::new(3, 0.0), 0);
    for i in 1..=3 {
        let batch = crate::support::pin_batch(&mut g, "shardId-v", i, 10);
        crate::support::append_as(&mut table, batch, "shardId-v", &mut last).await;
    }
    let out = pinstream()
        .args(["maintain", "--json", "--table-root", &root_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6, "six tables");
    for t in [
        "pin",
        "geo",
        "user",
        "pin_rejects",
        "geo_rejects",
        "user_rejects",
    ] {
        assert!(
            root.join(t).join("_delta_log/_last_checkpoint").is_file(),
            "{t} checkpointed"
        );
    }
    let pin = root.join("pin");
    let committed: Vec<std::path::PathBuf> = std::fs::read_dir(&pin)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(committed.len(), 3);
    let eight_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 86_400);
    let age = |p: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(eight_days_ago)
            .unwrap()
    };
    let (orphan_old, orphan_new) = (
        pin.join("part-orphan-old.parquet"),
        pin.join("part-orphan-new.parquet"),
    );
    std::fs::copy(&committed[0], &orphan_old).unwrap();
    std::fs::copy(&committed[0], &orphan_new).unwrap();
    age(&orphan_old);
    age(&committed[1]);
    let out = pinstream()
        .args([
            "maintain",
            "--json",
            "--vacuum",
            "7d",
            "--table-root",
            &root_s,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["table"], "pin");
    assert_eq!(v[0]["files_vacuumed"], 1, "{v}");
    assert!(
        !orphan_old.exists(),
        "an old file the table never committed is deleted"
    );
    assert!(
        orphan_new.exists(),
        "a younger one stays (it may be a commit in progress)"
    );
    assert!(
        committed.iter().all(|p| p.exists()),
        "committed files stay, however old"
    );
    assert_eq!(
        crate::support::count(&crate::support::read_table(&root, "pin").await),
        30
    );
    let out = pinstream()
        .args(["maintain", "--vacuum", "1h", "--table-root", &root_s])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a vacuum below the tables' 7-day minimum is refused: {err}"
    );
    assert!(
        err.to_lowercase().contains("retention"),
        "the refusal names the retention, not a flag error: {err}"
    );
}

/// A successful drain run, its logs piped: no ERROR line (delta-rs used to log one for every
/// table opened before it existed) and no colour codes (only a terminal gets them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_logs_no_error_and_no_colour_codes_when_piped() {
    let aws = crate::support::aws().await;
    let dir = crate::support::tempdir();
    let name = crate::support::unique("quiet");
    let root = dir.path().join("tables");
    let settings = crate::support::settings(&name, &root, "");
    crate::support::create_streams(&aws, &settings, 1).await;
    let opts = crate::support::produce_options(&settings, 91, 0.05, 50);
    pinstream::producer::produce(aws.kinesis.clone(), opts, Default::default())
        .await
        .unwrap();
    let mut cmd = pinstream();
    cmd.args([
        "run",
        "--available-now",
        "--app",
        &settings.application,
        "--table-root",
    ])
    .arg(&root);
    for (k, s) in &settings.streams {
        cmd.args(["--stream", &format!("{k}={s}")]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("committed"), "the info lines are there: {err}");
    assert!(
        !err.contains("ERROR"),
        "a successful run logs no ERROR line:\n{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes when piped:\n{err}"
    );
}

/// Without AWS credentials the worker says so in one line with the fix, not an SDK dump.
#[test]
fn missing_credentials_are_one_line_with_the_fix() {
    let dir = crate::support::tempdir();
    let out = pinstream()
        .args(["run", "--table-root"])
        .arg(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("no AWS credentials found") && lines[0].contains("AWS_PROFILE"),
        "{err}"
    );
    for dump in ["DispatchFailure", "SdkBody", "ConnectorError", "{"] {
        assert!(!err.contains(dump), "no SDK debug dump ({dump}): {err}");
    }
}

/// Every command that takes `--dirty-rate` refuses the same out-of-range values the same way
/// (demo and loadtest once clamped them silently), and `--rate` must be above zero.
#[test]
fn flag_values_are_checked_the_same_way_by_every_command() {
    for cmd in ["produce", "demo", "loadtest"] {
        let out = pinstream()
            .args([cmd, "--dirty-rate", "5"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--dirty-rate") && err.contains("from 0 to 1"),
            "{cmd}: {err}"
        );
    }
    for cmd in ["produce", "loadtest"] {
        let out = pinstream().args([cmd, "--rate", "0"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("above zero"),
            "{cmd}"
        );
    }
    let out = pinstream()
        .args(["produce", "--aggregate", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The first README command, as a new user runs it (small): the demo starts its own
/// emulators (here on a free port range the stack script picks), lands every record, prints the summary,
/// logs no ERROR and stops what it started. Then the next steps it prints are run as printed
/// (in a shell; `cargo run --` is this build's binary): they work on a machine with nothing
/// but the repository (the Python is the local stack's own).
#[test]
fn the_demo_lands_every_record_and_prints_the_summary() {
    let dir = crate::support::tempdir();
    let out = pinstream()
        .args(["demo", "--records", "200", "--data-dir"])
        .arg(dir.path())
        .env("PINSTREAM_STACK_PORT_BASE", "auto")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("records produced 600, landed 600"),
        "every record landed: {stdout}"
    );
    for table in [
        "pin",
        "geo",
        "user",
        "pin_rejects",
        "geo_rejects",
        "user_rejects",
    ] {
        assert!(
            stdout.contains(&format!("  {table} ")),
            "{table} in the summary: {stdout}"
        );
    }
    assert!(!stderr.contains("ERROR"), "no ERROR line: {stderr}");
    assert!(
        stderr.contains("local-stack: stopped kinesalite"),
        "{stderr}"
    );
    let step = |label: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("the demo prints `{label}`: {stdout}"))
            .trim()
            .to_owned()
    };
    let read_back = step("read one back:");
    assert!(
        !read_back.starts_with("python3 "),
        "the stack's own Python, not the system's: {read_back}"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &read_back])
        .output()
        .unwrap();
    let pin_rows = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{read_back}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("  {:<14} {:>8}", "pin", pin_rows)),
        "the rows the summary counted: {pin_rows}\n{stdout}"
    );
    let query = step("query them:");
    let command = query.split("   (or:").next().unwrap().trim();
    let binary = env!("CARGO_BIN_EXE_pinstream");
    for cmd in [
        command.replacen("cargo run --", binary, 1),
        format!("{binary} report --list"),
    ] {
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
