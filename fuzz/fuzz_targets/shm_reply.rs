//! libFuzzer entry of [`strata_fuzz::shm_reply`] (`fuzz/run shm_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::shm_reply(data));
