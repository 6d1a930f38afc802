//! Read leases, read guards and write reservations.
//!
//! * A [`ReadLease`] is a promise by the index: until `expires_at` the object is neither
//!   evicted, moved nor removed (unless forced). It is what a remote or shared-memory
//!   reader gets; it copies, then checks the lease still held before trusting the bytes.
//! * A [`ReadGuard`] is the in-process reader's tool: an epoch pin taken before the lookup.
//!   Even if the object is evicted meanwhile, its bytes stay intact until the guard drops.
//! * A [`WriteReservation`] owns a pending extent. It revokes itself when dropped unless
//!   committed, so an abandoned write can never leak space or become visible.

use std::sync::Arc;

use strata_proto::{Error, ErrorCode, Result};

use super::inner::{Inner, ObjectAt};
use crate::tier::{Extent, OwnedPinnedRead, Tier};

/// Identifies the writer of a reservation; only it may commit or revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriterId(pub(crate) u64);

impl WriterId {
    /// The raw number (unique within one store's lifetime), for the wire.
    pub fn get(self) -> u64 {
        self.0
    }
    /// Rebuilds an id received over the wire.
    pub fn from_raw(raw: u64) -> WriterId {
        WriterId(raw)
    }
}

/// Where an object is, and until when the store promises to leave it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLease {
    pub extent: Extent,
    /// xxh3 of the value, 0 if the store computes none.
    pub checksum: u64,
    /// End of the lease on the store's clock (ns).
    pub expires_at: u64,
}

/// Read access to one object's bytes, safe against concurrent eviction or removal.
/// Not `Send`: it holds this thread's epoch pin.
///
/// Keep it short-lived (copy, then drop): while any epoch pin is held, no retired extent in
/// the process is reclaimed, so a put that needs that space waits for it (up to the put
/// timeout), and a put made on the thread that holds the guard is refused at once.
pub struct ReadGuard<'a> {
    pinned: OwnedPinnedRead,
    inner: &'a Inner,
    at: ObjectAt,
    checksum: u64,
    /// Move the object up a tier once a copy has succeeded.
    promote: bool,
}

impl<'a> ReadGuard<'a> {
    pub(crate) fn new(
        pinned: OwnedPinnedRead,
        inner: &'a Inner,
        at: ObjectAt,
        checksum: u64,
        promote: bool,
    ) -> ReadGuard<'a> {
        ReadGuard {
            pinned,
            inner,
            at,
            checksum,
            promote,
        }
    }

    fn tier(&self) -> &'a dyn Tier {
        &*self.inner.tiers[self.pinned.extent().tier as usize]
    }

    /// xxh3-64 of the value recorded at commit (0 if the store computes none).
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The value's length in bytes.
    pub fn len(&self) -> u64 {
        self.pinned.extent().len
    }

    /// Always false: values have at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes in place, when the tier is host memory (no copy). `None` for a tier read
    /// through I/O (ssd): use [`ReadGuard::copy_to`], which blocks on the device.
    pub fn bytes(&self) -> Option<&[u8]> {
        self.tier().host_bytes(self.pinned.get())
    }

    /// Copies the value into the front of `buf`; returns its length. From a tier that
    /// verifies what it reads, damaged bytes fail with `Corrupt` and the object is dropped
    /// from the store; an object read again on a lower tier is moved up afterwards.
    pub fn copy_to(&self, buf: &mut [u8]) -> Result<usize> {
        let extent = self.pinned.extent();
        let len = extent.len as usize;
        let Some(dst) = buf.get_mut(..len) else {
            let msg = format!(
                "buffer of {} bytes is too small for a value of {len} bytes",
                buf.len()
            );
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        };
        match self.tier().read(self.pinned.get(), dst) {
            Ok(()) => {
                if self.promote {
                    let _ = self.inner.promote(self.at, extent, dst);
                }
                Ok(len)
            }
            Err(e) => {
                if e.code() == ErrorCode::Corrupt {
                    self.inner.drop_corrupt(self.at, extent);
                }
                Err(e)
            }
        }
    }
}

/// A pending write: space reserved for one value. Commit it with [`WriteReservation::commit`];
/// dropping it uncommitted revokes it and returns its space.
pub struct WriteReservation {
    inner: Arc<Inner>,
    key: Box<[u8]>,
    writer: WriterId,
    extent: Extent,
    finished: bool,
}

impl WriteReservation {
    pub(crate) fn new(
        inner: Arc<Inner>,
        key: &[u8],
        writer: WriterId,
        extent: Extent,
    ) -> WriteReservation {
        WriteReservation {
            inner,
            key: key.into(),
            writer,
            extent,
            finished: false,
        }
    }

    /// The key being written.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The writer id (for `Store::put_end` / `put_revoke` from elsewhere).
    pub fn writer(&self) -> WriterId {
        self.writer
    }

    /// Where the value goes.
    pub fn extent(&self) -> Extent {
        self.extent
    }

    /// The reserved value length.
    pub fn len(&self) -> u64 {
        self.extent.len
    }

    /// Always false: a reservation has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `data` into the value at `offset`. Fails with `LeaseExpired` if the
    /// reservation passed its deadline (its space may already be someone else's).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner
            .write_reserved(&self.key, self.writer, offset, data)
            .map_err(reservation_gone)
    }

    /// Makes the value visible. On error the reservation is gone (revoked or expired).
    pub fn commit(self) -> Result<()> {
        self.finish_commit(None)
    }

    /// [`WriteReservation::commit`] recording `checksum` (the value's xxh3-64 as the writer
    /// computed it) instead of reading the value to compute it.
    pub fn commit_with_checksum(self, checksum: u64) -> Result<()> {
        self.finish_commit(Some(checksum))
    }

    fn finish_commit(mut self, checksum: Option<u64>) -> Result<()> {
        self.finished = true;
        let result = self
            .inner
            .put_end_for(&self.key, self.writer, checksum)
            .map_err(reservation_gone);
        if result.is_err() {
            // Whatever went wrong, do not leave the space reserved.
            let _ = self.inner.put_revoke_for(&self.key, self.writer);
        }
        result
    }

    /// Cancels the write and returns the space now.
    pub fn revoke(mut self) -> Result<()> {
        self.finished = true;
        self.inner.put_revoke_for(&self.key, self.writer)
    }
}

/// This guard did hold a reservation, so a missing key means it ended (expired and reaped,
/// or removed with force): say so rather than `NotFound`.
pub fn reservation_gone(e: Error) -> Error {
    if e.code() == ErrorCode::NotFound {
        Error::new(
            ErrorCode::LeaseExpired,
            "reservation ended (deadline passed or key removed with force)",
        )
    } else {
        e
    }
}

impl std::fmt::Debug for WriteReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteReservation")
            .field("key_len", &self.key.len())
            .field("writer", &self.writer)
            .field("extent", &self.extent)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Drop for WriteReservation {
    fn drop(&mut self) {
        if !self.finished {
            // An error here means it is already gone (expired and reaped): nothing to free.
            let _ = self.inner.put_revoke_for(&self.key, self.writer);
        }
    }
}
