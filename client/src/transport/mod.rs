//! The ways value bytes travel besides QUIC streams (which `connection` and `client` own).
//!
//! * [`shm`]: same host; the server's dram segments mapped into this process.
//! * [`ssd`]: same host; the server's ssd files, read by this process (they come with the
//!   segments).
//! * [`device`]: same host; the server's device segments imported through the device
//!   module, copied with its copy kinds.
//! * [`tcp`]: another host; the server's TCP data plane, proven by this QUIC session.
//!
//! [`Direct`] puts the two behind one face: the client asks it whether a location can be
//! copied in this process and has it do the copy.

pub(crate) mod device;
pub(crate) mod reader;
pub(crate) mod shm;
pub(crate) mod ssd;
pub(crate) mod tcp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::msg::Location;
use strata_proto::Result;

use crate::cache::LeasedLocation;
use crate::config::Transport;

use device::DeviceSegments;
use shm::SharedSegments;
use tcp::DataPlane;

/// How one connection moves value bytes: chosen once, when it connects (the most direct
/// that works, or the one `ClientConfig::transport` forces), and held for its life. Every
/// operation matches on it instead of asking again which transports are up.
pub(crate) enum Route {
    /// Same host: the server's segments (and ssd files, and device tier) are read and
    /// written in this process. An object on a tier this process cannot reach still
    /// comes through QUIC.
    Local(Direct),
    /// Another host: the server's TCP data plane, proven by this connection's session.
    Tcp(Arc<DataPlane>),
    /// Value bytes on this connection's QUIC streams.
    Quic,
}

impl Route {
    /// The local readers, on a same-host route.
    pub fn local(&self) -> Option<&Direct> {
        match self {
            Route::Local(direct) => Some(direct),
            _ => None,
        }
    }

    /// The mapped dram segments, on a same-host route that has them.
    pub fn shm(&self) -> Option<&Arc<SharedSegments>> {
        self.local().and_then(|d| d.shm.as_ref())
    }

    /// The server's device tier opened in this process, on a same-host route that has it.
    pub fn device(&self) -> Option<&Arc<DeviceSegments>> {
        self.local().and_then(|d| d.device.as_ref())
    }

    /// The transport as a user names it: `Shm` once the dram segments are mapped (a
    /// device-only local route moves dram values over QUIC), `Tcp`, else `Quic`.
    pub fn transport(&self) -> Transport {
        match self {
            Route::Local(d) if d.shm.is_some() => Transport::Shm,
            Route::Tcp(_) => Transport::Tcp,
            _ => Transport::Quic,
        }
    }
}

/// Which direct path moved a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    Shm,
    /// A read of the server's ssd files.
    SsdFile,
    Device,
    Tcp,
}

/// The direct transports of one connection.
#[derive(Clone)]
pub(crate) struct Direct {
    pub shm: Option<Arc<SharedSegments>>,
    pub device: Option<Arc<DeviceSegments>>,
}

impl Direct {
    /// The server instance the transports belong to.
    pub fn instance(&self) -> u64 {
        match (&self.shm, &self.device) {
            (Some(s), _) => s.instance(),
            (None, Some(d)) => d.instance(),
            (None, None) => 0,
        }
    }

    /// The path that can read `location` in this process, if any.
    pub fn path(&self, location: &Location) -> Option<Path> {
        if let Some(s) = &self.shm {
            if s.covers(location) {
                return Some(Path::Shm);
            }
            if s.files().covers(location) {
                return Some(Path::SsdFile);
            }
        }
        if self.device.as_ref().is_some_and(|d| d.covers(location)) {
            return Some(Path::Device);
        }
        None
    }

    /// Whether `location` can be read in this process.
    pub fn covers(&self, location: &Location) -> bool {
        self.path(location).is_some()
    }

    /// Whether a reservation at `location` can be written in this process (memory only:
    /// the ssd files are read-only here).
    pub fn covers_for_write(&self, location: &Location) -> bool {
        matches!(self.path(location), Some(Path::Shm | Path::Device))
    }

