//! Fuzzes the seed decoder for panics and for packets that change across re-encoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msd_fuzz::check_seed(data));
