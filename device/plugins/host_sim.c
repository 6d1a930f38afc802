/*
 * host-sim: a strata device module whose "device memory" is shared memory.
 *
 * Each allocation is a memfd mapped shared. Its IPC handle names the exporting process,
 * the descriptor number and the file's identity (st_dev, st_ino); an importer opens the
 * same file through /proc/<pid>/fd/<fd> and maps it, then checks the identity, so a
 * handle whose exporter exited (or whose descriptor number was reused) is refused rather
 * than mapped onto the wrong memory. A mapping stays valid in the importer after the
 * exporter exits, as the file lives while anyone maps it.
 *
 * Copies are checked like a real device's: the device side of every copy must lie inside
 * one allocation or import made on the same device by this process (any context, as with
 * CUDA's primary context), so a host pointer passed as a device pointer (a wrong copy
 * kind) fails instead of silently working. Copies into device memory bypass the CPU's
 * caches (non-temporal stores), as a device's DMA engine writes memory the CPU does not
 * cache: a plain memcpy would first read every destination line into the cache, which
 * costs a real device nothing and would make host-sim's copies slower than the host
 * copies they are measured against.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "strata_device.h"

#define HOST_SIM_DEVICES 8
#define HANDLE_MAGIC 0x4d495353u /* "SSIM" */
#define HANDLE_VERSION 1u

enum { STATUS_OK = 0, STATUS_INVALID = 1, STATUS_NO_MEMORY = 2, STATUS_SYSTEM = 3 };

struct strata_device;

struct region {
    uintptr_t base;
    uint64_t size;
    int fd;       /* the memfd of an owned allocation, -1 for an import */
    int imported; /* 1 when mapped by import_handle */
    const struct strata_device *context; /* the context that made it */
};

/* What one simulated device knows in this process, shared by every context opened on it. */
struct device_state {
    pthread_rwlock_t lock;
    struct region *regions;
    size_t len;
    size_t cap;
};

static struct device_state DEVICES[HOST_SIM_DEVICES] = {
    [0 ... HOST_SIM_DEVICES - 1] = {PTHREAD_RWLOCK_INITIALIZER, NULL, 0, 0}};

struct strata_device {
    uint32_t index;
    struct device_state *state;
};

struct handle_layout {
    uint32_t magic;
    uint32_t version;
    int32_t pid;
    int32_t fd;
    uint64_t st_dev;
    uint64_t st_ino;
    uint64_t size;
};

static _Thread_local char last_error_text[512] = "no error";

static int32_t fail(int32_t status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error_text, sizeof last_error_text, fmt, args);
    va_end(args);
    return status;
}

static const char *host_sim_last_error(void) { return last_error_text; }

static int32_t host_sim_open(uint32_t index, strata_device **out) {
    if (out == NULL)
        return fail(STATUS_INVALID, "open: null output pointer");
    if (index >= HOST_SIM_DEVICES)
        return fail(STATUS_INVALID, "open: host-sim has devices 0..%d, not %u",
                    HOST_SIM_DEVICES - 1, index);
    strata_device *dev = calloc(1, sizeof *dev);
    if (dev == NULL)
        return fail(STATUS_NO_MEMORY, "open: out of host memory");
    dev->index = index;
    dev->state = &DEVICES[index];
    *out = dev;
    return STATUS_OK;
}

static int32_t host_sim_close(strata_device *dev) {
    if (dev == NULL)
        return fail(STATUS_INVALID, "close: null device");
    /* Whatever the caller left behind on this context is released rather than leaked. */
    struct device_state *st = dev->state;
    pthread_rwlock_wrlock(&st->lock);
    for (size_t i = 0; i < st->len;) {
        struct region r = st->regions[i];
        if (r.context != dev) {
            i++;
            continue;
        }
        munmap((void *)r.base, r.size);
        if (r.fd >= 0)
            close(r.fd);
        st->regions[i] = st->regions[--st->len];
    }
    pthread_rwlock_unlock(&st->lock);
    free(dev);
    return STATUS_OK;
}

/* Appends a region made by `dev`; takes the device's write lock. */
static int add_region(strata_device *dev, struct region r) {
    struct device_state *st = dev->state;
    int result = 0;
    r.context = dev;
    pthread_rwlock_wrlock(&st->lock);
    if (st->len == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 16;
        struct region *grown = realloc(st->regions, cap * sizeof *grown);
        if (grown == NULL) {
            result = -1;
        } else {
            st->regions = grown;
            st->cap = cap;
        }
    }
    if (result == 0)
        st->regions[st->len++] = r;
    pthread_rwlock_unlock(&st->lock);
    return result;
}

