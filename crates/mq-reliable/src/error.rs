//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Broker failures while publishing are *not* errors: a message the broker
/// refuses or never confirms is spilled to the local log and
/// [`publish`](crate::ReliablePublisher::publish) reports
/// [`Receipt::Spilled`](crate::Receipt::Spilled). An `Err` from `publish`
/// means the message was **not** acknowledged at all (bad input, a full or
/// broken disk, a closed publisher): the caller still owns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid configuration: `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Its value, rendered for the message.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A message cannot be published as given.
    #[error("invalid message `{id}`: {reason}")]
    InvalidMessage {
        /// The message id (possibly truncated for display).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The spill log failed (disk full, permission denied, I/O error, a
    /// corrupt segment), or could not be reopened after such a failure. A
    /// message whose spill failed is not acknowledged. Spilling resumes once
    /// the log is reopened (see the crate docs, "Disk errors while
    /// spilling").
    #[error("spill log: {0}")]
    Spill(#[source] SpillError),
    /// A publisher or consumer was started outside a tokio runtime.
    #[error("{0} must be started inside a tokio runtime")]
    NoRuntime(&'static str),
    /// The publisher or consumer was closed; nothing more is accepted.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// An operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The AMQP client reported an error.
    #[cfg(feature = "rabbitmq")]
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// The Kafka client reported an error.
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The spill log's own error, boxed so that the log stays swappable.
pub type SpillError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for [`Error::InvalidConfig`].
pub(crate) fn invalid(
    field: &'static str,
    value: impl std::fmt::Debug,
    reason: &'static str,
) -> Error {
    Error::InvalidConfig {
        field,
        value: format!("{value:?}"),
        reason,
    }
}
