//! Leases, the renewal rate and the eviction task's late-tick compensation: pure logic on `now`.

use crate::model::Millis;
use crate::sync::{AtomicU64, Ordering};

/// Whether a lease last renewed at `last_renewal` with `duration_ms` has expired at `now`,
/// given `compensation_ms` of extra grace (the eviction task's lateness).
///
/// Expiry is `last_renewal + duration` — the duration counts once. (Eureka's `Lease.renew`
/// stores `now + duration` and `isExpired` adds the duration again, so a dead instance
/// lingers for two durations: Netflix/eureka#531.)
#[must_use]
pub fn lease_expired(
    last_renewal: Millis,
    duration_ms: u64,
    now: Millis,
    compensation_ms: u64,
) -> bool {
    now > last_renewal
        .saturating_add(duration_ms)
        .saturating_add(compensation_ms)
}

/// How late an eviction tick ran: Eureka's `EvictionTask.getCompensationTimeMs`.
///
/// If a tick runs `interval + x` after the previous one (a GC pause, a stalled
/// runtime, a suspended VM), leases got `x` less time to renew than the pass assumes,
/// so that pass grants `x` of extra grace.
#[derive(Debug, Default, Clone)]
pub struct EvictionClock {
    last_tick: Option<Millis>,
}

impl EvictionClock {
    /// Records a tick at `now` (monotonic milliseconds) and returns the compensation to grant.
    #[must_use]
    pub fn tick(&mut self, now: Millis, interval_ms: u64) -> u64 {
        let comp = match self.last_tick {
            Some(last) => now.saturating_sub(last).saturating_sub(interval_ms),
            None => 0,
        };
        self.last_tick = Some(now);
        comp
    }
}

/// One instance's lease, renewed without locks.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) registered_at: Millis,
    last_renewal: AtomicU64,
    pub(crate) service_up_at: Millis,
    pub(crate) duration_ms: u64,
}

impl Lease {
    pub(crate) fn new(now: Millis, duration_ms: u64, service_up_at: Millis) -> Self {
        Self {
            registered_at: now,
            last_renewal: AtomicU64::new(now),
            service_up_at,
            duration_ms,
        }
    }

    pub(crate) fn renew(&self, now: Millis) {
        self.last_renewal.fetch_max(now, Ordering::AcqRel);
    }

    pub(crate) fn last_renewal(&self) -> Millis {
        self.last_renewal.load(Ordering::Acquire)
    }

    pub(crate) fn is_expired(&self, now: Millis, compensation_ms: u64) -> bool {
        lease_expired(self.last_renewal(), self.duration_ms, now, compensation_ms)
    }
}

/// Renewals counted over a sliding minute: 60 one-second buckets, each an atomic
/// `(second << 24) | count`, so counting never takes a lock and never loses a renewal
/// (a bucket saturates at 16.7 M renewals per second).
#[derive(Debug)]
pub(crate) struct RenewRate {
    buckets: [AtomicU64; 60],
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl RenewRate {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(crate) fn increment(&self, now: Millis) {
        let sec = now / 1000;
        let bucket = &self.buckets[(sec % 60) as usize];
        let mut cur = bucket.load(Ordering::Relaxed);
        loop {
            let next = if cur >> COUNT_BITS == sec {
                if cur & COUNT_MASK == COUNT_MASK {
                    return;
                }
                cur + 1
            } else {
                (sec << COUNT_BITS) | 1
            };
            match bucket.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Renewals in the minute ending at `now` (this second and the 59 before it).
    pub(crate) fn last_minute(&self, now: Millis) -> u64 {
        let sec = now / 1000;
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .filter(|v| {
                let s = v >> COUNT_BITS;
                s <= sec && sec - s < 60
            })
            .map(|v| v & COUNT_MASK)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn duration_counts_once() {
        let l = Lease::new(1_000, 90_000, 0);
        assert!(!l.is_expired(91_000, 0));
        assert!(l.is_expired(91_001, 0));
        assert!(!l.is_expired(91_001, 5));
        l.renew(50_000);
        l.renew(40_000); // a late, reordered renewal never moves the lease back
        assert_eq!(l.last_renewal(), 50_000);
        assert!(!l.is_expired(140_000, 0) && l.is_expired(140_001, 0));
    }

    #[test]
    fn compensation_is_lateness_beyond_the_interval() {
        let mut c = EvictionClock::default();
        assert_eq!(c.tick(10_000, 5_000), 0);
        assert_eq!(c.tick(15_000, 5_000), 0);
        assert_eq!(c.tick(27_000, 5_000), 7_000);
        assert_eq!(c.tick(28_000, 5_000), 0);
    }

    #[test]
    fn renew_rate_slides_over_a_minute() {
        let r = RenewRate::new();
        for t in 0..120 {
            r.increment(1_000_000 + t * 1_000);
        }
        assert_eq!(r.last_minute(1_000_000 + 119_000), 60);
        assert_eq!(r.last_minute(1_000_000 + 119_000 + 30_000), 30);
        assert_eq!(r.last_minute(1_000_000 + 119_000 + 60_000), 0);
    }

    #[test]
    fn renew_rate_loses_nothing_under_contention() {
        let r = std::sync::Arc::new(RenewRate::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..10_000).for_each(|i| r.increment(5_000_000 + (i % 3) * 1000));
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(r.last_minute(5_002_000), 40_000);
    }

    proptest! {
        #[test]
        fn expiry_is_exactly_after_last_renewal_plus_duration(
            last in 0u64..1 << 50, dur in 1u64..1 << 30, comp in 0u64..1 << 20, delta in 0u64..1 << 31,
        ) {
            let now = last + delta;
            prop_assert_eq!(lease_expired(last, dur, now, comp), delta > dur + comp);
        }
    }
}
