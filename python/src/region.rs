//! Where a value's bytes come from or go, as a Python caller names it: an object with the
//! buffer protocol (`bytearray`, `memoryview`, a numpy array; `bytes` as a source only), a
//! raw address and size inside a registered buffer (a torch tensor's `data_ptr()`), or a
//! list of such (address, size) pieces (a block's K and V slices across layers).
//!
//! The buffer protocol is called through its C functions directly: they are in every
//! CPython since 3.0, but in the limited API (abi3) only from 3.11, so PyO3's wrapper is
//! not there for a wheel that also serves 3.9 and 3.10. The `Py_buffer` layout below has
//! not changed since Python 3.3.

use std::ffi::{c_char, c_int, c_void};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PyTuple};
use strata_client::{BufferId, Client, MemoryKind};
use strata_device::{CopyKind, CopySpan, Device};
use strata_proto::Error;

use crate::errors::invalid;

/// CPython's `Py_buffer`.
#[repr(C)]
struct PyBufferView {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

/// `PyBUF_SIMPLE`: one contiguous run of bytes, or an error from the exporter.
const PYBUF_SIMPLE: c_int = 0;
/// `PyBUF_WRITABLE`.
const PYBUF_WRITABLE: c_int = 0x0001;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut PyBufferView, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBufferView);
}

/// A Python object's memory, exported through the buffer protocol: the exporter keeps it
/// where it is (a `bytearray` cannot resize, a numpy array cannot be freed) until this is
/// dropped.
pub struct Exported {
    // Boxed: the exporter may keep a pointer to the view it filled in.
    view: Box<PyBufferView>,
    writable: bool,
}

// SAFETY: the view names memory the exporter keeps valid until release; its Python object
// pointer is only used by `Drop`, which takes the GIL first.
unsafe impl Send for Exported {}

impl Exported {
    /// Exports `obj`'s bytes; `writable` asks for memory that may be written.
    pub fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Exported> {
        let mut view = Box::new(PyBufferView {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        let flags = if writable {
            PYBUF_WRITABLE
        } else {
            PYBUF_SIMPLE
        };
        // SAFETY: `obj` is a live object (we hold the GIL and a reference); `view` is a
        // zeroed Py_buffer the call fills in, or leaves unowned when it fails.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(Exported { view, writable })
    }

    /// Where the bytes start.
    pub fn addr(&self) -> usize {
        self.view.buf as usize
    }

    /// How many bytes there are.
    pub fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }

    /// The bytes, to read.
    pub fn bytes(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE gave `len` contiguous bytes at `buf`, valid until release.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    /// The bytes, to write (exported writable).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(self.writable, "exported read-only");
        if self.len() == 0 {
            return &mut [];
        }
        // SAFETY: PyBUF_WRITABLE gave `len` contiguous writable bytes at `buf`, valid until
        // release; `&mut self` keeps this the only slice made from this export.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast::<u8>(), self.len()) }
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the view was filled in by a successful PyObject_GetBuffer and is
            // released once, with the GIL held.
            unsafe { PyBuffer_Release(&mut *self.view) }
        });
    }
}

/// One piece of a value spread over registered memory.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub addr: usize,
    pub len: usize,
    /// In registered device memory (copied by the device module), else host memory.
    pub device: bool,
}

impl Piece {
    /// The piece as the client's loads name it.
    pub fn for_client(&self) -> strata_client::Piece {
        strata_client::Piece {
            addr: self.addr,
            len: self.len,
            kind: if self.device {
                MemoryKind::Device
            } else {
                MemoryKind::Host
            },
        }
    }
}

/// One key's bytes, as the caller named them.
pub enum Region {
    /// An object with the buffer protocol (the first `len` bytes of it).
    Object { export: Exported, len: usize },
    /// `len` bytes at `addr`, inside a registered host buffer.
    Host { addr: usize, len: usize },
    /// `len` bytes at `addr`, `offset` bytes into registered device buffer `id`.
    Device {
        id: BufferId,
        addr: usize,
        offset: usize,
        len: usize,
    },
    /// Pieces in order, each inside a registered buffer.
    Pieces(Vec<Piece>),
}

