//! The Ascend backend: AscendCL (libascendcl), loaded at run time.
//!
//! Untested on hardware: this machine and CI have no NPU. It compiles and fails with a
//! clear message everywhere libascendcl is absent.
//!
//! ACL binds a context to the calling thread, so every call first makes the device's
//! context current. IPC goes by key names: the exporter names an allocation with
//! `aclrtIpcMemGetExportKey` (pid checking disabled, so any process of the host may
//! import), the importer maps it with `aclrtIpcMemImportByKey`.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};

use std::sync::Mutex;

use crate::device::{CopyKind, Device, IpcHandle};
use crate::error::{DeviceError, Result};
use crate::vendor::{load, symbol};

const BACKEND: &str = "ascend";
const LIBRARIES: &[&str] = &["libascendcl.so"];
const HINT: &str = "the CANN toolkit is not installed or set_env.sh was not sourced";
/// `ACL_ERROR_REPEAT_INITIALIZE`: aclInit already ran in this process, which is fine.
const REPEAT_INITIALIZE: i32 = 100002;
/// `ACL_MEM_MALLOC_HUGE_FIRST`.
const MALLOC_HUGE_FIRST: i32 = 0;
/// `ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION`.
const EXPORT_NO_PID_CHECK: u64 = 1;
/// `ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS`.
const IMPORT_PEER_ACCESS: u64 = 1;
/// Bytes of an ACL IPC key, NUL included.
const KEY_LEN: usize = 65;

type AclError = i32;

struct Api {
    set_current_context: unsafe extern "C" fn(*mut c_void) -> AclError,
    destroy_context: unsafe extern "C" fn(*mut c_void) -> AclError,
    malloc: unsafe extern "C" fn(*mut *mut c_void, usize, i32) -> AclError,
    free: unsafe extern "C" fn(*mut c_void) -> AclError,
    memcpy: unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize, i32) -> AclError,
    synchronize: unsafe extern "C" fn() -> AclError,
    export_key: unsafe extern "C" fn(*mut c_void, usize, *mut c_char, usize, u64) -> AclError,
    import_by_key: unsafe extern "C" fn(*mut *mut c_void, *const c_char, u64) -> AclError,
    ipc_close: unsafe extern "C" fn(*const c_char) -> AclError,
    recent_error: unsafe extern "C" fn() -> *const c_char,
}

/// One NPU through AscendCL.
pub struct AscendDevice {
    api: Api,
    context: *mut c_void,
    index: u32,
    /// Sizes of this process's allocations (export needs them).
    allocations: Mutex<HashMap<u64, u64>>,
    /// Keys of imported memory (close goes by key).
    imports: Mutex<HashMap<u64, [u8; KEY_LEN]>>,
    _library: libloading::Library,
}

// SAFETY: ACL calls are thread-safe once the calling thread's context is set, which
// every method does first; the maps are behind mutexes.
unsafe impl Send for AscendDevice {}
// SAFETY: as above.
unsafe impl Sync for AscendDevice {}

impl AscendDevice {
    /// Loads libascendcl, initialises ACL and creates a context on NPU `index`.
    pub fn open(index: u32) -> Result<AscendDevice> {
        let library = load(BACKEND, LIBRARIES, HINT)?;
        let lib = LIBRARIES[0];
        // SAFETY: each `symbol` type is AscendCL's documented signature.
        let (api, init, create_context) = unsafe {
            (
                Api {
                    set_current_context: symbol(&library, BACKEND, lib, "aclrtSetCurrentContext")?,
                    destroy_context: symbol(&library, BACKEND, lib, "aclrtDestroyContext")?,
                    malloc: symbol(&library, BACKEND, lib, "aclrtMalloc")?,
                    free: symbol(&library, BACKEND, lib, "aclrtFree")?,
                    memcpy: symbol(&library, BACKEND, lib, "aclrtMemcpy")?,
                    synchronize: symbol(&library, BACKEND, lib, "aclrtSynchronizeDevice")?,
                    export_key: symbol(&library, BACKEND, lib, "aclrtIpcMemGetExportKey")?,
                    import_by_key: symbol(&library, BACKEND, lib, "aclrtIpcMemImportByKey")?,
                    ipc_close: symbol(&library, BACKEND, lib, "aclrtIpcMemClose")?,
                    recent_error: symbol(&library, BACKEND, lib, "aclGetRecentErrMsg")?,
                },
                symbol::<unsafe extern "C" fn(*const c_char) -> AclError>(
                    &library, BACKEND, lib, "aclInit",
                )?,
                symbol::<unsafe extern "C" fn(*mut *mut c_void, i32) -> AclError>(
                    &library,
                    BACKEND,
                    lib,
                    "aclrtCreateContext",
                )?,
            )
        };
        let mut device = AscendDevice {
            api,
            context: std::ptr::null_mut(),
            index,
            allocations: Mutex::new(HashMap::new()),
            imports: Mutex::new(HashMap::new()),
            _library: library,
        };
        // SAFETY: a null config path means defaults.
        let status = unsafe { init(std::ptr::null()) };
        if status != REPEAT_INITIALIZE {
            device.check("aclInit", status)?;
        }
        let mut context = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        device.check("aclrtCreateContext", unsafe {
            create_context(&mut context, index as i32)
        })?;
        device.context = context;
        Ok(device)
    }

