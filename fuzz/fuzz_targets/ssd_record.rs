//! libFuzzer entry of [`strata_fuzz::ssd_record`] (`fuzz/run ssd_record`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::ssd_record(data));