/* The index of the region starting at `base`, or -1; the caller holds the lock. */
static long find_base(const struct device_state *st, uintptr_t base) {
    for (size_t i = 0; i < st->len; i++)
        if (st->regions[i].base == base)
            return (long)i;
    return -1;
}

/* Whether [addr, addr + len) lies inside one region; the caller holds the lock. */
static int covered(const struct device_state *st, uint64_t addr, uint64_t len) {
    for (size_t i = 0; i < st->len; i++) {
        const struct region *r = &st->regions[i];
        if (addr >= r->base && addr - r->base <= r->size && len <= r->size - (addr - r->base))
            return 1;
    }
    return 0;
}

static int32_t host_sim_alloc(strata_device *dev, uint64_t size, strata_devptr *out) {
    if (dev == NULL || out == NULL || size == 0)
        return fail(STATUS_INVALID, "alloc: null argument or zero size");
    int fd = memfd_create("strata-host-sim", MFD_CLOEXEC);
    if (fd < 0)
        return fail(STATUS_SYSTEM, "alloc: memfd_create: %s", strerror(errno));
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        return fail(STATUS_NO_MEMORY, "alloc: cannot size %llu bytes: %s",
                    (unsigned long long)size, strerror(e));
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return fail(STATUS_NO_MEMORY, "alloc: mmap of %llu bytes: %s",
                    (unsigned long long)size, strerror(e));
    }
    struct region r = {(uintptr_t)base, size, fd, 0, dev};
    if (add_region(dev, r) != 0) {
        munmap(base, size);
        close(fd);
        return fail(STATUS_NO_MEMORY, "alloc: out of host memory for bookkeeping");
    }
    *out = (strata_devptr)(uintptr_t)base;
    return STATUS_OK;
}

/* Removes the region at `ptr` if its kind is `imported`; unmaps it outside the lock. */
static int32_t release(strata_device *dev, strata_devptr ptr, int imported, const char *op) {
    if (dev == NULL)
        return fail(STATUS_INVALID, "%s: null device", op);
    struct device_state *st = dev->state;
    pthread_rwlock_wrlock(&st->lock);
    long i = find_base(st, (uintptr_t)ptr);
    if (i < 0 || st->regions[i].imported != imported || st->regions[i].context != dev) {
        pthread_rwlock_unlock(&st->lock);
        return fail(STATUS_INVALID, "%s: %#llx is not the start of %s of this context", op,
                    (unsigned long long)ptr, imported ? "an import" : "an allocation");
    }
    struct region r = st->regions[i];
    st->regions[i] = st->regions[--st->len];
    pthread_rwlock_unlock(&st->lock);
    munmap((void *)r.base, r.size);
    if (r.fd >= 0)
        close(r.fd);
    return STATUS_OK;
}

static int32_t host_sim_free(strata_device *dev, strata_devptr ptr) {
    return release(dev, ptr, 0, "free");
}

static int32_t host_sim_close_imported(strata_device *dev, strata_devptr ptr) {
    return release(dev, ptr, 1, "close_imported");
}

/* Below this, the copy fits in the cache anyway and a plain memcpy is as fast. */
#define STREAM_MIN_BYTES 4096

