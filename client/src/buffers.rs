//! The registry of memory regions a caller registered for direct copies (an engine's
//! KV-cache pool): which regions, of which memory kind, by address. The copies into and
//! out of them are [`crate::registered`]'s.

use std::collections::BTreeMap;

use strata_device::MemoryKind;
use strata_proto::{Error, ErrorCode, Result};

/// A memory region registered with [`Client::register_buffer`](crate::Client::register_buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufferId(u64);

/// The registered regions, by start address.
#[derive(Default)]
pub(crate) struct Buffers {
    next: u64,
    by_start: BTreeMap<usize, Registered>,
}

/// One registered region.
struct Registered {
    end: usize,
    id: BufferId,
    kind: MemoryKind,
}

impl Buffers {
    /// Adds `[addr, addr + len)`; overlapping regions and empty or wrapping ones are
    /// refused. Whether the memory is valid is the caller's promise (the registration is
    /// `unsafe` for it).
    pub fn register(&mut self, addr: usize, len: usize, kind: MemoryKind) -> Result<BufferId> {
        let end = addr.checked_add(len).filter(|_| len > 0).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("cannot register {len} bytes at {addr:#x}"),
            )
        })?;
        let before = self.by_start.range(..end).next_back();
        if before.is_some_and(|(_, r)| r.end > addr) {
            let msg = format!("region {addr:#x}..{end:#x} overlaps a registered buffer");
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        }
        self.next += 1;
        let id = BufferId(self.next);
        self.by_start.insert(addr, Registered { end, id, kind });
        Ok(id)
    }

    /// Region `id` as (address, length, kind).
    pub fn region(&self, id: BufferId) -> Result<(usize, usize, MemoryKind)> {
        self.by_start
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(&start, r)| (start, r.end - start, r.kind))
            .ok_or_else(|| not_registered(id))
    }

    /// Forgets region `id`.
    pub fn unregister(&mut self, id: BufferId) -> Result<()> {
        let start = self
            .by_start
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(&s, _)| s);
        let start = start.ok_or_else(|| not_registered(id))?;
        self.by_start.remove(&start);
        Ok(())
    }

    /// The registered region holding all of `[addr, addr + len)`, as (id, offset of
    /// `addr` in it, kind): how a caller that names memory by address (Python's raw
    /// pointers) finds the registration that vouches for it.
    pub fn containing(&self, addr: usize, len: usize) -> Result<(BufferId, usize, MemoryKind)> {
        let end = addr.checked_add(len).ok_or_else(|| outside(addr, len))?;
        match self.by_start.range(..=addr).next_back() {
            Some((&start, r)) if end <= r.end => Ok((r.id, addr - start, r.kind)),
            _ => Err(outside(addr, len)),
        }
    }

    /// The id of the region that starts at `addr`.
    pub fn starting_at(&self, addr: usize) -> Result<BufferId> {
        self.by_start.get(&addr).map(|r| r.id).ok_or_else(|| {
            let msg = format!("no registered buffer starts at {addr:#x}");
            Error::new(ErrorCode::NotFound, msg)
        })
    }

    /// The regions as `(addr, len)`, by address.
    pub fn list(&self) -> Vec<(usize, usize)> {
        self.by_start.iter().map(|(&s, r)| (s, r.end - s)).collect()
    }
}

fn not_registered(id: BufferId) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("buffer {id:?} is not registered"),
    )
}

fn outside(addr: usize, len: usize) -> Error {
    let msg = format!(
        "{len} bytes at {addr:#x} do not lie inside one registered buffer (register_buffer first)"
    );
    Error::new(ErrorCode::InvalidArgument, msg)
}

pub(crate) fn fits(len: u64, room: usize) -> Result<()> {
    if len > room as u64 {
        let msg =
            format!("a value of {len} bytes does not fit the {room} bytes left in the buffer");
        return Err(Error::new(ErrorCode::InvalidArgument, msg));
    }
    Ok(())
}

pub(crate) fn no_device_transport() -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        "copies into or out of device buffers need the device transport (a server with a \
         device tier on this host, and a backend that opens here)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_found_only_inside_one_region() {
        let mut buffers = Buffers::default();
        let a = buffers.register(0x1000, 0x100, MemoryKind::Host).unwrap();
        let b = buffers.register(0x1100, 0x100, MemoryKind::Device).unwrap();
        assert_eq!(
            buffers.containing(0x1000, 0x100).unwrap(),
            (a, 0, MemoryKind::Host)
        );
        assert_eq!(
            buffers.containing(0x1180, 0x80).unwrap(),
            (b, 0x80, MemoryKind::Device)
        );
        // Spanning two regions, before the first, past the last, wrapping: refused.
        for (addr, len) in [
            (0x10f0, 0x20),
            (0xf00, 0x10),
            (0x11f0, 0x20),
            (usize::MAX, 2),
        ] {
            let e = buffers.containing(addr, len).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{addr:#x}+{len:#x}");
            assert!(e.message().contains(&format!("{addr:#x}")), "{e}");
        }
        assert_eq!(buffers.starting_at(0x1100).unwrap(), b);
        assert_eq!(
            buffers.starting_at(0x1101).unwrap_err().code(),
            ErrorCode::NotFound
        );
    }
}
