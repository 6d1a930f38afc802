//! libFuzzer entry of [`strata_fuzz::ssd_scan`] (`fuzz/run ssd_scan`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::ssd_scan(data));
