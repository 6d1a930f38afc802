//! Where large copies of value bytes run: a pool of threads at a lower scheduling priority
//! than the rest of the process. Shared-memory copies, reads of ssd files and TCP
//! data-plane transfers of a megabyte or more all run here.
//!
//! A load copies hundreds of megabytes; a lookup is a few microseconds of work behind a
//! network round trip. When both share the cores, the lookup must not wait for a
//! copy's time slice: an engine's scheduler blocks on the lookup before it can schedule
//! the request. Copies ≥ [`BLOCKING_COPY`] therefore run on this pool's threads, whose nice
//! value is [`COPY_NICE`], and which offer their core every megabyte they move
//! ([`strata_copy::give_way`]): the lower priority gives the copies the smaller share of
//! a core that others want, and the offers keep a woken control thread (this process's
//! async runtime, the server's) from waiting out a copy's whole time slice. With nothing
//! else runnable the copies get every core, so a load alone runs as fast as before
//! (`docs/bench/history.md`, kvcache).

use std::sync::OnceLock;

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::runtime::{Handle, RuntimeFlavor};

/// A copy at least this large runs on the copy pool, off the async reactor.
pub(crate) const BLOCKING_COPY: usize = 1 << 20;

/// A batch copies on several threads once it holds at least this many bytes; below it,
/// dealing it out costs more than it saves.
pub(crate) const PARALLEL_COPY: usize = 8 << 20;

/// The copy threads' nice value (0 is the default, 19 the lowest priority): a thread at 0
/// weighs about nine times one at 10, so it gets the larger share of a core the two want,
/// while the copies still take all of a core that the others leave idle. It does not make
/// a woken thread preempt a copy: the offers of [`strata_copy::give_way`] do that.
const COPY_NICE: i32 = 10;

/// The process's copy threads: at least 4, so that reads of ssd files, which wait on the
/// disk, keep several requests in flight on a machine of few cores.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(4);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("strata-copy-{i}"))
            .start_handler(|_| {
                lower_priority();
                strata_copy::give_way::bulk_thread();
            })
            .build()
            .expect("starting the copy threads")
    })
}

/// Lowers the calling thread's priority to [`COPY_NICE`]. On Linux a nice value belongs to
/// the thread (`setpriority` on the process id 0 names the caller). A refusal leaves the
/// thread at its priority: copies are then as fast as ever and lookups as slow.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, COPY_NICE) {
        tracing::debug!("copy thread keeps its priority: {e}");
    }
}

/// Runs `copy`, which moves `bytes` bytes: a large one on the copy pool while this thread
/// waits (telling a multi-threaded tokio runtime that this worker is busy, so its other
/// tasks move elsewhere meanwhile); a small one here.
pub(crate) fn off_reactor<R: Send>(bytes: usize, copy: impl FnOnce() -> R + Send) -> R {
    if bytes < BLOCKING_COPY {
        return copy();
    }
    let multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| pool().install(copy))
    } else {
        pool().install(copy)
    }
}

/// Runs `jobs` on up to `threads` copy threads, or on one when the batch is small; the
/// results keep the jobs' order.
///
/// Each thread takes the next job not yet taken until none is left, so a thread that
/// finishes early takes more rather than idling while the others work through a share
/// dealt in advance. That matters when batches run at once (an engine's TP ranks load
/// side by side): their threads then share the cores unevenly, and a share dealt in
/// advance left a batch waiting for its slowest thread (`docs/bench/history.md`,
/// integrations).
pub(crate) fn copy_all<J: Send, R: Send>(
    jobs: Vec<J>,
    bytes: usize,
    threads: usize,
    copy: impl Fn(J) -> R + Sync + Send,
) -> Vec<R> {
    let threads = threads.min(jobs.len()).max(1);
    off_reactor(bytes, || {
        if threads == 1 || bytes < PARALLEL_COPY {
            return jobs.into_iter().map(&copy).collect();
        }
        let n = jobs.len();
        let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
        let done: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let take_and_copy = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i).and_then(|j| j.lock().take()) else {
                return;
            };
            let result = copy(job);
            *done[i].lock() = Some(result);
        };
        rayon::scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| take_and_copy());
            }
        });
        done.into_iter()
            .map(|r| r.into_inner().expect("every job was taken and copied"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_all_keeps_order_in_parallel_and_alone() {
        let jobs: Vec<usize> = (0..37).collect();
        let serial = copy_all(jobs.clone(), 1, 4, |j| j * 2);
        let parallel = copy_all(jobs, PARALLEL_COPY, 4, |j| j * 2);
        let expected: Vec<usize> = (0..37).map(|j| j * 2).collect();
        assert_eq!(serial, expected);
        assert_eq!(parallel, expected);
    }

    /// The pool's threads run below the default priority, and a large copy runs on them
    /// while a small one stays on the caller.
    #[test]
    fn large_copies_run_on_the_lowered_threads() {
        let nice = || rustix::process::getpriority_process(None).unwrap();
        let here = nice();
        assert_eq!(off_reactor(BLOCKING_COPY - 1, nice), here);
        assert_eq!(off_reactor(BLOCKING_COPY, nice), here.max(COPY_NICE));
        let threads = std::thread::current().id();
        let ran_on = copy_all(vec![(); 8], PARALLEL_COPY, 4, |_| {
            std::thread::current().id()
        });
        assert!(ran_on.iter().all(|t| *t != threads));
        // Never more threads than asked for, however many jobs.
        let mut two = copy_all(vec![(); 64], PARALLEL_COPY, 2, |_| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            std::thread::current().id()
        });
        two.sort_unstable_by_key(|t| format!("{t:?}"));
        two.dedup();
        assert!(two.len() <= 2, "{} threads copied", two.len());
    }
}
