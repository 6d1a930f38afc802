//! Where a value lives ([`Extent`]), and the typed tokens that let a tier read or write
//! one.
//!
//! A tier's bytes may be touched only while they cannot be reclaimed (an epoch guard
//! pinned before the extent could be retired) and only as the object's state allows: a
//! complete object is read by anyone and written by no one; a reservation is written by
//! its writer alone. The tokens carry that proof, so the [`Tier`](super::Tier) methods that
//! take them are safe to call:
//!
//! - [`PinnedRead`]: a complete object's extent, readable while the guard `'g` lives. Made
//!   by the index under its state check (`store::index`), or by [`PinnedWrite::into_read`]
//!   once the only writer is done.
//! - [`PinnedWrite`]: an extent its holder alone writes. Made by the index for a
//!   reservation's writer, or from a [`Fresh`] extent, which nobody else knows of yet.
//! - [`Fresh`]: what a tier's `allocate` returns; exclusive by ownership until it is
//!   published in the index ([`Fresh::into_extent`]).
//!
//! The tokens borrow the guard, so none outlives it, and like the guard they stay on the
//! thread that pinned it (they are neither `Send` nor `Sync`).

use std::marker::PhantomData;

use crossbeam_epoch::Guard;

/// Where one value lives: a block of a segment of a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Index of the tier in the store's tier stack (0 = top).
    pub tier: u8,
    /// Segment within the tier.
    pub segment: u16,
    /// The allocator's block handle (to free it).
    pub block: u32,
    /// Byte offset of the value within the segment.
    pub offset: u64,
    /// Length of the value in bytes (the block may be larger: alignment).
    pub len: u64,
}

/// A complete object's extent, readable (and never written) while the guard `'g` lives.
#[derive(Clone, Copy, Debug)]
pub struct PinnedRead<'g> {
    extent: Extent,
    _guard: PhantomData<&'g Guard>,
}

impl<'g> PinnedRead<'g> {
    /// Vouches that `extent` may be read under `guard`.
    ///
    /// # Safety
    /// `extent` is a complete object's, found in the index after `guard` was pinned (so it
    /// is not reclaimed before `guard` unpins), and nobody writes it meanwhile.
    pub unsafe fn new(extent: Extent, _guard: &'g Guard) -> PinnedRead<'g> {
        PinnedRead {
            extent,
            _guard: PhantomData,
        }
    }

    /// The extent.
    pub fn extent(&self) -> Extent {
        self.extent
    }
}

/// An extent its holder alone writes, with no reader, while the guard `'g` lives.
#[derive(Debug)]
pub struct PinnedWrite<'g> {
    extent: Extent,
    _guard: PhantomData<&'g Guard>,
}

impl<'g> PinnedWrite<'g> {
    /// Vouches that the caller may write `extent` under `guard`.
    ///
    /// # Safety
    /// `extent` is not reclaimed before `guard` unpins, and the caller is its only writer
    /// with no reader for as long as the token lives: a reservation confirmed as this
    /// writer's under `guard`. Several writers of one reservation (the data plane's
    /// connections) may each hold a token only if they write disjoint ranges.
    pub unsafe fn new(extent: Extent, _guard: &'g Guard) -> PinnedWrite<'g> {
        PinnedWrite {
            extent,
            _guard: PhantomData,
        }
    }

    /// The extent.
    pub fn extent(&self) -> Extent {
        self.extent
    }

    /// The writer is done: the bytes may now be read (a commit's checksum, a demotion's
    /// source), and no longer written through this token.
    pub fn into_read(self) -> PinnedRead<'g> {
        PinnedRead {
            extent: self.extent,
            _guard: PhantomData,
        }
    }
}

/// An extent a tier has just allocated: nobody else knows of it until its owner indexes it,
/// so its owner may write it without any other proof.
#[derive(Debug)]
#[must_use = "a fresh extent is either indexed (into_extent) or retired, never dropped"]
pub struct Fresh {
    extent: Extent,
}

impl Fresh {
    /// Only a tier's allocator makes one, from an extent it has just handed out.
    pub(crate) fn new(extent: Extent) -> Fresh {
        Fresh { extent }
    }

    /// The extent.
    pub fn extent(&self) -> Extent {
        self.extent
    }

    /// Writes it under `guard`. Sound without a further check: nobody else holds the
    /// extent, and whoever retires it later does so through the epoch, after `guard`.
    pub fn pin<'g>(self, _guard: &'g Guard) -> PinnedWrite<'g> {
        PinnedWrite {
            extent: self.extent,
            _guard: PhantomData,
        }
    }

    /// Gives the extent up to be indexed (or retired): from here on, only the index's
    /// tokens reach its bytes.
    pub fn into_extent(self) -> Extent {
        self.extent
    }
}

/// A complete object's extent with the guard that keeps it readable, for a reader that
/// holds both in one value (an in-process read guard).
pub(crate) struct OwnedPinnedRead {
    guard: Guard,
    extent: Extent,
}

impl OwnedPinnedRead {
    /// # Safety
    /// As [`PinnedRead::new`], for `extent` under `guard`.
    pub(crate) unsafe fn new(extent: Extent, guard: Guard) -> OwnedPinnedRead {
        OwnedPinnedRead { guard, extent }
    }

    /// The token, for as long as this value is borrowed.
    pub(crate) fn get(&self) -> PinnedRead<'_> {
        // SAFETY: `new`'s contract holds for `extent` under `guard`, which this value owns
        // and keeps pinned for as long as the token borrows it.
        unsafe { PinnedRead::new(self.extent, &self.guard) }
    }

    /// The extent.
    pub(crate) fn extent(&self) -> Extent {
        self.extent
    }
}

#[cfg(test)]
mod tests {
    use super::super::dram::DramTier;
    use super::super::Tier;
    use strata_proto::ErrorCode;

    /// The tokens make the tier's copies safe to call, so the copies check their bounds
    /// themselves: a piece past the extent is refused, never written.
    #[test]
    fn copies_through_tokens_stay_inside_their_extent() {
        let tier = DramTier::new(0, 1 << 20, 1 << 20, 64, false).unwrap();
        let guard = crossbeam_epoch::pin();
        let mut w = tier.allocate(100).unwrap().pin(&guard);
        tier.write(&mut w, 0, &[7; 60]).unwrap();
        tier.write(&mut w, 60, &[9; 40]).unwrap();
        let e = tier.write(&mut w, 90, &[1; 11]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(tier.write(&mut w, u64::MAX, &[1]).is_err());
        assert!(tier.host_bytes_mut(&mut w, 50..101).is_none());
        assert_eq!(
            tier.host_bytes_mut(&mut w, 50..70).map(|b| b.len()),
            Some(20)
        );

        let r = w.into_read();
        let bytes = tier.host_bytes(r).unwrap();
        assert_eq!((&bytes[..60], &bytes[60..]), (&[7; 60][..], &[9; 40][..]));
        let mut short = [0u8; 99];
        assert_eq!(
            tier.read(r, &mut short).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        let mut out = [0u8; 100];
        tier.read(r, &mut out).unwrap();
        assert_eq!(&out[..], bytes);
    }
}
