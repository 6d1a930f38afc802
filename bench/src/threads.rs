//! Threads a system under test leaves busy after it is torn down.
//!
//! The systems of one workload run one after another in the bench's process, on 2 cores.
//! A thread one of them leaves running takes CPU from every system measured after it:
//! foyer's io_uring thread polls its queues without sleeping until the last task holding
//! its engine ends, and those tasks end only with their runtime. It took a core from every
//! strata system measured after foyer until each system got a runtime of its own.
//!
//! Idle threads are no such harm (a runtime's blocking pool keeps its threads parked for a
//! while), so the check is on CPU used, not on threads alive.

use std::collections::BTreeSet;
use std::time::Duration;

/// The threads of this process at one moment, by thread id.
pub struct Threads(BTreeSet<u32>);

/// A thread counts as busy from this share of one core over the window.
const BUSY: f64 = 0.1;

/// How long the teardown check watches the threads a system left.
const WINDOW: Duration = Duration::from_millis(500);

/// Linux's clock tick for the CPU times of `/proc/<pid>/task/<tid>/stat`: `USER_HZ`, fixed
/// at 100 in the kernel's user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl Threads {
    /// The threads running now; empty where `/proc/self/task` cannot be read.
    pub fn now() -> Threads {
        let ids = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        Threads(ids)
    }

    /// The threads started since `self` that used at least [`BUSY`] of a core over the
    /// next `window`: each one's name and the share of a core it used.
    pub fn busy_since(&self, window: Duration) -> Vec<(String, f64)> {
        let new: Vec<u32> = Threads::now().0.difference(&self.0).copied().collect();
        let before: Vec<Option<u64>> = new.iter().map(|&id| cpu_ticks(id)).collect();
        std::thread::sleep(window);
        new.iter()
            .zip(before)
            .filter_map(|(&id, before)| {
                let used = cpu_ticks(id)?.checked_sub(before?)?;
                let share = used as f64 / TICKS_PER_SECOND / window.as_secs_f64();
                (share >= BUSY).then(|| (name(id), share))
            })
            .collect()
    }
}

/// Warns of threads `system` left busy: they take CPU from the systems measured after it.
pub fn torn_down(system: &str, threads: &Threads) {
    let busy = threads.busy_since(WINDOW);
    if !busy.is_empty() {
        let listed: Vec<String> = busy
            .iter()
            .map(|(name, share)| format!("{name} ({:.0}% of a core)", share * 100.0))
            .collect();
        println!(
            "warning: {system} left {} threads busy after its teardown, taking CPU from the \
             systems measured after it: {}",
            busy.len(),
            listed.join(", ")
        );
    }
}

/// User plus system CPU time of thread `id` of this process, in clock ticks.
fn cpu_ticks(id: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok()?;
    // The name, field 2, is in parentheses and may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn name(id: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{id}/comm"))
        .map(|n| n.trim_end().to_string())
        .unwrap_or_else(|_| format!("thread {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Instant;

    #[test]
    fn a_thread_left_spinning_is_named_and_one_left_waiting_is_not() {
        let before = Threads::now();
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = std::thread::Builder::new()
            .name("left-spinning".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let deadline = Instant::now() + Duration::from_secs(30);
                move || {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        std::hint::spin_loop();
                    }
                }
            })
            .expect("spawn");
        let (wake, woken) = mpsc::channel::<()>();
        let waiting = std::thread::Builder::new()
            .name("left-waiting".into())
            .spawn(move || woken.recv_timeout(Duration::from_secs(30)))
            .expect("spawn");
        // Other tests of this binary start threads too: look for these two by name.
        let busy = before.busy_since(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        wake.send(()).expect("the thread waits");
        spinning.join().expect("join");
        waiting.join().expect("join").expect("woken");
        let names: Vec<&str> = busy.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"left-spinning"), "{busy:?}");
        assert!(!names.contains(&"left-waiting"), "{busy:?}");
    }
}
