//! The tables pinstream writes are plain Delta: Python `deltalake` and `polars` (from the
//! project's own venv, made by infra/local/start.sh) read them with the right schema and rows.

use pinstream::clean::Kind;
use pinstream::producer::{self};
use pinstream::worker::{self};
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
meta = ["_shard_id", "_sequence_number", "_sub_sequence_number", "_approximate_arrival_timestamp"]
for t in ["pin_rejects", "geo_rejects", "user_rejects"]:
    arrow = deltalake.DeltaTable(f"{root}/{t}").to_pyarrow_table()
    assert arrow.column_names == ["raw_data", "raw_data_is_base64", "reason", "field", "detail", "_stream"] + meta, (t, arrow.column_names)
    r = pl.read_delta(f"{root}/{t}")
    assert r.height == arrow.num_rows, t
    assert r["reason"].null_count() == 0, t
    print(t, r.height)
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
    let opts = support::produce_options(&settings, 3, 0.02, 300);
    producer::produce(aws.kinesis.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let run = support::run_options(true);
    let summary = worker::run(settings, aws, run, CancellationToken::new())
        .await
        .unwrap();
    let stdout = support::run_python(&[
        std::ffi::OsStr::new("-c"),
        std::ffi::OsStr::new(CHECK),
        dir.path().as_os_str(),
    ]);
    for kind in Kind::ALL {
        for table in [kind.name(), kind.rejects_table()] {
            assert!(
                stdout.contains(&format!("{table} {}", summary.rows[table])),
                "{table}: {stdout}"
            );
        }
    }
}
