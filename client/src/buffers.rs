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
