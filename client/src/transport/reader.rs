//! What the three same-host readers share: the server's dram segments mapped here
//! ([`super::shm`]), its device segments imported here ([`super::device`]) and its ssd
//! files opened here ([`super::ssd`]). Each only copies a value from where a lease says;
//! [`read_leased`] judges, once for all three, the destination's size, the lease before and
//! after the copy, and the checksum.

use std::time::Instant;

use strata_proto::msg::Location;
use strata_proto::{Error, ErrorCode, Result};

/// A same-host reader of a server's memory or files.
pub(crate) trait LocalReader {
    /// Copies the value at `location` into `dst`, exactly its length (a `Protocol` error
    /// when `location` does not lie wholly in what this reader reaches: it finds where the
    /// value is once, here). With `hash`, also returns the xxh3-64 of what it copied,
    /// taken the cheapest way this reader has (as it copies, or after).
    fn copy(&self, location: &Location, dst: &mut [u8], hash: bool) -> Result<Option<u64>>;

    /// The error of bytes that do not hash to the lease's checksum.
    fn mismatch(&self, location: &Location, got: u64, expected: u64) -> Error;
}

/// Reads the value at `location` into the front of `dst` with `reader`, under a lease that
/// ends at `valid_until`: `LeaseExpired` unless the lease held from before the copy until
/// after it (only bytes copied while it held are sound: after it, the space may have been
/// reused). With `checksum`, the bytes must also hash to it.
pub(crate) fn read_leased(
    reader: &impl LocalReader,
    location: &Location,
    dst: &mut [u8],
    valid_until: Instant,
    checksum: Option<u64>,
) -> Result<usize> {
    let dst = destination(dst, location.len as usize)?;
    if Instant::now() >= valid_until {
        return Err(lease_expired());
    }
    let got = reader.copy(location, dst, checksum.is_some())?;
    // The lease is judged after the copy, and the copy must not be reordered past it.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if Instant::now() >= valid_until {
        return Err(lease_expired());
    }
    if let (Some(got), Some(expected)) = (got, checksum) {
        if got != expected {
            return Err(reader.mismatch(location, got, expected));
        }
    }
    Ok(dst.len())
}

/// The error of a copy that outlived its lease.
pub(crate) fn lease_expired() -> Error {
    Error::new(
        ErrorCode::LeaseExpired,
        "the read lease ended before the copy did; the bytes may have been overwritten",
    )
}

/// Refuses a write whose value is not the reservation's length.
pub(crate) fn check_value_fits(location: &Location, src: &[u8]) -> Result<()> {
    if location.len != src.len() as u64 {
        let msg = format!(
            "reservation of {} bytes for a value of {}",
            location.len,
            src.len()
        );
        return Err(Error::new(ErrorCode::Protocol, msg));
    }
    Ok(())
}

/// The front of `dst` a value of `len` bytes is copied into, or why it does not fit.
pub(crate) fn destination(dst: &mut [u8], len: usize) -> Result<&mut [u8]> {
    let room = dst.len();
    dst.get_mut(..len).ok_or_else(|| {
        let msg = format!("buffer of {room} bytes is too small for a value of {len} bytes");
        Error::new(ErrorCode::InvalidArgument, msg)
    })
}

/// The error of a memory read whose bytes do not hash to the recorded checksum.
pub(crate) fn checksum_mismatch(memory: &str, got: u64, expected: u64) -> Error {
    let msg = format!(
        "value read from {memory} does not match its checksum ({got:#x}, stored \
         {expected:#x}): was it removed with force?"
    );
    Error::new(ErrorCode::Internal, msg)
}

#[cfg(test)]
mod tests {
    use super::super::shm::tests::at;
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    /// A reader over a byte array, counting its copies.
    struct Bytes {
        data: Vec<u8>,
        copies: Cell<u32>,
    }

    impl LocalReader for Bytes {
        fn copy(&self, location: &Location, dst: &mut [u8], hash: bool) -> Result<Option<u64>> {
            if location.offset + location.len > self.data.len() as u64 {
                return Err(Error::new(ErrorCode::Protocol, "outside"));
            }
            self.copies.set(self.copies.get() + 1);
            let start = location.offset as usize;
            dst.copy_from_slice(&self.data[start..start + dst.len()]);
            Ok(hash.then(|| xxhash_rust::xxh3::xxh3_64(dst)))
        }
        fn mismatch(&self, _: &Location, _: u64, _: u64) -> Error {
            Error::new(ErrorCode::Corrupt, "mismatch")
        }
    }

    #[test]
    fn every_reader_gets_the_same_lease_bounds_and_checksum_checks() {
        let reader = Bytes {
            data: (0..=255u8).collect(),
            copies: Cell::new(0),
        };
        let later = Instant::now() + Duration::from_secs(10);
        let mut dst = [0u8; 8];
        let sum = xxhash_rust::xxh3::xxh3_64(&reader.data[16..24]);
        assert_eq!(
            read_leased(&reader, &at(16, 8), &mut dst, later, Some(sum)).unwrap(),
            8
        );
        assert_eq!(dst, [16, 17, 18, 19, 20, 21, 22, 23]);
        assert_eq!(
            read_leased(&reader, &at(16, 8), &mut dst, later, None).unwrap(),
            8
        );

        let code = |r: Result<usize>| r.unwrap_err().code();
        assert_eq!(
            code(read_leased(
                &reader,
                &at(16, 8),
                &mut dst,
                later,
                Some(sum ^ 1)
            )),
            ErrorCode::Corrupt
        );
        assert_eq!(
            code(read_leased(&reader, &at(250, 8), &mut dst, later, None)),
            ErrorCode::Protocol
        );
        assert_eq!(
            code(read_leased(&reader, &at(0, 9), &mut dst, later, None)),
            ErrorCode::InvalidArgument
        );
        let copies = reader.copies.get();
        let ended = Instant::now();
        assert_eq!(
            code(read_leased(&reader, &at(0, 8), &mut dst, ended, None)),
            ErrorCode::LeaseExpired
        );
        assert_eq!(reader.copies.get(), copies, "a lapsed lease copies nothing");
    }
}