#if defined(__x86_64__)
/* 64-byte steps of 16-byte streaming stores; `to` is 16-byte aligned. */
static size_t stream_sse2(unsigned char *to, const unsigned char *from, size_t len) {
    size_t done = 0;
    for (; len - done >= 64; done += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(from + done));
        __m128i b = _mm_loadu_si128((const __m128i *)(from + done + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(from + done + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(from + done + 48));
        _mm_stream_si128((__m128i *)(to + done), a);
        _mm_stream_si128((__m128i *)(to + done + 16), b);
        _mm_stream_si128((__m128i *)(to + done + 32), c);
        _mm_stream_si128((__m128i *)(to + done + 48), e);
    }
    return done;
}

/* 128-byte steps of 32-byte streaming stores; `to` is 64-byte aligned. The same loop as
   the host copies strata measures against (strata-copy's `stream_avx2`): on this project's
   machine 16-byte streaming stores ran 7-10% slower than these. */
__attribute__((target("avx2"))) static size_t stream_avx2(unsigned char *to,
                                                         const unsigned char *from,
                                                         size_t len) {
    size_t done = 0;
    for (; len - done >= 128; done += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(from + done));
        __m256i b = _mm256_loadu_si256((const __m256i *)(from + done + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(from + done + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(from + done + 96));
        _mm256_stream_si256((__m256i *)(to + done), a);
        _mm256_stream_si256((__m256i *)(to + done + 32), b);
        _mm256_stream_si256((__m256i *)(to + done + 64), c);
        _mm256_stream_si256((__m256i *)(to + done + 96), e);
    }
    return done;
}
#endif

/* memmove, except that a large copy whose ranges do not overlap writes with
 * non-temporal stores (see the top of this file); the caller fences them. */
static void device_write(void *dst, const void *src, uint64_t len) {
#if defined(__x86_64__)
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    int overlap = d < s + len && s < d + len;
    if (len >= STREAM_MIN_BYTES && !overlap) {
        /* Head up to the destination's next cache line, streamed steps, then the tail. */
        size_t head = (size_t)((64 - (d & 63)) & 63);
        memcpy(dst, src, head);
        unsigned char *to = (unsigned char *)dst + head;
        const unsigned char *from = (const unsigned char *)src + head;
        size_t rest = (size_t)len - head;
        size_t done = __builtin_cpu_supports("avx2") ? stream_avx2(to, from, rest)
                                                     : stream_sse2(to, from, rest);
        memcpy(to + done, from + done, rest - done);
        return;
    }
#endif
    memmove(dst, src, (size_t)len);
}

/* Which sides of a copy of `kind` are device memory; 0 for an unknown kind. */
static int copy_sides(int32_t kind, int *dst_device, int *src_device) {
    *dst_device = kind == STRATA_COPY_HOST_TO_DEVICE || kind == STRATA_COPY_DEVICE_TO_DEVICE;
    *src_device = kind == STRATA_COPY_DEVICE_TO_HOST || kind == STRATA_COPY_DEVICE_TO_DEVICE;
    return *dst_device || *src_device;
}

/* Checks that the device sides of one copy lie inside this device's regions; the caller
   holds the read lock. Sets the error text on failure. */
static int32_t check_copy(const strata_device *dev, uint64_t dst, uint64_t src, uint64_t len,
                          int32_t kind, const char *op) {
    int dst_device, src_device;
    if (!copy_sides(kind, &dst_device, &src_device))
        return fail(STATUS_INVALID, "%s: unknown kind %d", op, (int)kind);
    if ((dst_device && !covered(dev->state, dst, len)) ||
        (src_device && !covered(dev->state, src, len)))
        return fail(STATUS_INVALID,
                    "%s: %llu bytes %#llx -> %#llx (kind %d): the device side is not inside "
                    "an allocation or import of device %u",
                    op, (unsigned long long)len, (unsigned long long)src,
                    (unsigned long long)dst, (int)kind, dev->index);
    return STATUS_OK;
}

/* Copies one checked span. The lock is not held: the caller owns the ranges (see the
   header). */
static void do_copy(uint64_t dst, uint64_t src, uint64_t len, int32_t kind) {
    int dst_device, src_device;
    copy_sides(kind, &dst_device, &src_device);
    if (dst_device)
        device_write((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, len);
    else
        memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, len);
}

/* Streaming stores are weakly ordered: a copy (or a batch of them) fences them before it
   reports done. */
static void device_fence(void) {
#if defined(__x86_64__)
    _mm_sfence();
#endif
}

static int32_t host_sim_copy(strata_device *dev, uint64_t dst, uint64_t src, uint64_t len,
                             strata_copy_kind kind) {
    if (dev == NULL)
        return fail(STATUS_INVALID, "copy: null device");
    if (len == 0)
        return STATUS_OK;
    pthread_rwlock_rdlock(&dev->state->lock);
    int32_t status = check_copy(dev, dst, src, len, (int32_t)kind, "copy");
    pthread_rwlock_unlock(&dev->state->lock);
    if (status != STATUS_OK)
        return status;
    do_copy(dst, src, len, (int32_t)kind);
    device_fence();
    return STATUS_OK;
}

/* Every span checked under one hold of the lock, then every copy, then one fence.
   (Unused in the version-1 build.) */
__attribute__((unused)) static int32_t host_sim_copy_batch(strata_device *dev,
                                                           const strata_copy_span *spans,
                                                           uint64_t count) {
    if (dev == NULL || (spans == NULL && count > 0))
        return fail(STATUS_INVALID, "copy_batch: null argument");
    int32_t status = STATUS_OK;
    pthread_rwlock_rdlock(&dev->state->lock);
    for (uint64_t i = 0; i < count && status == STATUS_OK; i++)
        if (spans[i].len > 0)
            status = check_copy(dev, spans[i].dst, spans[i].src, spans[i].len, spans[i].kind,
                                "copy_batch");
    pthread_rwlock_unlock(&dev->state->lock);
    if (status != STATUS_OK)
        return status;
    for (uint64_t i = 0; i < count; i++)
        if (spans[i].len > 0)
            do_copy(spans[i].dst, spans[i].src, spans[i].len, spans[i].kind);
    device_fence();
    return STATUS_OK;
}

static int32_t host_sim_export(strata_device *dev, strata_devptr ptr, strata_ipc_handle *out) {
    if (dev == NULL || out == NULL)
        return fail(STATUS_INVALID, "export_handle: null argument");
    pthread_rwlock_rdlock(&dev->state->lock);
    long i = find_base(dev->state, (uintptr_t)ptr);
    struct region r = i >= 0 ? dev->state->regions[i] : (struct region){0, 0, -1, 1, NULL};
    pthread_rwlock_unlock(&dev->state->lock);
    if (i < 0 || r.imported)
        return fail(STATUS_INVALID, "export_handle: %#llx is not the start of an allocation",
                    (unsigned long long)ptr);
    struct stat st;
    if (fstat(r.fd, &st) != 0)
        return fail(STATUS_SYSTEM, "export_handle: fstat: %s", strerror(errno));
    struct handle_layout h = {HANDLE_MAGIC, HANDLE_VERSION, (int32_t)getpid(), r.fd,
                              (uint64_t)st.st_dev, (uint64_t)st.st_ino, r.size};
    memset(out, 0, sizeof *out);
    memcpy(out->bytes, &h, sizeof h);
    return STATUS_OK;
}

static int32_t host_sim_import(strata_device *dev, const strata_ipc_handle *handle,
                               strata_devptr *out, uint64_t *size) {
    if (dev == NULL || handle == NULL || out == NULL)
        return fail(STATUS_INVALID, "import_handle: null argument");
    struct handle_layout h;
    memcpy(&h, handle->bytes, sizeof h);
    if (h.magic != HANDLE_MAGIC || h.version != HANDLE_VERSION || h.size == 0)
        return fail(STATUS_INVALID, "import_handle: not a host-sim handle (version %u)",
                    HANDLE_VERSION);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h.pid, (int)h.fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail(STATUS_INVALID, "import_handle: cannot open %s (exporter gone?): %s", path,
                    strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_dev != h.st_dev ||
        (uint64_t)st.st_ino != h.st_ino || (uint64_t)st.st_size < h.size) {
        close(fd);
        return fail(STATUS_INVALID,
                    "import_handle: %s is no longer the exported allocation (stale handle)",
                    path);
    }
    void *base = mmap(NULL, h.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the memory */
    if (base == MAP_FAILED)
        return fail(STATUS_NO_MEMORY, "import_handle: mmap of %llu bytes: %s",
                    (unsigned long long)h.size, strerror(errno));
    struct region r = {(uintptr_t)base, h.size, -1, 1, dev};
    if (add_region(dev, r) != 0) {
        munmap(base, h.size);
        return fail(STATUS_NO_MEMORY, "import_handle: out of host memory for bookkeeping");
    }
    *out = (strata_devptr)(uintptr_t)base;
    if (size != NULL)
        *size = h.size;
    return STATUS_OK;
}

static int32_t host_sim_synchronize(strata_device *dev) {
    if (dev == NULL)
        return fail(STATUS_INVALID, "synchronize: null device");
    /* Copies are synchronous memcpy; a fence orders them against what follows. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return STATUS_OK;
}

/* HOST_SIM_ABI_VERSION stamps another version (the fixture of the version-check test);
   HOST_SIM_AS_VERSION_1 builds the module as a version-1 one, its vtable ending before
   `copy_batch` (the fixture of the compatibility test). */
#ifdef HOST_SIM_AS_VERSION_1
#define HOST_SIM_ABI_VERSION 1u
#define HOST_SIM_VTABLE_SIZE offsetof(strata_device_vtable, copy_batch)
#define HOST_SIM_COPY_BATCH NULL
#endif
#ifndef HOST_SIM_ABI_VERSION
#define HOST_SIM_ABI_VERSION STRATA_DEVICE_ABI_VERSION
#endif
#ifndef HOST_SIM_VTABLE_SIZE
#define HOST_SIM_VTABLE_SIZE sizeof(strata_device_vtable)
#endif
#ifndef HOST_SIM_COPY_BATCH
#define HOST_SIM_COPY_BATCH host_sim_copy_batch
#endif

static const strata_device_vtable HOST_SIM = {
    .abi_version = HOST_SIM_ABI_VERSION,
    .vtable_size = HOST_SIM_VTABLE_SIZE,
    .backend_name = "host-sim",
    .open = host_sim_open,
    .close = host_sim_close,
    .alloc = host_sim_alloc,
    .free = host_sim_free,
    .copy = host_sim_copy,
    .export_handle = host_sim_export,
    .import_handle = host_sim_import,
    .close_imported = host_sim_close_imported,
    .synchronize = host_sim_synchronize,
    .last_error = host_sim_last_error,
    .copy_batch = HOST_SIM_COPY_BATCH,
};

__attribute__((visibility("default"))) const strata_device_vtable *strata_device_entry(void) {
    return &HOST_SIM;
}
