//! Engine configuration. The server binary maps its flags onto these fields.

use std::time::Duration;

use strata_proto::{Error, ErrorCode};

use crate::tier::device::DeviceOptions;
use crate::tier::ssd::SsdOptions;
use crate::tier::{TierKind, MAX_TIERS};

/// One tier of the stack, top (fastest) first.
#[derive(Clone, Debug)]
pub struct TierConfig {
    pub kind: TierKind,
    /// Bytes the tier holds.
    pub capacity: u64,
    /// Bytes per segment; also the largest value the tier can hold.
    pub segment_size: u64,
    /// Every extent starts on a multiple of this (a power of two). The default, 4 KiB, lets
    /// a value be DMA'd or written O_DIRECT straight from its extent; stores of many tiny
    /// values can lower it to save space.
    pub alignment: u64,
    /// Fault every page in at start instead of on first write: dram maps its segments
    /// populated; a device tier writes zeros over its segments once through the module
    /// (for host-sim, whose device memory is shared memory, that faults its pages in; a
    /// GPU's or NPU's allocation is backed already and just gets zeroed). Ignored by ssd.
    pub populate: bool,
    /// Where and how an ssd tier keeps its files (`Some` exactly for `TierKind::Ssd`).
    pub ssd: Option<SsdOptions>,
    /// Which device a device tier is on (`Some` exactly for `TierKind::Device`).
    pub device: Option<DeviceOptions>,
}

impl TierConfig {
    /// A dram tier of `capacity` bytes with segments of at most 1 GiB.
    pub fn dram(capacity: u64) -> TierConfig {
        TierConfig {
            kind: TierKind::Dram,
            capacity,
            segment_size: capacity.clamp(1, 1 << 30),
            alignment: 4096,
            populate: false,
            ssd: None,
            device: None,
        }
    }

    /// A device tier of `capacity` bytes the server allocates itself (0: only segments
    /// that clients mount), in segments of at most 1 GiB.
    pub fn device(capacity: u64, opts: DeviceOptions) -> TierConfig {
        TierConfig {
            kind: TierKind::Device,
            capacity,
            segment_size: capacity.clamp(4096, 1 << 30),
            alignment: 4096,
            populate: false,
            ssd: None,
            device: Some(opts),
        }
    }

    /// An ssd tier of `capacity` bytes with files as `opts` says. Its files are a quarter
    /// of the capacity each (64 MiB to 4 GiB), so a few allocators share the load.
    pub fn ssd(capacity: u64, opts: SsdOptions) -> TierConfig {
        TierConfig {
            kind: TierKind::Ssd,
            capacity,
            segment_size: (capacity / 4).clamp(64 << 20, 4 << 30).min(capacity),
            alignment: 4096,
            populate: false,
            ssd: Some(opts),
            device: None,
        }
    }
}

/// Configuration of a [`crate::Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The tier stack, top first. Puts land in the first tier that can hold the value;
    /// eviction demotes from tier i to tier i+1 and drops from the last.
    pub tiers: Vec<TierConfig>,
    /// A tier whose used bytes pass this fraction of its capacity is evicted.
    pub eviction_high_watermark_ratio: f64,
    /// Fraction of capacity one eviction pass frees (at least down to the watermark).
    pub eviction_ratio: f64,
    /// Fraction of a tier's capacity that objects read since they arrived in it may hold
    /// before eviction takes them ahead of objects not read there (segmented LRU: below
    /// it, eviction takes unread objects first).
    pub eviction_protected_ratio: f64,
    /// How long a read lease keeps an object from being evicted, moved or removed.
    pub lease_ttl: Duration,
    /// How long a writer has between put_start and put_end before its reservation is revoked.
    pub put_timeout: Duration,
    /// Index shards (a power of two); each has its own lock and recency lists.
    pub shards: usize,
    /// How often the background thread reaps expired reservations and checks watermarks.
    /// `None` runs no thread: the embedder calls `Store::run_maintenance` itself.
    pub maintenance_interval: Option<Duration>,
    /// Compute and keep an xxh3 checksum of each value at commit.
    pub checksum_on_commit: bool,
}

