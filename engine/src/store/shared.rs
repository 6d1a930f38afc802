//! Leases whose holders read the ssd files themselves: a same-host client given the
//! tier's files (the shared-memory transport's offer) reads a leased ssd record's value
//! straight from the file, so the server sees the lease and nothing else of the read.
//!
//! Two things a get does on its way through the server have to happen at the lease
//! instead: the read counts as a hit, and an object read often enough on ssd moves up.
//! The move needs the bytes, so the server reads the record once itself and moves the
//! object; the reader keeps its ssd lease, and is told where the copy went so that it
//! need not read the record a second time.

use crossbeam_epoch as epoch;
use strata_proto::{ErrorCode, Result};

use super::facade::Store;
use super::index::key_hash;
use super::inner::ObjectAt;
use super::promote::PROMOTE_AFTER_HITS;
use crate::tier::{Extent, SharedSegment};

impl Store {
    /// Counts a read of `key` from its record at `extent` (just leased, on a tier read
    /// through I/O) by the lease holder itself, as a get's hit. True when that makes the
    /// object due to move up: call [`Store::promote_for_file_reader`] (it blocks on the
    /// device) before the holder reads.
    pub fn count_file_read(&self, key: &[u8], extent: Extent) -> bool {
        let hash = key_hash(key);
        let mut shard = self.inner.shard(hash);
        let Some(slot) = shard.find(hash, key) else {
            return false;
        };
        if shard.entry(slot).extent != extent {
            return false; // moved since the lease: its shadow is what was leased
        }
        shard.hit(slot);
        extent.tier > 0 && shard.entry(slot).hits >= PROMOTE_AFTER_HITS
    }

    /// Moves `key` up from its record at `extent`, reading the record (blocks on the
    /// device); returns where the copy went, if the object moved. The reader keeps its
    /// lease on `extent`: the promotion keeps the record as the object's shadow, or is
    /// skipped while that lease runs when no shadow can be kept.
    ///
    /// The copy gets no lease, so it stays free to go back onto its shadow until a reader
    /// leases it: a lease per promotion kept dram so full of leased copies that puts were
    /// refused (docs/benchmarks.md). The reader may still copy it rather than read the
    /// record a second time, checking the bytes against the checksum, since nothing stops
    /// the copy's memory from being reused meanwhile (the server's request core, `net::request`). `Corrupt` when
    /// the record failed its checksum: the object is dropped, and the reader must not
    /// read it.
    pub fn promote_for_file_reader(&self, key: &[u8], extent: Extent) -> Result<Option<Extent>> {
        let hash = key_hash(key);
        // Pin before the lookup: the extent cannot be reclaimed while it is read.
        let pin = epoch::pin();
        let (at, pinned) = {
            let shard = self.inner.shard(hash);
            let Some(slot) = shard.find(hash, key) else {
                return Ok(None);
            };
            let e = shard.entry(slot);
            if e.extent != extent {
                return Ok(None);
            }
            let Some(pinned) = shard.pin_read(slot, extent, &pin) else {
                return Ok(None);
            };
            let at = ObjectAt {
                hash,
                slot,
                generation: e.generation,
            };
            (at, pinned)
        };
        let mut value = vec![0u8; extent.len as usize];
        let read = self.inner.tiers[extent.tier as usize].read(pinned, &mut value);
        drop(pin);
        match read {
            Ok(()) => Ok(self.inner.promote(at, extent, &value)),
            Err(e) if e.code() == ErrorCode::Corrupt => {
                self.inner.drop_corrupt(at, extent);
                Err(e)
            }
            Err(_) => Ok(None), // the reader's own read will tell
        }
    }

    /// The files of every tier that has them, as `(tier index, file)`: what the
    /// shared-memory transport hands to same-host clients besides the segments.
    pub fn shared_files(&self) -> Vec<(u8, crate::tier::SharedFile<'_>)> {
        self.inner
            .tiers
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.shared_files().into_iter().map(move |f| (i as u8, f)))
            .collect()
    }
}

impl Store {
    /// The shared-memory segments of every tier that has them, as `(tier index, segment)`:
    /// what the shared-memory transport hands to same-host clients.
    pub fn shared_segments(&self) -> Vec<(u8, SharedSegment<'_>)> {
        self.inner
            .tiers
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.shared_segments().into_iter().map(move |s| (i as u8, s)))
            .collect()
    }
}