    /// Reads the value at `location` into `dst` under its lease (see
    /// [`SharedSegments::read`], [`ssd::SsdFiles::read`]). An ssd read blocks on the disk
    /// and always verifies `checksum`; a memory copy verifies it only when given.
    pub fn read(
        &self,
        location: &Location,
        dst: &mut [u8],
        valid_until: Instant,
        lease_checksum: u64,
        verify: bool,
    ) -> Result<usize> {
        let checksum = verify.then_some(lease_checksum);
        match (&self.shm, &self.device) {
            (Some(s), _) if s.covers(location) => s.read(location, dst, valid_until, checksum),
            (Some(s), _) if s.files().covers(location) => {
                s.files().read(location, dst, valid_until, lease_checksum)
            }
            (_, Some(d)) => d.read(location, dst, valid_until, checksum),
            (Some(s), None) => s.read(location, dst, valid_until, checksum),
            (None, None) => unreachable!("a Direct has at least one transport"),
        }
    }

    /// Reads the value `lease` names into `dst`, and says by which path. A lease on an ssd
    /// record may come with the copy the server just made of it in memory
    /// ([`LeasedLocation::copy`]): that copy is read first and kept only if it hashes to
    /// the checksum, since no lease protects it and its memory may have been reused
    /// meanwhile; otherwise the leased location is read, checked as [`Direct::read`] says.
    pub fn read_lease(
        &self,
        lease: &LeasedLocation,
        dst: &mut [u8],
        verify: bool,
    ) -> (Option<Path>, Result<usize>) {
        let copy = lease.copy.filter(|c| {
            lease.checksum != 0 && matches!(self.path(c), Some(Path::Shm | Path::Device))
        });
        if let Some(copy) = copy {
            match self.read(&copy, dst, lease.valid_until, lease.checksum, true) {
                Ok(n) => return (self.path(&copy), Ok(n)),
                Err(e) => tracing::debug!("the server's copy changed before it was read: {e}"),
            }
        }
        let read = self.read(
            &lease.location,
            dst,
            lease.valid_until,
            lease.checksum,
            verify,
        );
        (self.path(&lease.location), read)
    }

    /// Copies `src` into the reserved `location`; returns its xxh3-64.
    pub fn write(
        &self,
        location: &Location,
        src: &[u8],
        deadline: Instant,
        margin: Duration,
    ) -> Result<u64> {
        match (&self.shm, &self.device) {
            (Some(s), _) if s.covers(location) => s.write(location, src, deadline, margin),
            (_, Some(d)) => d.write(location, src, deadline, margin),
            (Some(s), None) => s.write(location, src, deadline, margin),
            (None, None) => unreachable!("a Direct has at least one transport"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shm::tests::{at, local_segments};
    use super::*;

    /// The server's copy is taken only when its bytes hash to the lease's checksum, and
    /// never without a checksum; otherwise the leased location is read.
    #[test]
    fn a_lease_s_copy_is_read_only_while_it_matches_the_checksum() {
        let direct = Direct {
            shm: Some(Arc::new(local_segments(1 << 20))),
            device: None,
        };
        let shm = direct.shm.as_deref().unwrap();
        let later = Instant::now() + Duration::from_secs(10);
        let value: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let other = vec![0xAB; value.len()];
        let (copy, record) = (at(0, 8192), at(65536, 8192));
        let write = |loc: &Location, bytes: &[u8]| {
            shm.write(loc, bytes, later, Duration::ZERO).unwrap();
        };
        let lease = |checksum: u64, copy: Option<Location>| LeasedLocation {
            location: record,
            checksum,
            valid_until: later,
            instance: 7,
            grant: None,
            key: bytes::Bytes::new(),
            copy,
        };
        let sum = xxhash_rust::xxh3::xxh3_64(&value);
        let mut out = vec![0u8; value.len()];
        let mut read = |lease: &LeasedLocation| {
            let (path, n) = direct.read_lease(lease, &mut out, false);
            assert_eq!((path, n.unwrap()), (Some(Path::Shm), value.len()));
            out.clone()
        };

        // The copy holds the value (the record here holds other bytes, to tell them apart).
        write(&copy, &value);
        write(&record, &other);
        assert_eq!(read(&lease(sum, Some(copy))), value);
        // Without a checksum the copy has no safeguard and is not read.
        assert_eq!(read(&lease(0, Some(copy))), other);
        // Reused since the server made it: the record is read instead.
        write(&copy, &other);
        write(&record, &value);
        assert_eq!(read(&lease(sum, Some(copy))), value);
        // A copy outside the mapped memory is not looked at.
        assert_eq!(read(&lease(sum, Some(at(1 << 30, 8192)))), value);
    }
}
