//! Builds the C plugins as shared libraries: the host-sim device module, and the same
//! source stamped with a foreign ABI version (the fixture of the version-check test) and
//! built as a version-1 module (the fixture of the compatibility test).

use std::path::{Path, PathBuf};

fn build_plugin(out_dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let compiler = cc::Build::new()
        .opt_level(2)
        .pic(true)
        .cargo_metadata(false)
        .get_compiler();
    let output = out_dir.join(format!("lib{name}.so"));
    let mut cmd = compiler.to_command();
    cmd.args([
        "-shared",
        "-fPIC",
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror=implicit",
    ])
    .arg("-Iinclude")
    .args(defines)
    .arg("plugins/host_sim.c")
    .arg("-o")
    .arg(&output)
    .arg("-lpthread");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler for {name}: {e}"));
    assert!(status.success(), "compiling {name} failed: {status}");
    output
}

fn main() {
    println!("cargo:rerun-if-changed=include/strata_device.h");
    println!("cargo:rerun-if-changed=plugins/host_sim.c");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let host_sim = build_plugin(&out_dir, "strata_host_sim", &[]);
    let mismatch = build_plugin(
        &out_dir,
        "strata_abi_mismatch",
        &["-DHOST_SIM_ABI_VERSION=999u"],
    );
    let version_1 = build_plugin(&out_dir, "strata_host_sim_v1", &["-DHOST_SIM_AS_VERSION_1"]);
    println!(
        "cargo:rustc-env=STRATA_HOST_SIM_V1_PLUGIN={}",
        version_1.display()
    );
    println!(
        "cargo:rustc-env=STRATA_HOST_SIM_PLUGIN={}",
        host_sim.display()
    );
    println!(
        "cargo:rustc-env=STRATA_ABI_MISMATCH_PLUGIN={}",
        mismatch.display()
    );
}
