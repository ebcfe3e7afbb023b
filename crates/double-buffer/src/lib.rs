//! A sharded in-memory double buffer with group commit to a crash-safe spill log.
//!
//! When a message broker is down, a producer must keep accepting its core data at peak rate and
//! lose none of it. Syncing each record to disk is far too slow, and one lock serialises every
//! thread. [`SpillLog`] splits an in-memory double buffer into *slices*, each with its own lock
//! and two fixed buffers: writers fill one buffer while a flusher thread writes and `fdatasync`s
//! the other — outside every slice lock — and one sync covers every slice's pending records
//! (group commit, as in HDFS's `FSEditLog` and RocksDB's write groups). Records land in
//! checksummed, append-only segment files that survive crashes, and a [`Replay`] reader streams
//! them back, with a checkpoint, once the broker returns.
//!
//! # Quick example
//!
//! ```
//! use double_buffer::{Config, SpillLog};
//!
//! # fn main() -> double_buffer::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let (log, report) = SpillLog::open(dir.path(), Config::default())?;
//! assert_eq!(report.pending_records, 0);
//!
//! // Append: the record is in memory now, durable once the ticket says so.
//! let ticket = log.append(b"order 17: 3 x widget")?;
//! let id = ticket.wait()?; // returns after the fsync that covers the record
//!
//! // Later, when the broker is back: replay, hand each record on, commit.
//! let mut replay = log.replay()?;
//! while let Some(record) = replay.next_record()? {
//!     assert_eq!(record.id(), id);
//!     assert_eq!(record.payload(), b"order 17: 3 x widget");
//! }
//! replay.commit()?; // persisted: a restart resumes after this record
//! drop(replay);
//! log.close()?;
//! # Ok(()) }
//! ```
//!
//! The async form is `ticket.await` (a [`Ticket`] is [`IntoFuture`]);
//! it needs no particular runtime, since the flusher wakes the task's waker itself.
//!
//! # The durability contract
//!
//! - **Durable when.** A record is durable — it survives a process crash, a kernel crash and a
//!   power loss, given a disk that honours `fdatasync` — once the `fdatasync` of the segment
//!   holding it has returned, after the segment's creation was made durable (`fsync` of the file
//!   and of the directory). [`Ticket::wait`], `ticket.await` and [`Ticket::is_durable`] report
//!   exactly that, and [`SpillLog::flush`] waits for it for every record appended before the call.
//! - **Group commit.** The flusher takes every slice's pending buffer, writes them as one
//!   *group*, syncs once, then wakes only the waiters whose records that group carried. A
//!   waiting caller triggers a flush at once; a caller that does not wait has its record flushed
//!   when its buffer fills or when [`Config::linger`] has passed since the buffer's first record.
//! - **Loss window without waiting.** A record whose ticket was not waited on is lost by a crash
//!   only if it had not been flushed: at most `linger` plus one flush (write + fsync) after it
//!   was appended, or at most the records in `slices × 2` buffers. A process crash alone
//!   (`SIGKILL`, panic) loses only what was still in the in-memory buffers, since written data is in
//!   the kernel's page cache.
//! - **Failures.** If a write or sync fails (disk full, I/O error), every waiter whose record
//!   was not yet durable gets the error ([`Error::io_kind`] tells a full disk from the rest), and
//!   the log refuses further appends ([`Error::Failed`]): after a failed `fsync` the state of the
//!   page cache is unknown, so nothing is built on it. Such records were never reported durable;
//!   they may still be found on disk after a restart (so a record may be replayed although its
//!   writer got an error — replay is at-least-once). Segments are never deleted except behind a
//!   committed replay checkpoint, which only ever covers durable data.
//! - **Order.** Within a slice, records are written, recovered and replayed in append order, and
//!   their ids increase. Across slices, a group holds one buffer per slice, slice after slice,
//!   and groups follow each other; so records appended by different threads, or by one thread that
//!   fell over to another slice because its own was contended, may replay out of append order.
//!   [`SpillLog::append_keyed`] pins a key to a slice: records with the same key replay in append
//!   order. Record ids are unique in a directory across restarts (they continue above the highest
//!   id ever seen, even after replayed segments are deleted).
//! - **Memory and backpressure.** Buffers take `slices × 2 × buffer_size` bytes, allocated at
//!   open; appending allocates nothing. When the disk is slower than intake, [`SpillLog::append`]
//!   waits for the flusher and [`SpillLog::try_append`] returns [`Error::WouldBlock`]; nothing is
//!   dropped and nothing grows.
//! - **Bad input.** An empty record is [`Error::EmptyRecord`] (a zero length marks the end of
//!   the data on disk); one larger than [`Config::max_record_len`] is [`Error::RecordTooLarge`].
//!
//! # On disk
//!
//! A directory holds `LOCK` (an `flock` held while open), numbered segment files
//! (`00000000000000000001.seg`, rotated at [`Config::segment_size`] and preallocated with
//! `fallocate`) and `checkpoint`. Each segment starts with a header (magic, format version,
//! segment id, salt); each group with a header (magic, sequence number, length, record count);
//! each record carries its length, CRC32C, id and slice.
//!
//! Opening a directory ([`SpillLog::open`]) verifies every record. A write cut short by a
//! crash — the last group, which no waiter had been told was durable — is cut off and reported
//! ([`RecoveryReport::torn`]). Damage anywhere else (a bad checksum with valid data after it) is
//! [`Error::Corrupt`] with the file and offset: nothing is skipped silently. Preallocated space
//! reads as zeros, which end the scan cleanly. The `spill-log` binary (`inspect`, `verify`,
//! `dump`) shows an operator the same.
//!
//! # Storage
//!
//! Files are reached through the small [`Storage`] trait: [`DiskStorage`] for a directory,
//! [`MemStorage`] for tests, with a model of what a power loss keeps and with injectable faults.
#![warn(missing_docs, unreachable_pub)]

mod buffer;
mod config;
mod error;
mod format;
mod inspect;
mod log;
mod recovery;
mod replay;
mod scan;
mod storage;
mod sync;

pub use buffer::{Batch, DoubleBuffer, PushError, PushMode, Pushed};
pub use config::{Config, MAX_SLICES};
pub use error::{Error, Result};
pub use format::{FORMAT_VERSION, GROUP_HEADER_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use inspect::{Inspection, SegmentInfo, SegmentState, inspect, inspect_storage, read_records};
pub use log::{Durable, RecordId, SpillLog, Stats, Ticket};
pub use recovery::{RecoveryReport, TornTail};
pub use replay::{Position, Record, Replay};
pub use storage::{DiskStorage, Fault, MemStorage, Storage, StorageFile};
