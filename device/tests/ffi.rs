//! The device module across the real FFI boundary: the host-sim plugin loaded by dlopen,
//! copies of every kind, IPC export/import across processes, and the refusals.
//!
//! `STRATA_DEVICE_TEST_BACKEND=cuda` (or `ascend`) runs the tests that hold for any
//! backend against that one instead, device 0: what `device/gpu-check.sh` does on a GPU
//! machine. Checks of host-sim's own messages and semantics then stay host-sim's.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use strata_device::{
    fixtures, Backend, CopyKind, CopySpan, Device, DeviceError, DeviceMemory, IpcHandle,
    MemoryKind, PluginLibrary,
};

fn host_sim() -> Arc<dyn Device> {
    // By path, exactly as an operator's `--device-plugin /path/to/plugin.so` loads.
    let lib = PluginLibrary::load(Path::new(fixtures::HOST_SIM_PLUGIN)).expect("host-sim loads");
    assert_eq!(lib.backend_name(), "host-sim");
    Arc::new(lib.open(0).expect("device 0 opens"))
}

/// The backend under test: `STRATA_DEVICE_TEST_BACKEND`, or host-sim.
fn backend_under_test() -> Option<Backend> {
    std::env::var("STRATA_DEVICE_TEST_BACKEND")
        .ok()
        .filter(|b| !b.is_empty() && b != "host-sim")
        .map(|b| Backend::parse(&b))
}

