//! The `pinstream` binary: parses the command line, sets up logging and signals, runs the
//! command, and maps errors to exit codes (2: the user's input, 1: everything else).

// One `unsafe` block in the binary: glibc's `mallopt` at start (`keep_freed_memory`). The
// library forbids unsafe code.
#![deny(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use pinstream::aws::AwsClients;
use pinstream::cli::{
    Cli, Command, ConsumersArgs, DemoArgs, IngestArgs, LoadtestArgs, LogFormat, MaintainArgs,
    PipelineArgs, ProduceArgs, QueryArgs, ReportArgs, ReportFormat, RunArgs, StatusArgs,
};
use pinstream::config::{ConfigError, FileConfig, Overrides, Settings};
use pinstream::local::demo;
use pinstream::{kinesis, producer, worker, Error};

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    // The demo prints its own progress; its workers' info lines would drown it.
    // Queries print results on stdout; only pinstream's own warnings belong on stderr
    // (delta-rs logs a handled time-travel miss as an ERROR). delta-rs's commit logs a
    // lost race as WARN and ERROR; pinstream's appends and compactions write their commit
    // entries at one version at a time and handle that race themselves (`delta::entry`), so
    // those lines are off. The AWS SDK's own warnings (each credential provider that found
    // nothing, with Debug dumps of its answers) are for debugging: pinstream says what failed
    // in one line of its own (`aws::ServiceError`); `PINSTREAM_LOG=aws_config=debug` shows them.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn,deltalake_core::kernel::transaction=off,aws_config=error,aws_smithy_runtime=error",
        Command::Query(_) | Command::Report(_) => "off,pinstream=warn",
        _ => "warn,pinstream=info,deltalake_core::kernel::transaction=off,aws_config=error,aws_smithy_runtime=error",
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}

/// Makes glibc's malloc keep the memory the worker frees for its next batches instead of
/// handing it back to the kernel and faulting it in again: blocks up to 32 MiB (glibc's own
/// ceiling for its moving threshold) come from the heap rather than fresh mappings, and up
/// to 256 MiB of free heap stays. By default glibc starts mapping at 128 KiB and trims
/// above twice that, so every batch's Arrow and Parquet buffers were new pages: about
/// 60,000 page faults and 0.5 of the 1.7 CPU s of a 200,000-record drain went to the kernel
/// (docs/benchmarks.md, "Memory"). The worker's memory stays bounded by
/// `flush.max_buffered_bytes`; this only decides whether freed pages are kept for reuse.
/// Setting one threshold alone turns glibc's adaptive thresholds off and is worse (up to
/// 180,000 faults), so both are set.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Logs go to stderr; `PINSTREAM_LOG` (tracing's env-filter syntax) overrides the level.
fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PINSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal: piped or redirected logs stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancelled on the first Ctrl-C or SIGTERM; a second signal exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            }
            if first {
                tracing::info!("stopping gracefully (a worker commits, checkpoints and releases its leases; ingest answers the requests in hand); signal again to exit now");
                t.cancel();
                first = false;
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

fn settings(p: PipelineArgs) -> Result<Settings, ConfigError> {
    settings_reading(p, None)
}

/// The settings, with `run --reader` (when given) winning over `reader.mode`.
fn settings_reading(
    p: PipelineArgs,
    reader_mode: Option<pinstream::config::ReadMode>,
) -> Result<Settings, ConfigError> {
    let file = match &p.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(
        file,
        Overrides {
            application: p.application,
            streams: p.streams,
            lease_table: p.lease_table,
            table_root: p.table_root,
            reader_mode,
        },
    )?;
    // Every S3 call of this process (delta-rs's storage) is bounded as `[network.s3]` says.
    pinstream::aws::set_s3_timeouts(&settings.network);
    Ok(settings)
}

/// Runs one command; signals stop it gracefully.
async fn dispatch(command: Command) -> Result<(), Error> {
    let shutdown = shutdown_on_signals();
    match command {
        Command::Run(args) => run_command(args, shutdown).await,
        Command::Ingest(args) => ingest_command(args, shutdown).await,
        Command::Produce(args) => produce_command(args, shutdown).await,
        Command::Status(args) => status_command(args).await,
        Command::Consumers(args) => consumers_command(args).await,
        Command::Maintain(args) => maintain_command(args).await,
        Command::Query(args) => query_command(args).await,
        Command::Report(args) => report_command(args).await,
        Command::Loadtest(args) => loadtest_command(args, shutdown).await,
        Command::Demo(args) => demo_command(args, shutdown).await,
    }
}

async fn run_command(args: RunArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let settings = settings_reading(args.pipeline, args.reader)?;
    let aws = AwsClients::from_env(&settings.network).await;
    let health = match args.metrics_addr {
        Some(addr) => {
            let handle = pinstream::telemetry::install_recorder().map_err(Error::Metrics)?;
            // Ready while the lease table answered within 3 renewal periods and commits
            // have not been failing for longer than the configured time.
            let health = std::sync::Arc::new(pinstream::telemetry::Health::new(
                settings.lease.failover_time,
                settings.flush.failing_commits_unready_after,
            ));
            pinstream::telemetry::serve(addr, handle, health.clone(), shutdown.clone())
                .await
                .map_err(|source| Error::Serve { addr, source })?;
            Some(health)
        }
        None => None,
    };
    let opts = worker::RunOptions {
        available_now: args.available_now,
        worker_id: args.worker_id.unwrap_or_else(worker::default_worker_id),
        shutdown_deadline: args.shutdown_timeout,
        progress: Default::default(),
        fault: args.fault,
        health,
    };
    let deadline = args.shutdown_timeout;
    let run = worker::run(settings, aws, opts, shutdown.clone());
    tokio::pin!(run);
    // Whatever the worker is doing when the signal comes (a slow recovery, a hung call), the
    // process is gone within the shutdown timeout (plus a few seconds for the releases);
    // leases it still holds then expire for the others after failover_time.
    let summary = tokio::select! {
        r = &mut run => r?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(deadline + Duration::from_secs(5)).await;
        } => return Err(Error::ShutdownTimeout(deadline)),
    };
    let rows: Vec<String> = summary
        .rows
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect();
    let (read_units, write_units) = pinstream::lease::table::consumed_units();
    tracing::info!(
        records_read = summary.records_read,
        committed = %rows.join(" "),
        commits = summary.commits,
        seconds = summary.elapsed.as_secs_f64(),
        dynamodb_read_units = read_units,
        dynamodb_write_units = write_units,
        "run finished"
    );
    Ok(())
}

