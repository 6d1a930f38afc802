//! Loads of values spread over pieces of memory: a block whose K and V slices of every
//! layer lie apart in an engine's KV cache, host or device. From the server's shared
//! memory each piece is copied straight from the mapped segment (device pieces by the
//! device module's host-to-device copy), and from its device tier straight from the
//! imported segment (device to device, or to host), under the lease checked before and
//! after, as every same-host read is; a value anywhere else (an ssd record, a remote
//! server) arrives whole in host memory first and is then spread.

use std::sync::Arc;
use std::time::Instant;

use strata_device::{CopyKind, CopySpan, Device, MemoryKind};
use strata_proto::{Error, ErrorCode, Result};

use crate::cache::LeasedLocation;
use crate::client::Client;
use crate::stats::Counters;
use crate::transport::reader::lease_expired;
use crate::transport::shm::SharedSegments;

/// One piece of memory a value is spread over, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Where the piece starts (a host address, or a device address of `kind` Device).
    pub addr: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Host memory, or device memory copied by the device module.
    pub kind: MemoryKind,
}

impl Client {
    /// Copies the value of each key over its `pieces`, in order; per key the value's
    /// length (`InvalidArgument` when the pieces are shorter), one failure never failing
    /// the others. The leases of the whole batch come in one round trip.
    ///
    /// # Safety
    /// Every piece must be valid, writable memory of its kind for the whole call (device
    /// pieces: of `device`'s device), not accessed by anything else meanwhile, and no two
    /// pieces may overlap.
    pub async unsafe fn batch_get_into_pieces<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        pieces: &[Vec<Piece>],
        device: Option<Arc<dyn Device>>,
    ) -> Vec<Result<usize>> {
        if let Err(e) = strata_proto::limits::check_paired(keys.len(), pieces.len()) {
            return vec![Err(e); keys.len()];
        }
        let device = device.as_deref();
        let link = match self.inner.connector.link().await {
            Ok(link) => link,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let mut out: Vec<Option<Result<usize>>> = vec![None; keys.len()];
        if link.route.local().is_some() {
            let leases = self.leases_on(&link, keys).await;
            let located = leases.iter().filter_map(|l| l.as_ref().ok());
            self.import_device_segments(&link, located.map(|l| &l.location))
                .await;
            let shm = link.route.shm();
            let tier = link.route.device();
            let mut copies = Vec::new();
            let mut bytes = 0usize;
            for (i, lease) in leases.into_iter().enumerate() {
                match lease {
                    Err(e) => out[i] = Some(Err(e)),
                    Ok(lease) => {
                        let in_shm = shm.is_some_and(|s| s.source(&lease.location).is_some());
                        let in_tier = tier.is_some_and(|d| d.covers(&lease.location));
                        if in_shm || in_tier {
                            bytes = bytes.saturating_add(lease.location.len as usize);
                            copies.push((i, lease, in_shm));
                        }
                        // Elsewhere (an ssd record): staged below.
                    }
                }
            }
            let threads = self.inner.config.shm_copy_threads;
            let copied =
                crate::copy_pool::copy_all(copies, bytes, threads, |(i, lease, in_shm)| {
                    let result = match (in_shm, shm, tier) {
                        // SAFETY: the caller's promise for the pieces; the lease is checked.
                        (true, Some(segments), _) => unsafe {
                            spread(segments, &lease, &pieces[i], device)
                        },
                        // SAFETY: as above; device pieces are of the tier's module, the one
                        // `device` names on this route.
                        (_, _, Some(tier)) => unsafe {
                            tier.read_pieces(&lease.location, &pieces[i], lease.valid_until)
                        },
                        _ => Err(Error::new(
                            ErrorCode::Internal,
                            "no reader for this location",
                        )),
                    };
                    (i, lease, in_shm, result)
                });
            for (i, lease, in_shm, result) in copied {
                let c = &self.inner.counters;
                match (&result, in_shm) {
                    (Ok(n), true) => Counters::count((&c.shm_gets, &c.shm_get_bytes), *n),
                    (Ok(n), false) => Counters::count((&c.device_gets, &c.device_get_bytes), *n),
                    (Err(_), _) => self.inner.cache.invalidate(&lease.key),
                }
                out[i] = Some(result);
            }
        }
        // Anything not copied straight: the whole value into host memory, then spread.
        let mut results = Vec::with_capacity(keys.len());
        for (i, done) in out.into_iter().enumerate() {
            results.push(match done {
                Some(result) => result,
                None => {
                    let staged = self.get(keys[i].as_ref()).await;
                    // SAFETY: the caller's promise for the pieces.
                    staged.and_then(|value| unsafe { scatter(&value, &pieces[i], device) })
                }
            });
        }
        results
    }
}

