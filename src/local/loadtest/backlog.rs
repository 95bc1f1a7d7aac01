//! `pinstream loadtest --backlog N`: what the whole worker costs per record, measured from
//! outside as a user would, beside the original approach on the same records.
//!
//! Steps: generate N real-shaped pin records into a file; put them into a pin stream of
//! `--shards` shards (geo and user streams exist and stay empty); run one
//! `pinstream run --available-now` process and measure its CPU and peak memory (the
//! emulators are separate processes and not counted); check every record is in a table
//! exactly once; then clean the same file with the pandas baseline
//! (`benches/pandas_baseline.py`: pandas and `write_deltalake`) and measure that process the
//! same way. The report gives both in CPU seconds per million records and their ratio.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::measure::{run_measured, ProcessCost};
use super::{analyse, io, LoadtestError};
use crate::clean::Kind;
use crate::config::TableRoot;
use crate::local::session::Session;
use crate::producer::generator::Generator;
use crate::producer::{self, ProduceOptions, Source};
use crate::read::query;

#[derive(Debug, Clone)]
pub struct BacklogOptions {
    /// Pin records in the backlog.
    pub records: u64,
    /// Shards of the pin stream.
    pub shards: i32,
    pub dirty_rate: f64,
    pub data_dir: PathBuf,
    /// Extra TOML for the worker's configuration.
    pub worker_config: String,
    /// Run the pandas baseline on the same records (when Python and pandas are there).
    pub baseline: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BacklogReport {
    pub records: u64,
    pub shards: i32,
    /// The `pinstream run --available-now` process.
    pub worker: ProcessCost,
    pub worker_cpu_seconds_per_million: f64,
    /// Rows the worker wrote to the cleaned pin table (the rest went to `pin_rejects`).
    pub worker_rows: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub delta_files: u64,
    pub delta_bytes: u64,
    /// The pandas + `write_deltalake` process on the same records, if it ran.
    pub baseline: Option<ProcessCost>,
    pub baseline_cpu_seconds_per_million: Option<f64>,
    /// Baseline CPU / worker CPU.
    pub ratio: Option<f64>,
    /// Rows the baseline wrote to its cleaned table: the same as `worker_rows` when both
    /// clean by the same rules.
    pub baseline_rows: Option<u64>,
    /// Where the baseline's CPU went, step by step, as it measured itself.
    pub baseline_steps: Option<BaselineSteps>,
    /// Why the baseline did not run.
    pub baseline_skipped: Option<String>,
}

/// The pandas baseline's CPU seconds per step, from its own output (`cpu_seconds`): the
/// interpreter and imports, reading the file, cleaning, writing the Delta tables. They add
/// up to a little less than the process's CPU measured from outside (its exit is not in
/// them).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BaselineSteps {
    pub start: f64,
    pub read: f64,
    pub clean: f64,
    pub write: f64,
}

/// What the baseline prints: one JSON line.
#[derive(serde::Deserialize)]
struct BaselineOutput {
    rows: u64,
    cpu_seconds: BaselineSteps,
}

pub async fn run(
    opts: BacklogOptions,
    interrupt: CancellationToken,
) -> Result<BacklogReport, LoadtestError> {
    let session = Session::start("loadtest", &opts.data_dir).await?;
    let res = run_in(&opts, &session, interrupt).await;
    session.stop().await;
    res
}

