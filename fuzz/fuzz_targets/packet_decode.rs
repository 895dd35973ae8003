//! Fuzzes the decoder that tells the seed and native protocols apart.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msd_fuzz::check_packet(data));
