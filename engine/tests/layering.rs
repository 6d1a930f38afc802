//! The engine stays embeddable: its normal dependencies, and those of the workspace crates
//! it builds on, name no network, TLS, HTTP, CLI or exporter crate. An embedder of `Store`
//! links none of them (`cargo tree -p strata-engine -e normal` shows the same).

use std::path::Path;

/// Crates that belong to the service (`strata-server`), never to the engine.
const SERVICE_ONLY: &[&str] = &[
    "quinn",
    "rustls",
    "tokio-rustls",
    "rcgen",
    "hyper",
    "hyper-util",
    "clap",
    "toml",
    "metrics-exporter-prometheus",
    "tracing-subscriber",
    "tokio",
];

/// The names in the `[dependencies]` table of the manifest at `path`, with the text of
/// each entry.
fn normal_dependencies(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.']).next().unwrap().trim();
        deps.push((name.to_owned(), line.to_owned()));
    }
    deps
}

#[test]
fn the_engine_depends_on_no_service_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut checked = 0;
    // The engine, and each workspace crate among its dependencies (found by name).
    let mut manifests = vec![root.join("engine/Cargo.toml")];
    while let Some(manifest) = manifests.pop() {
        for (name, entry) in normal_dependencies(&manifest) {
            checked += 1;
            // Optional ones are on only through a feature, and the entry turning on a
            // feature is checked where it is written (no QUIC feature, below).
            if entry.contains("optional = true") {
                continue;
            }
            assert!(
                !SERVICE_ONLY.contains(&name.as_str()),
                "{} depends on {name}, a service crate",
                manifest.display()
            );
            assert!(
                !entry.contains("quinn"),
                "{} turns on a QUIC feature: {entry}",
                manifest.display()
            );
            if let Some(dir) = name.strip_prefix("strata-") {
                manifests.push(root.join(dir).join("Cargo.toml"));
            }
        }
    }
    assert!(checked >= 10, "read only {checked} dependencies");
}
