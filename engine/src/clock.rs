//! The store's notion of time: nanoseconds since the store opened.
//!
//! Deadlines (reservations) and lease ends are plain `u64`s on this clock so index entries
//! stay small. Tests swap in a manual clock to step through expiry deterministically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock, real or manual.
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    System(Instant),
    Manual(Arc<AtomicU64>),
}

/// Moves a manual [`Clock`] forward.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl Clock {
    /// Real time, starting now.
    pub fn system() -> Clock {
        Clock(Source::System(Instant::now()))
    }

    /// A clock that only moves when told to; starts at 1 s so "0" never looks like a deadline.
    pub fn manual() -> (Clock, ManualClock) {
        let t = Arc::new(AtomicU64::new(1_000_000_000));
        (Clock(Source::Manual(Arc::clone(&t))), ManualClock(t))
    }

    /// Nanoseconds on this clock.
    pub fn now(&self) -> u64 {
        match &self.0 {
            Source::System(start) => start.elapsed().as_nanos() as u64,
            Source::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Time left until `deadline` (zero if past).
    pub fn remaining(&self, deadline: u64) -> Duration {
        Duration::from_nanos(deadline.saturating_sub(self.now()))
    }
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// `d` in clock nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