async fn consumers_command(args: ConsumersArgs) -> Result<(), Error> {
    use pinstream::fanout::consumer;
    let settings = settings(args.pipeline)?;
    let aws = AwsClients::from_env(&settings.network).await;
    let name = args
        .consumer_name
        .unwrap_or_else(|| settings.reader.consumer_name.clone());
    let wait = Duration::from_secs(120);
    let mut all = Vec::new();
    for stream in settings.streams.values() {
        if args.register {
            consumer::ensure(&aws.kinesis, stream, &name, wait).await?;
        } else if args.deregister {
            consumer::deregister(&aws.kinesis, stream, &name, wait).await?;
        }
        all.extend(consumer::list(&aws.kinesis, stream).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("{:<32} {:<32} {:<10} ARN", "STREAM", "CONSUMER", "STATUS");
        for c in &all {
            println!("{:<32} {:<32} {:<10} {}", c.stream, c.name, c.status, c.arn);
        }
        println!("{} consumers", all.len());
    }
    Ok(())
}

async fn ingest_command(args: IngestArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let settings = settings(args.pipeline)?;
    let aws = AwsClients::from_env(&settings.network).await;
    let metrics = pinstream::telemetry::install_recorder().map_err(Error::Metrics)?;
    let opts = pinstream::ingest::IngestOptions {
        listen: args.listen,
        shutdown_timeout: args.shutdown_timeout,
    };
    pinstream::ingest::serve(&settings, aws.kinesis, metrics, opts, shutdown).await?;
    Ok(())
}

async fn produce_command(args: ProduceArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let settings = settings(args.pipeline)?;
    let aws = AwsClients::from_env(&settings.network).await;
    if let Some(shards) = args.create_streams {
        for stream in settings.streams.values() {
            kinesis::ensure_stream(&aws.kinesis, stream, shards, Duration::from_secs(60)).await?;
        }
    }
    let source = if args.from.is_empty() {
        producer::Source::Synthetic {
            seed: args.seed,
            dirty_rate: args.dirty_rate,
        }
    } else {
        producer::Source::Replay {
            files: args.from,
            looping: args.looping,
        }
    };
    let opts = producer::ProduceOptions {
        streams: settings.streams.clone(),
        source,
        rate: args.rate,
        count: args.count,
        duration: args.duration,
        partition_key: args.partition_key,
        in_flight: args.in_flight,
        progress_every: Some(Duration::from_secs(5)),
        aggregate: args.aggregate,
    };
    let destination = match &args.via_http {
        Some(url) => producer::send::Destination::Http(Box::new(
            producer::http::HttpGateway::new(url, args.api_key.clone()).map_err(|e| {
                Error::Config(ConfigError::Invalid {
                    key: "--via-http".into(),
                    message: e,
                    fix: "give the gateway's base URL with its stage".into(),
                })
            })?,
        )),
        None => producer::send::Destination::Kinesis(aws.kinesis.clone()),
    };
    let report = producer::produce_to(destination, opts, shutdown).await?;
    match args.report {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => {
            let l = &report.put_records_latency;
            println!(
                "sent {} records in {:.1}s ({:.0} rec/s): {} failed, {} throttled, {} retried, {} {} ({:.0}/s, latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms); per stream: {:?}",
                report.sent, report.elapsed_seconds, report.records_per_second, report.failed, report.throttled, report.retries, report.calls,
                if args.via_http.is_some() { "HTTP requests" } else { "PutRecords calls" }, report.calls_per_second,
                l.p50_ms, l.p95_ms, l.p99_ms, report.per_stream
            )
        }
    }
    if report.failed > 0 {
        return Err(Error::Unsent(report.failed));
    }
    Ok(())
}

async fn status_command(args: StatusArgs) -> Result<(), Error> {
    let settings = settings(args.pipeline)?;
    let aws = AwsClients::from_env(&settings.network).await;
    let table = pinstream::lease::LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    let leases = pinstream::read::status::leases(&table).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&pinstream::read::status::to_json(&leases))?
        );
    } else {
        println!("{}", pinstream::read::status::to_text(&leases));
    }
    Ok(())
}

