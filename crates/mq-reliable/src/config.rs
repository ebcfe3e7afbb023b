//! The knobs every publisher shares, whatever the broker.

use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::engine::EngineConfig;
use crate::error::{Result, invalid};
use crate::spill::SpillConfig;

/// How a publisher bounds what it holds, spills and recovers; the same for
/// [`PublisherConfig`](crate::PublisherConfig) (RabbitMQ) and
/// [`KafkaConfig`](crate::KafkaConfig).
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityConfig {
    /// The in-flight window: a message is sent only within `window` of the
    /// oldest one still awaiting its confirm (a sliding window, so at most
    /// this many are unconfirmed). Bounds memory, the number of duplicates
    /// one failure can cause, and how far a failed message can be
    /// overtaken. Default 1024.
    pub window: usize,
    /// Delay between reconnect and replay attempts.
    pub backoff: BackoffConfig,
    /// Persist the replay checkpoint after this many replayed confirms (and
    /// at the end of a replay). After a crash mid-replay, at most this many
    /// (plus the window) records are published again. Default 4096 (each
    /// checkpoint costs two fsyncs, on the blocking pool; the replay pauses
    /// meanwhile).
    pub checkpoint_every: usize,
    /// Most spill appends awaiting their fsync at once while degraded
    /// (intake waits beyond). Default 8192.
    pub spill_window: usize,
    /// Largest payload accepted. Default 512 KiB (and never more than one
    /// spill record holds).
    pub max_payload: usize,
    /// While recovering, new messages taken per replayed message (in
    /// `[0, 1)`; default 0.5). New messages queue behind the backlog, so
    /// their intake must stay below the replay rate for the backlog to
    /// shrink: at 0.5 producers get a third of the broker's throughput and
    /// the backlog drains at a third. Intake is not limited while the
    /// broker is down.
    pub recovery_intake: f64,
    /// The spill log.
    pub spill: SpillConfig,
}

impl Default for ReliabilityConfig {
    fn default() -> Self {
        ReliabilityConfig {
            window: 1024,
            backoff: BackoffConfig::default(),
            checkpoint_every: 4096,
            spill_window: 8192,
            max_payload: 512 << 10,
            recovery_intake: 0.5,
            spill: SpillConfig::default(),
        }
    }
}

impl ReliabilityConfig {
    /// Defaults, with the spill log in `spill_dir`.
    pub fn new(spill_dir: impl Into<PathBuf>) -> ReliabilityConfig {
        ReliabilityConfig {
            spill: SpillConfig::new(spill_dir),
            ..ReliabilityConfig::default()
        }
    }

    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        self.spill.validate()?;
        let limit = self
            .spill
            .max_record_len()
            .saturating_sub(4 + 2 * crate::MAX_ID_LEN);
        if self.max_payload > limit {
            return Err(invalid(
                "max_payload",
                self.max_payload,
                "exceeds what one spill record holds (spill.log.buffer_size minus headers)",
            ));
        }
        self.engine(Duration::from_secs(1)).validate()
    }

    /// The engine's configuration, with the backend's confirm timeout.
    pub(crate) fn engine(&self, confirm_timeout: Duration) -> EngineConfig {
        EngineConfig {
            window: self.window,
            confirm_timeout,
            backoff: self.backoff.clone(),
            checkpoint_every: self.checkpoint_every,
            spill_window: self.spill_window,
            max_payload: self.max_payload,
            recovery_intake: self.recovery_intake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        ReliabilityConfig::default().validate().unwrap();
        let cases: [(&str, ReliabilityConfig); 6] = [
            (
                "window",
                ReliabilityConfig {
                    window: 0,
                    ..Default::default()
                },
            ),
            (
                "checkpoint_every",
                ReliabilityConfig {
                    checkpoint_every: 0,
                    ..Default::default()
                },
            ),
            (
                "spill_window",
                ReliabilityConfig {
                    spill_window: 0,
                    ..Default::default()
                },
            ),
            (
                "max_payload",
                ReliabilityConfig {
                    max_payload: 64 << 20,
                    ..Default::default()
                },
            ),
            (
                "recovery_intake",
                ReliabilityConfig {
                    recovery_intake: 1.0,
                    ..Default::default()
                },
            ),
            (
                "backoff.initial",
                ReliabilityConfig {
                    backoff: BackoffConfig {
                        initial: Duration::ZERO,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            let e = cfg.validate().unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }
}