impl Default for StoreConfig {
    /// A small store: 256 MiB of dram, the brief's watermarks, 10 s leases.
    fn default() -> StoreConfig {
        StoreConfig {
            tiers: vec![TierConfig::dram(256 << 20)],
            eviction_high_watermark_ratio: 0.9,
            eviction_ratio: 0.1,
            eviction_protected_ratio: 0.8,
            lease_ttl: Duration::from_secs(10),
            put_timeout: Duration::from_secs(30),
            shards: 64,
            maintenance_interval: Some(Duration::from_millis(5)),
            checksum_on_commit: true,
        }
    }
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

impl StoreConfig {
    /// Checks every field; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tiers.is_empty() || self.tiers.len() > MAX_TIERS {
            return Err(invalid(format!(
                "need 1 to {MAX_TIERS} tiers, got {}",
                self.tiers.len()
            )));
        }
        for (i, t) in self.tiers.iter().enumerate() {
            let name = t.kind.name();
            if !t.alignment.is_power_of_two() {
                return Err(invalid(format!(
                    "tier {i} ({name}): alignment {} is not a power of two",
                    t.alignment
                )));
            }
            if t.capacity < t.alignment && t.kind != TierKind::Device {
                return Err(invalid(format!(
                    "tier {i} ({name}): capacity {} is below the alignment {}",
                    t.capacity, t.alignment
                )));
            }
            if t.segment_size < t.alignment {
                return Err(invalid(format!(
                    "tier {i} ({name}): segment size {} is below the alignment {}",
                    t.segment_size, t.alignment
                )));
            }
            if (t.kind == TierKind::Ssd) != t.ssd.is_some() {
                return Err(invalid(format!(
                    "tier {i} ({name}): ssd options go with, and only with, an ssd tier"
                )));
            }
            if (t.kind == TierKind::Device) != t.device.is_some() {
                return Err(invalid(format!(
                    "tier {i} ({name}): device options go with, and only with, a device tier"
                )));
            }
            if t.kind == TierKind::Device && (i != 0 || self.tiers.len() < 2) {
                return Err(invalid(format!(
                    "tier {i} (device): the device tier must be the top tier, above dram (its \
                     objects are demoted there)"
                )));
            }
            if t.kind == TierKind::Ssd && (i == 0 || i + 1 != self.tiers.len()) {
                return Err(invalid(format!(
                    "tier {i} (ssd): an ssd tier is filled by demotion, so it must be the last \
                     tier, below a memory tier"
                )));
            }
            if t.kind == TierKind::Ssd && (t.alignment != 4096 || t.capacity < 3 * 4096) {
                return Err(invalid(format!(
                    "tier {i} (ssd): needs 4096-byte alignment and at least 12 KiB"
                )));
            }
            if t.capacity.div_ceil(t.segment_size) > u16::MAX as u64 {
                return Err(invalid(format!(
                    "tier {i} ({name}): more than {} segments",
                    u16::MAX
                )));
            }
        }
        let ratio_ok = |r: f64| r > 0.0 && r <= 1.0;
        if !ratio_ok(self.eviction_high_watermark_ratio) {
            return Err(invalid(format!(
                "eviction_high_watermark_ratio {} is not in (0, 1]",
                self.eviction_high_watermark_ratio
            )));
        }
        if !ratio_ok(self.eviction_ratio) {
            return Err(invalid(format!(
                "eviction_ratio {} is not in (0, 1]",
                self.eviction_ratio
            )));
        }
        if !ratio_ok(self.eviction_protected_ratio) {
            return Err(invalid(format!(
                "eviction_protected_ratio {} is not in (0, 1]",
                self.eviction_protected_ratio
            )));
        }
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(invalid(format!(
                "shards {} is not a power of two up to 65536",
                self.shards
            )));
        }
        if self.lease_ttl.is_zero() || self.put_timeout.is_zero() {
            return Err(invalid("lease_ttl and put_timeout must be positive".into()));
        }
        Ok(())
    }
}