impl Region {
    /// Reads `obj` (with `size`, when the caller gave one) as a region: an int address
    /// needs `size`; a 2-tuple of ints is (address, size); a list is pieces of
    /// (address, size); anything else must have the buffer protocol, writable when the
    /// region is to be written.
    pub fn parse(
        client: &Client,
        obj: &Bound<'_, PyAny>,
        size: Option<usize>,
        writable: bool,
    ) -> Result<Region, PyErr> {
        let py = obj.py();
        let raise = |e: Error| crate::errors::raise(py, &e);
        if obj.is_instance_of::<PyInt>() {
            let addr: usize = obj.extract().map_err(|_| raise(invalid("bad address")))?;
            let Some(len) = size else {
                return Err(raise(invalid(format!(
                    "an address ({addr:#x}) needs a size"
                ))));
            };
            return Region::registered(client, addr, len).map_err(raise);
        }
        if obj.is_instance_of::<PyList>() {
            let pieces = pieces(obj).map_err(raise)?;
            let mut kept = Vec::with_capacity(pieces.len());
            for (addr, len) in pieces {
                let region = Region::registered(client, addr, len).map_err(raise)?;
                let device = !matches!(region, Region::Host { .. });
                kept.push(Piece { addr, len, device });
            }
            return Ok(Region::Pieces(kept));
        }
        if let Ok(tuple) = obj.cast::<PyTuple>() {
            if tuple.len() == 2 && size.is_none() {
                let (addr, len): (usize, usize) = tuple
                    .extract()
                    .map_err(|_| raise(invalid("an (address, size) pair of two ints")))?;
                return Region::registered(client, addr, len).map_err(raise);
            }
        }
        let export = Exported::new(obj, writable).map_err(|e| {
            let what = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string());
            let need = if writable {
                "a writable buffer (bytearray, memoryview, numpy array)"
            } else {
                "bytes-like"
            };
            raise(invalid(format!(
                "a {what} cannot be used here: {need}, an address with a size, or a list \
                 of (address, size) pieces is needed ({e})"
            )))
        })?;
        let len = match size {
            Some(n) if n > export.len() => {
                return Err(raise(invalid(format!(
                    "size {n} is larger than the {}-byte buffer",
                    export.len()
                ))))
            }
            Some(n) => n,
            None => export.len(),
        };
        Ok(Region::Object { export, len })
    }

    /// The registered region `[addr, addr + len)`, by its kind.
    fn registered(client: &Client, addr: usize, len: usize) -> Result<Region, Error> {
        let (id, offset, kind) = client.registered_containing(addr, len)?;
        Ok(match kind {
            MemoryKind::Host => Region::Host { addr, len },
            MemoryKind::Device => Region::Device {
                id,
                addr,
                offset,
                len,
            },
        })
    }

    /// The byte ranges a write into this region touches, as (device memory, start, end).
    pub fn ranges(&self) -> Vec<(bool, usize, usize)> {
        match self {
            Region::Object { export, len } => vec![(false, export.addr(), export.addr() + len)],
            Region::Host { addr, len } => vec![(false, *addr, addr + len)],
            Region::Device { addr, len, .. } => vec![(true, *addr, addr + len)],
            Region::Pieces(pieces) => (pieces.iter())
                .map(|p| (p.device, p.addr, p.addr + p.len))
                .collect(),
        }
    }

    /// The bytes, to read from, when they are one host range.
    pub fn source(&self) -> Option<&[u8]> {
        match self {
            Region::Object { export, len } => Some(&export.bytes()[..*len]),
            // SAFETY: the range lies inside a registered host buffer (checked when it was
            // parsed), which the registration promises is valid memory while registered.
            Region::Host { addr, len } => Some(unsafe { host_slice(*addr, *len) }),
            Region::Device { .. } | Region::Pieces(_) => None,
        }
    }

    /// The bytes, to write into, when they are one host range.
    pub fn destination(&mut self) -> Option<&mut [u8]> {
        match self {
            Region::Object { export, len } => Some(&mut export.bytes_mut()[..*len]),
            // SAFETY: as in `source`; the batch calls refuse overlapping destinations, so
            // this is the only slice over these bytes while it lives.
            Region::Host { addr, len } => Some(unsafe { host_slice_mut(*addr, *len) }),
            Region::Device { .. } | Region::Pieces(_) => None,
        }
    }
}

/// The pieces of a list of (address, size).
fn pieces(obj: &Bound<'_, PyAny>) -> Result<Vec<(usize, usize)>, Error> {
    let list = obj
        .cast::<PyList>()
        .map_err(|_| invalid("pieces are a list"))?;
    if list.is_empty() {
        return Err(invalid(
            "a list of pieces needs at least one (address, size)",
        ));
    }
    list.iter()
        .map(|item| {
            item.extract::<(usize, usize)>()
                .map_err(|_| invalid("each piece is an (address, size) pair of ints"))
        })
        .collect()
}

/// Whether any piece is device memory (the copies then need a device module).
pub fn any_device(pieces: &[Piece]) -> bool {
    pieces.iter().any(|p| p.device)
}

