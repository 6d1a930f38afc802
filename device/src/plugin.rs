//! The dlopen path: a shared library exporting `strata_device_entry`, checked and wrapped.
//!
//! Every C-ABI module goes through here, the host-sim plugin included, so tests cross the
//! same FFI boundary a vendor plugin does.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::abi::{
    EntryFn, RawDevice, RawIpcHandle, VTable, VTableV2, ABI_MIN_VERSION, ABI_VERSION, ENTRY_SYMBOL,
    IPC_HANDLE_BYTES, VERSION_1_SIZE,
};
use crate::device::{CopyKind, CopySpan, Device, IpcHandle};
use crate::error::{DeviceError, Result};

/// A loaded device module: the library and its checked vtable.
pub struct PluginLibrary {
    path: PathBuf,
    name: String,
    vtable: *const VTable,
    /// The module's version: fields added after it are absent from its vtable.
    version: u32,
    /// Keeps the code the vtable points into mapped; dropped last.
    _library: libloading::Library,
}

// SAFETY: the vtable is immutable static data of the loaded library, and the header
// requires every module function to be callable from any thread.
unsafe impl Send for PluginLibrary {}
// SAFETY: as above; `&PluginLibrary` only reads the vtable.
unsafe impl Sync for PluginLibrary {}

/// The host-sim module, compiled into this crate: loaded from an in-memory copy so a
/// strata binary needs no file beside it.
const HOST_SIM_IMAGE: &[u8] = include_bytes!(env!("STRATA_HOST_SIM_PLUGIN"));

impl PluginLibrary {
    /// Loads the module at `path` and checks its ABI version and vtable.
    pub fn load(path: &Path) -> Result<Arc<PluginLibrary>> {
        // SAFETY: loading runs the library's initialisers; a device module is trusted code
        // chosen by the operator (a flag), exactly like a vendor driver.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|e| DeviceError::LibraryMissing {
                backend: "plugin",
                library: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let bad = |reason: String| DeviceError::BadModule {
            path: path.to_path_buf(),
            reason,
        };
        // SAFETY: the symbol's type is the header's `strata_device_entry`; a library that
        // exports the name with another type breaks the ABI contract it claims.
        let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }
            .map_err(|e| bad(format!("no strata_device_entry symbol: {e}")))?;
        // SAFETY: calling the entry has no preconditions; it returns a static vtable.
        let vtable = unsafe { entry() };
        if vtable.is_null() {
            return Err(bad("strata_device_entry returned null".into()));
        }
        // Only the two leading fields are read before the version is known to match: their
        // layout is fixed across versions.
        // SAFETY: non-null, points at the module's static vtable, which starts with two u32.
        let (version, size) = unsafe { ((*vtable).abi_version, (*vtable).vtable_size) };
        if !(ABI_MIN_VERSION..=ABI_VERSION).contains(&version) {
            return Err(DeviceError::AbiMismatch {
                path: path.to_path_buf(),
                found: version,
                oldest: ABI_MIN_VERSION,
                expected: ABI_VERSION,
            });
        }
        let needed = if version == ABI_VERSION {
            std::mem::size_of::<VTableV2>()
        } else {
            VERSION_1_SIZE
        };
        if (size as usize) < needed {
            return Err(bad(format!(
                "vtable of {size} bytes, version {version} needs {needed}"
            )));
        }
        // SAFETY: a known version, so the vtable has at least version 1's layout (`VTable`);
        // backend_name is a
        // static NUL-terminated string of the module (or null).
        let name = unsafe {
            let p = (*vtable).backend_name;
            if p.is_null() {
                "plugin".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Ok(Arc::new(PluginLibrary {
            path: path.to_path_buf(),
            name,
            vtable,
            version,
            _library: library,
        }))
    }

    /// The host-sim module, loaded once per process.
    pub fn host_sim() -> Result<Arc<PluginLibrary>> {
        static HOST_SIM: OnceLock<Arc<PluginLibrary>> = OnceLock::new();
        if let Some(lib) = HOST_SIM.get() {
            return Ok(Arc::clone(lib));
        }
        let lib = load_image("strata-host-sim", HOST_SIM_IMAGE)
            .or_else(|_| PluginLibrary::load(Path::new(crate::fixtures::HOST_SIM_PLUGIN)))?;
        Ok(Arc::clone(HOST_SIM.get_or_init(|| lib)))
    }

    /// The backend name the module reports.
    pub fn backend_name(&self) -> &str {
        &self.name
    }

    /// The version-1 part of the vtable, which every accepted module has.
    fn vtable(&self) -> &VTable {
        // SAFETY: checked non-null and at least version 1's size and layout at load;
        // static in the library, which `self` keeps loaded.
        unsafe { &*self.vtable }
    }

    /// The module's `copy_batch`, which version-1 modules lack.
    fn copy_batch(&self) -> Option<unsafe extern "C" fn(RawDevice, *const CopySpan, u64) -> i32> {
        // SAFETY: a version-2 vtable is a whole `VTableV2` (its size was checked at load);
        // an older one is never read as one.
        (self.version >= 2).then(|| unsafe { (*self.vtable.cast::<VTableV2>()).copy_batch })
    }

    /// The module's message for the calling thread's last failure.
    fn last_error(&self) -> String {
        // SAFETY: `last_error` has no preconditions and returns a NUL-terminated string
        // valid until this thread's next module call (none happens before we copy it).
        unsafe {
            let p = (self.vtable().last_error)();
            if p.is_null() {
                "(no message)".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    /// Opens device `index` through this module.
    pub fn open(self: &Arc<Self>, index: u32) -> Result<PluginDevice> {
        let mut raw: RawDevice = std::ptr::null_mut();
        // SAFETY: `open` writes a context pointer to the valid out-pointer.
        let status = unsafe { (self.vtable().open)(index, &mut raw) };
        if status != 0 || raw.is_null() {
            return Err(DeviceError::Call {
                backend: self.name.clone(),
                index,
                op: "open",
                status: status.into(),
                message: format!("{} ({})", self.last_error(), self.path.display()),
            });
        }
        Ok(PluginDevice {
            library: Arc::clone(self),
            raw,
            index,
        })
    }
}

/// Writes a module image into an anonymous file and dlopens it through /proc/self/fd.
fn load_image(name: &str, image: &[u8]) -> Result<Arc<PluginLibrary>> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let io = |e: std::io::Error| DeviceError::LibraryMissing {
        backend: "plugin",
        library: name.to_string(),
        reason: e.to_string(),
    };
    let fd = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create(name)
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    fd.as_file().write_all(image).map_err(io)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    // The loader maps the file; the descriptor can close once it has.
    PluginLibrary::load(&path)
}

/// A device opened through a [`PluginLibrary`].
pub struct PluginDevice {
    library: Arc<PluginLibrary>,
    raw: RawDevice,
    index: u32,
}

// SAFETY: the header makes every function callable from any thread on one context.
unsafe impl Send for PluginDevice {}
// SAFETY: as above, concurrently.
unsafe impl Sync for PluginDevice {}

impl PluginDevice {
    fn check(&self, op: &'static str, status: i32) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        Err(DeviceError::Call {
            backend: self.library.name.clone(),
            index: self.index,
            op,
            status: status.into(),
            message: self.library.last_error(),
        })
    }
}

impl Device for PluginDevice {
    fn backend(&self) -> &str {
        &self.library.name
    }

