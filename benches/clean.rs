//! Hot path of the worker without I/O: JSON decode + clean + Arrow batch building, per
//! stream kind, over the real sample records (`../shared/data`) when present, else over
//! synthetic ones. Run: `cargo bench --bench clean`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pinstream::clean::{clean_into, Kind, RecordMeta, RejectsColumns, TableColumns};
use pinstream::producer::generator::Generator;

fn records(kind: Kind) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../shared/data/{kind}.ndjson"));
    if let Ok(text) = std::fs::read_to_string(path) {
        return text.lines().map(|l| l.as_bytes().to_vec()).collect();
    }
    let mut g = Generator::new(1, 0.0);
    (0..10_000)
        .map(|_| {
            g.next_triple()
                .1
                .into_iter()
                .find(|(k, _)| *k == kind)
                .unwrap()
                .1
        })
        .collect()
}

fn clean_batches(c: &mut Criterion) {
    // The same work twice: once reported in records/s, once in bytes/s.
    for unit in ["records", "bytes"] {
        let mut group = c.benchmark_group(format!("decode_clean_build_{unit}"));
        for kind in Kind::ALL {
            let data = records(kind);
            let bytes: usize = data.iter().map(Vec::len).sum();
            group.throughput(if unit == "records" {
                Throughput::Elements(data.len() as u64)
            } else {
                Throughput::Bytes(bytes as u64)
            });
            group.bench_function(
                format!("{kind}/{}_records_{}_bytes", data.len(), bytes),
                |b| {
                    b.iter(|| {
                        let mut rows = TableColumns::new(kind);
                        let mut rejects = RejectsColumns::default();
                        for (i, d) in data.iter().enumerate() {
                            let seq = i.to_string();
                            let meta = RecordMeta {
                                shard_id: "shardId-000000000000",
                                sequence_number: &seq,
                                sub_sequence_number: 0,
                                arrival_micros: Some(0),
                            };
                            let _ =
                                clean_into(kind, d, &meta, kind.name(), &mut rows, &mut rejects);
                        }
                        black_box((rows.finish().unwrap(), rejects.finish().unwrap()))
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, clean_batches);
criterion_main!(benches);
