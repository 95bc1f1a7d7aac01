//! Tables on S3 (moto server, conditional-put commits): two workers committing to the same
//! tables at once lose nothing and duplicate nothing. Read back with Python `deltalake`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use pinstream::clean::Kind;
use pinstream::producer::{self, ProduceOptions};
use pinstream::worker::{self, RunOptions, RunProgress};
use tokio_util::sync::CancellationToken;

use crate::support;

/// Counts rows and distinct record keys of a table on moto S3 with Python deltalake.
const COUNT: &str = r#"
import os, sys, deltalake, pyarrow.compute as pc
opts = {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL_S3"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
t = deltalake.DeltaTable(sys.argv[1], storage_options=opts).to_pyarrow_table()
keys = set(zip(t["_shard_id"].to_pylist(), t["_sequence_number"].to_pylist(), t["_sub_sequence_number"].to_pylist()))
print(t.num_rows, len(keys), flush=True)
# deltalake's S3 client threads abort the interpreter at exit ("terminate called without an
# active exception"); leave without running the exit handlers.
os._exit(0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_commit_concurrently_to_s3_tables_without_loss_or_duplicates() {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL_S3").expect("moto runs under infra/local/with-stack.sh");
    let aws = support::aws().await;
    let bucket = support::unique("lake").to_lowercase();
    support::run_python(&[
        "-c",
        "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2])",
        &endpoint,
        &bucket,
    ]);
    let dir = support::tempdir();
    let name = support::unique("s3");
    let mut settings = support::settings(&name, dir.path(), "[flush]\nmax_batch_age = \"300ms\"\n[lease]\nfailover_time = \"3s\"\n[reader]\nidle_poll_interval = \"100ms\"\n");
    settings.table_root =
        pinstream::config::TableRoot::parse(&format!("s3://{bucket}/pinterest")).unwrap();
    support::create_streams(&aws, &settings, 4).await;
    let per_stream = 800u64;
    let opts = ProduceOptions {
        rate: Some(1500.0),
        ..support::produce_options(&settings, 8, 0.0, per_stream)
    };
    let client = aws.kinesis.clone();
    let producing = tokio::spawn(async move {
        producer::produce(client, opts, CancellationToken::new())
            .await
            .unwrap()
    });

    let progress = Arc::new(RunProgress::default());
    let mut workers = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let stop = CancellationToken::new();
        let run = RunOptions {
            progress: progress.clone(),
            ..support::run_options(false)
        };
        ids.insert(run.worker_id.clone());
        workers.push((
            stop.clone(),
            tokio::spawn(worker::run(settings.clone(), aws.clone(), run, stop)),
        ));
    }
    assert_eq!(producing.await.unwrap().sent, 3 * per_stream);
    let p = progress.clone();
    support::wait_for(
        "every record committed to S3",
        Duration::from_secs(120),
        || {
            let p = p.clone();
            async move {
                (p.rows_committed.load(std::sync::atomic::Ordering::Relaxed) >= 3 * per_stream)
                    .then_some(())
            }
        },
    )
    .await;
    let mut commits = 0;
    for (stop, task) in workers {
        stop.cancel();
        let summary = task.await.unwrap().unwrap();
        assert!(summary.commits > 0, "both workers committed");
        commits += summary.commits;
    }
    assert!(commits >= 2);
    // Both wrote to the same table: each commit records its writer.
    let pin = pinstream::delta::open_or_create(&settings.table_root, "pin", &Kind::Pin.schema())
        .await
        .unwrap();
    let writers: std::collections::BTreeSet<String> = pin
        .history(None)
        .filter_map(|c| async move {
            c.ok()?
                .info
                .get("pinstream")?
                .get("writer")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
        .await;
    assert_eq!(writers, ids, "both workers committed to the pin table");
    for kind in Kind::ALL {
        let out = support::run_python(&[
            "-c",
            COUNT,
            &format!("s3://{bucket}/pinterest/{}", kind.name()),
        ]);
        assert_eq!(
            out,
            format!("{per_stream} {per_stream}"),
            "{kind}: rows and distinct keys"
        );
    }
    // `pinstream query` reads the same tables from S3, and compaction works there too.
    let ctx = pinstream::read::query::session(&settings.table_root, None)
        .await
        .unwrap();
    let rows = pinstream::read::query::run(
        &ctx,
        "SELECT COUNT(*), COUNT(DISTINCT _shard_id || '/' || _sequence_number) FROM geo",
    )
    .await
    .unwrap();
    assert_eq!(
        pinstream::read::query::rows_as_strings(&rows).unwrap(),
        [[per_stream.to_string(), per_stream.to_string()]]
    );
    let mut pin =
        pinstream::delta::open_or_create(&settings.table_root, "pin", &Kind::Pin.schema())
            .await
            .unwrap();
    let opts = pinstream::maintenance::CompactOptions {
        target_size: 64 << 20,
        min_age: Duration::ZERO,
        min_files: 2,
    };
    let c = pinstream::maintenance::compact(&mut pin, &opts)
        .await
        .unwrap();
    assert!(c.files_removed >= 2 && c.files_added == 1, "{c:?}");
    let out = support::run_python(&["-c", COUNT, &format!("s3://{bucket}/pinterest/pin")]);
    assert_eq!(
        out,
        format!("{per_stream} {per_stream}"),
        "pin after compaction"
    );
}