/// Device 0 of the backend under test.
fn device() -> Arc<dyn Device> {
    match backend_under_test() {
        None => host_sim(),
        Some(b) => b
            .open(0)
            .unwrap_or_else(|e| panic!("{b} device 0 does not open: {e}")),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn copies_of_every_kind_round_trip() {
    let dev = device();
    let a = DeviceMemory::alloc(&dev, 1 << 20).unwrap();
    let b = DeviceMemory::alloc(&dev, 1 << 20).unwrap();
    let data = pattern(300_000, 7);
    a.write(4096, &data).unwrap(); // H2D
    a.copy_to(4096, &b, 100, data.len()).unwrap(); // D2D
    let mut back = vec![0u8; data.len()];
    b.read(100, &mut back).unwrap(); // D2H
    assert_eq!(back, data);
    // Raw copies into a buffer the caller names as host memory.
    let mut host = vec![0u8; 1000];
    // SAFETY: `host` is a live, exclusively borrowed host buffer of 1000 bytes.
    unsafe { a.read_to_raw(4096, host.as_mut_ptr() as u64, 1000, MemoryKind::Host) }.unwrap();
    assert_eq!(host, data[..1000]);
    dev.synchronize().unwrap();
}

#[test]
fn streamed_and_overlapping_device_copies_keep_every_byte() {
    // Copies into device memory from 4 KiB up use non-temporal stores: odd heads and tails
    // around the 64-byte steps, and an overlapping device-to-device move (memmove).
    let dev = device();
    let a = DeviceMemory::alloc(&dev, 1 << 20).unwrap();
    for (at, len) in [(1, 4096), (3, 4097 + 64 * 7), (15, 65_537), (16, 4096 + 63)] {
        let data = pattern(len, at as u8);
        a.write(at, &data).unwrap();
        let mut back = vec![0u8; len];
        a.read(at, &mut back).unwrap();
        assert_eq!(back, data, "write of {len} bytes at {at}");
    }
    let data = pattern(100_000, 9);
    a.write(0, &data).unwrap();
    a.copy_to(0, &a, 1000, data.len()).unwrap();
    let mut back = vec![0u8; data.len()];
    a.read(1000, &mut back).unwrap();
    assert_eq!(back, data, "an overlapping move keeps the source's bytes");
}

/// Spreads 16 pieces of 64 KiB (a block's per-layer slices) from host memory into device
/// memory, moves them device to device, and gathers them back, each direction one batch;
/// every byte checked.
fn batch_round_trip(dev: &Arc<dyn Device>) {
    const PIECES: usize = 16;
    const PIECE: usize = 64 << 10;
    let a = DeviceMemory::alloc(dev, (2 * PIECES * PIECE) as u64).unwrap();
    let b = DeviceMemory::alloc(dev, (2 * PIECES * PIECE) as u64).unwrap();
    let data = pattern(PIECES * PIECE - 17, 3); // the last piece short
                                                // Into every other piece of `a`, as a block's slices lie apart in a KV cache.
    let slot = |m: &DeviceMemory, i: usize| m.ptr() + (2 * i * PIECE) as u64;
    let pieces = |len: usize| (0..PIECES).map(move |i| (i, i * PIECE, PIECE.min(len - i * PIECE)));
    let spans: Vec<_> = pieces(data.len())
        .map(|(i, at, take)| {
            let src = data[at..].as_ptr() as u64;
            CopySpan::new(slot(&a, i), src, take as u64, CopyKind::HostToDevice)
        })
        .collect();
    // SAFETY: each destination is a distinct 64 KiB slot of `a`; each source lies in `data`.
    unsafe { dev.copy_batch_raw(&spans) }.unwrap();
    let moved: Vec<_> = pieces(data.len())
        .map(|(i, _, take)| {
            CopySpan::new(
                slot(&b, i),
                slot(&a, i),
                take as u64,
                CopyKind::DeviceToDevice,
            )
        })
        .collect();
    // SAFETY: slots of `b` from slots of `a`, all inside the allocations, disjoint.
    unsafe { dev.copy_batch_raw(&moved) }.unwrap();
    let mut back = vec![0u8; data.len()];
    let out: Vec<_> = pieces(data.len())
        .map(|(i, at, take)| {
            let dst = back[at..].as_mut_ptr() as u64;
            CopySpan::new(dst, slot(&b, i), take as u64, CopyKind::DeviceToHost)
        })
        .collect();
    // SAFETY: disjoint ranges of `back`, which outlives the call; sources inside `b`.
    unsafe { dev.copy_batch_raw(&out) }.unwrap();
    assert!(back == data, "a batched round trip changed bytes");
    // The same through the bounds-checked layer: `b`'s slots read out in one batch.
    let mut again = vec![0u8; data.len()];
    let reads: Vec<_> = pieces(data.len())
        .map(|(i, at, take)| {
            (
                (2 * i * PIECE) as u64,
                again[at..].as_mut_ptr() as u64,
                take,
                MemoryKind::Host,
            )
        })
        .collect();
    // SAFETY: disjoint ranges of `again`, which outlives the call.
    unsafe { b.read_to_many(reads) }.unwrap();
    assert!(again == data, "read_to_many changed bytes");
    // An empty batch is a no-op.
    // SAFETY: nothing to copy.
    unsafe { dev.copy_batch_raw(&[]) }.unwrap();
}

#[test]
fn batched_copies_of_every_kind_round_trip() {
    batch_round_trip(&device());
}

/// A version-1 module (no `copy_batch` in its vtable) still loads, and its batches are
/// made of single copies.
#[test]
fn a_version_1_module_loads_and_batches_copy_by_copy() {
    let lib =
        PluginLibrary::load(Path::new(fixtures::HOST_SIM_V1_PLUGIN)).expect("version 1 loads");
    let dev: Arc<dyn Device> = Arc::new(lib.open(1).unwrap());
    batch_round_trip(&dev);
}

/// host-sim checks every span before it copies any: a batch with one span outside device
/// memory fails by name and leaves the good spans' destinations as they were.
#[test]
fn a_batch_with_a_bad_span_copies_nothing() {
    if backend_under_test().is_some() {
        return; // a vendor module may have queued the good spans already (undefined)
    }
    let dev = host_sim();
    let a = DeviceMemory::alloc(&dev, 8192).unwrap();
    a.write(0, &[0u8; 8192]).unwrap();
    let data = pattern(4096, 5);
    let spans = [
        CopySpan::new(a.ptr(), data.as_ptr() as u64, 4096, CopyKind::HostToDevice),
        // Runs past the allocation's end.
        CopySpan::new(
            a.ptr() + 4096,
            data.as_ptr() as u64,
            4097,
            CopyKind::HostToDevice,
        ),
    ];
    // SAFETY: the first span is inside `a`; the second is refused before any copy.
    let e = unsafe { dev.copy_batch_raw(&spans) }.unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::Call {
                op: "copy_batch",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not inside an allocation"), "{e}");
    let mut back = vec![1u8; 4096];
    a.read(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the good span was copied anyway"
    );
}

#[test]
fn out_of_bounds_and_wrong_kinds_are_refused() {
    let dev = device();
    let host_sim = backend_under_test().is_none();
    let a = DeviceMemory::alloc(&dev, 4096).unwrap();
    let e = a.write(4000, &[0u8; 200]).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument", "{e}");
    // A host buffer passed as device memory: the module refuses rather than copy.
    let mut host = vec![0u8; 64];
    // SAFETY: the destination is a live host buffer; the module checks the device side.
    let e =
        unsafe { a.read_to_raw(0, host.as_mut_ptr() as u64, 64, MemoryKind::Device) }.unwrap_err();
    assert!(matches!(e, DeviceError::Call { op: "copy", .. }), "{e}");
    if host_sim {
        assert!(e.to_string().contains("not inside an allocation"), "{e}");
    }
    println!("host memory named as device memory: {e}");
    // Opening a device the module does not have.
    let e = match backend_under_test() {
        None => {
            let lib = PluginLibrary::load(Path::new(fixtures::HOST_SIM_PLUGIN)).unwrap();
            let e = lib.open(99).err().expect("no device 99");
            assert!(e.to_string().contains("devices 0..7"), "{e}");
            e
        }
        Some(b) => b.open(99).err().expect("no device 99"),
    };
    println!("device 99: {e}");
    // A handle that is not one.
    let e = DeviceMemory::import(&dev, &IpcHandle([0xab; 128]), 4096).unwrap_err();
    if host_sim {
        assert!(e.to_string().contains("not a host-sim handle"), "{e}");
    }
    println!("a handle that is not one: {e}");
}

#[test]
fn an_abi_version_mismatch_is_refused_with_both_versions() {
    let e = PluginLibrary::load(Path::new(fixtures::ABI_MISMATCH_PLUGIN))
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            DeviceError::AbiMismatch {
                found: 999,
                oldest: 1,
                expected: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("version 999") && msg.contains("versions 1 to 2"),
        "{msg}"
    );
}

#[test]
fn a_missing_plugin_or_vendor_library_is_refused_by_name() {
    let e = Backend::parse("/nonexistent/libvendor.so")
        .open(0)
        .err()
        .expect("no file");
    assert_eq!(e.kind(), "library_missing");
    assert!(e.to_string().contains("/nonexistent/libvendor.so"), "{e}");
    // No GPU or NPU runtime is installed on the machines this suite runs on; where one is,
    // opening may succeed and there is nothing to check here.
    for (backend, library) in [
        (Backend::Cuda, "libcuda.so.1"),
        (Backend::Ascend, "libascendcl.so"),
    ] {
        match backend.open(0) {
            Err(e @ DeviceError::LibraryMissing { .. }) => {
                assert!(e.to_string().contains(library), "{e}")
            }
            Err(e) => println!("{backend}: runtime present, open failed: {e}"),
            Ok(_) => println!("{backend}: runtime present and device 0 opened"),
        }
    }
}

#[test]
fn the_embedded_host_sim_loads_without_its_file() {
    let dev = Backend::HostSim.open(3).unwrap();
    assert_eq!((dev.backend(), dev.index()), ("host-sim", 3));
    let m = DeviceMemory::alloc(&dev, 8192).unwrap();
    m.write(0, b"embedded").unwrap();
    let mut back = [0u8; 8];
    m.read(0, &mut back).unwrap();
    assert_eq!(&back, b"embedded");
}

/// The child half of the cross-process test: imports the handle given in the environment,
/// checks the parent's bytes and writes its own.
#[test]
fn ipc_child() {
    let Ok(hex) = std::env::var("STRATA_DEVICE_TEST_HANDLE") else {
        return; // only meaningful when spawned by `ipc_handles_work_across_processes`
    };
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let dev = device();
    let imported =
        DeviceMemory::import(&dev, &IpcHandle::from_bytes(&bytes).unwrap(), 1 << 16).unwrap();
    let mut seen = vec![0u8; 1000];
    imported.read(0, &mut seen).unwrap();
    assert_eq!(seen, pattern(1000, 1));
    imported.write(5000, &pattern(1000, 2)).unwrap();
}

#[test]
fn ipc_handles_work_across_processes() {
    let dev = device();
    let owned = DeviceMemory::alloc(&dev, 1 << 16).unwrap();
    owned.write(0, &pattern(1000, 1)).unwrap();
    let handle = owned.export().unwrap();
    let hex: String = handle.0.iter().map(|b| format!("{b:02x}")).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ipc_child", "--test-threads=1"])
        .env("STRATA_DEVICE_TEST_HANDLE", hex)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child failed: {}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stdout)
    );
    let mut written = vec![0u8; 1000];
    owned.read(5000, &mut written).unwrap();
    assert_eq!(
        written,
        pattern(1000, 2),
        "the child's write is visible to the owner"
    );
    if backend_under_test().is_some() {
        // A vendor runtime imports only in another process (CUDA refuses its own handles).
        return;
    }
    // An import cannot be re-exported; a freed allocation's handle no longer imports.
    let imported = DeviceMemory::import(&dev, &handle, 1 << 16).unwrap();
    assert!(imported.export().is_err());
    drop(imported);
    drop(owned);
    let e = DeviceMemory::import(&dev, &handle, 1 << 16).unwrap_err();
    assert!(e.to_string().contains("import_handle"), "{e}");
}
