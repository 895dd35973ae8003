//! Criterion benchmarks of the packet codecs: encode and decode of the seed ANNOUNCE and of the
//! native ANNOUNCE, without and with authentication.
//!
//! Run with `cargo bench -p msd-bench --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use msd_bench::packets::{self, ID, TIMESTAMP_MS, URL};
use msd_wire::native::{NativePacket, Verify};
use msd_wire::seed::SeedPacket;

fn seed(c: &mut Criterion) {
    let packet = packets::seed_announce();
    let bytes = packet.to_vec().expect("the seed ANNOUNCE encodes");
    let mut group = c.benchmark_group("seed_announce");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&packet)
                .encode(&mut out)
                .expect("the seed ANNOUNCE encodes");
            black_box(&out);
        });
    });
    group.bench_function("decode", |b| {
        b.iter(|| SeedPacket::decode(black_box(&bytes)))
    });
    group.finish();
}

fn native(c: &mut Criterion) {
    let packet = packets::native_announce(ID, URL, 1, TIMESTAMP_MS);
    let bytes = packet.to_vec(None).expect("the native ANNOUNCE encodes");
    let mut group = c.benchmark_group("native_announce");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&packet)
                .encode(None, &mut out)
                .expect("the native ANNOUNCE encodes");
            black_box(&out);
        });
    });
    group.bench_function("decode", |b| {
        b.iter(|| NativePacket::decode(black_box(&bytes), Verify::No))
    });
    group.finish();
}

fn native_authenticated(c: &mut Criterion) {
    let ring = packets::key_ring();
    let key = ring.primary();
    let packet = packets::native_announce(ID, URL, 1, TIMESTAMP_MS);
    let bytes = packet
        .to_vec(Some(key))
        .expect("the authenticated ANNOUNCE encodes");
    let mut group = c.benchmark_group("native_announce_authenticated");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&packet)
                .encode(Some(key), &mut out)
                .expect("the authenticated ANNOUNCE encodes");
            black_box(&out);
        });
    });
    group.bench_function("decode_verify", |b| {
        b.iter(|| NativePacket::decode(black_box(&bytes), Verify::With(&ring)));
    });
    group.finish();
}

criterion_group!(codec, seed, native, native_authenticated);
criterion_main!(codec);
