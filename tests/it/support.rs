//! Shared test helpers: clients for the local stack (started by `infra/local/with-stack.sh`),
//! unique names, deadline-bounded waits, and reading a Delta table back through its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pinstream::aws::AwsClients;
use pinstream::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
use pinstream::config::{FileConfig, Overrides, Settings};
use pinstream::delta::{self, Appended, ShardCommit};
use pinstream::lease::LeaseTable;
use pinstream::producer::generator::Generator;

/// Clients for the emulators. Panics with the fix when the stack is not up.
pub async fn aws() -> AwsClients {
    for var in ["AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_DYNAMODB"] {
        assert!(
            std::env::var(var).is_ok(),
            "{var} is not set: run the tests through `infra/local/with-stack.sh cargo test` (see README)"
        );
    }
    let k = std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap();
    let d = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap();
    AwsClients::for_emulators(&k, &d).await
}

/// Creates every stream of `settings` with `shards` shards and waits until they are ACTIVE.
pub async fn create_streams(aws: &AwsClients, settings: &Settings, shards: i32) {
    for s in settings.streams.values() {
        pinstream::kinesis::ensure_stream(&aws.kinesis, s, shards, Duration::from_secs(30))
            .await
            .unwrap();
    }
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh temporary directory kept for the test's lifetime.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pinstream-it-")
        .tempdir()
        .expect("temp dir")
}

/// Settings for a test pipeline with its own streams, lease table and table root.
pub fn settings(name: &str, root: &Path, extra_toml: &str) -> Settings {
    let overrides = Overrides {
        application: Some(name.to_owned()),
        streams: Kind::ALL
            .iter()
            .map(|k| (*k, format!("{name}-{k}")))
            .collect(),
        lease_table: None,
        table_root: Some(root.to_string_lossy().into_owned()),
        reader_mode: None,
    };
    let file = FileConfig::parse(extra_toml, Path::new("<test>")).expect("test config parses");
    Settings::resolve(file, overrides).expect("test settings are valid")
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `addr` field of the first JSON log line at `log` whose message contains `message`
/// (a process bound port 0 and said where), waiting up to 30 s for it.
pub async fn logged_addr(log: &Path, message: &str) -> String {
    wait_for(
        &format!("`{message}` with an address in {}", log.display()),
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let message = message.to_owned();
            async move {
                text.lines()
                    .filter(|l| l.contains(&message))
                    .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .and_then(|v| v["addr"].as_str().map(str::to_owned))
            }
        },
    )
    .await
}

