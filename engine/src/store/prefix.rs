//! Prefix lookup: how many leading block positions (each every TP rank's key of one
//! block) are stored, optionally leasing them so the loads that follow cannot miss.

use std::sync::atomic::Ordering;

use strata_proto::limits::{MAX_GROUP_KEYS, MAX_PREFIX_GROUPS};
use strata_proto::{validate_key, Error, ErrorCode, Result};

use crate::clock::nanos;

use super::facade::Store;
use super::index::{key_hash, State};
use super::inner::Inner;

/// Result of [`Store::prefix_len`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Leading positions whose keys are all present.
    pub len: usize,
    /// With `lease`: the matched objects are leased until this time (store clock, ns).
    pub leased_until: Option<u64>,
}

/// Keys of a prefix lookup checked per window before deciding whether to go on.
const PREFIX_WINDOW_KEYS: usize = 256;

impl Store {
    /// The number of leading positions whose keys are all present. A position is a group:
    /// all tensor-parallel ranks' keys of one block. The matched keys are touched from last
    /// to first, so the head of a prefix ends up most recently used; with `lease` they are
    /// also leased so a following get cannot miss.
    pub fn prefix_len<G, K>(&self, groups: &[G], lease: bool) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        if groups.len() > MAX_PREFIX_GROUPS {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{} positions, the limit is {MAX_PREFIX_GROUPS}",
                    groups.len()
                ),
            ));
        }
        for g in groups {
            let g = g.as_ref();
            if g.len() > MAX_GROUP_KEYS {
                let msg = format!(
                    "a position has {} keys, the limit is {MAX_GROUP_KEYS}",
                    g.len()
                );
                return Err(Error::new(ErrorCode::TooLarge, msg));
            }
            for k in g {
                validate_key(k.as_ref())?;
            }
        }
        self.inner.prefix_len(groups, lease)
    }
}

impl Inner {
    pub(crate) fn prefix_len<G, K>(&self, groups: &[G], lease: bool) -> Result<PrefixMatch>
    where
        G: AsRef<[K]>,
        K: AsRef<[u8]>,
    {
        // Flatten: key k belongs to position pos_of[k].
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut pos_of: Vec<u32> = Vec::new();
        for (pos, g) in groups.iter().enumerate() {
            for k in g.as_ref() {
                keys.push(k.as_ref());
                pos_of.push(pos as u32);
            }
        }
        let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        // Where each key was found: (slot, generation), or none.
        let mut found: Vec<Option<(u32, u32)>> = vec![None; keys.len()];

        // Pass 1: presence, a window of positions at a time (so a short match does not pay
        // for the whole query), each window's keys grouped by shard.
        let mut matched = groups.len();
        let mut start = 0;
        while start < keys.len() {
            let end = (start + PREFIX_WINDOW_KEYS).min(keys.len());
            // Never split a position across windows.
            let end = (end..keys.len())
                .find(|&k| pos_of[k] != pos_of[end - 1])
                .unwrap_or(keys.len());
            let window: Vec<u32> = (start as u32..end as u32).collect();
            self.for_each_by_shard(&hashes, &window, |shard, run| {
                for &k in run {
                    let k = k as usize;
                    if let Some(s) = shard.find(hashes[k], keys[k]) {
                        let e = shard.entry(s);
                        if e.state == State::Complete {
                            found[k] = Some((s, e.generation));
                        }
                    }
                }
            });
            if let Some(k) = (start..end).find(|&k| found[k].is_none()) {
                matched = pos_of[k] as usize;
                break;
            }
            start = end;
        }

        // Pass 2: touch (and lease) the matched keys so the head of the prefix ends most
        // recent: key k gets recency base + (n - 1 - k), and within a shard the touches run
        // in that ascending order (the run is in ascending k, so backwards). A key that
        // vanished in between shortens the match to the positions before it.
        let n = pos_of
            .iter()
            .take_while(|&&p| (p as usize) < matched)
            .count();
        let now = self.clock.now();
        let until = now.saturating_add(nanos(self.config.lease_ttl));
        let base = self.access_seq.fetch_add(n as u64, Ordering::Relaxed);
        let touched: Vec<u32> = (0..n as u32).collect();
        let mut vanished = matched;
        let mut grants = self.leases.grants(now, until);
        self.for_each_by_shard(&hashes, &touched, |shard, run| {
            for &k in run.iter().rev() {
                let k = k as usize;
                let (slot, generation) = found[k].expect("matched keys were found");
                if shard
                    .live(slot, generation)
                    .is_some_and(|e| e.state == State::Complete)
                {
                    shard.touch(slot, base + (n - 1 - k) as u64);
                    if lease {
                        let e = shard.entry_mut(slot);
                        grants.grant(e.lease_until);
                        e.lease(until);
                    }
                } else {
                    vanished = vanished.min(pos_of[k] as usize);
                }
            }
        });
        let matched = vanished;
        Ok(PrefixMatch {
            len: matched,
            leased_until: (lease && matched > 0).then_some(until),
        })
    }
}