async fn maintain_command(args: MaintainArgs) -> Result<(), Error> {
    let settings = settings(args.pipeline)?;
    let reports = pinstream::maintenance::run(&settings, args.vacuum).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in reports {
            println!("{:<14} version {:>6}  checkpointed  {} old log files removed  {} data files vacuumed", r.table, r.version, r.logs_removed, r.files_vacuumed);
        }
    }
    Ok(())
}

async fn query_command(args: QueryArgs) -> Result<(), Error> {
    let settings = settings(args.pipeline)?;
    let ctx =
        pinstream::read::query::session(&settings.table_root, args.output.as_of.as_ref()).await?;
    let batches = pinstream::read::query::run(&ctx, &args.sql).await?;
    pinstream::read::query::write(&batches, args.output.format, &mut std::io::stdout().lock())?;
    Ok(())
}

async fn report_command(args: ReportArgs) -> Result<(), Error> {
    if args.list {
        print!("{}", pinstream::read::report::list());
        return Ok(());
    }
    let report = pinstream::read::report::find(args.name.as_deref().unwrap_or_default())?;
    let settings = settings(args.pipeline)?;
    let ctx =
        pinstream::read::query::session(&settings.table_root, args.output.as_of.as_ref()).await?;
    let batches = pinstream::read::report::run(&ctx, report).await?;
    pinstream::read::query::write(&batches, args.output.format, &mut std::io::stdout().lock())?;
    Ok(())
}

async fn loadtest_command(args: LoadtestArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let worker_config = match &args.worker_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?;
            // Refuse bad keys now, not in every worker.
            FileConfig::parse(&text, path)?;
            text
        }
        None => String::new(),
    };
    if let Some(records) = args.backlog {
        return backlog_command(args, records, worker_config, shutdown).await;
    }
    let opts = pinstream::local::loadtest::LoadtestOptions {
        shards: args.shards,
        rate: args.rate,
        duration: args.duration,
        workers: args.workers,
        dirty_rate: args.dirty_rate.unwrap_or(0.01),
        data_dir: args.data_dir,
        drain_timeout: args.drain_timeout,
        worker_config,
        chaos: args.chaos.then_some(pinstream::local::loadtest::Chaos {
            kill_every: args.kill_every,
            split: args.split,
            network_faults: args.network_faults,
        }),
        reader: args.reader,
        emulator: args.emulator,
    };
    let report = pinstream::local::loadtest::run(opts, shutdown).await?;
    match args.report {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => print!("{}", pinstream::local::loadtest::to_text(&report)),
    }
    if report.missing > 0 || report.duplicates > 0 || !report.unfinished_closed_shards.is_empty() {
        return Err(pinstream::local::loadtest::LoadtestError::NotExactlyOnce {
            missing: report.missing,
            duplicates: report.duplicates,
            unfinished: report.unfinished_closed_shards,
        }
        .into());
    }
    Ok(())
}

/// `loadtest --backlog N`: the drain benchmark.
async fn backlog_command(
    args: LoadtestArgs,
    records: u64,
    worker_config: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    use pinstream::local::loadtest::{backlog, LoadtestError};
    let opts = backlog::BacklogOptions {
        records,
        shards: args.shards,
        dirty_rate: args.dirty_rate.unwrap_or(0.0),
        data_dir: args.data_dir,
        worker_config,
        baseline: !args.no_baseline,
    };
    let report = backlog::run(opts, shutdown).await?;
    match args.report {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => print!("{}", backlog::to_text(&report)),
    }
    if report.missing > 0 || report.duplicates > 0 {
        return Err(LoadtestError::NotExactlyOnce {
            missing: report.missing,
            duplicates: report.duplicates,
            unfinished: Vec::new(),
        }
        .into());
    }
    Ok(())
}

async fn demo_command(args: DemoArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let opts = demo::DemoOptions {
        records: args.records,
        shards: args.shards,
        dirty_rate: args.dirty_rate,
        data_dir: args.data_dir,
        timeout: args.timeout,
    };
    demo::run(opts, shutdown).await?;
    Ok(())
}