/// Copies the leased value from the mapped segment over `pieces`.
///
/// # Safety
/// As [`Client::batch_get_into_pieces`] for the pieces.
unsafe fn spread(
    segments: &SharedSegments,
    lease: &LeasedLocation,
    pieces: &[Piece],
    device: Option<&dyn Device>,
) -> Result<usize> {
    let len = lease.location.len as usize;
    let spans = spans(len, pieces)?;
    let src = segments
        .source(&lease.location)
        .ok_or_else(|| Error::new(ErrorCode::Protocol, "the value left the mapped segments"))?;
    if Instant::now() >= lease.valid_until {
        return Err(lease_expired());
    }
    // SAFETY: `source` checked that the whole value lies in a mapping that lives as long
    // as `segments`, and the spans stay inside `len`. The destinations are the caller's
    // promise. Bytes the server rewrote meanwhile (only after the lease lapsed) are caught
    // by the lease check below before the caller sees them.
    unsafe { copy_over(src, spans, device) }?;
    // The lease is judged after the copies, which must not be reordered past it.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if Instant::now() >= lease.valid_until {
        return Err(lease_expired());
    }
    Ok(len)
}

/// Spreads `value` over `pieces`.
///
/// # Safety
/// As [`Client::batch_get_into_pieces`] for the pieces.
unsafe fn scatter(value: &[u8], pieces: &[Piece], device: Option<&dyn Device>) -> Result<usize> {
    // SAFETY: `value` is a live host slice and the spans stay inside it; the destinations
    // are the caller's promise.
    unsafe { copy_over(value.as_ptr(), spans(value.len(), pieces)?, device) }?;
    Ok(value.len())
}

/// How a value of `len` bytes fills `pieces`, in order: each piece it reaches, with the
/// value's offset there and the bytes that go into it. `InvalidArgument` when the pieces
/// hold less than the value.
pub(crate) fn spans(
    len: usize,
    pieces: &[Piece],
) -> Result<impl Iterator<Item = (&Piece, usize, usize)> + '_> {
    let room: usize = pieces.iter().map(|p| p.len).sum();
    if len > room {
        let msg = format!("a value of {len} bytes does not fit pieces of {room} bytes in all");
        return Err(Error::new(ErrorCode::InvalidArgument, msg));
    }
    Ok(pieces.iter().scan(0usize, move |at, piece| {
        let take = piece.len.min(len - *at);
        let start = *at;
        *at += take;
        (take > 0).then_some((piece, start, take))
    }))
}

/// Copies the value at `src` over its `spans` (from [`spans`]): host pieces here, device
/// pieces in one batch of the device module, which pays one call and one synchronisation
/// for all of them rather than one per piece (a block's per-layer slices are many).
///
/// # Safety
/// `src` must be readable for every span's `at + take` bytes, and each piece writable for
/// its `take` bytes (device memory of `device`'s device for a device piece), no two
/// overlapping.
unsafe fn copy_over<'a>(
    src: *const u8,
    spans: impl Iterator<Item = (&'a Piece, usize, usize)>,
    device: Option<&dyn Device>,
) -> Result<()> {
    let mut batch = Vec::new();
    for (piece, at, take) in spans {
        // SAFETY: the function's contract: `at + take` bytes are readable from `src`.
        let from = unsafe { src.add(at) };
        match piece.kind {
            MemoryKind::Host => {
                // SAFETY: the function's contract.
                unsafe { strata_copy::copy_raw(from, piece.addr as *mut u8, take) };
                strata_copy::give_way::moved(take);
            }
            MemoryKind::Device => batch.push(CopySpan::new(
                piece.addr as u64,
                from as u64,
                take as u64,
                CopyKind::HostToDevice,
            )),
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    let device = device.ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidArgument,
            "a device piece needs a device module to copy it",
        )
    })?;
    // SAFETY: the function's contract, span by span.
    unsafe { device.copy_batch_raw(&batch) }.map_err(crate::transport::device::device_error)?;
    // One value's batch is one module call: the offer comes after it.
    strata_copy::give_way::moved(batch.iter().map(|s| s.len as usize).sum());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(addr: usize, len: usize) -> Piece {
        Piece {
            addr,
            len,
            kind: MemoryKind::Host,
        }
    }

    #[test]
    fn a_value_fills_its_pieces_in_order_and_stops_where_it_ends() {
        let pieces = [host(100, 4), host(200, 4), host(300, 4)];
        let got: Vec<_> = spans(6, &pieces)
            .unwrap()
            .map(|(p, at, n)| (p.addr, at, n))
            .collect();
        assert_eq!(got, [(100, 0, 4), (200, 4, 2)]);
        assert_eq!(spans(12, &pieces).unwrap().count(), 3);
        assert_eq!(spans(0, &pieces).unwrap().count(), 0);
        let e = spans(13, &pieces).err().expect("too small");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("13 bytes"), "{e}");
    }
}
