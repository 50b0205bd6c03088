//! Digest throughput: `cargo bench -p berth-benches --bench api_digest`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use berth_api::{Algorithm, Digest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn digest(c: &mut Criterion) {
    let data = berth_benches::fixture_bytes(7, 8 << 20);
    let mut group = c.benchmark_group("digest_8MiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| Digest::compute(algorithm, &data))
        });
    }
    group.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
