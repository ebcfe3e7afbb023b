//! Injected time.
//!
//! Everything in this crate that depends on time reads it through a
//! governor [`Clock`], so that one [`FakeRelativeClock`](governor::clock::FakeRelativeClock)
//! (its clones share one time) drives the rate limiters, the circuit
//! breaker and the local cache's freshness together in tests, and the fast
//! [`QuantaClock`](governor::clock::QuantaClock) (governor's
//! `DefaultClock`) does in production.

use std::time::Duration;

use governor::clock::{Clock, Reference};

/// A clock and the instant it was first read: time as nanoseconds since
/// then, which is what the sans-IO cores take as `now`.
#[derive(Debug, Clone)]
pub(crate) struct Time<C: Clock> {
    clock: C,
    origin: C::Instant,
}

impl<C: Clock> Time<C> {
    pub(crate) fn new(clock: C) -> Self {
        let origin = clock.now();
        Time { clock, origin }
    }

    /// Nanoseconds since this `Time` was created.
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        self.clock.now().duration_since(self.origin).as_u64()
    }

    /// Time since this `Time` was created.
    #[inline]
    pub(crate) fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    pub(crate) fn clock(&self) -> &C {
        &self.clock
    }
}

/// Saturating conversion of a duration to nanoseconds.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn clones_of_a_fake_clock_share_time() {
        let clock = FakeRelativeClock::default();
        clock.advance(Duration::from_secs(3));
        let time = Time::new(clock.clone());
        assert_eq!(time.now(), Duration::ZERO);
        clock.advance(Duration::from_millis(5));
        assert_eq!(time.now(), Duration::from_millis(5));
        assert_eq!(time.now_nanos(), 5_000_000);
    }

    #[test]
    fn nanos_saturate() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_micros(2)), 2_000);
    }
}
