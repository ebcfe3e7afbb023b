//! Per-server configuration.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::{LearnerType, ServerId};

/// How one server elects and keeps its leader.
///
/// Defaults are ZooKeeper's: `finalizeWait` 200 ms, notification interval
/// from 200 ms doubling to 60 s, `tickTime` 2 s, `initLimit` 10 and
/// `syncLimit` 5 ticks, `maxTimeToWaitForEpoch` off.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This server's `myid`.
    pub id: ServerId,
    /// Participant (votes) or observer (only learns the leader).
    pub learner_type: LearnerType,
    /// Once a quorum agrees, how long to wait for a better vote before
    /// concluding. Every further, not better, notification restarts the wait.
    pub finalize_wait: Duration,
    /// The first notification timeout of an election: after this long
    /// without a notification the server sends its vote again.
    pub min_notification_interval: Duration,
    /// The cap of the exponential notification backoff.
    pub max_notification_interval: Duration,
    /// ZooKeeper's `tickTime`: the unit of the two limits below; the leader
    /// pings its learners every half tick.
    pub tick: Duration,
    /// Ticks a new leader waits for a quorum to accept its epoch, and a
    /// learner waits to be synced, before giving up (`initLimit`).
    pub init_limit: u32,
    /// Ticks without a ping (learner) or a ping ack from a quorum (leader)
    /// before the leadership is considered lost (`syncLimit`).
    pub sync_limit: u32,
    /// ZOOKEEPER-3109: a new leader that has waited this long for its epoch
    /// quits as soon as a server that voted for it is LOOKING again.
    /// `None` (ZooKeeper's default) waits the whole `init_limit`. At most
    /// an hour.
    pub max_time_to_wait_for_epoch: Option<Duration>,
}

impl Config {
    /// ZooKeeper's defaults for server `id`.
    #[must_use]
    pub fn new(id: ServerId) -> Self {
        Config {
            id,
            learner_type: LearnerType::Participant,
            finalize_wait: Duration::from_millis(200),
            min_notification_interval: Duration::from_millis(200),
            max_notification_interval: Duration::from_secs(60),
            tick: Duration::from_secs(2),
            init_limit: 10,
            sync_limit: 5,
            max_time_to_wait_for_epoch: None,
        }
    }

    /// Checks every field; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| Err(Error::invalid(field, value, reason));
        if self.min_notification_interval.is_zero() {
            return bad(
                "min_notification_interval",
                format!("{:?}", self.min_notification_interval),
                "must be positive",
            );
        }
        if self.max_notification_interval < self.min_notification_interval {
            return bad(
                "max_notification_interval",
                format!("{:?}", self.max_notification_interval),
                "must not be below min_notification_interval",
            );
        }
        if self.finalize_wait > Duration::from_secs(60) {
            return bad(
                "finalize_wait",
                format!("{:?}", self.finalize_wait),
                "must be at most 60 s",
            );
        }
        if self.max_notification_interval > Duration::from_secs(3600) {
            return bad(
                "max_notification_interval",
                format!("{:?}", self.max_notification_interval),
                "must be at most an hour",
            );
        }
        if self.tick < Duration::from_millis(2) || self.tick > Duration::from_secs(600) {
            return bad(
                "tick",
                format!("{:?}", self.tick),
                "must be between 2 ms and 10 minutes",
            );
        }
        if self.init_limit > 1000 || self.sync_limit > 1000 {
            return bad(
                "init_limit",
                format!("{}/{}", self.init_limit, self.sync_limit),
                "init_limit and sync_limit must be at most 1000 ticks",
            );
        }
        if let Some(wait) = self.max_time_to_wait_for_epoch
            && wait > Duration::from_secs(3600)
        {
            return bad(
                "max_time_to_wait_for_epoch",
                format!("{wait:?}"),
                "must be at most an hour",
            );
        }
        if self.init_limit == 0 {
            return bad(
                "init_limit",
                self.init_limit.to_string(),
                "must be at least 1",
            );
        }
        if self.sync_limit == 0 {
            return bad(
                "sync_limit",
                self.sync_limit.to_string(),
                "must be at least 1",
            );
        }
        Ok(())
    }

    pub(crate) fn init_timeout(&self) -> Duration {
        self.tick * self.init_limit
    }

    pub(crate) fn sync_timeout(&self) -> Duration {
        self.tick * self.sync_limit
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        self.tick / 2
    }
}

impl Default for Config {
    /// ZooKeeper's defaults for server 1.
    fn default() -> Self {
        Config::new(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zookeepers() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.finalize_wait, Duration::from_millis(200));
        assert_eq!(c.max_notification_interval, Duration::from_secs(60));
    }

    #[test]
    fn validate_names_the_field_and_value() {
        let mut c = Config::new(1);
        c.max_notification_interval = Duration::from_millis(10);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_notification_interval") && e.contains("10ms"),
            "{e}"
        );
        let mut c = Config::new(1);
        c.max_time_to_wait_for_epoch = Some(Duration::MAX);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_time_to_wait_for_epoch")
        );
        let mut c = Config::new(1);
        c.sync_limit = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sync_limit = 0")
        );
    }
}
