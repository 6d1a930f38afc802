//! libFuzzer entry of [`strata_fuzz::quic_request`] (`fuzz/run quic_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::quic_request(data));
