//! Memory a system under test holds, sampled while it runs, so "equal memory budgets" is
//! a measured figure rather than a configured one.
//!
//! In this process the figure is the growth of live heap bytes (the counting allocator of
//! [`crate::heap`], immune to what malloc keeps after an earlier system freed it) plus the
//! growth of shared-memory pages (strata's dram segments are memfds, not heap), taken as
//! their proportional share (`Pss_Shmem`, so a same-host client mapping its server's
//! segments in the same process does not count them twice). A peer in its own process is
//! counted whole: its proportional set size (`Pss`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler reads the heap count (one atomic load). Values are hundreds of
/// KiB and budgets hundreds of MiB: a peak shorter than this is not one that matters.
const EVERY: Duration = Duration::from_millis(20);

/// Reads of `smaps_rollup` are `EVERY` x this apart. The kernel walks every page table of
/// the process to answer one: read every 20 ms it took a fifth of the CPU of a run.
/// Mapped memory (the dram tier, a peer's whole process) fills and stays, so a
/// half-second look misses little.
const SMAPS_EVERY: u32 = 25;

/// One line (`Pss:`, `Pss_Shmem:`) of `/proc/PID/smaps_rollup`, in bytes; `None` where the
/// kernel has no `smaps_rollup` (before Linux 4.14, or not Linux).
fn smaps_rollup(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/smaps_rollup"),
        None => "/proc/self/smaps_rollup".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Where the watched memory lives.
#[derive(Clone, Copy)]
enum Watched {
    /// This process: heap growth plus shared-memory growth from the baseline.
    InProcess {
        heap_at_start: isize,
        shmem_at_start: u64,
    },
    /// Another process, whole.
    Process(u32),
}

impl Watched {
    /// The part read from `smaps_rollup` (costly; see [`SMAPS_EVERY`]).
    fn mapped(self) -> u64 {
        match self {
            Watched::InProcess { shmem_at_start, .. } => {
                smaps_rollup(None, "Pss_Shmem").map_or(0, |s| s.saturating_sub(shmem_at_start))
            }
            Watched::Process(pid) => smaps_rollup(Some(pid), "Pss").unwrap_or(0),
        }
    }

    /// The part read from the counting allocator (cheap).
    fn heap(self) -> u64 {
        match self {
            Watched::InProcess { heap_at_start, .. } => {
                (crate::heap::live_bytes() - heap_at_start).max(0) as u64
            }
            Watched::Process(_) => 0,
        }
    }
}

/// The peak of a system's memory from [`MemoryWatch::in_process`] or
/// [`MemoryWatch::process`] to [`MemoryWatch::finish`]. Dropped unfinished (a system that
/// failed to start), it stops its sampler, which would otherwise read `smaps_rollup`
/// through every later system's run.
pub struct MemoryWatch {
    watched: Watched,
    stop: Arc<AtomicBool>,
    /// Taken by `finish`.
    sampler: Option<JoinHandle<u64>>,
}

impl MemoryWatch {
    /// Watches what this process holds from now on: start it before the system under
    /// test allocates anything. `None` without `smaps_rollup`.
    pub fn in_process() -> Option<MemoryWatch> {
        Some(MemoryWatch::spawn(Watched::InProcess {
            heap_at_start: crate::heap::live_bytes(),
            shmem_at_start: smaps_rollup(None, "Pss_Shmem")?,
        }))
    }

    /// Watches another process (a peer's server) whole.
    pub fn process(pid: u32) -> Option<MemoryWatch> {
        smaps_rollup(Some(pid), "Pss")?;
        Some(MemoryWatch::spawn(Watched::Process(pid)))
    }

    fn spawn(watched: Watched) -> MemoryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let (mut peak, mut mapped) = (0, 0);
                let mut tick = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if tick % SMAPS_EVERY == 0 {
                        mapped = watched.mapped();
                    }
                    peak = peak.max(watched.heap() + mapped);
                    tick = tick.wrapping_add(1);
                    std::thread::sleep(EVERY);
                }
                peak
            }
        });
        MemoryWatch {
            watched,
            stop,
            sampler: Some(sampler),
        }
    }

    /// The peak, in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.sampler.take().map_or(0, |s| s.join().unwrap_or(0));
        // One last look, for a run shorter than a sampling period.
        peak.max(self.watched.heap() + self.watched.mapped())
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
