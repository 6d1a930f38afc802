//! The `mixed` workload checked in bench processes of their own: inside the test harness
//! other tests allocate, free and start threads alongside, and the memory figure is the
//! process's growth, the teardown check its new threads.

use std::path::Path;
use std::process::Command;

/// Runs `strata-bench --quick --json DIR/mixed.jsonl mixed ARGS --dir DIR`; its stdout.
fn mixed_quick(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .arg("--quick")
        .arg("--json")
        .arg(dir.join("mixed.jsonl"))
        .arg("mixed")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run strata-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "strata-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `mixed` row of `system` in a JSON Lines report.
fn mix_row(report: &str, system: &str) -> serde_json::Value {
    report
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .find(|r| r["system"] == system && r["op"] == "mixed")
        .unwrap_or_else(|| panic!("no {system} mix row in\n{report}"))
}

#[test]
fn the_mixed_bench_measures_the_memory_each_system_holds() {
    if !Path::new("/proc/self/smaps_rollup").exists() {
        println!("skipped: the memory figure needs /proc/self/smaps_rollup (Linux 4.14+)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // 16 MiB of memory each, a working set of 64 MiB: both fill their memory.
    let stdout = mixed_quick(
        dir.path(),
        &[
            "--systems",
            "strata-embedded,foyer",
            "--dram-mib",
            "16",
            "--foyer-flush-mib",
            "2",
            "--ops",
            "200",
        ],
    );
    assert!(
        stdout.contains("foyer: 12 MiB cache, 2 MiB submit queue, 2 MiB flush buffers"),
        "foyer's queue and buffers come out of its budget:\n{stdout}"
    );
    let report = std::fs::read_to_string(dir.path().join("mixed.jsonl")).expect("the JSON report");
    let mib = |system: &str| {
        mix_row(&report, system)["memory_mib"]
            .as_f64()
            .unwrap_or_else(|| panic!("{system}: no memory_mib"))
    };
    // strata's dram tier is a memfd, outside the heap: the figure must see it full.
    let strata = mib("strata-embedded");
    assert!(
        strata >= 16.0,
        "strata-embedded held {strata} MiB, its dram tier is 16"
    );
    // foyer's cache is heap: at least the 12 MiB it may fill.
    let foyer = mib("foyer");
    assert!(foyer >= 12.0, "foyer held {foyer} MiB, its cache is 12");
    for (system, held) in [("strata-embedded", strata), ("foyer", foyer)] {
        assert!(
            held < 64.0,
            "{system}: {held} MiB is the working set, not a budget"
        );
    }
}

#[test]
fn no_system_leaves_a_thread_running_into_the_next_one_s_measurement() {
    let dir = tempfile::tempdir().expect("temp dir");
    // foyer on io_uring first: its engine's thread polls until its runtime ends, and it
    // once ran on through every system measured after it.
    let stdout = mixed_quick(
        dir.path(),
        &[
            "--systems",
            "foyer,strata-embedded,strata-tcp",
            "--foyer-io",
            "uring",
            "--dram-mib",
            "8",
            "--ops",
            "100",
            "--foyer-flush-mib",
            "1",
        ],
    );
    for system in ["foyer", "strata-embedded", "strata-tcp"] {
        assert!(
            stdout.contains(&format!("mixed    {system}")),
            "{system} did not run:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("threads busy after its teardown"),
        "{stdout}"
    );
}
