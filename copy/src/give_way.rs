//! Threads that move bulk bytes offer their core to others every megabyte.
//!
//! A load copies hundreds of megabytes; a lookup is a few microseconds of work on some
//! other thread (a runtime's, a server's) that an engine's scheduler waits on. Lowering
//! the bulk threads' priority is not enough: when a thread wakes, the kernel's scheduler
//! (EEVDF since Linux 6.6) lets the running one finish the slice it was given unless the
//! woken one asked for a shorter slice, so a woken runtime thread at nice 0 waited up to a
//! scheduler tick (4 ms at 250 Hz) behind a copy at nice 10, and SCHED_IDLE did no better
//! on the project's machine (`docs/bench/history.md`, kvcache). A bulk thread that calls
//! `sched_yield` every [`GIVE_WAY_EVERY`] bytes bounds that wait by one step's copy (tens
//! of microseconds), and costs one system call per megabyte: with nothing else runnable
//! the call returns at once and the copy goes on.
//!
//! A thread opts in with [`bulk_thread`] (the client's copy pool, the server's data plane
//! threads); [`moved`] is free on every other thread, so code shared with the async
//! runtimes can call it unconditionally.

use std::cell::Cell;

/// Bytes a bulk thread moves between two offers of its core: at the 10-20 GB/s of one
/// core's copy, 50-100 microseconds.
pub const GIVE_WAY_EVERY: usize = 1 << 20;

thread_local! {
    /// On a bulk thread, the bytes moved since its last offer; `None` on any other thread.
    static SINCE_OFFER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Offers this thread made, for tests.
    static OFFERS: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as one that moves bulk bytes: from now on [`moved`] offers its
/// core every [`GIVE_WAY_EVERY`] bytes.
pub fn bulk_thread() {
    SINCE_OFFER.with(|s| s.set(Some(0)));
}

/// Counts `bytes` just moved by the calling thread. On a bulk thread, once
/// [`GIVE_WAY_EVERY`] have moved since its last offer, yields the core to any thread
/// waiting for it. Callers move at most about [`GIVE_WAY_EVERY`] bytes between calls.
pub fn moved(bytes: usize) {
    SINCE_OFFER.with(|s| {
        let Some(since) = s.get() else { return };
        let since = since + bytes;
        if since < GIVE_WAY_EVERY {
            s.set(Some(since));
            return;
        }
        s.set(Some(0));
        OFFERS.with(|o| o.set(o.get() + 1));
        std::thread::yield_now();
    });
}

/// The offers the calling thread has made.
pub fn offers() -> u64 {
    OFFERS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_thread_offers_its_core_once_per_step_and_others_never() {
        std::thread::spawn(|| {
            for _ in 0..64 {
                moved(GIVE_WAY_EVERY);
            }
            assert_eq!(offers(), 0, "a thread that did not opt in never yields");
            bulk_thread();
            // 3.5 steps in quarter steps: three offers, half a step carried over.
            for _ in 0..14 {
                moved(GIVE_WAY_EVERY / 4);
            }
            assert_eq!(offers(), 3);
            moved(GIVE_WAY_EVERY / 2);
            assert_eq!(offers(), 4);
            // One call past several steps offers once: a step is the most between offers.
            moved(3 * GIVE_WAY_EVERY);
            assert_eq!(offers(), 5);
        })
        .join()
        .expect("test thread");
    }
}
