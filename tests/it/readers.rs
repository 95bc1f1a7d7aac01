//! The tables pinstream writes are plain Delta: Python `deltalake` and `polars` (from the
//! project's own venv, made by infra/local/start.sh) read them with the right schema and rows.

use std::process::Command;
use std::time::Duration;

use pinstream::clean::Kind;
use pinstream::producer::{self, ProduceOptions, Source};
use pinstream::worker::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::support;

const CHECK: &str = r#"
import sys, deltalake, polars as pl
root = sys.argv[1]
expect = {"pin": ["ind","unique_id","title","description","follower_count","poster_name","tag_list","is_image_or_video","image_src","save_location","category"],
          "geo": ["ind","country","coordinates","timestamp"],
          "user": ["ind","user_name","age","date_joined"]}
for t, cols in expect.items():
    dt = deltalake.DeltaTable(f"{root}/{t}")
    arrow = dt.to_pyarrow_table()
    names = [n for n in arrow.column_names if not n.startswith("_")]
    assert names == cols, (t, names)
    df = pl.read_delta(f"{root}/{t}")
    assert df.height == arrow.num_rows, (t, df.height, arrow.num_rows)
    assert df["ind"].n_unique() == df.height, t
    print(t, df.height)
g = pl.read_delta(f"{root}/geo")
assert str(g.schema["timestamp"]) == "Datetime(time_unit='us', time_zone='UTC')", g.schema["timestamp"]
assert str(g.schema["coordinates"]) == "List(Float64)", g.schema["coordinates"]
u = pl.read_delta(f"{root}/user")
assert u["age"].dtype == pl.Int64
r = pl.read_delta(f"{root}/pin_rejects")
print("pin_rejects", r.height)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_and_polars_read_the_tables() {
    let python = support::python();
    assert!(
        python.is_file(),
        "{} missing: the test command installs it (infra/local/start.sh)",
        python.display()
    );
    let aws = support::aws().await;
    let dir = support::tempdir();
    let name = support::unique("readers");
    let settings = support::settings(&name, dir.path(), "");
    support::create_streams(&aws, &settings, 1).await;
    let opts = ProduceOptions {
        streams: settings.streams.clone(),
        source: Source::Synthetic {
            seed: 3,
            dirty_rate: 0.02,
        },
        rate: None,
        count: Some(300),
        duration: None,
        partition_key: None,
        in_flight: 2,
        progress_every: None,
        aggregate: None,
    };
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let run = RunOptions {
        available_now: true,
        worker_id: support::unique("w"),
        shutdown_deadline: Duration::from_secs(30),
        progress: Default::default(),
        fault: None,
        health: None,
    };
    let summary = worker::run(settings, aws, run, CancellationToken::new())
        .await
        .unwrap();
    let out = Command::new(&python)
        .arg("-c")
        .arg(CHECK)
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python readers failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in Kind::ALL {
        assert!(
            stdout.contains(&format!("{} {}", kind.name(), summary.rows[kind.name()])),
            "{stdout}"
        );
    }
}
