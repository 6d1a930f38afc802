//! Writes each fuzz target's seed inputs (made by the real encoders) into
//! `fuzz/corpus/<target>/seed-<n>`: `fuzz/run --seed`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in strata_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("the corpus dir");
        for (i, seed) in strata_fuzz::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("writing a seed");
        }
        println!("{target}: {} seeds", strata_fuzz::seeds(target).len());
    }
}
