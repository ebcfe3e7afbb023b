//! Registry configuration.

use std::time::Duration;

use crate::error::{Error, Result};

/// The upper bound of the configured intervals.
pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// How the registry core behaves: leases, eviction, self-preservation, deltas.
///
/// Defaults are Eureka's, except where Eureka's default is the complaint the
/// crate fixes (the eviction pass runs every 5 s instead of 60 s).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The longest lease a client may ask for (`leaseInfo.durationInSecs`); longer asks are cut to it.
    pub max_lease_duration: Duration,
    /// How often the eviction pass runs (Eureka: `evictionIntervalTimerInMs`).
    pub eviction_interval: Duration,
    /// Self-preservation threshold: the share of expected renewals per minute below
    /// which leases stop expiring (Eureka: `renewalPercentThreshold`, 0.85). Also sets the
    /// cap of one eviction pass: at most `size - floor(size * threshold)` leases.
    pub renewal_percent_threshold: f64,
    /// Whether self-preservation is on (Eureka: `enableSelfPreservation`).
    pub self_preservation: bool,
    /// How long a change stays in the delta queue (Eureka: `retentionTimeInMSInDeltaQueue`).
    pub delta_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_lease_duration: Duration::from_secs(24 * 3600),
            eviction_interval: Duration::from_secs(5),
            renewal_percent_threshold: 0.85,
            self_preservation: true,
            delta_retention: Duration::from_secs(180),
        }
    }
}

impl Config {
    /// Checks every field; the error names the field and the value.
    ///
    /// Durations have upper bounds too, so that no valid configuration overflows a
    /// timer or a millisecond count.
    pub fn validate(&self) -> Result<()> {
        if !(Duration::from_secs(1)..=Duration::from_secs(u64::from(u32::MAX)))
            .contains(&self.max_lease_duration)
        {
            return Err(bad(
                "max_lease_duration",
                format!("{:?}", self.max_lease_duration),
                "must be in 1s ..= 2^32-1 s (the longest lease a client can ask for)",
            ));
        }
        if !(Duration::from_millis(10)..=DAY).contains(&self.eviction_interval) {
            return Err(bad(
                "eviction_interval",
                format!("{:?}", self.eviction_interval),
                "must be in 10ms ..= 1 day",
            ));
        }
        let p = self.renewal_percent_threshold;
        if !(p > 0.0 && p < 1.0) {
            return Err(bad(
                "renewal_percent_threshold",
                p.to_string(),
                "must be in (0, 1)",
            ));
        }
        if !(Duration::from_secs(1)..=DAY).contains(&self.delta_retention) {
            return Err(bad(
                "delta_retention",
                format!("{:?}", self.delta_retention),
                "must be in 1s ..= 1 day",
            ));
        }
        Ok(())
    }
}

pub(crate) fn bad(field: &'static str, value: String, reason: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let c = Config {
            renewal_percent_threshold: 1.5,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("renewal_percent_threshold") && e.contains("1.5"),
            "{e}"
        );
        let c = Config {
            renewal_percent_threshold: f64::NAN,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        for c in [
            Config {
                eviction_interval: Duration::MAX,
                ..Config::default()
            },
            Config {
                delta_retention: Duration::MAX,
                ..Config::default()
            },
            Config {
                max_lease_duration: Duration::MAX,
                ..Config::default()
            },
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("must be in"), "{e}");
        }
    }
}