/// Gathers `pieces` into one buffer, in order: host pieces by memcpy, device pieces in one
/// batch of the device module's device-to-host copies.
pub fn gather(pieces: &[Piece], device: Option<&dyn Device>) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; pieces.iter().map(|p| p.len).sum()];
    let mut batch = Vec::new();
    let mut at = 0;
    for piece in pieces {
        let dst = &mut out[at..at + piece.len];
        if piece.device {
            batch.push(CopySpan::new(
                dst.as_mut_ptr() as u64,
                piece.addr as u64,
                piece.len as u64,
                CopyKind::DeviceToHost,
            ));
        } else {
            // SAFETY: each host piece lies inside a registered host buffer (checked at parse).
            dst.copy_from_slice(unsafe { host_slice(piece.addr, piece.len) });
        }
        at += piece.len;
    }
    if !batch.is_empty() {
        let device = device.ok_or_else(no_device)?;
        // SAFETY: each device piece lies inside registered device memory of this module's
        // device (the registration's promise); each destination is a disjoint range of
        // `out`, which lives until the batch returns.
        unsafe { device.copy_batch_raw(&batch) }.map_err(|e| device_failed(pieces, e))?;
    }
    Ok(out)
}

fn no_device() -> Error {
    invalid(
        "pieces in device memory need a device module: a server with a device tier on this \
         host, or Client(device=\"backend:index\")",
    )
}

fn device_failed(pieces: &[Piece], e: strata_device::DeviceError) -> Error {
    let device: Vec<_> = pieces.iter().filter(|p| p.device).collect();
    let first = device.first().map_or(0, |p| p.addr);
    Error::new(
        strata_proto::ErrorCode::InvalidArgument,
        format!(
            "copying {} device pieces (the first at {first:#x}): {e}",
            device.len()
        ),
    )
}

/// # Safety
/// `[addr, addr + len)` must be valid memory for as long as the slice is used.
unsafe fn host_slice<'a>(addr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

/// # Safety
/// `[addr, addr + len)` must be valid, writable memory that nothing else reads or writes
/// for as long as the slice is used.
unsafe fn host_slice_mut<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// For each region, whether one of its ranges overlaps one of another region's (host and
/// device memory apart): the copies of a batch run side by side, so the later such
/// destination is refused, not raced.
pub fn overlapping(regions: &[Option<&Region>]) -> Vec<bool> {
    let mut ranges: Vec<(bool, usize, usize, usize)> = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        if let Some(r) = region {
            ranges.extend(r.ranges().into_iter().map(|(d, s, e)| (d, s, e, i)));
        }
    }
    ranges.retain(|&(_, s, e, _)| e > s);
    ranges.sort_unstable();
    let mut out = vec![false; regions.len()];
    // (memory, end, owner) of the furthest range so far
    let mut reach: Option<(bool, usize, usize)> = None;
    for (device, start, end, i) in ranges {
        if let Some((memory, far, owner)) = reach {
            if memory == device && start < far && owner != i {
                out[i.max(owner)] = true;
            }
        }
        if reach.is_none_or(|(memory, far, _)| memory != device || end > far) {
            reach = Some((device, end, i));
        }
    }
    out
}

/// Checks that `[addr, addr + len)` is mapped readable and writable in this process
/// (`/proc/self/maps`), so a wrong address is refused at registration rather than
/// crashing the first copy.
pub fn check_mapped(addr: usize, len: usize) -> Result<(), Error> {
    let end = addr
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or_else(|| invalid(format!("cannot register {len} bytes at {addr:#x}")))?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| {
        invalid(format!(
            "cannot read /proc/self/maps to check {addr:#x}: {e}"
        ))
    })?;
    let mut covered = addr;
    let mut spans: Vec<(usize, usize, bool)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, stop) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let stop = usize::from_str_radix(stop, 16).ok()?;
            Some((start, stop, perms.starts_with("rw")))
        })
        .collect();
    spans.sort_unstable();
    for (start, stop, writable) in spans {
        if stop <= covered || !writable {
            continue;
        }
        if start > covered {
            break;
        }
        covered = stop;
        if covered >= end {
            return Ok(());
        }
    }
    Err(invalid(format!(
        "{len} bytes at {addr:#x} are not all mapped writable in this process \
         (first unmapped byte at {covered:#x})"
    )))
}

/// Device ranges as one-piece pieces: how a client whose server has no device tier on this
/// host moves them, staged through host memory by its own device module.
pub fn device_ranges_as_pieces(regions: &mut [Result<Region, PyErr>]) {
    for region in regions.iter_mut() {
        if let Ok(Region::Device { addr, len, .. }) = region {
            let piece = Piece {
                addr: *addr,
                len: *len,
                device: true,
            };
            *region = Ok(Region::Pieces(vec![piece]));
        }
    }
}
