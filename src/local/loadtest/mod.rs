//! `pinstream loadtest`: the local stack, run-specific streams of a chosen shard count, the
//! producer at a target rate (or flat out) for a duration, and 1..N `pinstream run` worker
//! processes; then a report measured from outside the workers: records/s produced and
//! committed, end-to-end latency from each record's Kinesis arrival timestamp to the
//! timestamp of the Delta commit that made it visible (p50/p95/p99), each worker's peak RSS
//! (`VmHWM`) and CPU seconds (`/proc/PID/stat`), and the Delta files and bytes written.
//! Every produced record must be in a cleaned or rejects table exactly once, else it fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltalake::DeltaTable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clean::Kind;
use crate::config::{ReadMode, TableRoot};
use crate::local::session::Session;
use crate::producer::{self, ProduceOptions, Source};
use crate::read::query;

mod analysis;
pub mod backlog;
mod chaos;
mod fleet;
pub mod measure;
mod netfault;
mod scrape;

pub use analysis::{analyse, Analysis};
pub use chaos::{Chaos, ChaosReport};
use fleet::Fleet;

#[derive(Debug, Clone)]
pub struct LoadtestOptions {
    pub shards: i32,
    /// Records/s over all streams; `None`: flat out.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub workers: usize,
    pub dirty_rate: f64,
    pub data_dir: PathBuf,
    /// How long to wait for the workers to commit everything after the producer stops.
    pub drain_timeout: Duration,
    /// Extra TOML for the workers' configuration (e.g. `[flush]` settings).
    pub worker_config: String,
    /// Kill workers (and split shards) while the producer runs.
    pub chaos: Option<Chaos>,
    /// How the workers read: polling or fan-out.
    pub reader: ReadMode,
    /// The Kinesis emulator: `kinesalite` (fast, no fan-out) or `kinesis-local` (enhanced
    /// fan-out; it stores a few hundred records per second at most). `None`: kinesalite
    /// for polling, kinesis-local for fan-out.
    pub emulator: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerUsage {
    pub pid: u32,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadtestReport {
    /// `polling` or `fan-out`, and on which emulator.
    pub reader: String,
    pub emulator: String,
    pub shards_per_stream: i32,
    pub workers: usize,
    pub produced: u64,
    pub produce_seconds: f64,
    pub produced_per_second: f64,
    pub committed: u64,
    /// From the first record sent to the last one committed.
    pub end_to_end_seconds: f64,
    pub committed_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// From arrival in Kinesis to the worker having the record in hand, from the workers'
    /// `pinstream_read_delay_seconds` histograms at the end (estimated within buckets);
    /// `None` when no worker's metrics could be read.
    pub read_delay_p50_ms: Option<f64>,
    pub read_delay_p99_ms: Option<f64>,
    pub missing: u64,
    pub duplicates: u64,
    pub delta_files: u64,
    pub delta_bytes: u64,
    pub worker_usage: Vec<WorkerUsage>,
    pub cpu_seconds_per_million_records: f64,
    /// From the producer's last send to the last commit.
    pub drain_seconds: f64,
    /// The workers' `flush.max_batch_age`, seconds.
    pub max_batch_age_seconds: f64,
    /// CPU cores the workers used on average (CPU seconds / end-to-end seconds).
    pub worker_cores_used: f64,
    /// CPU cores the Kinesis emulator used on average while records were produced and drained
    /// (it is single-threaded: 1.0 is all it can do).
    pub kinesis_emulator_cores_used: f64,
    /// Which side limited the run, and why we think so.
    pub bottleneck: String,
    /// What `--chaos` did, if asked.
    pub chaos: Option<ChaosReport>,
    /// Closed shards whose leases did not reach SHARD_END by the end (checked after chaos):
    /// shards left unread. Empty when all is well.
    pub unfinished_closed_shards: Vec<String>,
    /// DynamoDB units the lease table cost, summed over the workers that stopped
    /// gracefully (their last log line), per shard-hour of the run.
    pub dynamodb_read_units_per_shard_hour: f64,
    pub dynamodb_write_units_per_shard_hour: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    #[error(transparent)]
    Kinesis(#[from] crate::aws::ServiceError),
    #[error(transparent)]
    Produce(#[from] crate::producer::ProduceError),
    #[error("{0}")]
    Io(String),
    #[error("only {committed} of {produced} records were committed within {timeout:?} after the producer stopped")]
    Drain {
        committed: u64,
        produced: u64,
        timeout: Duration,
    },
    #[error("{missing} records missing and {duplicates} duplicated in the tables; closed shards not read to their end: {unfinished:?}")]
    NotExactlyOnce {
        missing: u64,
        duplicates: u64,
        unfinished: Vec<String>,
    },
    #[error("interrupted")]
    Interrupted,
}

pub(super) fn io(what: &str) -> impl Fn(std::io::Error) -> LoadtestError + '_ {
    move |e| LoadtestError::Io(format!("{what}: {e}"))
}

/// The Kinesis emulator of the run: the one asked for, else the one the reader needs.
fn emulator(opts: &LoadtestOptions) -> Result<&'static str, LoadtestError> {
    match (opts.emulator.as_deref(), opts.reader) {
        (None, ReadMode::Polling) | (Some("kinesalite"), ReadMode::Polling) => Ok("kinesalite"),
        (None | Some("kinesis-local"), _) => Ok("kinesis-local"),
        (Some("kinesalite"), ReadMode::FanOut) => Err(LoadtestError::Io(
            "kinesalite has no enhanced fan-out: use --emulator kinesis-local with --reader fan-out".into(),
        )),
        (Some(other), _) => Err(LoadtestError::Io(format!(
            "unknown emulator `{other}`: use kinesalite or kinesis-local"
        ))),
    }
}

pub async fn run(
    opts: LoadtestOptions,
    interrupt: CancellationToken,
) -> Result<LoadtestReport, LoadtestError> {
    let engine = emulator(&opts)?;
    let session = Session::start_on("loadtest", &opts.data_dir, engine).await?;
    let res = run_in(&opts, &session, interrupt).await;
    session.stop().await;
    res
}

async fn run_in(
    opts: &LoadtestOptions,
    session: &Session,
    interrupt: CancellationToken,
) -> Result<LoadtestReport, LoadtestError> {
    let (stack, run_dir) = (&session.stack, &session.run_dir);
    let aws = stack
        .aws()
        .await
        .map_err(super::session::SessionError::from)?;
    let tables = session.tables();
    let streams = session.streams();
    for (_, s) in &streams {
        crate::kinesis::ensure_stream(&aws.kinesis, s, opts.shards, Duration::from_secs(60))
            .await?;
    }
    let (config, settings) = write_worker_config(
        &opts.worker_config,
        opts.reader,
        opts.chaos.is_some(),
        &session.run_id,
        run_dir,
        &tables,
        &streams,
    )?;
    // With --chaos the workers reach Kinesis and DynamoDB through fault proxies.
    let (env, proxies) = match &opts.chaos {
        Some(c) if c.network_faults > 0.0 => {
            netfault::in_front_of(&stack.env, netfault::FaultRates::chaos(c.network_faults)).await?
        }
        _ => (stack.env.clone(), Vec::new()),
    };
    // Workers: separate processes, so memory and CPU are theirs alone, read from outside.
    let mut fleet = Fleet::start(opts.workers, &config, env, run_dir)?;
    announce(opts, &fleet, run_dir);
    wait_until_reading(
        &aws,
        &settings.lease_table,
        streams.len() * opts.shards.max(1) as usize,
        &interrupt,
    )
    .await?;

    let started = Instant::now();
    let emulator = Emulator::measure(stack.pid(session.kinesis_engine));
    let stream_names: Vec<String> = streams.iter().map(|(_, s)| s.clone()).collect();
    let (produced, mut chaos) =
        produce_beside_chaos(opts, &aws, &streams, &stream_names, &mut fleet, &interrupt).await?;
    eprintln!(
        "loadtest: produced {} records in {:.1}s; waiting for the workers to commit them...",
        produced.sent, produced.elapsed_seconds
    );
    let produced_at = Instant::now();
    let drained = wait_until_committed(
        opts,
        &aws,
        &settings.lease_table,
        &stream_names,
        &mut fleet,
        &TableRoot::Local(tables.clone()),
        produced.sent,
        chaos.is_some(),
        &interrupt,
    )
    .await?;
    if let Some(c) = chaos.as_mut() {
        c.network = proxies.iter().map(netfault::FaultProxy::report).collect();
    }
    let times = Times {
        end_to_end: started.elapsed(),
        drain: produced_at.elapsed(),
        max_batch_age: settings.flush.max_batch_age,
    };
    let emulator_cores = emulator.cores_since(times.end_to_end);
    let live_workers = fleet.pids().len();
    let read_delay = scrape::histogram_quantiles(
        &fleet.metrics_addrs(),
        "pinstream_read_delay_seconds",
        &[0.5, 0.99],
    )
    .await;
    fleet.sample_usage();
    let usage = fleet.usage();
    fleet.stop().await;
    let units = fleet::consumed_units(run_dir);
    let analysis = analyse(&tables).map_err(LoadtestError::Io)?;
    Ok(build_report(
        opts,
        &produced,
        drained,
        analysis,
        usage,
        live_workers,
        times,
        emulator_cores,
        chaos,
        units,
        read_delay,
    ))
}

fn announce(opts: &LoadtestOptions, fleet: &Fleet, run_dir: &Path) {
    eprintln!(
        "loadtest: {} worker(s) (pids {:?}), {} shards per stream, producing {} for {:?}{}; logs in {}",
        opts.workers.max(1),
        fleet.pids(),
        opts.shards,
        opts.rate
            .map(|r| format!("{r:.0} rec/s"))
            .unwrap_or_else(|| "flat out".into()),
        opts.duration,
        match &opts.chaos {
            Some(c) => format!(
                ", killing a worker every {:?}{}",
                c.kill_every,
                if c.split { " and splitting a shard of each stream" } else { "" }
            ),
            None => String::new(),
        },
        run_dir.display()
    );
}

/// Waits (at most 2 minutes) until the workers hold every one of the `leases` shard
/// leases, so that the latencies measured are those of running workers, not of their
/// start (a fan-out worker registers its consumers first).
async fn wait_until_reading(
    aws: &crate::aws::AwsClients,
    lease_table: &str,
    leases: usize,
    interrupt: &CancellationToken,
) -> Result<(), LoadtestError> {
    let table = crate::lease::LeaseTable::new(aws.dynamodb.clone(), lease_table);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = match table.scan().await {
            Ok(all) => all.iter().filter(|l| l.owner.is_some()).count(),
            Err(_) => 0,
        };
        if held >= leases {
            return Ok(());
        }
        if interrupt.is_cancelled() {
            return Err(LoadtestError::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(LoadtestError::Io(format!(
                "the workers hold {held} of {leases} leases after 2 minutes; see their logs"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Kinesis emulator's CPU, measured from outside from the start of the load.
struct Emulator {
    pid: Option<u32>,
    cpu_at_start: f64,
}

impl Emulator {
    fn measure(pid: Option<u32>) -> Self {
        let cpu_at_start = pid
            .and_then(fleet::read_usage)
            .map_or(0.0, |u| u.cpu_seconds);
        Emulator { pid, cpu_at_start }
    }

    /// Cores it used on average over `elapsed`.
    fn cores_since(&self, elapsed: Duration) -> f64 {
        self.pid
            .and_then(fleet::read_usage)
            .map_or(0.0, |u| u.cpu_seconds - self.cpu_at_start)
            / elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the producer for the load's duration and, with `--chaos`, the killing and
/// splitting beside it.
async fn produce_beside_chaos(
    opts: &LoadtestOptions,
    aws: &crate::aws::AwsClients,
    streams: &[(Kind, String)],
    stream_names: &[String],
    fleet: &mut Fleet,
    interrupt: &CancellationToken,
) -> Result<(producer::ProduceReport, Option<ChaosReport>), LoadtestError> {
    let produce = ProduceOptions {
        streams: streams.iter().cloned().collect(),
        source: Source::Synthetic {
            seed: 7,
            dirty_rate: opts.dirty_rate,
        },
        rate: opts.rate,
        count: None,
        duration: Some(opts.duration),
        partition_key: None,
        in_flight: 4,
        progress_every: Some(Duration::from_secs(5)),
        aggregate: None,
    };
    let chaos_stop = CancellationToken::new();
    let (produced, chaos) = tokio::join!(
        async {
            let res = producer::produce(aws.kinesis.clone(), produce, interrupt.clone()).await;
            chaos_stop.cancel();
            res
        },
        async {
            match &opts.chaos {
                Some(c) => chaos::run(c, fleet, aws, stream_names, opts.duration, &chaos_stop)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        }
    );
    Ok((produced?, chaos?))
}

/// What the drain found: rows committed, and closed shards not read to their end.
struct Drained {
    committed: u64,
    unfinished: Vec<String>,
}

/// Waits until the tables hold as many rows as were sent (and, after chaos, every closed
/// shard is finished), sampling the workers' usage meanwhile.
#[allow(clippy::too_many_arguments)]
async fn wait_until_committed(
    opts: &LoadtestOptions,
    aws: &crate::aws::AwsClients,
    lease_table: &str,
    stream_names: &[String],
    fleet: &mut Fleet,
    root: &TableRoot,
    sent: u64,
    after_chaos: bool,
    interrupt: &CancellationToken,
) -> Result<Drained, LoadtestError> {
    let deadline = Instant::now() + opts.drain_timeout;
    let mut open = HashMap::new();
    loop {
        fleet.sample_usage();
        let committed = committed_rows(root, &mut open).await;
        let mut unfinished = Vec::new();
        if committed >= sent {
            if after_chaos {
                unfinished =
                    chaos::unfinished_closed_shards(aws, lease_table, stream_names).await?;
            }
            if unfinished.is_empty() {
                return Ok(Drained {
                    committed,
                    unfinished,
                });
            }
        }
        if interrupt.is_cancelled() {
            return Err(LoadtestError::Interrupted);
        }
        if Instant::now() >= deadline {
            if committed >= sent {
                return Ok(Drained {
                    committed,
                    unfinished,
                });
            }
            return Err(LoadtestError::Drain {
                committed,
                produced: sent,
                timeout: opts.drain_timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long the load took, end to end and after the producer stopped.
struct Times {
    end_to_end: Duration,
    drain: Duration,
    max_batch_age: Duration,
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    opts: &LoadtestOptions,
    produced: &producer::ProduceReport,
    drained: Drained,
    analysis: Analysis,
    usage: Vec<WorkerUsage>,
    live_workers: usize,
    times: Times,
    emulator_cores: f64,
    chaos: Option<ChaosReport>,
    (read_units, write_units): (f64, f64),
    read_delay_seconds: Option<Vec<f64>>,
) -> LoadtestReport {
    let read_delay_ms = |i: usize| {
        read_delay_seconds
            .as_ref()
            .and_then(|q| q.get(i))
            .map(|s| s * 1000.0)
    };
    // Every stream has `shards` leases (a split adds children: counted as the original).
    let shard_hours = (3 * opts.shards.max(1)) as f64 * times.end_to_end.as_secs_f64() / 3600.0;
    let seconds = times.end_to_end.as_secs_f64().max(1e-9);
    let cpu: f64 = usage.iter().map(|u| u.cpu_seconds).sum();
    let worker_cores = cpu / seconds;
    let mut lat = analysis.latencies_ms;
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1] as f64
    };
    LoadtestReport {
        reader: opts.reader.as_str().to_owned(),
        emulator: emulator(opts).unwrap_or_default().to_owned(),
        shards_per_stream: opts.shards,
        workers: live_workers,
        produced: produced.sent,
        produce_seconds: produced.elapsed_seconds,
        produced_per_second: produced.records_per_second,
        committed: drained.committed,
        end_to_end_seconds: seconds,
        committed_per_second: drained.committed as f64 / seconds,
        latency_p50_ms: pct(0.50),
        latency_p95_ms: pct(0.95),
        latency_p99_ms: pct(0.99),
        latency_max_ms: pct(1.0),
        read_delay_p50_ms: read_delay_ms(0),
        read_delay_p99_ms: read_delay_ms(1),
        missing: produced.sent.saturating_sub(analysis.distinct),
        duplicates: analysis.duplicates,
        delta_files: analysis.files,
        delta_bytes: analysis.bytes,
        worker_usage: usage,
        cpu_seconds_per_million_records: cpu / (drained.committed.max(1) as f64 / 1e6),
        drain_seconds: times.drain.as_secs_f64(),
        max_batch_age_seconds: times.max_batch_age.as_secs_f64(),
        worker_cores_used: worker_cores,
        kinesis_emulator_cores_used: emulator_cores,
        bottleneck: bottleneck(
            times.drain,
            times.max_batch_age,
            produced.records_per_second,
            emulator_cores,
            worker_cores / live_workers.max(1) as f64,
        ),
        chaos,
        unfinished_closed_shards: drained.unfinished,
        dynamodb_read_units_per_shard_hour: read_units / shard_hours.max(1e-9),
        dynamodb_write_units_per_shard_hour: write_units / shard_hours.max(1e-9),
    }
}

/// Writes the workers' configuration file: the run's application, tables and streams, the
/// user's `--worker-config`, and (with `--chaos`) [`chaos::worker_defaults`] where the
/// user's file does not set them. Returns its path and the settings it resolves to.
fn write_worker_config(
    worker_config: &str,
    mode: ReadMode,
    chaos: bool,
    run_id: &str,
    run_dir: &Path,
    tables: &Path,
    streams: &[(Kind, String)],
) -> Result<(PathBuf, crate::config::Settings), LoadtestError> {
    let bad = |e: String| LoadtestError::Io(format!("the worker config: {e}"));
    let mut doc: toml::Table = worker_config
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    doc.insert("application".into(), format!("loadtest-{run_id}").into());
    doc.insert("table_root".into(), tables.display().to_string().into());
    let stream_table: toml::Table = streams
        .iter()
        .map(|(k, s)| (k.to_string(), toml::Value::from(s.as_str())))
        .collect();
    doc.insert("streams".into(), stream_table.into());
    // `--reader` decides (the engine was chosen for it).
    let reader = doc
        .entry("reader")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(t) = reader.as_table_mut() {
        t.insert("mode".into(), mode.as_str().into());
    }
    if chaos {
        for (section, key, value) in chaos::worker_defaults() {
            let mut table = &mut doc;
            for part in section.split('.') {
                let Some(t) = table
                    .entry(part)
                    .or_insert_with(|| toml::Table::new().into())
                    .as_table_mut()
                else {
                    return Err(bad(format!("`{section}` is not a table")));
                };
                table = t;
            }
            table.entry(key).or_insert(value);
        }
    }
    let text = toml::to_string(&doc).map_err(|e| bad(e.to_string()))?;
    let path = run_dir.join("worker.toml");
    std::fs::write(&path, &text).map_err(io("writing the worker config"))?;
    let settings = crate::config::FileConfig::parse(&text, &path)
        .and_then(|f| crate::config::Settings::resolve(f, Default::default()))
        .map_err(|e| bad(e.to_string()))?;
    Ok((path, settings))
}

/// A worker that keeps up commits the last records within one flush age (plus the poll
/// and the commit) after the producer stops. When it needs longer, the CPU figures say
/// who was saturated: kinesalite is one node.js thread (1.0 core is its ceiling), a
/// worker process can use every core.
fn bottleneck(
    drain: Duration,
    max_batch_age: Duration,
    produced_per_second: f64,
    emulator_cores: f64,
    cores_per_worker: f64,
) -> String {
    let slack = Duration::from_secs(2);
    let (d, age) = (drain.as_secs_f64(), max_batch_age.as_secs_f64());
    if drain <= max_batch_age + slack {
        format!(
            "none on the worker side: the workers kept up, committing the last records {d:.1}s after the last send (flush age {age:.0}s); the limit was the producer's rate or Kinesis ingest ({produced_per_second:.0} rec/s, the emulator at {emulator_cores:.2} cores)"
        )
    } else if emulator_cores >= 0.8 && cores_per_worker < 0.5 {
        format!(
            "the Kinesis emulator: kinesalite used {emulator_cores:.2} of its 1 core serving PutRecords and GetRecords while each worker used {cores_per_worker:.2} cores waiting on GetRecords; records were delivered more slowly than produced ({d:.1}s to drain after the last send)"
        )
    } else {
        format!(
            "the workers: {d:.1}s to drain after the last send (more than the flush age {age:.0}s + {}s), each worker at {cores_per_worker:.2} cores, the emulator at {emulator_cores:.2}",
            slack.as_secs()
        )
    }
}

/// Rows in the six tables under `root`, from the file statistics in the Delta log (cheap:
/// the poll must not steal CPU from the workers being measured).
async fn committed_rows(root: &TableRoot, open: &mut HashMap<&'static str, DeltaTable>) -> u64 {
    let mut total = 0;
    for name in query::table_names() {
        if !open.contains_key(name) {
            if let Ok(Some(t)) = query::open(root, name, None).await {
                open.insert(name, t);
            }
        }
        if let Some(t) = open.get_mut(name) {
            let _ = t.update_state().await;
            total += rows_in(t);
        }
    }
    total
}

/// Rows in a table's loaded state, from the file statistics in its log.
fn rows_in(table: &DeltaTable) -> u64 {
    table.snapshot().map_or(0, |s| {
        s.log_data()
            .iter()
            .filter_map(|f| f.num_records())
            .sum::<usize>() as u64
    })
}

/// The report as text.
pub fn to_text(r: &LoadtestReport) -> String {
    let mut s = format!(
        "loadtest: {} worker(s) reading by {}, {} shards per stream\n  produced   {:>10} records in {:.1}s ({:.0} rec/s)\n  committed  {:>10} records, {:.0} rec/s end to end ({:.1}s from first send to last commit)\n  latency    arrival -> commit p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  read delay arrival -> in the worker's hands {}\n  delta      {} files, {:.1} MiB\n  exactly once: {} missing, {} duplicated\n",
        r.workers, r.reader, r.shards_per_stream, r.produced, r.produce_seconds, r.produced_per_second,
        r.committed, r.committed_per_second, r.end_to_end_seconds,
        r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms, r.latency_max_ms,
        match (r.read_delay_p50_ms, r.read_delay_p99_ms) {
            (Some(p50), Some(p99)) => format!("p50 {p50:.0} ms, p99 {p99:.0} ms"),
            _ => "not measured (no worker's /metrics could be read)".to_owned(),
        },
        r.delta_files, r.delta_bytes as f64 / 1048576.0, r.missing, r.duplicates
    );
    s.push_str(&format!(
        "  dynamodb   {:.1} read units and {:.1} write units per shard-hour (lease table)\n",
        r.dynamodb_read_units_per_shard_hour, r.dynamodb_write_units_per_shard_hour
    ));
    for u in &r.worker_usage {
        s.push_str(&format!(
            "  worker pid {}: peak RSS {:.1} MiB, CPU {:.2} s\n",
            u.pid, u.peak_rss_mib, u.cpu_seconds
        ));
    }
    if let Some(c) = &r.chaos {
        s.push_str(&format!(
            "  chaos      {} workers killed with SIGKILL (each replaced), {} shards split; closed shards not read to their end: {}\n",
            c.kills,
            c.splits,
            r.unfinished_closed_shards.len()
        ));
        for n in &c.network {
            s.push_str(&format!(
                "  network    {}: {} connections, {} answers delayed, {} swallowed, {} connections reset\n",
                n.service, n.connections, n.delayed, n.swallowed, n.reset
            ));
        }
    }
    s.push_str(&format!(
        "  worker CPU per million records: {:.1} s; cores used on average: {:.2} (Kinesis emulator: {:.2})\n  drain      {:.1}s from the last send to the last commit\n  bottleneck {}\n",
        r.cpu_seconds_per_million_records, r.worker_cores_used, r.kinesis_emulator_cores_used, r.drain_seconds, r.bottleneck
    ));
    s
}
