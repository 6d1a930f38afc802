//! libFuzzer entry of [`strata_fuzz::data_plane`] (`fuzz/run data_plane`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::data_plane(data));
