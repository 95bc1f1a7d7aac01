//! The binary as a user meets it: help, and bad configuration refused at start.

use std::process::Command;

fn pinstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pinstream"))
}

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
