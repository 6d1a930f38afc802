//! The location/lease cache: where a key's bytes are, for as long as the server promised
//! to leave them there.
//!
//! Each entry expires at its lease's end minus a margin, so a cached location is never
//! handed out when the lease may lapse before the caller's copy finishes. A key removed
//! through this client is dropped at once.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use strata_proto::msg::{LeaseGrant, Location};

/// A location under a read lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedLocation {
    /// Where the bytes are in the server's tiers.
    pub location: Location,
    /// xxh3-64 of the value (0 when the server records none).
    pub checksum: u64,
    /// Until when the server keeps the object in place (client clock; taken from when
    /// the request was sent, so it errs early).
    pub valid_until: Instant,
    /// The server instance that granted it: a location means nothing to another one.
    /// Private, so every `LeasedLocation` comes from a server.
    pub(crate) instance: u64,
    /// The lease as the TCP data plane checks it (signed for this client's session).
    pub(crate) grant: Option<LeaseGrant>,
    /// The key leased: the data plane names it with the grant, and a reader whose copy
    /// failed asks the server for the key's value.
    pub(crate) key: bytes::Bytes,
    /// An unleased copy the server made in shared memory while granting this lease on an
    /// ssd record (`strata_proto::msg::Lease::copy`): read it checked against the
    /// checksum, or read `location`.
    pub(crate) copy: Option<Location>,
}

struct UntilLeaseEnds {
    margin: Duration,
}

impl Expiry<Vec<u8>, LeasedLocation> for UntilLeaseEnds {
    fn expire_after_create(
        &self,
        _key: &Vec<u8>,
        value: &LeasedLocation,
        created_at: Instant,
    ) -> Option<Duration> {
        let left = value.valid_until.saturating_duration_since(created_at);
        Some(left.saturating_sub(self.margin))
    }
}

/// Key -> leased location, expiring with the lease.
pub(crate) struct LocationCache {
    cache: Cache<Vec<u8>, LeasedLocation>,
    margin: Duration,
    /// Capacity 0: cache nothing (every read leases anew).
    enabled: bool,
}

impl LocationCache {
    pub fn new(capacity: u64, margin: Duration) -> LocationCache {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilLeaseEnds { margin })
            .build();
        LocationCache {
            cache,
            margin,
            enabled: capacity > 0,
        }
    }

    /// The cached location of `key` from server `instance`, if its lease still has more
    /// than the margin left.
    pub fn get(&self, key: &[u8], instance: u64) -> Option<LeasedLocation> {
        let hit = self.cache.get(key)?;
        // moka's expiry is lazy about time granularity: check the lease itself too.
        (hit.instance == instance && hit.valid_until > Instant::now() + self.margin).then_some(hit)
    }

    pub fn insert(&self, key: &[u8], location: LeasedLocation) {
        if self.enabled && location.valid_until > Instant::now() + self.margin {
            self.cache.insert(key.to_vec(), location);
        }
    }

    pub fn invalidate(&self, key: &[u8]) {
        self.cache.invalidate(key);
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(for_ms: u64) -> LeasedLocation {
        LeasedLocation {
            location: Location {
                tier: 0,
                segment: 1,
                offset: 4096,
                len: 10,
            },
            checksum: 9,
            valid_until: Instant::now() + Duration::from_millis(for_ms),
            instance: 1,
            grant: None,
            key: bytes::Bytes::new(),
            copy: None,
        }
    }

    #[test]
    fn entries_live_until_lease_end_minus_margin() {
        let cache = LocationCache::new(100, Duration::from_millis(50));
        cache.insert(b"long", leased(10_000));
        cache.insert(b"short", leased(120));
        cache.insert(b"too-short", leased(20));
        assert_eq!(cache.get(b"long", 1).unwrap().checksum, 9);
        assert!(cache.get(b"long", 2).is_none(), "another server instance");
        assert!(cache.get(b"short", 1).is_some());
        assert!(cache.get(b"too-short", 1).is_none(), "inside the margin");
        // "short" lives 120 - 50 = 70 ms: wait for it to go (bounded), and not sooner.
        let start = Instant::now();
        while cache.get(b"short", 1).is_some() {
            assert!(start.elapsed() < Duration::from_secs(2), "never expired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "expired too early"
        );
        assert!(cache.get(b"long", 1).is_some());
        cache.invalidate(b"long");
        assert!(cache.get(b"long", 1).is_none());
    }
}
