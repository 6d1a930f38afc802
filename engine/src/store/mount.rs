//! Device segments that engine processes contribute: mount, heartbeat, unmount, and the
//! removal of a segment whose owner went silent.
//!
//! Removing a segment is two steps in this order: the tier takes it out of its table, then
//! a sweep drops every index entry still pointing into it. A put that found space in the
//! segment just before checks, under its shard lock, that the segment is still there before
//! it records the extent, so no entry can survive the sweep.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_epoch as epoch;
use strata_device::IpcHandle;
use strata_proto::{Error, ErrorCode, Result};

use super::facade::Store;
use super::index::key_hash;
use super::inner::Inner;
use crate::tier::device::DeviceTier;

/// What an unmount did with the segment's objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmountReport {
    /// Objects moved down a tier (keeping key, checksum and pin).
    pub moved: u64,
    /// Objects dropped: no room below, still leased at the end of the wait, or pending.
    pub dropped: u64,
}

impl Store {
    /// The device tier and its index, if the store has one.
    pub fn device_tier(&self) -> Option<(u8, &DeviceTier)> {
        self.device().ok()
    }

    /// The device tier and its index, or `InvalidArgument` naming the flag that adds one.
    pub fn device(&self) -> Result<(u8, &DeviceTier)> {
        self.inner.device().map(|(i, d)| (i as u8, d))
    }

    /// Imports memory a client allocated through the device module as a new segment of
    /// the device tier; returns the segment's number. The owner must heart-beat it.
    pub fn mount_segment(&self, handle: &IpcHandle, size: u64, owner: &str) -> Result<u32> {
        let (_, device) = self.inner.device()?;
        device.mount(handle, size, owner, self.inner.clock.now())
    }

    /// Keeps a mounted segment alive.
    pub fn heartbeat_segment(&self, segment: u32) -> Result<()> {
        self.inner
            .device()?
            .1
            .heartbeat(segment, self.inner.clock.now())
    }

    /// Gives a mounted segment back to its owner: no new objects go there, its objects
    /// move to the tier below (leased ones once their lease ends, waiting at most one
    /// lease time), and whatever could not move is dropped.
    pub fn unmount_segment(&self, segment: u32) -> Result<UnmountReport> {
        let (i, device) = self.inner.device()?;
        device.start_draining(segment)?;
        let deadline = Instant::now() + self.inner.config.lease_ttl + Duration::from_millis(100);
        let (moved, _) = self.inner.relocate_segment(i, segment as u16, deadline);
        let dropped = self.inner.drop_segment(i, segment)?;
        Ok(UnmountReport { moved, dropped })
    }
}

impl Inner {
    pub(crate) fn device(&self) -> Result<(usize, &DeviceTier)> {
        self.tiers
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.as_device().map(|d| (i, d)))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    "this server has no device tier (start it with --device-plugin)",
                )
            })
    }

    /// Removes segment `segment` of device tier `i` with every object still in it;
    /// returns how many index entries went.
    pub(crate) fn drop_segment(&self, i: usize, segment: u32) -> Result<u64> {
        let (_, device) = self.device()?;
        device.detach(segment)?;
        let guard = epoch::pin();
        let mut dropped = 0;
        for padded in self.shards.iter() {
            let mut shard = padded.0.lock();
            for (slot, _) in shard.slots() {
                let extent = shard.entry(slot).extent;
                if extent.tier as usize == i && u32::from(extent.segment) == segment {
                    let hash = key_hash(&shard.entry(slot).key);
                    self.drop_entry(&mut shard, hash, slot, &guard);
                    dropped += 1;
                }
            }
        }
        guard.flush();
        self.counters
            .unmounted_objects
            .fetch_add(dropped, Ordering::Relaxed);
        Ok(dropped)
    }

    /// Drops the mounted segments whose owners stopped heart-beating (maintenance).
    pub(crate) fn reap_silent_mounts(&self) {
        let Ok((i, device)) = self.device() else {
            return;
        };
        for segment in device.silent_mounts(self.clock.now()) {
            match self.drop_segment(i, segment) {
                Ok(n) => tracing::warn!(
                    "device segment {segment}: owner stopped heart-beating; unmounted with {n} objects"
                ),
                Err(e) => tracing::warn!("device segment {segment}: unmount failed: {e}"),
            }
        }
    }
}
