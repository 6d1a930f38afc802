/*
 * strata device module ABI.
 *
 * A device module is a shared library exporting one symbol, `strata_device_entry`, which
 * returns a pointer to a static vtable. strata never links a vendor library: it dlopens the
 * module, calls the entry, checks `abi_version` and `vtable_size`, and calls through the
 * vtable only. A module built for another ABI version is refused before any other call.
 *
 * Return values: every function returning int32_t returns 0 on success and a non-zero,
 * module-defined status on failure; `last_error` then describes the failure.
 *
 * Ownership:
 *  - `open` creates a device context owned by the caller, released by `close`. Every
 *    allocation and import made through a context must be freed or closed before `close`.
 *  - Memory from `alloc` is owned by the caller until `free`. Memory mapped by
 *    `import_handle` is owned by the importer until `close_imported`; the exporter must not
 *    free an allocation while another process may still import it.
 *  - `backend_name` and the strings returned by `last_error` belong to the module.
 *    `last_error`'s string stays valid until the next call on the same thread.
 *
 * Thread safety: every function may be called from any thread, concurrently, on one
 * context. Concurrent copies into disjoint ranges are allowed; copies racing on one range
 * leave that range undefined (never the rest). `last_error` is per thread.
 *
 * Device pointers are opaque 64-bit numbers; host pointers are passed as their address.
 * `copy` and `copy_batch` are synchronous with respect to the host: when they return, the
 * bytes have arrived (a module backed by asynchronous queues synchronises before
 * returning).
 *
 * Versions: the vtable only grows at its end. Version 2 appended `copy_batch`; a loader
 * of this header also accepts a version-1 module (whose vtable ends before `copy_batch`)
 * and makes its batches one `copy` per span.
 */
#ifndef STRATA_DEVICE_H
#define STRATA_DEVICE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any change to the vtable's layout or any function's contract. */
#define STRATA_DEVICE_ABI_VERSION 2u
/* The oldest module version a loader of this header accepts (see "Versions" above). */
#define STRATA_DEVICE_ABI_MIN_VERSION 1u

/* The symbol every module exports. */
#define STRATA_DEVICE_ENTRY_SYMBOL "strata_device_entry"

/* Bytes of an IPC handle: large enough for CUDA's 64-byte handle and ACL's key names. */
#define STRATA_IPC_HANDLE_BYTES 128

typedef uint64_t strata_devptr;

/* An opened device (module-defined). */
typedef struct strata_device strata_device;

typedef enum strata_copy_kind {
    STRATA_COPY_HOST_TO_DEVICE = 1,
    STRATA_COPY_DEVICE_TO_HOST = 2,
    STRATA_COPY_DEVICE_TO_DEVICE = 3
} strata_copy_kind;

/* One copy of a batch: `len` bytes from `src` to `dst`, `kind` (a strata_copy_kind)
   saying which side is device memory, as for `copy`. */
typedef struct strata_copy_span {
    uint64_t dst;
    uint64_t src;
    uint64_t len;
    int32_t kind;
    uint32_t reserved; /* 0 */
} strata_copy_span;

/* An exported allocation, as bytes another process on the host can import. */
typedef struct strata_ipc_handle {
    uint8_t bytes[STRATA_IPC_HANDLE_BYTES];
} strata_ipc_handle;

typedef struct strata_device_vtable {
    /* STRATA_DEVICE_ABI_VERSION of the header the module was built with. */
    uint32_t abi_version;
    /* sizeof(strata_device_vtable) as the module sees it. */
    uint32_t vtable_size;
    /* Short lower-case name: "host-sim", "cuda", "ascend". */
    const char *backend_name;

    /* Opens device `index` (0-based). */
    int32_t (*open)(uint32_t index, strata_device **out);
    /* Releases a context from `open`. */
    int32_t (*close)(strata_device *dev);

    /* Allocates `size` bytes of device memory. */
    int32_t (*alloc)(strata_device *dev, uint64_t size, strata_devptr *out);
    /* Frees memory from `alloc` (the pointer `alloc` returned, not one inside it). */
    int32_t (*free)(strata_device *dev, strata_devptr ptr);

    /* Copies `len` bytes from `src` to `dst`; `kind` says which side is device memory.
       Host addresses must be valid host memory of this process for `len` bytes. */
    int32_t (*copy)(strata_device *dev, uint64_t dst, uint64_t src, uint64_t len,
                    strata_copy_kind kind);

    /* Exports an allocation from `alloc` for other processes of this host. */
    int32_t (*export_handle)(strata_device *dev, strata_devptr ptr, strata_ipc_handle *out);
    /* Maps an exported allocation into this process; `*size` receives its size in bytes
       when the module knows it, else 0. */
    int32_t (*import_handle)(strata_device *dev, const strata_ipc_handle *handle,
                             strata_devptr *out, uint64_t *size);
    /* Unmaps memory from `import_handle`. */
    int32_t (*close_imported)(strata_device *dev, strata_devptr ptr);

    /* Waits until all work issued on the device so far has finished. */
    int32_t (*synchronize)(strata_device *dev);

    /* The calling thread's last failure, never NULL. */
    const char *(*last_error)(void);

    /* Since version 2. Performs the `count` copies of `spans`, each as `copy` would, in any
       order or at once, and returns when all have arrived: one call and one
       synchronisation for the many small pieces a KV-cache block is spread over (a
       layer's K and V slices each). No span's destination may overlap another span's.
       On a failure the destinations of the other spans are undefined (a module may have
       copied some; host-sim checks every span first and then copies none). */
    int32_t (*copy_batch)(strata_device *dev, const strata_copy_span *spans, uint64_t count);
} strata_device_vtable;

/* The entry point: returns the module's static vtable. */
const strata_device_vtable *strata_device_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* STRATA_DEVICE_H */
