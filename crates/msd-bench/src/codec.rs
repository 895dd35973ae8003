//! Encode and decode times of single packets, measured in batches.
//!
//! `benches/codec.rs` measures the same operations with criterion; this module gives the suite
//! the same figures in its own table without a second tool.

use std::hint::black_box;
use std::time::{Duration, Instant};

use msd_wire::native::{NativePacket, Verify};
use msd_wire::seed::SeedPacket;

use crate::packets::{self, ID, TIMESTAMP_MS, URL};
use crate::report::Report;
use crate::summary::Summary;

const SECTION: &str = "codec";

/// Target wall time of one batch: long next to the clock's resolution, short next to the run.
const BATCH_TIME: Duration = Duration::from_millis(5);

/// Batches per operation; each batch gives one sample of the time per operation.
const BATCHES: usize = 40;

/// Measures encode and decode of the seed ANNOUNCE and of the native ANNOUNCE, without and with
/// authentication.
pub fn run(report: &mut Report) {
    let ring = packets::key_ring();
    let key = ring.primary().clone();
    let seed = packets::seed_announce();
    let native = packets::native_announce(ID, URL, 1, TIMESTAMP_MS);
    let (Ok(seed_bytes), Ok(plain_bytes), Ok(signed_bytes)) = (
        seed.to_vec(),
        native.to_vec(None),
        native.to_vec(Some(&key)),
    ) else {
        report.add(
            SECTION,
            "packet setup",
            "ns",
            None,
            "a benchmark packet failed to encode",
        );
        return;
    };

    let mut out = Vec::with_capacity(256);
    let size = |bytes: &[u8]| format!("{} bytes", bytes.len());
    let encode_seed = time_per_op(|| {
        out.clear();
        let _ = black_box(&seed).encode(&mut out);
        black_box(&out);
    });
    report.add(
        SECTION,
        "encode seed ANNOUNCE",
        "ns",
        encode_seed,
        size(&seed_bytes),
    );
    let decode_seed = time_per_op(|| {
        let _ = black_box(SeedPacket::decode(black_box(&seed_bytes)));
    });
    report.add(
        SECTION,
        "decode seed ANNOUNCE",
        "ns",
        decode_seed,
        size(&seed_bytes),
    );

    let encode_plain = time_per_op(|| {
        out.clear();
        let _ = black_box(&native).encode(None, &mut out);
        black_box(&out);
    });
    report.add(
        SECTION,
        "encode native ANNOUNCE",
        "ns",
        encode_plain,
        size(&plain_bytes),
    );
    let decode_plain = time_per_op(|| {
        let _ = black_box(NativePacket::decode(black_box(&plain_bytes), Verify::No));
    });
    report.add(
        SECTION,
        "decode native ANNOUNCE",
        "ns",
        decode_plain,
        size(&plain_bytes),
    );

    let encode_signed = time_per_op(|| {
        out.clear();
        let _ = black_box(&native).encode(Some(&key), &mut out);
        black_box(&out);
    });
    report.add(
        SECTION,
        "encode native ANNOUNCE, authenticated",
        "ns",
        encode_signed,
        size(&signed_bytes),
    );
    let decode_signed = time_per_op(|| {
        let _ = black_box(NativePacket::decode(
            black_box(&signed_bytes),
            Verify::With(&ring),
        ));
    });
    report.add(
        SECTION,
        "decode and verify native ANNOUNCE, authenticated",
        "ns",
        decode_signed,
        size(&signed_bytes),
    );
}

/// Runs `op` in [`BATCHES`] batches sized to about [`BATCH_TIME`] each and summarizes the
/// nanoseconds per call.
fn time_per_op(mut op: impl FnMut()) -> Option<Summary> {
    let per_batch = calibrate(&mut op);
    let samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                op();
            }
            started.elapsed().as_secs_f64() * 1e9 / per_batch as f64
        })
        .collect();
    Summary::of(&samples)
}

/// Returns how many calls of `op` take about [`BATCH_TIME`], after a warm-up.
fn calibrate(op: &mut impl FnMut()) -> u64 {
    let mut calls = 1u64;
    loop {
        let started = Instant::now();
        for _ in 0..calls {
            op();
        }
        let elapsed = started.elapsed();
        if elapsed >= BATCH_TIME / 4 || calls >= 1 << 30 {
            let scale = BATCH_TIME.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
            return ((calls as f64 * scale) as u64).max(1);
        }
        calls *= 2;
    }
}