    fn check(&self, op: &'static str, status: AclError) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: returns a thread-local string or null.
        let message = unsafe {
            let p = (self.api.recent_error)();
            if p.is_null() {
                "no message from ACL".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
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

    fn current(&self) -> Result<()> {
        // SAFETY: a context created in `open`, destroyed only on drop.
        self.check("aclrtSetCurrentContext", unsafe {
            (self.api.set_current_context)(self.context)
        })
    }
}

impl Device for AscendDevice {
    fn backend(&self) -> &str {
        BACKEND
    }

    fn index(&self) -> u32 {
        self.index
    }

    fn alloc_raw(&self, size: u64) -> Result<u64> {
        self.current()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("aclrtMalloc", unsafe {
            (self.api.malloc)(&mut ptr, size as usize, MALLOC_HUGE_FIRST)
        })?;
        let ptr = ptr as u64;
        self.allocations.lock().expect("poisoned").insert(ptr, size);
        Ok(ptr)
    }

    unsafe fn free_raw(&self, ptr: u64) -> Result<()> {
        self.current()?;
        self.allocations.lock().expect("poisoned").remove(&ptr);
        // SAFETY: the caller guarantees a live allocation.
        self.check("aclrtFree", unsafe { (self.api.free)(ptr as *mut c_void) })
    }

    unsafe fn copy_raw(&self, dst: u64, src: u64, len: u64, kind: CopyKind) -> Result<()> {
        self.current()?;
        // ACL's kinds: 1 host-to-device, 2 device-to-host, 3 device-to-device: ours.
        let n = len as usize;
        // SAFETY: the caller guarantees both ranges; aclrtMemcpy is synchronous.
        self.check("aclrtMemcpy", unsafe {
            (self.api.memcpy)(dst as *mut c_void, n, src as *const c_void, n, kind as i32)
        })
    }

    fn export_raw(&self, ptr: u64) -> Result<IpcHandle> {
        self.current()?;
        let size = *self
            .allocations
            .lock()
            .expect("poisoned")
            .get(&ptr)
            .ok_or_else(|| {
                DeviceError::InvalidArgument(format!(
                    "{ptr:#x} is not an allocation of this device"
                ))
            })?;
        let mut key = [0u8; KEY_LEN];
        // SAFETY: a live allocation of `size` bytes; the key buffer holds KEY_LEN bytes.
        self.check("aclrtIpcMemGetExportKey", unsafe {
            (self.api.export_key)(
                ptr as *mut c_void,
                size as usize,
                key.as_mut_ptr().cast(),
                KEY_LEN,
                EXPORT_NO_PID_CHECK,
            )
        })?;
        let mut out = [0u8; crate::IPC_HANDLE_BYTES];
        out[..KEY_LEN].copy_from_slice(&key);
        Ok(IpcHandle(out))
    }

    fn import_raw(&self, handle: &IpcHandle) -> Result<(u64, Option<u64>)> {
        self.current()?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&handle.0[..KEY_LEN]);
        key[KEY_LEN - 1] = 0;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the key is NUL-terminated.
        self.check("aclrtIpcMemImportByKey", unsafe {
            (self.api.import_by_key)(&mut ptr, key.as_ptr().cast(), IMPORT_PEER_ACCESS)
        })?;
        self.imports
            .lock()
            .expect("poisoned")
            .insert(ptr as u64, key);
        Ok((ptr as u64, None))
    }

    unsafe fn close_imported_raw(&self, ptr: u64) -> Result<()> {
        self.current()?;
        let key = self
            .imports
            .lock()
            .expect("poisoned")
            .remove(&ptr)
            .ok_or_else(|| {
                DeviceError::InvalidArgument(format!("{ptr:#x} is not an import of this device"))
            })?;
        // SAFETY: the key of a live import, NUL-terminated.
        self.check("aclrtIpcMemClose", unsafe {
            (self.api.ipc_close)(key.as_ptr().cast())
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.current()?;
        // SAFETY: the context is current.
        self.check("aclrtSynchronizeDevice", unsafe {
            (self.api.synchronize)()
        })
    }
}

impl Drop for AscendDevice {
    fn drop(&mut self) {
        // SAFETY: destroys the context of `open`, once.
        let _ = unsafe { (self.api.destroy_context)(self.context) };
    }
}
