//! How this client has moved value bytes: a counter pair (values, bytes) per path, bumped
//! as each value moves, and their snapshot for [`Client::transport_stats`](crate::Client::transport_stats).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::transport::Path;

/// How this client moved value bytes, since it connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Values read by copying from shared memory.
    pub shm_gets: u64,
    /// Bytes of those.
    pub shm_get_bytes: u64,
    /// Values written by copying into shared memory.
    pub shm_puts: u64,
    /// Bytes of those.
    pub shm_put_bytes: u64,
    /// Values read straight from the server's ssd files (same host).
    pub ssd_file_gets: u64,
    /// Bytes of those.
    pub ssd_file_get_bytes: u64,
    /// Values read from QUIC streams.
    pub quic_gets: u64,
    /// Bytes of those.
    pub quic_get_bytes: u64,
    /// Values written to QUIC streams.
    pub quic_puts: u64,
    /// Bytes of those.
    pub quic_put_bytes: u64,
    /// Values read by device copies (from the device tier's imported segments).
    pub device_gets: u64,
    /// Bytes of those.
    pub device_get_bytes: u64,
    /// Values written by device copies.
    pub device_puts: u64,
    /// Bytes of those.
    pub device_put_bytes: u64,
    /// Values read over the TCP data plane.
    pub tcp_gets: u64,
    /// Bytes of those.
    pub tcp_get_bytes: u64,
    /// Values written over the TCP data plane.
    pub tcp_puts: u64,
    /// Bytes of those.
    pub tcp_put_bytes: u64,
    /// Direct reads refused because the lease ended before the copy did.
    pub lease_expired: u64,
}

impl TransportStats {
    /// Both together (a cluster client's members).
    pub fn sum(&self, other: &TransportStats) -> TransportStats {
        TransportStats {
            shm_gets: self.shm_gets + other.shm_gets,
            shm_get_bytes: self.shm_get_bytes + other.shm_get_bytes,
            shm_puts: self.shm_puts + other.shm_puts,
            shm_put_bytes: self.shm_put_bytes + other.shm_put_bytes,
            ssd_file_gets: self.ssd_file_gets + other.ssd_file_gets,
            ssd_file_get_bytes: self.ssd_file_get_bytes + other.ssd_file_get_bytes,
            quic_gets: self.quic_gets + other.quic_gets,
            quic_get_bytes: self.quic_get_bytes + other.quic_get_bytes,
            quic_puts: self.quic_puts + other.quic_puts,
            quic_put_bytes: self.quic_put_bytes + other.quic_put_bytes,
            device_gets: self.device_gets + other.device_gets,
            device_get_bytes: self.device_get_bytes + other.device_get_bytes,
            device_puts: self.device_puts + other.device_puts,
            device_put_bytes: self.device_put_bytes + other.device_put_bytes,
            tcp_gets: self.tcp_gets + other.tcp_gets,
            tcp_get_bytes: self.tcp_get_bytes + other.tcp_get_bytes,
            tcp_puts: self.tcp_puts + other.tcp_puts,
            tcp_put_bytes: self.tcp_put_bytes + other.tcp_put_bytes,
            lease_expired: self.lease_expired + other.lease_expired,
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub shm_gets: AtomicU64,
    pub shm_get_bytes: AtomicU64,
    pub shm_puts: AtomicU64,
    pub shm_put_bytes: AtomicU64,
    pub ssd_file_gets: AtomicU64,
    pub ssd_file_get_bytes: AtomicU64,
    pub quic_gets: AtomicU64,
    pub quic_get_bytes: AtomicU64,
    pub quic_puts: AtomicU64,
    pub quic_put_bytes: AtomicU64,
    pub device_gets: AtomicU64,
    pub device_get_bytes: AtomicU64,
    pub device_puts: AtomicU64,
    pub device_put_bytes: AtomicU64,
    pub tcp_gets: AtomicU64,
    pub tcp_get_bytes: AtomicU64,
    pub tcp_puts: AtomicU64,
    pub tcp_put_bytes: AtomicU64,
    pub lease_expired: AtomicU64,
}

impl Counters {
    pub fn count(pair: (&AtomicU64, &AtomicU64), bytes: usize) {
        pair.0.fetch_add(1, Ordering::Relaxed);
        pair.1.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counters of reads by `path` (none: QUIC).
    pub fn gets_by(&self, path: Option<Path>) -> (&AtomicU64, &AtomicU64) {
        match path {
            Some(Path::Shm) => (&self.shm_gets, &self.shm_get_bytes),
            Some(Path::SsdFile) => (&self.ssd_file_gets, &self.ssd_file_get_bytes),
            Some(Path::Device) => (&self.device_gets, &self.device_get_bytes),
            Some(Path::Tcp) => (&self.tcp_gets, &self.tcp_get_bytes),
            None => (&self.quic_gets, &self.quic_get_bytes),
        }
    }

    /// The counters of writes by `path`.
    pub fn puts_by(&self, path: Path) -> (&AtomicU64, &AtomicU64) {
        match path {
            // No put goes to a file (`Direct::covers_for_write`); were one to, it went by
            // this host's shared memory transport.
            Path::Shm | Path::SsdFile => (&self.shm_puts, &self.shm_put_bytes),
            Path::Device => (&self.device_puts, &self.device_put_bytes),
            Path::Tcp => (&self.tcp_puts, &self.tcp_put_bytes),
        }
    }

    pub fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            shm_gets: get(&self.shm_gets),
            shm_get_bytes: get(&self.shm_get_bytes),
            shm_puts: get(&self.shm_puts),
            shm_put_bytes: get(&self.shm_put_bytes),
            ssd_file_gets: get(&self.ssd_file_gets),
            ssd_file_get_bytes: get(&self.ssd_file_get_bytes),
            quic_gets: get(&self.quic_gets),
            quic_get_bytes: get(&self.quic_get_bytes),
            quic_puts: get(&self.quic_puts),
            quic_put_bytes: get(&self.quic_put_bytes),
            device_gets: get(&self.device_gets),
            device_get_bytes: get(&self.device_get_bytes),
            device_puts: get(&self.device_puts),
            device_put_bytes: get(&self.device_put_bytes),
            tcp_gets: get(&self.tcp_gets),
            tcp_get_bytes: get(&self.tcp_get_bytes),
            tcp_puts: get(&self.tcp_puts),
            tcp_put_bytes: get(&self.tcp_put_bytes),
            lease_expired: get(&self.lease_expired),
        }
    }
}