async fn run_in(
    opts: &BacklogOptions,
    session: &Session,
    interrupt: CancellationToken,
) -> Result<BacklogReport, LoadtestError> {
    let (stack, run_dir) = (&session.stack, &session.run_dir);
    let aws = stack
        .aws()
        .await
        .map_err(super::super::session::SessionError::from)?;
    let streams = session.streams();
    for (kind, s) in &streams {
        let shards = if *kind == Kind::Pin { opts.shards } else { 1 };
        crate::kinesis::ensure_stream(&aws.kinesis, s, shards, Duration::from_secs(60)).await?;
    }
    let file = run_dir.join("backlog-pin.ndjson");
    write_backlog(&file, opts.records, opts.dirty_rate)?;
    put_backlog(opts, &aws, &streams, &file, &interrupt).await?;

    let tables = session.tables();
    let (config, _) = super::write_worker_config(
        &opts.worker_config,
        crate::config::ReadMode::Polling,
        false,
        &session.run_id,
        run_dir,
        &tables,
        &streams,
    )?;
    eprintln!(
        "loadtest: draining {} pin records from {} shards with one `pinstream run --available-now`...",
        opts.records, opts.shards
    );
    let worker = drain(&config, &stack.env, run_dir).await?;
    let analysis = analyse(&tables).map_err(LoadtestError::Io)?;
    let pin_table = query::open(&TableRoot::Local(tables.clone()), Kind::Pin.name(), None)
        .await
        .ok()
        .flatten();

    let mut report = BacklogReport {
        records: opts.records,
        shards: opts.shards,
        worker_cpu_seconds_per_million: per_million(worker.cpu_seconds, opts.records),
        worker,
        worker_rows: pin_table.as_ref().map_or(0, super::rows_in),
        missing: opts.records.saturating_sub(analysis.distinct),
        duplicates: analysis.duplicates,
        delta_files: analysis.files,
        delta_bytes: analysis.bytes,
        ..Default::default()
    };
    if !opts.baseline {
        report.baseline_skipped = Some("--no-baseline".into());
        return Ok(report);
    }
    match baseline_command(stack.dir(), &file, &run_dir.join("baseline-tables")) {
        Err(why) => report.baseline_skipped = Some(why),
        Ok(cmd) => {
            eprintln!("loadtest: cleaning the same records with the pandas baseline...");
            let (output, cost) = run_baseline(cmd, run_dir).await?;
            report.baseline_cpu_seconds_per_million =
                Some(per_million(cost.cpu_seconds, opts.records));
            report.ratio = Some(cost.cpu_seconds / report.worker.cpu_seconds.max(1e-9));
            report.baseline_rows = Some(output.rows);
            report.baseline_steps = Some(output.cpu_seconds);
            report.baseline = Some(cost);
        }
    }
    Ok(report)
}

fn per_million(cpu_seconds: f64, records: u64) -> f64 {
    cpu_seconds / (records.max(1) as f64 / 1e6)
}

/// The backlog: `records` generated pin records (seeded), one record's data a line.
fn write_backlog(path: &Path, records: u64, dirty_rate: f64) -> Result<(), LoadtestError> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).map_err(io("creating the backlog file"))?;
    let mut out = std::io::BufWriter::new(file);
    let mut generator = Generator::new(7, dirty_rate);
    for _ in 0..records {
        let (_, triple) = generator.next_triple();
        let (_, pin) = &triple[0];
        out.write_all(pin)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(io("writing the backlog file"))?;
    }
    out.flush().map_err(io("writing the backlog file"))
}

/// Puts the backlog into the pin stream, flat out, before any worker runs.
async fn put_backlog(
    opts: &BacklogOptions,
    aws: &crate::aws::AwsClients,
    streams: &[(Kind, String)],
    file: &Path,
    interrupt: &CancellationToken,
) -> Result<(), LoadtestError> {
    let produce = ProduceOptions {
        streams: streams.iter().cloned().collect(),
        source: Source::Replay {
            files: vec![(Kind::Pin, file.to_owned())],
            looping: false,
        },
        rate: None,
        count: None,
        duration: None,
        partition_key: None,
        in_flight: 4,
        progress_every: Some(Duration::from_secs(5)),
        aggregate: None,
    };
    let produced = producer::produce(aws.kinesis.clone(), produce, interrupt.clone()).await?;
    if interrupt.is_cancelled() {
        return Err(LoadtestError::Interrupted);
    }
    if produced.sent != opts.records {
        return Err(LoadtestError::Io(format!(
            "put {} of the backlog's {} records",
            produced.sent, opts.records
        )));
    }
    eprintln!(
        "loadtest: put {} records in {:.1}s",
        produced.sent, produced.elapsed_seconds
    );
    Ok(())
}

