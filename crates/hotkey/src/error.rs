//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Messages are lower-case and name the offending value, so that a log line
/// alone tells what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `rules[0].threshold`.
        field: String,
        /// The rejected value, rendered.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// A ZooKeeper path or znode name could not be parsed.
    #[error("invalid znode name {name:?}: {reason}")]
    InvalidZnodeName {
        /// The name as read from ZooKeeper.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A rules file or a report could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed (file name, message offset, ...).
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A `hotkey-scan` input line has a timestamp at or above
    /// [`MAX_TIMESTAMP_MS`](crate::MAX_TIMESTAMP_MS) (2^53 ms, about 285,000
    /// years): most likely a timestamp in another unit (nanoseconds) or a
    /// corrupt line.
    #[error("line {line}: timestamp {value} is out of range: must be below 2^53 ms")]
    TimestampOutOfRange {
        /// The 1-based line number.
        line: u64,
        /// The timestamp as written (digits only; cut after 40 of them).
        value: String,
    },
    /// A ZooKeeper node already exists with an ACL that lets others write.
    #[error("znode {path} grants {grant} to {id}; only the detector may write")]
    AclTooOpen {
        /// The znode.
        path: String,
        /// The identity with too many rights, `scheme:id`.
        id: String,
        /// The rights it has.
        grant: String,
    },
    /// A ZooKeeper operation failed.
    #[cfg(feature = "zookeeper")]
    #[error("zookeeper {op} {path}: {source}")]
    ZooKeeper {
        /// The operation, e.g. `create`.
        op: &'static str,
        /// The path it was applied to.
        path: String,
        /// The client's error.
        #[source]
        source: zookeeper_client::Error,
    },
    /// A Kafka operation failed.
    #[cfg(feature = "kafka")]
    #[error("kafka {op} on topic {topic}: {source}")]
    Kafka {
        /// The operation, e.g. `produce`.
        op: &'static str,
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An operation did not finish in time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The component was shut down.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// Reading input failed.
    #[error("i/o error on {what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidConfig`].
    pub(crate) fn config(
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        reason: &'static str,
    ) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            value: format!("{value:?}"),
            reason,
        }
    }
}
