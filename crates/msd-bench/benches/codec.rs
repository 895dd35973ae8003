//! Criterion benchmarks of the packet codecs: encode and decode of the seed ANNOUNCE and of the
//! native ANNOUNCE, without and with authentication.
//!
//! Run with `cargo bench -p msd-bench --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use msd_bench::packets::{self, ID, TIMESTAMP_MS, URL};
use msd_wire::native::{NativePacket, Verify};
use msd_wire::seed::SeedPacket;

/// Benchmarks `encode` into a reused buffer and `decode` of `bytes` in the group `name`, under
/// the function names `encode` and `decode_name`.
fn encode_and_decode<E, D>(
    c: &mut Criterion,
    name: &str,
    bytes: &[u8],
    mut encode: E,
    decode_name: &str,
    decode: D,
) where
    E: FnMut(&mut Vec<u8>),
    D: Fn(&[u8]),
{
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode(&mut out);
            black_box(&out);
        });
    });
    group.bench_function(decode_name, |b| b.iter(|| decode(black_box(bytes))));
    group.finish();
}

fn seed(c: &mut Criterion) {
    let packet = packets::seed_announce();
    let bytes = packet.to_vec().expect("the seed ANNOUNCE encodes");
    let encode = |out: &mut Vec<u8>| {
        black_box(&packet)
            .encode(out)
            .expect("the seed ANNOUNCE encodes")
    };
    let decode = |bytes: &[u8]| {
        black_box(SeedPacket::decode(bytes).expect("the seed ANNOUNCE decodes"));
    };
    encode_and_decode(c, "seed_announce", &bytes, encode, "decode", decode);
}

fn native(c: &mut Criterion) {
    let packet = packets::native_announce(ID, URL, 1, TIMESTAMP_MS);
    let bytes = packet.to_vec(None).expect("the native ANNOUNCE encodes");
    let encode = |out: &mut Vec<u8>| {
        black_box(&packet)
            .encode(None, out)
            .expect("the native ANNOUNCE encodes")
    };
    let decode = |bytes: &[u8]| {
        black_box(NativePacket::decode(bytes, Verify::No).expect("the native ANNOUNCE decodes"));
    };
    encode_and_decode(c, "native_announce", &bytes, encode, "decode", decode);
}

fn native_authenticated(c: &mut Criterion) {
    let ring = packets::key_ring();
    let key = ring.primary();
    let packet = packets::native_announce(ID, URL, 1, TIMESTAMP_MS);
    let bytes = packet
        .to_vec(Some(key))
        .expect("the authenticated ANNOUNCE encodes");
    let encode = |out: &mut Vec<u8>| {
        black_box(&packet)
            .encode(Some(key), out)
            .expect("the authenticated ANNOUNCE encodes")
    };
    let decode = |bytes: &[u8]| {
        black_box(
            NativePacket::decode(bytes, Verify::With(&ring))
                .expect("the authenticated ANNOUNCE verifies"),
        );
    };
    encode_and_decode(
        c,
        "native_announce_authenticated",
        &bytes,
        encode,
        "decode_verify",
        decode,
    );
}

criterion_group!(codec, seed, native, native_authenticated);
criterion_main!(codec);
