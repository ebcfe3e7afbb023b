//! Injected time: the detector never reads the system clock itself.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// The detector reads it on every [`Detector::record`](crate::Detector::record);
/// tests use [`ManualClock`], `hotkey-scan` uses the timestamps of the log.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use hotkey::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance_ms(250);
/// assert_eq!(clock.now_ms(), 1_250);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    #[must_use]
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(now_ms)),
        }
    }

    /// Sets the time (it may go backwards; the detector tolerates that).
    pub fn set_ms(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::Release);
    }

    /// Moves the time forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

/// The system clock read from an atomic that a background thread refreshes
/// every millisecond: reading it costs one atomic load instead of a system
/// call, for callers that record tens of millions of reads per second.
///
/// The thread stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    now: Arc<AtomicU64>,
}

impl CoarseClock {
    /// Starts the refreshing thread.
    #[must_use]
    pub fn start() -> Self {
        let now = Arc::new(AtomicU64::new(SystemClock.now_ms()));
        let weak = Arc::downgrade(&now);
        std::thread::Builder::new()
            .name("hotkey-coarse-clock".into())
            .spawn(move || {
                while let Some(now) = weak.upgrade() {
                    now.store(SystemClock.now_ms(), Ordering::Release);
                    drop(now);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
            .expect("spawning the clock thread");
        CoarseClock { now }
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_follows_the_system_clock() {
        let c = CoarseClock::start();
        let sys = SystemClock.now_ms();
        assert!(c.now_ms().abs_diff(sys) < 1000);
        // It moves. Waiting for it rather than sleeping a fixed 30 ms: on a
        // loaded machine the refreshing thread may not run for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while c.now_ms() < sys + 10 {
            assert!(std::time::Instant::now() < deadline, "it never moved");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
