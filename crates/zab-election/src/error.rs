//! The crate's one error type.

use crate::types::ServerId;

/// Everything that can go wrong in this crate.
///
/// Messages are lower-case and name the offending value, so that a log line
/// alone says what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field (or command-line flag) at fault.
        field: &'static str,
        /// The value that was given, rendered as text.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The quorum description is unusable (empty, a server in two groups...).
    #[error("invalid quorum: {0}")]
    InvalidQuorum(String),
    /// This server's id is neither a voter nor an observer of the quorum.
    #[error("server {id} is not a member of the quorum")]
    NotAMember {
        /// The id that is missing.
        id: ServerId,
    },
    /// A message claims to come from this server itself.
    #[error("message from server {id} delivered to itself")]
    MessageFromSelf {
        /// This server's id.
        id: ServerId,
    },
    /// A frame that could not be decoded; the frame is dropped.
    #[error("malformed frame: {0}")]
    MalformedFrame(String),
    /// A frame header announcing more bytes than the transport accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A frame of a wire-format version this build does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// An I/O error of the transport or of the epoch files.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// An [`Error::InvalidConfig`] for `field` holding `value`.
    pub(crate) fn invalid(field: &'static str, value: String, reason: &'static str) -> Self {
        Error::InvalidConfig {
            field,
            value,
            reason,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
