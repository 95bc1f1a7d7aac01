//! The worker's hot path, stage by stage, per 100,000 records of one stream kind:
//!
//! - `decode`: JSON text to an object with the keys the operator reads (`json`), and
//!   splitting KPL aggregates of about 50 KiB into their user records (`kpl`);
//! - `clean`: the cleaning operator from raw bytes: decode, clean, append to Arrow
//!   builders and `finish` them into record batches (so `clean` minus `decode` is the
//!   cleaning itself);
//! - `arrow_build`: the builders' `finish` alone;
//! - `parquet_encode`: those batches to one Parquet file in memory, with the sink's writer
//!   settings (`delta::writer_properties`);
//! - `parquet_settings`: the same encoding of 100,000 generated pin records (the producer's
//!   generator: values as distinct as real traffic's, unlike the cycled samples) with the
//!   sink's settings and with delta-rs's defaults (dictionaries on every column, page
//!   statistics);
//! - `worker_path`: all of it from raw bytes (decode + clean + build + encode), the
//!   figure the per-core target is about;
//! - `full_flush`: decode + clean + build, then one Delta append (Parquet file written
//!   and commit) to a fresh table on local disk.
//!
//! As in the worker, records are cleaned one GetRecords answer at a time (`CHUNK`, the
//! default `reader.max_records`) into one record batch per answer, and a flush writes all
//! of a batch's chunks into one Parquet file.
//!
//! Records are the real samples in `tests/data` (cycled to 100,000, with distinct
//! sequence numbers).
//! Run: `cargo bench --bench worker` (one group: `cargo bench --bench worker -- decode`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::arrow::ArrowWriter;
use pinstream::clean::{
    clean_into, parse_object, Kind, PinKeys, RecordMeta, RejectsColumns, TableColumns,
};
use pinstream::config::TableRoot;
use pinstream::delta::{self, ShardCommit};

const N: usize = 100_000;
/// Records per GetRecords answer: the default `reader.max_records`.
const CHUNK: usize = 10_000;
const SHARD: &str = "shardId-000000000000";

/// `N` records of `kind`: the real samples (`tests/data/`) cycled.
fn records(kind: Kind) -> Vec<Vec<u8>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{kind}.ndjson"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the sample records {}: {e}", path.display()));
    let sample: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    sample.iter().cycle().take(N).cloned().collect()
}

/// Sequence numbers as Kinesis hands them out: long decimal strings.
fn sequences() -> Vec<String> {
    (0..N)
        .map(|i| format!("49650000000000000000000000000000000000000000{i:012}"))
        .collect()
}

fn meta<'a>(seq: &'a str) -> RecordMeta<'a> {
    RecordMeta {
        shard_id: SHARD,
        sequence_number: seq,
        sub_sequence_number: 0,
        arrival_micros: Some(1_700_000_000_000_000),
    }
}

/// Decode + clean + build, what a shard reader does with each GetRecords answer: a batch
/// of cleaned rows and one of rejects per `CHUNK` records, the builders sized from the
/// chunk before.
fn clean_all(
    kind: Kind,
    data: &[Vec<u8>],
    seqs: &[String],
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let (mut rows_out, mut rejects_out) = (Vec::new(), Vec::new());
    let mut rows = TableColumns::new(kind);
    for (data, seqs) in data.chunks(CHUNK).zip(seqs.chunks(CHUNK)) {
        rows.reserve(data.len(), data.iter().map(Vec::len).sum());
        let mut rejects = RejectsColumns::default();
        for (d, seq) in data.iter().zip(seqs) {
            let _ = clean_into(kind, d, &meta(seq), kind.name(), &mut rows, &mut rejects);
        }
        rows_out.push(rows.finish().unwrap());
        rejects_out.push(rejects.finish().unwrap());
    }
    (rows_out, rejects_out)
}

/// One Parquet file of `batches` with the sink's writer settings, in memory.
fn encode(batches: &[RecordBatch]) -> Vec<u8> {
    encode_with(batches, delta::writer_properties())
}

fn encode_with(
    batches: &[RecordBatch],
    props: deltalake::parquet::file::properties::WriterProperties,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 << 20);
    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    out
}

/// KPL aggregates of at most ~50 KiB (the KPL's default aggregation size).
fn aggregates(data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk: Vec<(&str, &[u8])> = Vec::new();
    let mut size = 0;
    for d in data {
        if size + d.len() > 50 * 1024 && !chunk.is_empty() {
            out.push(pinstream::kpl::encode(&chunk));
            chunk.clear();
            size = 0;
        }
        chunk.push(("pk", d));
        size += d.len();
    }
    if !chunk.is_empty() {
        out.push(pinstream::kpl::encode(&chunk));
    }
    out
}

