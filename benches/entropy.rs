//! Micro-benchmarks of the rng device's generator: the ChaCha20 keystream alone, and the
//! generator (keystream, key erasure, wiping what it hands out) writing a 4 KiB request.
//!
//! `cargo bench --bench entropy`

use std::fs::File;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vhost_user_sync_rng::drbg::Drbg;
use vhost_user_sync_rng::keystream::Keystream;

fn keystream(c: &mut Criterion) {
    let mut g = c.benchmark_group("chacha20");
    g.throughput(Throughput::Bytes(4096));
    let mut cipher = Keystream::new(&[7; 32], &[0; 12], 0);
    let mut out = vec![0u8; 4096];
    g.bench_function("keystream_4k", |b| {
        b.iter(|| cipher.fill(black_box(&mut out)))
    });
    g.finish();
}

fn generator(c: &mut Criterion) {
    let mut g = c.benchmark_group("drbg");
    g.throughput(Throughput::Bytes(4096));
    let mut drbg = Drbg::new(File::open("/dev/urandom").expect("urandom")).expect("drbg");
    let mut out = vec![0u8; 4096];
    g.bench_function("request_4k", |b| {
        b.iter(|| drbg.write_to(&mut black_box(&mut out[..]), 4096))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = keystream, generator
}
criterion_main!(benches);
