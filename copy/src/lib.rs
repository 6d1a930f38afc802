//! The copy that moves value bytes: a KV-cache block copied into memory that no core
//! reads again soon.
//!
//! A load lands in an engine's buffer pool, from which a device takes it next; a put lands
//! in a store segment, read later by another process or written to disk. An ordinary copy
//! first reads every destination cache line into the cache (to own it) and then overwrites
//! it, so each byte copied costs three bytes of memory traffic: the source read, the
//! destination read, the destination written back. Non-temporal ("streaming") stores write
//! whole lines past the caches and cost two: up to 1.5x for a copy bound by memory
//! bandwidth. On the reference machine 7 MiB blocks copied 1.4-2.3x faster than with
//! glibc's memcpy (docs/benchmarks.md), which switches to such stores only above three
//! quarters of the last-level cache the CPU reports, and a virtual machine may report one
//! of hundreds of MiB.
//!
//! [`copy`] streams copies of at least [`STREAM_MIN`] bytes on x86-64 CPUs with AVX2 and
//! is an ordinary copy otherwise (smaller values, where the destination line may well be
//! read next, and other CPUs). Every streamed copy ends with a store fence, so it is
//! ordered before anything the caller writes next: a commit flag, a lock release, a
//! message to another process.

pub mod give_way;

/// Copies at least this long stream; shorter ones are ordinary copies. Below it the
/// destination may be used while still in cache, and the fence's cost is not amortised.
pub const STREAM_MIN: usize = 256 << 10;

/// Copies `src` into `dst`.
///
/// # Panics
/// If the two lengths differ, as `<[u8]>::copy_from_slice` does.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy: destination of {} bytes for a source of {}",
        dst.len(),
        src.len()
    );
    // SAFETY: both slices are valid for their (equal) length, and a shared and an
    // exclusive borrow cannot overlap.
    unsafe { copy_raw(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Copies `len` bytes from `src` to `dst`, as [`copy`] does, for memory a slice cannot
/// name (a mapping shared with another process).
///
/// # Safety
/// As [`std::ptr::copy_nonoverlapping`]: `src` is valid for reads of `len` bytes, `dst`
/// for writes of `len` bytes, and the two ranges do not overlap.
pub unsafe fn copy_raw(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if streams(len) {
        // SAFETY: `streams` found AVX2 on this CPU; the ranges are the caller's.
        unsafe { x86_64::stream_avx2(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract is this function's.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// Whether [`copy`] streams a copy of `len` bytes on this CPU (what the benchmarks report
/// beside their ceilings).
pub fn streams(len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        len >= STREAM_MIN && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = len;
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};

    /// A cache line: streaming stores fill whole lines, so the streamed part starts on one.
    const LINE: usize = 64;
    /// Bytes per loop step: two lines, four 32-byte loads then four streaming stores.
    const STEP: usize = 2 * LINE;

    /// Copies the head up to the destination's first line boundary and the tail after the
    /// last whole step with ordinary copies, and everything between with streaming
    /// stores (which need 32-byte aligned destinations; loads may be unaligned). Ends with
    /// `sfence`: streaming stores are weakly ordered, and the fence makes them visible
    /// before any later store.
    ///
    /// # Safety
    /// The CPU has AVX2; `src` is valid for reads and `dst` for writes of `len` bytes; the
    /// ranges do not overlap.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream_avx2(src: *const u8, dst: *mut u8, len: usize) {
        let head = dst.align_offset(LINE).min(len);
        // SAFETY: `head <= len`: inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
        let mut at = head;
        while len - at >= STEP {
            // SAFETY: `at + STEP <= len`, so the 128 bytes read and written are inside the
            // ranges; `dst + at` is line-aligned (the head ends on a line boundary and
            // each step is two lines), which the streaming stores' 32-byte alignment needs.
            unsafe {
                let s = src.add(at).cast::<__m256i>();
                let d = dst.add(at).cast::<__m256i>();
                let a = _mm256_loadu_si256(s);
                let b = _mm256_loadu_si256(s.add(1));
                let c = _mm256_loadu_si256(s.add(2));
                let e = _mm256_loadu_si256(s.add(3));
                _mm256_stream_si256(d, a);
                _mm256_stream_si256(d.add(1), b);
                _mm256_stream_si256(d.add(2), c);
                _mm256_stream_si256(d.add(3), e);
            }
            at += STEP;
        }
        // SAFETY: `at <= len`: the tail is inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) };
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that differ at every position of a cache line and from one line to the next,
    /// so a misplaced or repeated 32-byte piece shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    /// Copies `len` bytes from `src_off` of a source buffer to `dst_off` of a destination
    /// buffer with guard bytes around it; the copy must be exact and the guards untouched.
    fn check(len: usize, src_off: usize, dst_off: usize) {
        let src = pattern(src_off + len, 7);
        let mut dst = vec![0xEEu8; dst_off + len + 200];
        copy(&mut dst[dst_off..dst_off + len], &src[src_off..]);
        assert!(
            dst[..dst_off].iter().all(|&b| b == 0xEE),
            "bytes before the copy"
        );
        assert!(
            dst[dst_off + len..].iter().all(|&b| b == 0xEE),
            "bytes after it"
        );
        assert!(
            dst[dst_off..dst_off + len] == src[src_off..],
            "copy of {len} bytes from offset {src_off} to offset {dst_off} differs"
        );
    }

    #[test]
    fn every_length_around_the_streaming_threshold_and_every_alignment_copies_exactly() {
        for len in [0, 1, 63, 64, 127, 128, 4096] {
            check(len, 0, 0);
        }
        for len in [STREAM_MIN - 1, STREAM_MIN, STREAM_MIN + 1, STREAM_MIN + 127] {
            for (src_off, dst_off) in [(0, 0), (1, 0), (0, 1), (3, 33), (32, 0), (0, 63)] {
                check(len, src_off, dst_off);
            }
        }
        check(7 << 20, 5, 17);
    }

    /// The copies above took the streaming path where this CPU has one, so they tested it.
    #[test]
    fn large_copies_stream_on_x86_64_with_avx2_and_small_ones_do_not() {
        assert!(!streams(STREAM_MIN - 1));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(streams(STREAM_MIN), std::is_x86_feature_detected!("avx2"));
    }

    #[test]
    #[should_panic(expected = "destination of 3 bytes for a source of 4")]
    fn lengths_that_differ_are_refused() {
        copy(&mut [0u8; 3], &[1u8; 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_length_and_alignment_copies_exactly(
            len in 0usize..(STREAM_MIN * 3),
            src_off in 0usize..64,
            dst_off in 0usize..64,
        ) {
            check(len, src_off, dst_off);
        }
    }
}