/// A minimal HTTP/1.1 GET: the status code and body, `None` if the server does not answer.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// A child process that is killed (and reaped) when dropped, so that a failing test's
/// workers and servers do not outlive it and load the machine for the tests after it.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Wraps a spawned child (`cmd.spawn().map(KillOnDrop::new)`).
    pub fn new(child: std::process::Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// Waits for the child's exit and output, as `Child::wait_with_output`.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().expect("a child").wait_with_output()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a child")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("a child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits (bounded) for a child process to exit.
pub async fn wait_exit(
    child: &mut std::process::Child,
    what: &str,
    deadline: Duration,
) -> std::process::ExitStatus {
    wait_for(what, deadline, || {
        let s = child.try_wait().expect("child status");
        async move { s }
    })
    .await
}

/// Synthetic produce options for a test: every stream of `settings`, `count` records each,
/// flat out, 2 calls in flight, quiet. Override fields with struct update syntax.
pub fn produce_options(
    settings: &Settings,
    seed: u64,
    dirty_rate: f64,
    count: u64,
) -> pinstream::producer::ProduceOptions {
    pinstream::producer::ProduceOptions {
        streams: settings.streams.clone(),
        source: pinstream::producer::Source::Synthetic { seed, dirty_rate },
        rate: None,
        count: Some(count),
        duration: None,
        partition_key: None,
        in_flight: 2,
        progress_every: None,
        aggregate: None,
    }
}

/// Starts an in-process worker with `opts`; cancel the token to stop it.
pub fn spawn_worker(
    settings: &Settings,
    aws: &AwsClients,
    opts: pinstream::worker::RunOptions,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<pinstream::worker::RunSummary, pinstream::worker::WorkerError>>,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(pinstream::worker::run(
        settings.clone(),
        aws.clone(),
        opts,
        stop.clone(),
    ));
    (stop, running)
}

/// Options of an in-process worker with a unique id.
pub fn run_options(available_now: bool) -> pinstream::worker::RunOptions {
    pinstream::worker::RunOptions {
        available_now,
        worker_id: unique("w"),
        shutdown_deadline: Duration::from_secs(30),
        progress: Default::default(),
        fault: None,
        health: None,
    }
}

/// Every row of a Delta table, read through its log (never by globbing files).
pub async fn read_table(root: &Path, table: &str) -> Vec<RecordBatch> {
    let url =
        url::Url::from_directory_path(std::fs::canonicalize(root.join(table)).expect("table dir"))
            .unwrap();
    let t = deltalake::open_table(url).await.expect("open table");
    let mut out = Vec::new();
    for uri in t.get_file_uris().expect("file uris") {
        let path = url::Url::parse(&uri)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .unwrap_or_else(|| PathBuf::from(&uri));
        let file = std::fs::File::open(&path).expect("parquet file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        out.extend(reader.map(|b| b.unwrap()));
    }
    out
}

/// Rows of `kind` in its table and its rejects table together; 0 while either does not
/// exist yet.
pub async fn landed(root: &Path, kind: Kind) -> usize {
    let log = |t: &str| root.join(t).join("_delta_log/00000000000000000000.json");
    if !log(kind.name()).exists() || !log(kind.rejects_table()).exists() {
        return 0;
    }
    count(&read_table(root, kind.name()).await)
        + count(&read_table(root, kind.rejects_table()).await)
}

/// Waits (up to 60 s per kind) until every kind has at least `at_least` rows in its table
/// and rejects table together.
pub async fn wait_all_landed(root: &Path, at_least: usize, what: &str) {
    for kind in Kind::ALL {
        wait_for(
            &format!("{kind}: {at_least} records {what}"),
            Duration::from_secs(60),
            || async { (landed(root, kind).await >= at_least).then_some(()) },
        )
        .await;
    }
}

/// Every kind's `per_stream` records are each in the table or the rejects table, once.
/// Returns the rejects per kind.
pub async fn assert_exactly_once(root: &Path, per_stream: usize, what: &str) -> Vec<usize> {
    let mut rejected = Vec::new();
    for kind in Kind::ALL {
        let rejects = read_table(root, kind.rejects_table()).await;
        let mut keys = key_counts(&read_table(root, kind.name()).await);
        for (k, n) in key_counts(&rejects) {
            *keys.entry(k).or_insert(0) += n;
        }
        let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{what} {kind}: committed twice: {twice:?}"
        );
        assert_eq!(keys.len(), per_stream, "{what} {kind}: every record once");
        rejected.push(count(&rejects));
    }
    rejected
}

pub fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Occurrences of each record key (`_shard_id`, `_sequence_number`, `_sub_sequence_number`).
pub fn key_counts(batches: &[RecordBatch]) -> BTreeMap<(String, String, i64), usize> {
    let mut m = BTreeMap::new();
    for b in batches {
        let shard = b.column_by_name("_shard_id").unwrap().as_string::<i32>();
        let seq = b
            .column_by_name("_sequence_number")
            .unwrap()
            .as_string::<i32>();
        let sub = b
            .column_by_name("_sub_sequence_number")
            .unwrap()
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            *m.entry((
                shard.value(i).to_owned(),
                seq.value(i).to_owned(),
                sub.value(i),
            ))
            .or_insert(0) += 1;
        }
    }
    m
}

/// Values of an Int64 column, nulls skipped.
pub fn i64_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for b in batches {
        let c = b
            .column_by_name(name)
            .unwrap()
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        v.extend((0..c.len()).filter(|i| c.is_valid(*i)).map(|i| c.value(i)));
    }
    v
}

