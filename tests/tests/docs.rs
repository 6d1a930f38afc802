//! The docs hold together: every relative link in the README and under docs/ names a file
//! of this repository (no link into a directory outside it, such as a design brief that
//! lives elsewhere), so a reader of a fresh clone never follows a dead one.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// The markdown files to check: the README and everything under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "md") {
                found.push(path);
            }
        }
    }
    found
}

/// The targets of the `[text](target)` links in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

#[test]
fn every_relative_link_resolves_inside_the_repository() {
    let root = repo_root().canonicalize().unwrap();
    let mut checked = 0;
    let mut dead = Vec::new();
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let path = doc.parent().unwrap().join(file);
            checked += 1;
            match path.canonicalize() {
                Ok(real) if real.starts_with(&root) => {}
                Ok(real) => dead.push(format!(
                    "{}: {target} leaves the repository ({})",
                    doc.display(),
                    real.display()
                )),
                Err(_) => dead.push(format!("{}: {target} does not exist", doc.display())),
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    assert!(
        checked >= 20,
        "only {checked} links found: is the parser broken?"
    );
}

#[test]
fn the_engine_doc_names_every_file_of_the_engine() {
    let root = repo_root();
    let doc = std::fs::read_to_string(root.join("docs/engine.md")).unwrap();
    let mut missing = Vec::new();
    let mut dirs = vec![root.join("engine/src")];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            seen += 1;
            // A file is named by its path, or by its name in its folder's row.
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !doc.contains(&rel) && !doc.contains(&format!("`{name}`")) {
                missing.push(rel);
            }
        }
    }
    assert!(seen >= 20, "only {seen} engine files found");
    assert!(
        missing.is_empty(),
        "docs/engine.md does not name: {missing:?}"
    );
}
