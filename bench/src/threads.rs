//! Threads a system under test leaves running after it is torn down.
//!
//! The systems of one workload run one after another in the bench's process, on 2 cores.
//! A thread one of them leaves behind takes CPU from every system measured after it: foyer's
//! io_uring thread polls its queues without sleeping until the last task holding its engine
//! ends, and those tasks end only with their runtime. It took a core from every strata
//! system measured after foyer until each system got a runtime of its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The threads of this process at one moment, by thread id.
pub struct Threads(BTreeSet<u32>);

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

    /// The names of threads started since `self` that are still running after waiting up to
    /// `wait` for them to end (a thread told to stop may take a moment).
    pub fn left_since(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left: Vec<u32> = Threads::now().0.difference(&self.0).copied().collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left.iter().map(|&id| name(id)).collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn name(id: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{id}/comm"))
        .map(|n| n.trim_end().to_string())
        .unwrap_or_else(|_| format!("thread {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_thread_still_running_is_named_and_one_that_ended_is_not() {
        let before = Threads::now();
        let (stop, stopped) = mpsc::channel::<()>();
        let running = std::thread::Builder::new()
            .name("left-running".into())
            .spawn(move || stopped.recv_timeout(Duration::from_secs(30)))
            .expect("spawn");
        std::thread::Builder::new()
            .name("ends-at-once".into())
            .spawn(|| ())
            .expect("spawn")
            .join()
            .expect("join");
        // Other tests of this binary start threads too: look for these two by name.
        let left = before.left_since(Duration::from_millis(50));
        assert!(left.iter().any(|n| n == "left-running"), "{left:?}");
        assert!(!left.iter().any(|n| n == "ends-at-once"), "{left:?}");
        stop.send(()).expect("the thread waits");
        running.join().expect("join").expect("told to stop");
    }
}
