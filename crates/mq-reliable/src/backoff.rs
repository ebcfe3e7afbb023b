//! Reconnect backoff: exponential, capped, with jitter.

use std::time::Duration;

use crate::error::{Result, invalid};

/// How long to wait between reconnect (and replay) attempts.
///
/// Attempt `n` (0-based) waits a uniformly random time in
/// `[d/2, d]` where `d = min(max, initial * 2^n)` ("equal jitter": never
/// less than half the nominal delay, so a crowd of clients that lost the
/// same broker spreads out instead of reconnecting in lock-step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the second attempt (the first one is immediate).
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl BackoffConfig {
    /// Checks that `0 < initial ≤ max ≤ 1 h`.
    pub fn validate(&self) -> Result<()> {
        if self.initial.is_zero() {
            return Err(invalid("backoff.initial", self.initial, "must be positive"));
        }
        if self.max < self.initial {
            return Err(invalid(
                "backoff.max",
                self.max,
                "must be at least backoff.initial",
            ));
        }
        // Retries are scheduled at `now + delay`.
        if self.max > Duration::from_secs(3600) {
            return Err(invalid("backoff.max", self.max, "must be at most 1 h"));
        }
        Ok(())
    }
}

/// The backoff state machine. Pure: the caller supplies randomness.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    cfg: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(cfg: BackoffConfig) -> Backoff {
        Backoff { cfg, failures: 0 }
    }

    /// The delay before the next attempt, given a uniform random `u64`;
    /// counts one more failure.
    pub(crate) fn next_delay(&mut self, random: u64) -> Duration {
        let nominal = self.next_nominal_delay();
        let half = nominal / 2;
        let spread = (nominal - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// The delay before the next attempt without jitter — zero for the
    /// first, then `min(max, initial * 2^n)`; counts one more failure. For
    /// retries no crowd shares (a local directory), where lock-step does
    /// not matter and exact waits are easier to reason about.
    pub(crate) fn next_nominal_delay(&mut self) -> Duration {
        let attempt = self.failures;
        self.failures = self.failures.saturating_add(1);
        if attempt == 0 {
            return Duration::ZERO;
        }
        let shift = (attempt - 1).min(30);
        self.cfg
            .initial
            .saturating_mul(1u32 << shift)
            .min(self.cfg.max)
    }

    /// Forgets past failures (after a successful recovery).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures counted since the last reset.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn first_attempt_is_immediate_then_grows_to_the_cap() {
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_delay(7), Duration::ZERO);
        // With the largest random value the delay is the nominal one.
        let d: Vec<_> = (0..8).map(|_| b.next_delay(u64::MAX)).collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        assert!(d.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(*d.last().unwrap() >= Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(1), Duration::ZERO);
    }

    #[test]
    fn nominal_delays_double_exactly_up_to_the_cap() {
        let mut b = Backoff::new(cfg());
        let d: Vec<_> = (0..7).map(|_| b.next_nominal_delay()).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            d,
            [
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000)
            ]
        );
        b.reset();
        assert_eq!(b.next_nominal_delay(), Duration::ZERO);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let e = BackoffConfig {
            initial: Duration::ZERO,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("backoff.initial"), "{e}");
        let e = BackoffConfig {
            initial: Duration::from_secs(3),
            max: Duration::from_secs(1),
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("backoff.max"), "{e}");
        let e = BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("backoff.max"), "{e}");
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_full_nominal(
            randoms in proptest::collection::vec(any::<u64>(), 1..40)
        ) {
            let mut b = Backoff::new(cfg());
            for (n, r) in randoms.into_iter().enumerate() {
                let d = b.next_delay(r);
                if n == 0 {
                    prop_assert_eq!(d, Duration::ZERO);
                    continue;
                }
                let nominal = Duration::from_millis(100)
                    .saturating_mul(1 << (n - 1).min(30))
                    .min(Duration::from_secs(2));
                prop_assert!(d >= nominal / 2 && d <= nominal, "{:?} vs {:?}", d, nominal);
            }
        }
    }
}