fn stages(c: &mut Criterion) {
    let seqs = sequences();
    let pins = records(Kind::Pin);
    let bytes: usize = pins.iter().map(Vec::len).sum();
    eprintln!("{N} pin records, {bytes} bytes");

    let mut g = c.benchmark_group("decode");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    g.bench_function("json/pin", |b| {
        b.iter(|| {
            for d in &pins {
                let _ = black_box(parse_object::<PinKeys>(d));
            }
        })
    });
    // What the worker did before `clean::json`: a full `serde_json::Value` per record.
    g.bench_function("json_to_value/pin", |b| {
        b.iter(|| {
            for d in &pins {
                let _ = black_box(serde_json::from_slice::<serde_json::Value>(d));
            }
        })
    });
    let aggs = aggregates(&pins);
    g.bench_function("kpl/pin", |b| {
        b.iter(|| {
            let mut n = 0;
            for a in &aggs {
                if let Ok(pinstream::kpl::Decoded::Aggregated(users)) = pinstream::kpl::decode(a) {
                    n += black_box(users).len();
                }
            }
            assert_eq!(n, N);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("clean");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    g.bench_function("pin", |b| {
        b.iter(|| black_box(clean_all(Kind::Pin, &pins, &seqs)))
    });
    g.finish();

    let mut g = c.benchmark_group("arrow_build");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    g.bench_function("pin", |b| {
        b.iter_batched(
            || {
                let records = pins.chunks(CHUNK).zip(seqs.chunks(CHUNK));
                records
                    .map(|(data, seqs)| {
                        let mut rows = TableColumns::new(Kind::Pin);
                        for (d, seq) in data.iter().zip(seqs) {
                            let _ = rows.push(d, &meta(seq));
                        }
                        rows
                    })
                    .collect::<Vec<_>>()
            },
            |mut chunks| {
                black_box(
                    chunks
                        .iter_mut()
                        .map(|r| r.finish().unwrap())
                        .collect::<Vec<_>>(),
                )
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("parquet_encode");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    let (batches, _) = clean_all(Kind::Pin, &pins, &seqs);
    eprintln!(
        "pin batches: {} rows, {} Arrow bytes, {} Parquet bytes",
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>(),
        encode(&batches).len()
    );
    g.bench_function("pin", |b| b.iter(|| black_box(encode(&batches))));
    g.finish();
}

/// Parquet settings compared on records as distinct as real traffic's.
fn parquet_settings(c: &mut Criterion) {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::WriterProperties;
    let mut generator = pinstream::producer::generator::Generator::new(7, 0.0);
    let data: Vec<Vec<u8>> = (0..N)
        .map(|_| generator.next_triple().1[0].1.clone())
        .collect();
    let (batches, _) = clean_all(Kind::Pin, &data, &sequences());
    let defaults = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut g = c.benchmark_group("parquet_settings");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    for (name, props) in [
        ("sink", delta::writer_properties()),
        ("delta_rs_defaults", defaults),
    ] {
        eprintln!(
            "parquet_settings/{name}: {} Parquet bytes",
            encode_with(&batches, props.clone()).len()
        );
        g.bench_function(name, |b| {
            b.iter(|| black_box(encode_with(&batches, props.clone())))
        });
    }
    g.finish();
}

fn worker_path(c: &mut Criterion) {
    let seqs = sequences();
    let mut g = c.benchmark_group("worker_path");
    g.sample_size(10).throughput(Throughput::Elements(N as u64));
    for kind in Kind::ALL {
        let data = records(kind);
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                let (rows, rejects) = clean_all(kind, &data, &seqs);
                black_box((encode(&rows), encode(&rejects)))
            })
        });
    }
    g.finish();
}

fn full_flush(c: &mut Criterion) {
    let seqs = sequences();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = TableRoot::Local(dir.path().to_path_buf());
    let mut g = c.benchmark_group("full_flush");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(N as u64));
    let kind = Kind::Pin;
    let data = records(kind);
    let mut fresh = 0;
    g.bench_function(kind.name(), |b| {
        b.iter_batched(
            || {
                // A new table per flush: commit cost here is that of a young table.
                fresh += 1;
                let name = format!("{kind}_{fresh}");
                rt.block_on(delta::open_or_create(&root, &name, &kind.schema()))
                    .unwrap()
            },
            |mut table| {
                let (rows, _rejects) = clean_all(kind, &data, &seqs);
                let pos = ShardCommit {
                    app_id: format!("bench/{kind}/{SHARD}"),
                    lease_key: format!("{kind}:{SHARD}"),
                    expected: 0,
                    last_sequence: seqs[N - 1].clone(),
                    last_sub_sequence: 0,
                    shard_end: false,
                };
                rt.block_on(delta::append(&mut table, "bench", &rows, &[pos]))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, stages, parquet_settings, worker_path, full_flush);
criterion_main!(benches);
