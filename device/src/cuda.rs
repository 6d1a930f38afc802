//! The CUDA backend: the driver API of libcuda, loaded at run time.
//!
//! Untested on hardware: this machine and CI have no GPU. It compiles and fails with a
//! clear message everywhere libcuda is absent.
//!
//! The driver keeps a current context per thread, so every call first makes the device's
//! primary context current on the calling thread (cheap: a thread-local store).

use std::ffi::{c_char, c_void, CStr};

use crate::device::{CopyKind, CopySpan, Device, IpcHandle};
use crate::error::{DeviceError, Result};
use crate::vendor::{load, symbol, symbol_of};

const BACKEND: &str = "cuda";
const LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];
const HINT: &str = "the NVIDIA driver is not installed or not on the loader path";
/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`.
const IPC_LAZY_PEER_ACCESS: u32 = 1;

type CuResult = i32;
type CuContext = *mut c_void;
type CuStream = *mut c_void;
/// The legacy default stream, the one the synchronous copies use.
const DEFAULT_STREAM: CuStream = std::ptr::null_mut();

/// `CUipcMemHandle`: 64 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct CuIpcMemHandle {
    reserved: [u8; 64],
}

struct Api {
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    memcpy_dtod: unsafe extern "C" fn(u64, u64, usize) -> CuResult,
    memcpy_htod_async: unsafe extern "C" fn(u64, *const c_void, usize, CuStream) -> CuResult,
    memcpy_dtoh_async: unsafe extern "C" fn(*mut c_void, u64, usize, CuStream) -> CuResult,
    memcpy_dtod_async: unsafe extern "C" fn(u64, u64, usize, CuStream) -> CuResult,
    stream_synchronize: unsafe extern "C" fn(CuStream) -> CuResult,
    ipc_get: unsafe extern "C" fn(*mut CuIpcMemHandle, u64) -> CuResult,
    ipc_open: unsafe extern "C" fn(*mut u64, CuIpcMemHandle, u32) -> CuResult,
    ipc_close: unsafe extern "C" fn(u64) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    primary_release: unsafe extern "C" fn(i32) -> CuResult,
}

/// One GPU through libcuda.
pub struct CudaDevice {
    api: Api,
    context: CuContext,
    device: i32,
    index: u32,
    _library: libloading::Library,
}

// SAFETY: the driver API is thread-safe; each call makes the primary context current on
// the calling thread first.
unsafe impl Send for CudaDevice {}
// SAFETY: as above.
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Loads libcuda and retains the primary context of GPU `index`.
    pub fn open(index: u32) -> Result<CudaDevice> {
        let library = load(BACKEND, LIBRARIES, HINT)?;
        let lib = LIBRARIES[0];
        // SAFETY: each `symbol` type is the driver API's documented signature.
        let api = unsafe {
            Api {
                ctx_set_current: symbol(&library, BACKEND, lib, "cuCtxSetCurrent")?,
                mem_alloc: symbol(&library, BACKEND, lib, "cuMemAlloc_v2")?,
                mem_free: symbol(&library, BACKEND, lib, "cuMemFree_v2")?,
                memcpy_htod: symbol(&library, BACKEND, lib, "cuMemcpyHtoD_v2")?,
                memcpy_dtoh: symbol(&library, BACKEND, lib, "cuMemcpyDtoH_v2")?,
                memcpy_dtod: symbol(&library, BACKEND, lib, "cuMemcpyDtoD_v2")?,
                memcpy_htod_async: symbol(&library, BACKEND, lib, "cuMemcpyHtoDAsync_v2")?,
                memcpy_dtoh_async: symbol(&library, BACKEND, lib, "cuMemcpyDtoHAsync_v2")?,
                memcpy_dtod_async: symbol(&library, BACKEND, lib, "cuMemcpyDtoDAsync_v2")?,
                stream_synchronize: symbol(&library, BACKEND, lib, "cuStreamSynchronize")?,
                ipc_get: symbol(&library, BACKEND, lib, "cuIpcGetMemHandle")?,
                ipc_open: symbol_of(
                    &library,
                    BACKEND,
                    lib,
                    &["cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle"],
                )?,
                ipc_close: symbol(&library, BACKEND, lib, "cuIpcCloseMemHandle")?,
                ctx_synchronize: symbol(&library, BACKEND, lib, "cuCtxSynchronize")?,
                error_string: symbol(&library, BACKEND, lib, "cuGetErrorString")?,
                primary_release: symbol_of(
                    &library,
                    BACKEND,
                    lib,
                    &["cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"],
                )?,
            }
        };
        // SAFETY: documented signatures.
        let (init, device_get, primary_retain) = unsafe {
            (
                symbol::<unsafe extern "C" fn(u32) -> CuResult>(&library, BACKEND, lib, "cuInit")?,
                symbol::<unsafe extern "C" fn(*mut i32, i32) -> CuResult>(
                    &library,
                    BACKEND,
                    lib,
                    "cuDeviceGet",
                )?,
                symbol::<unsafe extern "C" fn(*mut CuContext, i32) -> CuResult>(
                    &library,
                    BACKEND,
                    lib,
                    "cuDevicePrimaryCtxRetain",
                )?,
            )
        };
        let mut device = CudaDevice {
            api,
            context: std::ptr::null_mut(),
            device: -1,
            index,
            _library: library,
        };
        // SAFETY: flags must be 0.
        device.check("cuInit", unsafe { init(0) })?;
        let mut ordinal = 0i32;
        // SAFETY: valid out-pointer.
        device.check("cuDeviceGet", unsafe {
            device_get(&mut ordinal, index as i32)
        })?;
        let mut context: CuContext = std::ptr::null_mut();
        // SAFETY: valid out-pointer and a device from cuDeviceGet.
        device.check("cuDevicePrimaryCtxRetain", unsafe {
            primary_retain(&mut context, ordinal)
        })?;
        device.device = ordinal;
        device.context = context;
        Ok(device)
    }

    fn check(&self, op: &'static str, status: CuResult) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: valid out-pointer; the driver returns a static string or leaves null.
        let message = unsafe {
            if (self.api.error_string)(status, &mut text) == 0 && !text.is_null() {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            } else {
                "unknown CUDA error".into()
            }
        };
        Err(DeviceError::Call {
            backend: BACKEND.into(),
            index: self.index,
            op,
            status: status.into(),
            message,
        })
    }

    /// Makes this device's context current on the calling thread.
    fn current(&self) -> Result<()> {
        // SAFETY: a context retained in `open` and released only on drop.
        self.check("cuCtxSetCurrent", unsafe {
            (self.api.ctx_set_current)(self.context)
        })
    }
}

impl Device for CudaDevice {
    fn backend(&self) -> &str {
        BACKEND
    }

    fn index(&self) -> u32 {
        self.index
    }

    fn alloc_raw(&self, size: u64) -> Result<u64> {
        self.current()?;
        let mut ptr = 0u64;
        // SAFETY: valid out-pointer; the context is current.
        self.check("cuMemAlloc", unsafe {
            (self.api.mem_alloc)(&mut ptr, size as usize)
        })?;
        Ok(ptr)
    }

    unsafe fn free_raw(&self, ptr: u64) -> Result<()> {
        self.current()?;
        // SAFETY: the caller guarantees a live allocation of this device.
        self.check("cuMemFree", unsafe { (self.api.mem_free)(ptr) })
    }

    unsafe fn copy_raw(&self, dst: u64, src: u64, len: u64, kind: CopyKind) -> Result<()> {
        self.current()?;
        let n = len as usize;
        // SAFETY: the caller guarantees both ranges (the trait's contract); the driver's
        // synchronous copies return when the bytes have arrived.
        let status = unsafe {
            match kind {
                CopyKind::HostToDevice => (self.api.memcpy_htod)(dst, src as *const c_void, n),
                CopyKind::DeviceToHost => (self.api.memcpy_dtoh)(dst as *mut c_void, src, n),
                CopyKind::DeviceToDevice => (self.api.memcpy_dtod)(dst, src, n),
            }
        };
        self.check("cuMemcpy", status)
    }

    /// Every copy queued on the default stream, then one wait for the stream: a batch of
    /// small pieces pays one synchronisation instead of one per piece. (From pageable host
    /// memory the driver stages each copy before it returns; to it, it waits; both still
    /// drop the per-copy wait for the device.)
    unsafe fn copy_batch_raw(&self, spans: &[CopySpan]) -> Result<()> {
        self.current()?;
        for s in spans {
            let n = s.len as usize;
            // SAFETY: the caller guarantees every span's ranges until this returns, and
            // the stream is synchronised below before it does.
            let status = unsafe {
                match s.kind {
                    CopyKind::HostToDevice => (self.api.memcpy_htod_async)(
                        s.dst,
                        s.src as *const c_void,
                        n,
                        DEFAULT_STREAM,
                    ),
                    CopyKind::DeviceToHost => {
                        (self.api.memcpy_dtoh_async)(s.dst as *mut c_void, s.src, n, DEFAULT_STREAM)
                    }
                    CopyKind::DeviceToDevice => {
                        (self.api.memcpy_dtod_async)(s.dst, s.src, n, DEFAULT_STREAM)
                    }
                }
            };
            if let Err(e) = self.check("cuMemcpyAsync", status) {
                // What was queued still reads the caller's ranges: wait for it first.
                // SAFETY: the default stream of the current context.
                let _ = unsafe { (self.api.stream_synchronize)(DEFAULT_STREAM) };
                return Err(e);
            }
        }
        // SAFETY: the default stream of the current context.
        self.check("cuStreamSynchronize", unsafe {
            (self.api.stream_synchronize)(DEFAULT_STREAM)
        })
    }

    fn export_raw(&self, ptr: u64) -> Result<IpcHandle> {
        self.current()?;
        let mut handle = CuIpcMemHandle { reserved: [0; 64] };
        // SAFETY: valid out-pointer; the driver validates `ptr`.
        self.check("cuIpcGetMemHandle", unsafe {
            (self.api.ipc_get)(&mut handle, ptr)
        })?;
        let mut out = [0u8; crate::IPC_HANDLE_BYTES];
        out[..64].copy_from_slice(&handle.reserved);
        Ok(IpcHandle(out))
    }

    fn import_raw(&self, handle: &IpcHandle) -> Result<(u64, Option<u64>)> {
        self.current()?;
        let mut raw = CuIpcMemHandle { reserved: [0; 64] };
        raw.reserved.copy_from_slice(&handle.0[..64]);
        let mut ptr = 0u64;
        // SAFETY: valid out-pointer; the handle is passed by value as the API takes it.
        self.check("cuIpcOpenMemHandle", unsafe {
            (self.api.ipc_open)(&mut ptr, raw, IPC_LAZY_PEER_ACCESS)
        })?;
        Ok((ptr, None))
    }

    unsafe fn close_imported_raw(&self, ptr: u64) -> Result<()> {
        self.current()?;
        // SAFETY: the caller guarantees a live import.
        self.check("cuIpcCloseMemHandle", unsafe { (self.api.ipc_close)(ptr) })
    }

    fn synchronize(&self) -> Result<()> {
        self.current()?;
        // SAFETY: the context is current.
        self.check("cuCtxSynchronize", unsafe { (self.api.ctx_synchronize)() })
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: releases the retain of `open`, once.
        let _ = unsafe { (self.api.primary_release)(self.device) };
    }
}