    fn index(&self) -> u32 {
        self.index
    }

    fn alloc_raw(&self, size: u64) -> Result<u64> {
        let mut ptr = 0u64;
        // SAFETY: live context; valid out-pointer.
        let status = unsafe { (self.library.vtable().alloc)(self.raw, size, &mut ptr) };
        self.check("alloc", status).map(|()| ptr)
    }

    unsafe fn free_raw(&self, ptr: u64) -> Result<()> {
        // SAFETY: live context; the caller guarantees `ptr` is a live allocation no copy uses.
        let status = unsafe { (self.library.vtable().free)(self.raw, ptr) };
        self.check("free", status)
    }

    unsafe fn copy_raw(&self, dst: u64, src: u64, len: u64, kind: CopyKind) -> Result<()> {
        // SAFETY: live context; the caller guarantees both ranges (this method's contract).
        let status = unsafe { (self.library.vtable().copy)(self.raw, dst, src, len, kind as i32) };
        self.check("copy", status)
    }

    unsafe fn copy_batch_raw(&self, spans: &[CopySpan]) -> Result<()> {
        let Some(copy_batch) = self.library.copy_batch() else {
            // A version-1 module: span by span.
            for s in spans {
                // SAFETY: this method's contract, span by span.
                unsafe { self.copy_raw(s.dst, s.src, s.len, s.kind) }?;
            }
            return Ok(());
        };
        // SAFETY: live context; `spans` is a live slice of the ABI's span layout, and the
        // caller guarantees every range (this method's contract).
        let status = unsafe { copy_batch(self.raw, spans.as_ptr(), spans.len() as u64) };
        self.check("copy_batch", status)
    }

    fn export_raw(&self, ptr: u64) -> Result<IpcHandle> {
        let mut out = RawIpcHandle {
            bytes: [0; IPC_HANDLE_BYTES],
        };
        // SAFETY: live context; valid out-pointer. The module validates `ptr` itself.
        let status = unsafe { (self.library.vtable().export_handle)(self.raw, ptr, &mut out) };
        self.check("export_handle", status)
            .map(|()| IpcHandle(out.bytes))
    }

    fn import_raw(&self, handle: &IpcHandle) -> Result<(u64, Option<u64>)> {
        let raw = RawIpcHandle { bytes: handle.0 };
        let (mut ptr, mut size) = (0u64, 0u64);
        // SAFETY: live context; valid in- and out-pointers.
        let status =
            unsafe { (self.library.vtable().import_handle)(self.raw, &raw, &mut ptr, &mut size) };
        self.check("import_handle", status)
            .map(|()| (ptr, (size > 0).then_some(size)))
    }

    unsafe fn close_imported_raw(&self, ptr: u64) -> Result<()> {
        // SAFETY: live context; the caller guarantees `ptr` is a live import no copy uses.
        let status = unsafe { (self.library.vtable().close_imported)(self.raw, ptr) };
        self.check("close_imported", status)
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: live context.
        let status = unsafe { (self.library.vtable().synchronize)(self.raw) };
        self.check("synchronize", status)
    }
}

impl Drop for PluginDevice {
    fn drop(&mut self) {
        // SAFETY: the context came from `open` and is closed once; every DeviceMemory holds
        // an Arc of its device, so none outlives this.
        let status = unsafe { (self.library.vtable().close)(self.raw) };
        if status != 0 {
            eprintln!("strata-device: close failed: {}", self.library.last_error());
        }
    }
}
