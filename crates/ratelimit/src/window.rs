//! Sliding windows of call outcomes, by count or by time.

use crate::config::Window;

/// Calls, errors and slow calls seen in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowTotals {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Of which slow.
    pub slow: u64,
}

impl WindowTotals {
    fn add(&mut self, error: bool, slow: bool) {
        self.calls += 1;
        self.errors += u64::from(error);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, error: bool, slow: bool) {
        self.calls -= 1;
        self.errors -= u64::from(error);
        self.slow -= u64::from(slow);
    }
}

/// A sliding window: the last `n` calls, or the calls of the last
/// `length` in buckets.
#[derive(Debug, Clone)]
pub(crate) enum SlidingWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

impl SlidingWindow {
    /// A window for a validated [`Window`].
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => SlidingWindow::Count(CountWindow::new(n as usize)),
            Window::Time { length, buckets } => {
                let bucket_ns = crate::clock::nanos(length) / u64::from(buckets.max(1));
                SlidingWindow::Time(TimeWindow::new(bucket_ns.max(1), buckets as usize))
            }
        }
    }

    pub(crate) fn record(&mut self, now_ns: u64, error: bool, slow: bool) {
        match self {
            SlidingWindow::Count(w) => w.record(error, slow),
            SlidingWindow::Time(w) => w.record(now_ns, error, slow),
        }
    }

    pub(crate) fn totals(&self, now_ns: u64) -> WindowTotals {
        match self {
            SlidingWindow::Count(w) => w.totals,
            SlidingWindow::Time(w) => w.totals(now_ns),
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            SlidingWindow::Count(w) => *w = CountWindow::new(w.ring.len()),
            SlidingWindow::Time(w) => w.buckets.iter_mut().for_each(|b| *b = Bucket::EMPTY),
        }
    }
}

const ERROR: u8 = 1;
const SLOW: u8 = 2;

/// The last `n` outcomes in a ring, with running totals.
#[derive(Debug, Clone)]
pub(crate) struct CountWindow {
    ring: Vec<u8>,
    next: usize,
    filled: usize,
    totals: WindowTotals,
}

impl CountWindow {
    fn new(n: usize) -> Self {
        CountWindow {
            ring: vec![0; n.max(1)],
            next: 0,
            filled: 0,
            totals: WindowTotals::default(),
        }
    }

    fn record(&mut self, error: bool, slow: bool) {
        if self.filled == self.ring.len() {
            let old = self.ring[self.next];
            self.totals.sub(old & ERROR != 0, old & SLOW != 0);
        } else {
            self.filled += 1;
        }
        self.ring[self.next] = if error { ERROR } else { 0 } | if slow { SLOW } else { 0 };
        self.totals.add(error, slow);
        self.next = (self.next + 1) % self.ring.len();
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// `now / bucket_ns` of the calls in it; `u64::MAX` when empty.
    epoch: u64,
    totals: WindowTotals,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        epoch: u64::MAX,
        totals: WindowTotals {
            calls: 0,
            errors: 0,
            slow: 0,
        },
    };
}

/// `n` buckets of `bucket_ns` each; bucket `epoch % n` holds the calls of
/// epoch `epoch`, and is reset when a later epoch reuses it.
#[derive(Debug, Clone)]
pub(crate) struct TimeWindow {
    bucket_ns: u64,
    buckets: Vec<Bucket>,
}

impl TimeWindow {
    fn new(bucket_ns: u64, n: usize) -> Self {
        TimeWindow {
            bucket_ns,
            buckets: vec![Bucket::EMPTY; n.max(1)],
        }
    }

    fn slot(&self, epoch: u64) -> usize {
        (epoch % self.buckets.len() as u64) as usize
    }

    fn record(&mut self, now_ns: u64, error: bool, slow: bool) {
        let epoch = now_ns / self.bucket_ns;
        let slot = self.slot(epoch);
        let bucket = &mut self.buckets[slot];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::EMPTY
            };
        }
        bucket.totals.add(error, slow);
    }

    fn totals(&self, now_ns: u64) -> WindowTotals {
        let epoch = now_ns / self.bucket_ns;
        let n = self.buckets.len() as u64;
        let mut sum = WindowTotals::default();
        for b in &self.buckets {
            if b.epoch <= epoch && epoch - b.epoch < n {
                sum.calls += b.totals.calls;
                sum.errors += b.totals.errors;
                sum.slow += b.totals.slow;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn count_window_forgets_the_oldest() {
        let mut w = SlidingWindow::new(Window::Count(3));
        w.record(0, true, false);
        w.record(0, false, true);
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            WindowTotals {
                calls: 3,
                errors: 1,
                slow: 1
            }
        );
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            WindowTotals {
                calls: 3,
                errors: 0,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.totals(0), WindowTotals::default());
    }

    #[test]
    fn time_window_drops_whole_buckets() {
        let s = 1_000_000_000;
        let mut w = SlidingWindow::new(Window::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        });
        w.record(0, true, false);
        w.record(5 * s, true, true);
        assert_eq!(w.totals(9 * s).calls, 2);
        // The bucket of t=0 leaves at t=10 s.
        assert_eq!(w.totals(10 * s).calls, 1);
        assert_eq!(w.totals(15 * s - 1).calls, 1);
        assert_eq!(w.totals(15 * s).calls, 0);
        // Reusing a slot resets it.
        w.record(20 * s, false, false);
        assert_eq!(
            w.totals(20 * s),
            WindowTotals {
                calls: 1,
                errors: 0,
                slow: 0
            }
        );
    }

    proptest! {
        /// The time window agrees with a brute-force count over the calls
        /// whose bucket is among the last `n` buckets.
        #[test]
        fn time_window_matches_reference(
            steps in prop::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200),
            buckets in 1u32..8,
        ) {
            let bucket_ns = 1_000u64;
            let mut w = SlidingWindow::new(Window::Time {
                length: Duration::from_nanos(bucket_ns * u64::from(buckets)),
                buckets,
            });
            let mut now = 0u64;
            let mut calls: Vec<(u64, bool, bool)> = Vec::new();
            for (dt, error, slow) in steps {
                now += dt;
                w.record(now, error, slow);
                calls.push((now, error, slow));
                let epoch = now / bucket_ns;
                let mut expect = WindowTotals::default();
                for &(t, e, s) in &calls {
                    if epoch - t / bucket_ns < u64::from(buckets) {
                        expect.add(e, s);
                    }
                }
                prop_assert_eq!(w.totals(now), expect);
            }
        }

        /// The count window agrees with the last `n` recorded outcomes.
        #[test]
        fn count_window_matches_reference(
            outcomes in prop::collection::vec((any::<bool>(), any::<bool>()), 1..300),
            n in 1u32..50,
        ) {
            let mut w = SlidingWindow::new(Window::Count(n));
            for (i, &(e, s)) in outcomes.iter().enumerate() {
                w.record(0, e, s);
                let start = (i + 1).saturating_sub(n as usize);
                let mut expect = WindowTotals::default();
                for &(e, s) in &outcomes[start..=i] {
                    expect.add(e, s);
                }
                prop_assert_eq!(w.totals(0), expect);
            }
        }
    }
}
