//! Every committed corpus input (seeds, and what fuzzing found worth keeping, crashes
//! included once fixed) runs through its target in every test run: a crash once found
//! stays fixed, without libFuzzer or instrumentation.

use std::path::Path;

#[test]
fn every_corpus_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, run) in strata_fuzz::TARGETS {
        let dir = root.join(target);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "{target} has no corpus");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            run(&data);
        }
    }
}

#[test]
fn the_seeds_are_what_the_parsers_accept() {
    use strata_proto::wire::{RequestHead, REQUEST_HEAD_LEN};
    for seed in strata_fuzz::seeds("quic_request") {
        let head = RequestHead::decode(*seed.first_chunk::<REQUEST_HEAD_LEN>().unwrap());
        assert!(head.check().is_ok(), "{head:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata-000.ssd");
    std::fs::write(&path, &strata_fuzz::seeds("ssd_scan")[0]).unwrap();
    let (_, records) = strata_engine::tier::ssd::scan_file(&path, true).unwrap();
    assert_eq!(records.len(), 1);
    assert!(records[0].intact, "the seed's value matches its checksum");
    for seed in strata_fuzz::seeds("config") {
        let text = std::str::from_utf8(&seed).unwrap();
        let args: strata_server::settings::ServerArgs = toml::from_str(text).unwrap();
        assert!(args.resolve().is_ok(), "{text}");
    }
}
