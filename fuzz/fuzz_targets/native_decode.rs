//! Fuzzes the native decoder with and without verification, and behind a valid tag.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msd_fuzz::check_native(data));
