//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in a spill log.
///
/// `Error` is `Clone` so that one flusher failure can be handed to every waiting writer: the
/// underlying [`io::Error`] is shared behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`Config`](crate::Config) field is out of range.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field that is wrong.
        field: &'static str,
        /// Its value, formatted.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// An empty record was appended; records carry at least one byte, because a zero length marks
    /// the end of the data on disk.
    #[error("empty record: records must hold at least one byte")]
    EmptyRecord,
    /// A record is larger than one buffer can hold ([`Config::max_record_len`](crate::Config::max_record_len)).
    #[error(
        "record of {len} bytes is too large: the limit is {max} bytes (buffer_size minus the record header)"
    )]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The largest record this log accepts.
        max: usize,
    },
    /// `try_append` found every buffer it may use full (or its slice lock contended); nothing
    /// was appended. Retry later or use the blocking `append`.
    #[error("would block: the buffers are full while the flusher writes")]
    WouldBlock,
    /// The key of `append_keyed` names no slice.
    #[error("slice {slice} does not exist: the log has {slices} slices")]
    NoSuchSlice {
        /// The slice asked for.
        slice: usize,
        /// How many slices the log has.
        slices: usize,
    },
    /// The log was closed; nothing was appended.
    #[error("the spill log is closed")]
    Closed,
    /// An I/O operation failed. When it happened in the flusher, every writer waiting for a
    /// record the failed flush carried receives this error, and the log refuses further appends
    /// (see [`Error::Failed`]).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"fdatasync"`, `"write"`, `"create"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// An earlier flush failed, so the log stopped accepting records: the state of the file
    /// after a failed write or fsync is unknown and must not be built upon. A failed log never
    /// recovers by itself: close it (and drop its replay reader) and open the directory again;
    /// recovery keeps every record that was reported durable.
    #[error("the spill log failed earlier and accepts no more records: {cause}")]
    Failed {
        /// The failure that stopped the log.
        cause: Arc<Error>,
    },
    /// A file holds data that cannot have been written by this crate at that position: a bad
    /// checksum, length or header in the middle of the log, not in a torn tail. Nothing was
    /// skipped: opening stops so that an operator can look (`spill-log verify DIR`).
    #[error("corrupt spill log at {}:{offset}: {reason}", path.display())]
    Corrupt {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// The byte offset of the first bad byte's structure (record, group or header).
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The file's format version is not one this build reads.
    #[error("unsupported format version {version} in {}: this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// Another process (or another `SpillLog` in this one) holds the directory.
    #[error("spill directory {} is locked by another open log", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A second replay reader was asked for while one is open; a log has one reader at a time,
    /// because the checkpoint is a single position.
    #[error("a replay reader is already open on this log")]
    ReplayBusy,
    /// [`Replay::commit_to`](crate::Replay::commit_to) was given a position the reader has not
    /// reached, or one behind the last commit.
    #[error("cannot commit to {requested}: {reason}")]
    InvalidPosition {
        /// The position asked for.
        requested: crate::Position,
        /// Why it is refused.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The [`io::ErrorKind`] behind this error, if an I/O error caused it (directly or as the
    /// cause of [`Error::Failed`]). Lets a caller tell a full disk from a permission problem.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::Failed { cause } => cause.io_kind(),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
