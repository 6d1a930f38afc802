//! Where a key lives in a cluster: weighted rendezvous hashing over the active members,
//! by runs of consecutive prefix blocks. Computed identically by servers and clients (and
//! by any other implementation of the spec below, checked by published vectors), so a
//! client places without asking anyone.
//!
//! # The spec (scheme [`SCHEME`])
//!
//! - A member's hash is `h_n = xxh3_64_with_seed(node_id, seed)`.
//! - An anchor key `k` scores member `n` (weight `w_n > 0`) as
//!   `u = ((xxh3_64_with_seed(k, seed ^ h_n) >> 11) + 0.5) / 2^53` (uniform in (0, 1)),
//!   `score = w_n / -ln(u)`.
//! - Members rank by score, highest first; equal scores by node id, smaller first. The
//!   first is the owner, the second the previous owner a joiner took the run from.
//! - A prefix chain of positions (blocks; each position holds one key per TP rank) is cut
//!   into runs of `run_blocks` positions from its start; a run's anchor is the first key
//!   of its first position. Every key of a run goes where its anchor ranks first, so a
//!   lookup touches at most `ceil(positions / run_blocks)` servers and all TP ranks of a
//!   block share an owner. A key outside a chain is its own anchor.
//!
//! Rendezvous hashing moves only the runs a joiner wins (about `w / Σw` of them) and, on a
//! loss, only the lost member's runs, each to its own second-ranked member: no ring, no
//! virtual nodes, nothing to keep in sync but the member list.

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The placement scheme and its version, as recorded in a cluster's config.
pub const SCHEME: &str = "rendezvous-xxh3-v1";

/// Positions per run unless the cluster's config says otherwise.
pub const DEFAULT_RUN_BLOCKS: u32 = 16;

/// The seed a new cluster's config gets unless one is given.
pub const DEFAULT_SEED: u64 = 0x5354_5241_5441_0001;

/// One member as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate<'a> {
    /// The member's stable node id.
    pub node_id: &'a str,
    /// Its share of the keys relative to the others (> 0; a non-positive or non-finite
    /// weight never ranks first).
    pub weight: f64,
}

/// `h_n` of the spec.
pub fn node_hash(seed: u64, node_id: &str) -> u64 {
    xxh3_64_with_seed(node_id.as_bytes(), seed)
}

/// The score of a member (`node_hash` from [`node_hash`]) for an anchor key.
pub fn score(seed: u64, node_hash: u64, weight: f64, anchor: &[u8]) -> f64 {
    if !(weight.is_finite() && weight > 0.0) {
        return 0.0;
    }
    let h = xxh3_64_with_seed(anchor, seed ^ node_hash);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

/// The members' indices, best first, for an anchor key.
pub fn rank(seed: u64, members: &[Candidate<'_>], anchor: &[u8]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (score(seed, node_hash(seed, m.node_id), m.weight, anchor), i))
        .collect();
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| members[a.1].node_id.cmp(members[b.1].node_id))
    });
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The index of the member that owns an anchor key; `None` with no members.
pub fn owner(seed: u64, members: &[Candidate<'_>], anchor: &[u8]) -> Option<usize> {
    rank(seed, members, anchor).first().copied()
}

/// The runs of a chain of `positions` positions: ranges of position indices.
pub fn runs(positions: usize, run_blocks: u32) -> impl Iterator<Item = Range<usize>> {
    let r = run_blocks.max(1) as usize;
    (0..positions.div_ceil(r)).map(move |i| i * r..((i + 1) * r).min(positions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&'static str], weights: &[f64]) -> Vec<Candidate<'static>> {
        ids.iter()
            .zip(weights)
            .map(|(id, w)| Candidate {
                node_id: id,
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn shares_follow_weights() {
        for (weights, want) in [
            ([1.0, 1.0, 1.0], [1.0 / 3.0; 3]),
            ([1.0, 1.0, 2.0], [0.25, 0.25, 0.5]),
        ] {
            let m = members(&["n1", "n2", "n3"], &weights);
            let mut owned = [0usize; 3];
            let n = 30_000;
            for i in 0..n {
                owned[owner(7, &m, format!("run-{i}").as_bytes()).unwrap()] += 1;
            }
            for (got, want) in owned.iter().zip(want) {
                let share = *got as f64 / n as f64;
                assert!((share - want).abs() < 0.02, "{owned:?} vs {want}");
            }
        }
    }

    #[test]
    fn a_join_moves_only_what_the_joiner_wins_and_a_loss_only_the_lost() {
        let three = members(&["n1", "n2", "n3"], &[1.0; 3]);
        let four = members(&["n1", "n2", "n3", "n4"], &[1.0; 4]);
        let two = members(&["n1", "n3"], &[1.0; 2]);
        let (mut moved, n) = (0, 20_000);
        for i in 0..n {
            let k = format!("run-{i}");
            let before = three[owner(1, &three, k.as_bytes()).unwrap()].node_id;
            let ranked = rank(1, &four, k.as_bytes());
            let after = four[ranked[0]].node_id;
            if before != after {
                moved += 1;
                assert_eq!(after, "n4", "a run moved between old members");
                assert_eq!(
                    four[ranked[1]].node_id, before,
                    "previous owner ranks second"
                );
            }
            let survivor = two[owner(1, &two, k.as_bytes()).unwrap()].node_id;
            if before != "n2" {
                assert_eq!(survivor, before, "a loss moved a survivor's run");
            }
        }
        let share = moved as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.02, "{share}");
    }

    #[test]
    fn runs_cover_the_chain() {
        let r: Vec<_> = runs(35, 16).collect();
        assert_eq!(r, vec![0..16, 16..32, 32..35]);
        assert_eq!(runs(0, 16).count(), 0);
        assert_eq!(
            runs(3, 0).count(),
            3,
            "a zero run length means one block per run"
        );
    }

    #[test]
    fn bad_weights_never_win() {
        let m = members(&["a", "b"], &[f64::NAN, 0.0]);
        let m2 = [
            m[0],
            m[1],
            Candidate {
                node_id: "c",
                weight: 1.0,
            },
        ];
        for i in 0..100 {
            assert_eq!(owner(0, &m2, format!("{i}").as_bytes()), Some(2));
        }
    }
}
