//! The Rust mirror of `include/strata_device.h`. Field order and types must match the
//! header exactly; the loader checks `abi_version` and `vtable_size` before any call.

use std::ffi::{c_char, c_void};

use crate::device::CopySpan;

/// `STRATA_DEVICE_ABI_VERSION`.
pub const ABI_VERSION: u32 = 2;

/// `STRATA_DEVICE_ABI_MIN_VERSION`: a version-1 vtable is this one cut before `copy_batch`.
pub const ABI_MIN_VERSION: u32 = 1;

/// `STRATA_IPC_HANDLE_BYTES`.
pub const IPC_HANDLE_BYTES: usize = 128;

/// `STRATA_DEVICE_ENTRY_SYMBOL`, NUL-terminated for dlsym.
pub const ENTRY_SYMBOL: &[u8] = b"strata_device_entry\0";

/// `strata_device *` (opaque).
pub type RawDevice = *mut c_void;

/// `strata_ipc_handle`.
#[repr(C)]
pub struct RawIpcHandle {
    pub bytes: [u8; IPC_HANDLE_BYTES],
}

/// `strata_device_vtable` up to its version-1 end: the part every accepted module has, so
/// a reference to it never reaches past a version-1 module's static vtable.
#[repr(C)]
pub struct VTable {
    pub abi_version: u32,
    pub vtable_size: u32,
    pub backend_name: *const c_char,
    pub open: unsafe extern "C" fn(index: u32, out: *mut RawDevice) -> i32,
    pub close: unsafe extern "C" fn(dev: RawDevice) -> i32,
    pub alloc: unsafe extern "C" fn(dev: RawDevice, size: u64, out: *mut u64) -> i32,
    pub free: unsafe extern "C" fn(dev: RawDevice, ptr: u64) -> i32,
    pub copy: unsafe extern "C" fn(dev: RawDevice, dst: u64, src: u64, len: u64, kind: i32) -> i32,
    pub export_handle:
        unsafe extern "C" fn(dev: RawDevice, ptr: u64, out: *mut RawIpcHandle) -> i32,
    pub import_handle: unsafe extern "C" fn(
        dev: RawDevice,
        handle: *const RawIpcHandle,
        out: *mut u64,
        size: *mut u64,
    ) -> i32,
    pub close_imported: unsafe extern "C" fn(dev: RawDevice, ptr: u64) -> i32,
    pub synchronize: unsafe extern "C" fn(dev: RawDevice) -> i32,
    pub last_error: unsafe extern "C" fn() -> *const c_char,
}

/// The whole version-2 `strata_device_vtable`: version 1's fields, then `copy_batch`.
/// Read only from a module that says it is version 2 (and whose size was checked).
#[repr(C)]
pub struct VTableV2 {
    pub v1: VTable,
    pub copy_batch: unsafe extern "C" fn(dev: RawDevice, spans: *const CopySpan, count: u64) -> i32,
}

/// The bytes of a version-1 vtable: everything before `copy_batch` (every field is
/// pointer-sized or a pair of u32, so `VTable` has no tail padding).
pub const VERSION_1_SIZE: usize = std::mem::offset_of!(VTableV2, copy_batch);

/// `strata_device_entry`.
pub type EntryFn = unsafe extern "C" fn() -> *const VTable;
