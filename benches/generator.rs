//! The producer's own speed without sending: synthetic pin/geo/user triples, and KPL
//! aggregation of them. Run: `cargo bench --bench generator`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pinstream::producer::generator::Generator;

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer");
    group.throughput(Throughput::Elements(3 * 1000));
    group.bench_function("generate_1000_triples", |b| {
        let mut g = Generator::new(1, 0.01);
        b.iter(|| {
            for _ in 0..1000 {
                black_box(g.next_triple());
            }
        })
    });
    let mut g = Generator::new(2, 0.0);
    let records: Vec<Vec<u8>> = (0..1000).map(|_| g.next_triple().1[0].1.clone()).collect();
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("kpl_encode_1000_pin_records_in_10_aggregates", |b| {
        b.iter(|| {
            for chunk in records.chunks(100) {
                let refs: Vec<(&str, &[u8])> = chunk.iter().map(|d| ("k", d.as_slice())).collect();
                black_box(pinstream::kpl::encode(&refs));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
