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
//! it needs no particular runtime, since the flusher wakes the task's waker itself. Appending
//! has async forms too ([`SpillLog::append_async`], [`SpillLog::append_keyed_async`], and the
//! poll forms under them): where the blocking `append` would wait for the flusher to free a
//! buffer, they yield to the executor instead of blocking its thread.
//!
//! # The durability contract
//!
//! - **Durable when.** A record is durable — it survives a process crash, a kernel crash and a
//!   power loss, given a disk that honours `fdatasync` — once the `fdatasync` of the segment
//!   holding it has returned (the segment's creation having been made durable before: `fsync`
//!   of the new file and of the directory). [`Ticket::wait`], `ticket.await` and
//!   [`Ticket::is_durable`] report exactly that, and [`SpillLog::flush`] waits for it for every
//!   record appended before the call. Nothing is reported durable earlier.
//! - **Group commit.** The flusher takes every slice's pending buffer (swapping it out under the
//!   slice lock, which is all it does under that lock), writes them as one *group* and syncs
//!   once, outside every slice lock, then wakes only the waiters whose records the group
//!   carried. Waiting on a ticket asks for a flush at once; a record nobody waits for is
//!   flushed when its buffer fills, or [`Config::linger`] after the first record of its buffer.
//! - **Loss window of a caller that does not wait.** Such a record is lost by a power failure
//!   or kernel crash if it had not yet been flushed: normally that is `linger` plus at most two
//!   flush rounds (the one running, then the one carrying it) after the append, and never more
//!   than the contents of the `slices × 2` buffers. A crash of the process alone (`SIGKILL`, a
//!   panic) loses only what was still in the in-memory buffers: what was written is in the
//!   kernel's page cache and will reach the disk. Dropping the [`SpillLog`] (or
//!   [`SpillLog::close`]) flushes everything first.
//! - **Failures.** If a write or a sync fails (disk full, I/O error, permission denied when
//!   creating a segment), every waiter whose record was not yet durable gets the error
//!   ([`Error::io_kind`] tells a full disk from the rest) and the log refuses further appends
//!   with [`Error::Failed`]: after a failed `fsync` the state of the page cache is unknown, so
//!   nothing is built on it. **A failed log stays failed**, however briefly the disk was full:
//!   it never resumes by itself. Its owner recovers by closing it (dropping its [`Replay`]
//!   reader too: the reader also holds the directory lock) and opening the directory again;
//!   recovery keeps every record that was reported durable (`mq-reliable`'s spill does exactly
//!   this, rate-limited). To make that reopen safe, the failing log at once cuts what it wrote
//!   but never synced: a segment whose creation did not complete is removed, and the active
//!   segment is truncated to the end of its last synced group and synced (retried at close if
//!   that fails too; logged at error level if it still fails). Otherwise bytes the kernel still
//!   shows after a failed `fsync`, though they never reached the disk, would be kept by
//!   recovery and built upon, and a later power loss would leave a gap that reads as
//!   corruption. Records that got an error were never reported durable; the cut removes them
//!   from the files, but if the process died before it (or the cut failed) some may still be
//!   found on disk and replayed.
//! - **What may come twice.** Replay is at-least-once: records read but not yet committed are
//!   read again after a restart, and a record whose writer got an error may be found on disk
//!   and replayed. Record ids are unique in a directory across restarts (they continue above the
//!   highest id ever seen, even after replayed segments are deleted), so a consumer can drop
//!   duplicates by id.
//! - **Order.** Within a slice, records are written, recovered and replayed in append order,
//!   and their ids increase. Across slices, a group holds at most one buffer per slice, slice
//!   after slice, and groups follow each other in the log; so records appended by different
//!   threads — or by one thread that fell over to another slice because its own was contended
//!   or full — may replay out of append order. [`SpillLog::append_keyed`] pins a key to a
//!   slice: records with the same key replay in append order.
//! - **Durability order.** Within a slice, records also *become durable* in append order: a
//!   slice's buffers are flushed one after the other, in the order they were filled, and its
//!   durability is a single watermark over its increasing ids. So when a ticket reports its
//!   record durable, every record appended to the same slice before it is durable too; and when
//!   a flush fails, the records that get the error are exactly the slice's records after the
//!   watermark. A caller pinning one key (one slice) can therefore await only its oldest
//!   ticket at a time, or treat a failure as covering everything appended after it.
//! - **Deletion.** A segment file is deleted only once a committed replay checkpoint lies
//!   beyond it; the checkpoint only ever covers durable data. A segment whose sync failed is
//!   therefore never deleted.
//! - **Memory and backpressure.** Buffers take `slices × 2 × buffer_size` bytes (plus one
//!   staging buffer of about `slices × buffer_size` with [`Config::direct_io`]), allocated at
//!   open; an append allocates nothing. When the disk is slower than intake,
//!   [`SpillLog::append`] waits for the flusher, [`SpillLog::try_append`] returns
//!   [`Error::WouldBlock`] and [`SpillLog::poll_append`] returns `Poll::Pending` and wakes the
//!   task once a buffer is free: nothing is dropped, nothing grows.
//! - **Bad input.** An empty record is [`Error::EmptyRecord`] (a zero length marks the end of
//!   the data on disk); one larger than [`Config::max_record_len`] is [`Error::RecordTooLarge`].
//!   Corrupt files are [`Error::Corrupt`], never a panic.
//!
//! # On disk
//!
//! A directory holds `LOCK` (an `flock` held while open), numbered segment files
//! (`00000000000000000001.seg`, rotated at [`Config::segment_size`] and preallocated with
//! `fallocate`; with [`Config::direct_io`] written with `O_DIRECT`, each group padded with zeros
//! to a 4 KiB block) and `checkpoint`. Each segment starts with a header (magic, format version,
//! segment id, salt); each group with a header (magic, sequence number, length, record count);
//! each record carries its length, CRC32C, id and slice.
//!
//! Opening a directory ([`SpillLog::open`]) verifies every record. The flusher writes a group
//! only after the previous one was synced, so a valid group *after* damaged bytes proves that
//! the damage hit synced data: that is [`Error::Corrupt`], with the file and offset, and
//! nothing is skipped silently. Damage with nothing valid after it is the group that was being
//! written when the machine died — none of its records had been reported durable — and is cut
//! and reported ([`RecoveryReport::torn`]). (A last group that was synced and then rotted
//! looks the same and is cut the same way: the report shows it.) Preallocated space reads as
//! zeros, which end the scan cleanly. New records always go to a new segment. The `spill-log`
//! binary (`inspect`, `verify`, `dump`) shows an operator the same, without changing anything.
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
pub use storage::{DIRECT_ALIGN, DiskStorage, Fault, MemStorage, Storage, StorageFile};