/// The real sample records (`tests/data/`).
pub fn sample_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The project's Python (a venv made by `infra/local/start.sh`).
pub fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/local/.venv/bin/python")
}

/// Runs the project's Python with `args`, panics with its stderr unless it succeeds, and
/// returns its stdout, trimmed.
pub fn run_python<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = std::process::Command::new(python())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The `pinstream` binary this test run built.
pub fn pinstream() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_pinstream"))
}

/// `rows` cleaned pin rows with keys (`shard`, `<batch>-<row>`, 0).
pub fn pin_batch(g: &mut Generator, shard: &str, batch: u64, rows: usize) -> RecordBatch {
    let mut cols = TableColumns::new(Kind::Pin);
    let mut rejects = RejectsColumns::default();
    let mut made = 0;
    while made < rows {
        let (_, records) = g.next_triple();
        let (_, data) = records.into_iter().find(|(k, _)| *k == Kind::Pin).unwrap();
        let seq = format!("{batch:08}-{made:04}");
        let meta = RecordMeta {
            shard_id: shard,
            sequence_number: &seq,
            sub_sequence_number: 0,
            arrival_micros: None,
        };
        if clean_into(Kind::Pin, &data, &meta, "pin", &mut cols, &mut rejects).is_ok() {
            made += 1;
        }
    }
    cols.finish().unwrap()
}

/// A shard's part in a test append (app id `health/pin/<shard>`), fenced on `expected`.
pub fn shard_commit(shard: &str, expected: i64) -> ShardCommit {
    ShardCommit {
        app_id: format!("health/pin/{shard}"),
        lease_key: format!("pin:{shard}"),
        expected,
        last_sequence: String::new(),
        last_sub_sequence: 0,
        shard_end: false,
    }
}

/// Appends `batch` for `shard` as the writer that last committed it at `*last`, and
/// moves `*last` to the new commit's version.
pub async fn append_as(
    table: &mut deltalake::DeltaTable,
    batch: RecordBatch,
    shard: &str,
    last: &mut i64,
) -> u64 {
    match delta::append(table, "test", &[batch], &[shard_commit(shard, *last)])
        .await
        .unwrap()
    {
        Appended::Committed(v) => {
            *last = v;
            v as u64
        }
        fenced => panic!("{shard} fenced: {fenced:?}"),
    }
}

/// Splits `shard` of `stream` in the middle of its hash range and waits (bounded) until
/// the stream lists two more open shards and is ACTIVE again.
pub async fn split_shard(aws: &AwsClients, stream: &str, shard: &str) {
    let before = pinstream::kinesis::list_shards(&aws.kinesis, stream)
        .await
        .unwrap();
    let open_before = before.iter().filter(|s| !s.closed).count();
    let info = before
        .iter()
        .find(|s| s.shard_id == shard)
        .unwrap_or_else(|| panic!("{stream} has no shard {shard}"));
    aws.kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard)
        .new_starting_hash_key(info.middle_hash_key().to_string())
        .send()
        .await
        .unwrap();
    wait_for(
        &format!("{stream} split"),
        Duration::from_secs(30),
        || async {
            let s = pinstream::kinesis::list_shards(&aws.kinesis, stream)
                .await
                .ok()?;
            let active = aws
                .kinesis
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .ok()?
                .stream_description_summary()
                .is_some_and(|d| d.stream_status().as_str() == "ACTIVE");
            (active && s.iter().filter(|s| !s.closed).count() == open_before + 1).then_some(())
        },
    )
    .await;
}

/// Waits (at most 30 s) until the stream is ACTIVE again after a reshard.
pub async fn wait_active(aws: &AwsClients, stream: &str) {
    wait_for("stream ACTIVE", Duration::from_secs(30), || async {
        let out = aws
            .kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        (out.stream_description_summary()
            .map(|d| d.stream_status().as_str().to_owned())
            .as_deref()
            == Some("ACTIVE"))
        .then_some(())
    })
    .await;
}