/// Runs one worker with `--available-now` to its end, measured; its log goes to
/// `worker.log` in the run directory.
async fn drain(
    config: &Path,
    env: &[(String, String)],
    run_dir: &Path,
) -> Result<ProcessCost, LoadtestError> {
    let log_path = run_dir.join("worker.log");
    let log = std::fs::File::create(&log_path).map_err(io("creating the worker log"))?;
    let exe = std::env::current_exe().map_err(io("locating the pinstream binary"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--available-now")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let (status, cost) = run_measured(cmd).await.map_err(io("running the worker"))?;
    if !status.success() {
        return Err(LoadtestError::Io(format!(
            "the worker exited with {status}; see {}",
            log_path.display()
        )));
    }
    Ok(cost)
}

/// `python benches/pandas_baseline.py FILE OUT` with the local stack's Python (which has
/// pandas and deltalake), or why it cannot run.
fn baseline_command(
    infra_local: &Path,
    records: &Path,
    out: &Path,
) -> Result<tokio::process::Command, String> {
    let python = infra_local.join(".venv/bin/python");
    // infra/local is two levels below the checkout's root.
    let root = infra_local
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("no checkout around {}", infra_local.display()))?;
    let script = root.join("benches").join("pandas_baseline.py");
    if !python.is_file() {
        return Err(format!("no Python environment at {}", python.display()));
    }
    if !script.is_file() {
        return Err(format!("no baseline script at {}", script.display()));
    }
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).arg(records).arg(out);
    Ok(cmd)
}

/// Runs the baseline, measured; returns what it printed (rows written, CPU per step).
/// Its output and errors go to `baseline.out` and `baseline.log` in the run directory.
async fn run_baseline(
    mut cmd: tokio::process::Command,
    run_dir: &Path,
) -> Result<(BaselineOutput, ProcessCost), LoadtestError> {
    let (out, log) = (run_dir.join("baseline.out"), run_dir.join("baseline.log"));
    let create = |p: &Path| std::fs::File::create(p).map_err(io("creating the baseline's output"));
    cmd.stdout(create(&out)?).stderr(create(&log)?);
    let (status, cost) = run_measured(cmd)
        .await
        .map_err(io("running the pandas baseline"))?;
    if !status.success() {
        return Err(LoadtestError::Io(format!(
            "the pandas baseline exited with {status}; see {}",
            log.display()
        )));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let output = serde_json::from_str::<BaselineOutput>(text.trim())
        .map_err(|e| LoadtestError::Io(format!("the pandas baseline printed `{text}`: {e}")))?;
    Ok((output, cost))
}

/// The report as text.
pub fn to_text(r: &BacklogReport) -> String {
    let mut s = format!(
        "loadtest: a backlog of {} pin records in {} shards, drained by one `pinstream run --available-now`\n  worker     {:.2} CPU s ({:.2} per million records), peak RSS {:.1} MiB, {:.1} s wall\n  delta      {} rows cleaned, {} files, {:.1} MiB\n  exactly once: {} missing, {} duplicated\n",
        r.records,
        r.shards,
        r.worker.cpu_seconds,
        r.worker_cpu_seconds_per_million,
        r.worker.peak_rss_mib,
        r.worker.wall_seconds,
        r.worker_rows,
        r.delta_files,
        r.delta_bytes as f64 / (1 << 20) as f64,
        r.missing,
        r.duplicates,
    );
    match (&r.baseline, r.baseline_cpu_seconds_per_million, r.ratio) {
        (Some(b), Some(per_million), Some(ratio)) => s.push_str(&format!(
            "  pandas     {:.2} CPU s ({:.2} per million records), peak RSS {:.1} MiB, {:.1} s wall, {} rows cleaned (pandas + write_deltalake, from a file)\n  ratio      the worker used {:.1}x less CPU than the pandas baseline\n",
            b.cpu_seconds, per_million, b.peak_rss_mib, b.wall_seconds, r.baseline_rows.unwrap_or(0), ratio
        )),
        _ => s.push_str(&format!(
            "  pandas     not run: {}\n",
            r.baseline_skipped.as_deref().unwrap_or("unknown")
        )),
    }
    if let Some(steps) = &r.baseline_steps {
        s.push_str(&format!(
            "  by step    pandas spent {:.2} s starting (Python, importing pandas, pyarrow and deltalake), {:.2} s reading, {:.2} s cleaning, {:.2} s writing\n",
            steps.start, steps.read, steps.clean, steps.write
        ));
    }
    s
}
