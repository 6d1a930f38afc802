//! libFuzzer entry of [`strata_fuzz::config`] (`fuzz/run config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::config(data));