/// Splits the pin stream's only shard once rows are committed, then merges the two children
/// once both have checkpoints (their parent was finished first), while the workers run.
pub async fn split_then_merge(aws: &AwsClients, settings: &Settings, root: &Path) {
    let pin = settings.streams[&Kind::Pin].clone();
    // Split the pin stream's only shard in two, then merge the children back into one.
    wait_for(
        "some pin rows committed",
        Duration::from_secs(60),
        || async {
            (root
                .join("pin/_delta_log/00000000000000000001.json")
                .exists())
            .then_some(())
        },
    )
    .await;
    let shards = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
        .await
        .unwrap();
    split_shard(aws, &pin, &shards[0].shard_id).await;
    // Merge only once both children have records committed (the parent was finished first).
    let parent = shards[0].shard_id.clone();
    let leases = LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table);
    wait_for(
        "both children of the split read and checkpointed",
        Duration::from_secs(60),
        || async {
            let all = leases.scan().await.unwrap_or_default();
            let children: Vec<_> = all
                .iter()
                .filter(|l| l.stream == pin && l.parent_shard_ids.contains(&parent))
                .collect();
            (children.len() == 2
                && children
                    .iter()
                    .all(|l| matches!(l.checkpoint, pinstream::lease::Checkpoint::Sequence(_))))
            .then_some(())
        },
    )
    .await;
    let shards = pinstream::kinesis::list_shards(&aws.kinesis, &pin)
        .await
        .unwrap();
    let open: Vec<_> = shards.iter().filter(|s| !s.closed).collect();
    assert_eq!(open.len(), 2, "{shards:?}");
    aws.kinesis
        .merge_shards()
        .stream_name(&pin)
        .shard_to_merge(&open[0].shard_id)
        .adjacent_shard_to_merge(&open[1].shard_id)
        .send()
        .await
        .unwrap();
    wait_active(aws, &pin).await;
}

/// The pin stream's lineage after [`split_then_merge`]: parent, two children and the merged
/// child have leases, and every parent of the merged shard reached SHARD_END.
pub async fn assert_pin_lineage_finished(aws: &AwsClients, settings: &Settings) {
    let leases = leases_of(aws, settings, &settings.streams[&Kind::Pin]).await;
    assert_eq!(
        leases.len(),
        4,
        "parent, two children, merged child: {leases:?}"
    );
    let merged = leases
        .iter()
        .find(|l| l.parent_shard_ids.len() == 2)
        .expect("the merged shard lists both parents");
    for parent in &merged.parent_shard_ids {
        let p = leases.iter().find(|l| &l.shard_id == parent).unwrap();
        assert!(p.is_finished(), "{parent} reached SHARD_END");
    }
}

/// A config file for a `pinstream run` process with the settings' application, lease
/// table, table root and streams, and `extra` TOML (sections) before the streams.
pub fn write_config(dir: &Path, settings: &Settings, extra: &str) -> PathBuf {
    let path = dir.join("worker.toml");
    let streams: String = settings
        .streams
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let text = format!(
        "application = \"{}\"\nlease_table = \"{}\"\ntable_root = \"{}\"\n{extra}[streams]\n{streams}",
        settings.application,
        settings.lease_table,
        settings.table_root
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The leases of `stream` in the settings' lease table.
pub async fn leases_of(
    aws: &AwsClients,
    settings: &Settings,
    stream: &str,
) -> Vec<pinstream::lease::Lease> {
    LeaseTable::new(aws.dynamodb.clone(), &settings.lease_table)
        .scan()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.stream == stream)
        .collect()
}

/// A `pinstream run --config CONFIG` process with JSON logs to `log`, serving its metrics
/// on a free port, with `env` added (an endpoint behind a test proxy, say); returns it and
/// the metrics address it logged.
pub async fn spawn_served_run(
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> (KillOnDrop, String) {
    let child = KillOnDrop::new(
        pinstream()
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = logged_addr(log, "serving /metrics").await;
    (child, addr)
}
