//! `pinstream demo`: the whole job on embedded local defaults. Starts the local emulators
//! (kinesalite, dynalite), creates run-specific streams and lease table, produces
//! realistic records while a worker consumes them into Delta tables on local disk, waits
//! until every record has landed, prints a summary, and stops the emulators it started.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{FileConfig, FlushConfig, LeaseConfig, Overrides, Settings};
use crate::local::session::Session;
use crate::producer::{self, ProduceOptions, Source};
use crate::worker::{self, RunOptions, RunProgress};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Triples to produce (one record per stream each).
    pub records: u64,
    pub shards: i32,
    pub dirty_rate: f64,
    pub data_dir: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Stack(#[from] crate::local::stack::StackError),
    #[error(transparent)]
    Kinesis(#[from] crate::aws::ServiceError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Produce(#[from] crate::producer::ProduceError),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error("only {landed} of {sent} records landed within {timeout:?}")]
    Incomplete {
        landed: u64,
        sent: u64,
        timeout: Duration,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
}

impl DemoError {
    /// Fixable by the user as the message says (bad flags, an unwritable directory).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DemoError::Config(_) | DemoError::Session(super::session::SessionError::RunDir { .. })
        )
    }
}

pub async fn run(opts: DemoOptions, interrupt: CancellationToken) -> Result<(), DemoError> {
    let session = Session::start("demo", &opts.data_dir).await?;
    let res = run_in(&opts, &session, interrupt).await;
    session.stop().await;
    res
}

async fn run_in(
    opts: &DemoOptions,
    session: &Session,
    interrupt: CancellationToken,
) -> Result<(), DemoError> {
    let aws = session.stack.aws().await?;
    let settings = demo_settings(session)?;
    for stream in settings.streams.values() {
        crate::kinesis::ensure_stream(&aws.kinesis, stream, opts.shards, Duration::from_secs(30))
            .await?;
    }
    println!(
        "pinstream demo: streams {} ({} shards each), lease table {}",
        settings
            .streams
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        opts.shards,
        settings.lease_table
    );
    let started = Instant::now();
    let progress = Arc::new(RunProgress::default());
    let stop_worker = CancellationToken::new();
    let worker = tokio::spawn(worker::run(
        settings.clone(),
        aws.clone(),
        RunOptions {
            available_now: false,
            worker_id: worker::default_worker_id(),
            shutdown_deadline: Duration::from_secs(30),
            progress: progress.clone(),
            fault: None,
            health: None,
        },
        stop_worker.clone(),
    ));
    let report = produce(opts, &settings, &aws, &interrupt).await?;
    let landed = wait_until_landed(opts, &progress, report.sent, &worker, &interrupt).await;
    stop_worker.cancel();
    let summary = match worker.await {
        Ok(res) => res?,
        Err(e) => {
            return Err(crate::worker::WorkerError::Recovery {
                lease: "-".into(),
                message: format!("worker task failed: {e}"),
            }
            .into())
        }
    };
    landed?;
    print_summary(&report, &summary, started.elapsed(), &session.tables());
    Ok(())
}

/// The demo's settings: the session's streams and tables, a run-specific application,
/// commits every second and a short failover.
fn demo_settings(session: &Session) -> Result<Settings, crate::config::ConfigError> {
    let overrides = Overrides {
        application: Some(format!("pinstream-demo-{}", session.run_id)),
        streams: session.streams(),
        lease_table: None,
        table_root: Some(session.tables().to_string_lossy().into_owned()),
        reader_mode: None,
    };
    let file = FileConfig {
        flush: FlushConfig {
            max_batch_age: Some("1s".into()),
            ..FlushConfig::default()
        },
        lease: LeaseConfig {
            failover_time: Some("6s".into()),
            ..LeaseConfig::default()
        },
        ..FileConfig::default()
    };
    Settings::resolve(file, overrides)
}

async fn produce(
    opts: &DemoOptions,
    settings: &Settings,
    aws: &crate::aws::AwsClients,
    interrupt: &CancellationToken,
) -> Result<producer::ProduceReport, DemoError> {
    let produce_opts = ProduceOptions {
        streams: settings.streams.clone(),
        source: Source::Synthetic {
            seed: 42,
            dirty_rate: opts.dirty_rate,
        },
        rate: None,
        count: Some(opts.records),
        duration: None,
        partition_key: None,
        in_flight: 4,
        progress_every: Some(Duration::from_secs(2)),
        aggregate: None,
    };
    println!(
        "pinstream demo: producing {} records per stream while the worker consumes...",
        opts.records
    );
    let report = producer::produce(aws.kinesis.clone(), produce_opts, interrupt.clone()).await?;
    println!(
        "pinstream demo: produced {} records in {:.1}s ({:.0} rec/s), {} failed, {} throttled",
        report.sent,
        report.elapsed_seconds,
        report.records_per_second,
        report.failed,
        report.throttled
    );
    Ok(report)
}

/// Waits until every record sent is committed (cleaned or rejected), within the timeout.
async fn wait_until_landed<T>(
    opts: &DemoOptions,
    progress: &RunProgress,
    sent: u64,
    worker: &tokio::task::JoinHandle<T>,
    interrupt: &CancellationToken,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + opts.timeout;
    loop {
        let landed = progress.rows_committed.load(Ordering::Relaxed);
        if landed >= sent {
            return Ok(());
        }
        if interrupt.is_cancelled() {
            return Err(DemoError::Interrupted);
        }
        if Instant::now() >= deadline || worker.is_finished() {
            return Err(DemoError::Incomplete {
                landed,
                sent,
                timeout: opts.timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(
    report: &producer::ProduceReport,
    summary: &worker::RunSummary,
    elapsed: Duration,
    tables: &std::path::Path,
) {
    let landed: u64 = summary.rows.values().sum();
    println!();
    println!("pinstream demo: summary");
    println!("  {:<14} {:>8}", "table", "rows");
    for (table, rows) in &summary.rows {
        println!("  {table:<14} {rows:>8}");
    }
    let rejects: u64 = summary
        .rows
        .iter()
        .filter(|(t, _)| t.ends_with("_rejects"))
        .map(|(_, r)| r)
        .sum();
    println!(
        "  records produced {}, landed {landed} ({} cleaned, {rejects} rejected), {} Delta commits",
        report.sent,
        landed - rejects,
        summary.commits
    );
    println!(
        "  elapsed {:.1}s end to end, {:.0} records/s",
        elapsed.as_secs_f64(),
        landed as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let abs = std::fs::canonicalize(tables).unwrap_or(tables.to_owned());
    println!(
        "  Delta tables: {}/{{pin,geo,user,pin_rejects,geo_rejects,user_rejects}}",
        abs.display()
    );
    // The local stack's own Python has deltalake (the system's may not); absolute, so the
    // line works from any directory. deltalake's runtime threads abort the interpreter at
    // exit ("terminate called without an active exception"), so the line leaves at once
    // after printing.
    let python = crate::local::stack::locate()
        .ok()
        .map(|d| d.join(".venv/bin/python"))
        .filter(|p| p.is_file())
        .map(|p| std::path::absolute(&p).unwrap_or(p).display().to_string())
        .unwrap_or_else(|| "python3".into());
    println!("  read one back: {python} -c \"import os, deltalake; print(deltalake.DeltaTable('{}/pin').to_pyarrow_table().num_rows, flush=True); os._exit(0)\"", abs.display());
    println!(
        "  query them:    cargo run -- report category-by-country --table-root {}   (or: query \"SELECT ...\"; report --list)",
        abs.display()
    );
}
