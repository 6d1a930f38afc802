//! libFuzzer entry of [`strata_fuzz::response`] (`fuzz/run response`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::response(data));
