//! Stopping a worker process: a second signal exits at once (130), and a worker that cannot
//! finish its graceful stop (here: a recovery stalled for a minute) is gone within
//! `--shutdown-timeout` anyway, saying so.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinstream::lease::LeaseTable;

use crate::support;

/// A `pinstream run` child whose first recovery stalls for 60 s, once it holds a lease
/// (its take happened; the stall is in progress). Returns the child and its log path.
async fn stalled_worker(
    name: &str,
    extra: &[&str],
) -> (support::KillOnDrop, std::path::PathBuf, tempfile::TempDir) {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let settings = support::settings(&support::unique(name), &dir.path().join("tables"), "");
    support::create_streams(&aws, &settings, 1).await;
    let log = dir.path().join("w.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinstream"));
    cmd.args(["run", "--app", &settings.application, "--table-root"])
        .arg(dir.path().join("tables"))
        .args(["--worker-id", "stalled", "--fault", "recover:1:stall=60s"])
        .args(extra);
    for (k, s) in &settings.streams {
        cmd.args(["--stream", &format!("{k}={s}")]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(support::KillOnDrop::new)
        .unwrap();
    let leases = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    support::wait_for(
        "a lease taken (its recovery stalls)",
        Duration::from_secs(30),
        || async {
            let all = leases.scan().await.ok()?;
            all.iter()
                .any(|l| l.owner.as_deref() == Some("stalled"))
                .then_some(())
        },
    )
    .await;
    (child, log, dir)
}

fn term(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130() {
    let (mut child, log, _dir) = stalled_worker("sig2", &[]).await;
    term(&child);
    // The first signal has landed when the worker says it is stopping gracefully.
    support::wait_for("the first signal handled", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("stopping gracefully").then_some(()) }
    })
    .await;
    let sent = Instant::now();
    term(&child);
    let status = support::wait_exit(
        &mut child,
        "exit after the second signal",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "at once: {:?}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_stop_gracefully_exits_within_the_shutdown_timeout() {
    let (mut child, log, _dir) = stalled_worker("sigtimeout", &["--shutdown-timeout", "2s"]).await;
    let sent = Instant::now();
    term(&child);
    let status = support::wait_exit(
        &mut child,
        "exit after the shutdown timeout",
        Duration::from_secs(30),
    )
    .await;
    let took = sent.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("shutdown-timeout"), "says why: {text}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "within the timeout plus the release grace, not the 60 s stall: {took:?}"
    );
}
