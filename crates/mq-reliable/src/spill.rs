//! The spill log as the publisher sees it: a small internal trait.
//!
//! The production implementation is the `double-buffer` crate's
//! [`SpillLog`](double_buffer::SpillLog) ([`DiskSpill`]); tests of the
//! engine also use an in-memory one. The trait is
//! deliberately narrow: append a record (without blocking) and learn when it
//! is durable; read records back in order from the persisted checkpoint; move
//! the checkpoint. Appends never block the caller's thread; the reader does
//! file I/O, so the engine only uses it on tokio's blocking pool.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use double_buffer::{Position, SpillLog};
use tracing::{info, warn};

use crate::error::{Error, Result, SpillError, invalid};

/// Resolves once an appended record is durable (or the append failed).
pub(crate) type Durable = Pin<Box<dyn Future<Output = Result<(), SpillError>> + Send>>;

/// Where a record sits in the log, as the reader reports it: just after
/// the record. Positions order like the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SpillPos {
    /// A position in a [`SpillLog`].
    Log(Position),
    /// The index of a record in the in-memory test log.
    #[cfg(test)]
    Mem(u64),
}

impl fmt::Display for SpillPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpillPos::Log(p) => write!(f, "{p}"),
            #[cfg(test)]
            SpillPos::Mem(i) => write!(f, "record {i}"),
        }
    }
}

/// Where and how the spill log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillConfig {
    /// The log's directory (created if missing; locked while open). One
    /// publisher per directory.
    pub dir: PathBuf,
    /// The double buffer's layout. The publisher appends from one task in
    /// publish order and pins every record to one slice, so one slice is
    /// enough; its two buffers let appends continue while the other one
    /// is written and synced.
    pub log: double_buffer::Config,
}

impl Default for SpillConfig {
    fn default() -> Self {
        SpillConfig {
            dir: PathBuf::from("mq-reliable-spill"),
            log: double_buffer::Config {
                slices: 1,
                buffer_size: 2 << 20,
                linger: Duration::from_millis(2),
                ..double_buffer::Config::default()
            },
        }
    }
}

impl SpillConfig {
    /// A log in `dir` with the default layout.
    pub fn new(dir: impl Into<PathBuf>) -> SpillConfig {
        SpillConfig {
            dir: dir.into(),
            ..SpillConfig::default()
        }
    }

    /// Checks the directory name and the log's layout.
    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("spill.dir", &self.dir, "must not be empty"));
        }
        self.log.validate().map_err(|e| Error::Spill(Box::new(e)))
    }

    /// The largest record the log takes.
    pub(crate) fn max_record_len(&self) -> usize {
        self.log.max_record_len()
    }
}

/// The `double-buffer` spill log behind the [`Spill`] trait.
#[derive(Debug)]
pub(crate) struct DiskSpill {
    log: SpillLog,
}

impl DiskSpill {
    /// Opens (recovering) the log described by `cfg`.
    pub(crate) fn open(cfg: &SpillConfig) -> Result<DiskSpill> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::Spill(Box::new(e)))?;
        let (log, report) =
            SpillLog::open(&cfg.dir, cfg.log.clone()).map_err(|e| Error::Spill(Box::new(e)))?;
        if let Some(torn) = &report.torn {
            warn!(
                path = %torn.path.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "spill log: cut a torn tail left by a crash (never acknowledged)"
            );
        }
        info!(
            dir = %cfg.dir.display(),
            pending_records = report.pending_records,
            pending_bytes = report.pending_bytes,
            "spill log opened"
        );
        Ok(DiskSpill { log })
    }
}

impl Spill for DiskSpill {
    fn poll_append(
        &self,
        cx: &mut Context<'_>,
        record: &[u8],
    ) -> Poll<Result<Durable, SpillError>> {
        // One key, one slice: records replay, and become durable, in append
        // order (the double-buffer's durability-order contract).
        self.log.poll_append_keyed(cx, 0, record).map(|res| {
            let ticket = res?;
            let durable: Durable = Box::pin(async move {
                ticket
                    .durable()
                    .await
                    .map(|_| ())
                    .map_err(|e| Box::new(e) as SpillError)
            });
            Ok(durable)
        })
    }

    fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError> {
        Ok(Box::new(DiskReader(self.log.replay()?)))
    }
}

struct DiskReader(double_buffer::Replay);

impl SpillReader for DiskReader {
    fn next(&mut self) -> Result<Option<(SpillPos, Vec<u8>)>, SpillError> {
        Ok(self
            .0
            .next_record()?
            .map(|r| (SpillPos::Log(r.position()), r.payload().to_vec())))
    }

    fn commit(&mut self, upto: SpillPos) -> Result<(), SpillError> {
        match upto {
            SpillPos::Log(p) => Ok(self.0.commit_to(p)?),
            #[cfg(test)]
            SpillPos::Mem(_) => Err("a memory position given to the disk log".into()),
        }
    }
}

/// An append-only, crash-safe log of spilled messages.
pub(crate) trait Spill: Send + Sync + fmt::Debug + 'static {
    /// Appends one record without blocking. When the log has no room (its
    /// buffers are being written), registers `cx`'s waker, woken once there
    /// is room, and returns `Pending` with nothing appended: call again
    /// with the same record. The future resolves when the record is
    /// durable. Records are read back, and become durable, in append order.
    fn poll_append(&self, cx: &mut Context<'_>, record: &[u8])
    -> Poll<Result<Durable, SpillError>>;

    /// A reader starting after the persisted checkpoint (opening it does no
    /// I/O). Records appended (and made durable) while the reader exists
    /// are returned too. One reader at a time.
    fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError>;
}

/// Reads spill records in log order. Both methods do file I/O (reads;
/// fsyncs of the checkpoint): call them on a blocking thread.
pub(crate) trait SpillReader: Send + 'static {
    /// The next durable record, or `None` at the current end of the log.
    fn next(&mut self) -> Result<Option<(SpillPos, Vec<u8>)>, SpillError>;

    /// Persists that every record up to and including `upto` is replayed;
    /// the log may delete them.
    fn commit(&mut self, upto: SpillPos) -> Result<(), SpillError>;
}

#[cfg(test)]
pub(crate) use memory::MemorySpill;

#[cfg(test)]
mod memory {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An in-memory spill log for tests of the engine. "Durable" at once
    /// unless `fail_appends` is set; `set_full` makes it refuse room (the
    /// appender waits) until it is cleared.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct MemorySpill {
        inner: Arc<Mutex<Inner>>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        /// (position, record); positions increase from 0.
        records: Vec<(u64, Vec<u8>)>,
        next_pos: u64,
        /// Everything at or below this position is replayed.
        checkpoint: Option<u64>,
        fail_appends: bool,
        full: bool,
        room_wakers: Vec<std::task::Waker>,
        commits: Vec<u64>,
        reader_open: bool,
    }

    impl MemorySpill {
        pub(crate) fn new() -> MemorySpill {
            MemorySpill::default()
        }

        /// Records not yet checkpointed, in order.
        pub(crate) fn pending(&self) -> Vec<Vec<u8>> {
            let inner = self.inner.lock().unwrap();
            inner
                .records
                .iter()
                .filter(|(p, _)| inner.checkpoint.is_none_or(|c| *p > c))
                .map(|(_, r)| r.clone())
                .collect()
        }

        pub(crate) fn set_fail_appends(&self, fail: bool) {
            self.inner.lock().unwrap().fail_appends = fail;
        }

        /// Every checkpoint committed, in order.
        pub(crate) fn commit_positions(&self) -> Vec<u64> {
            self.inner.lock().unwrap().commits.clone()
        }

        /// While `full`, appends wait for room; clearing it wakes them.
        pub(crate) fn set_full(&self, full: bool) {
            let wakers = {
                let mut inner = self.inner.lock().unwrap();
                inner.full = full;
                std::mem::take(&mut inner.room_wakers)
            };
            wakers.into_iter().for_each(std::task::Waker::wake);
        }
    }

    impl Spill for MemorySpill {
        fn poll_append(
            &self,
            cx: &mut Context<'_>,
            record: &[u8],
        ) -> Poll<Result<Durable, SpillError>> {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail_appends {
                return Poll::Ready(Err("disk full (simulated)".into()));
            }
            if inner.full {
                inner.room_wakers.push(cx.waker().clone());
                return Poll::Pending;
            }
            let pos = inner.next_pos;
            inner.next_pos += 1;
            inner.records.push((pos, record.to_vec()));
            Poll::Ready(Ok(Box::pin(async { Ok(()) })))
        }

        fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError> {
            let mut inner = self.inner.lock().unwrap();
            // Like the disk log: one reader at a time.
            assert!(!inner.reader_open, "a second reader opened");
            inner.reader_open = true;
            let from = inner.checkpoint.map_or(0, |c| c + 1);
            Ok(Box::new(MemoryReader {
                inner: Arc::clone(&self.inner),
                next: from,
            }))
        }
    }

    struct MemoryReader {
        inner: Arc<Mutex<Inner>>,
        next: u64,
    }

    impl Drop for MemoryReader {
        fn drop(&mut self) {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reader_open = false;
        }
    }

    impl SpillReader for MemoryReader {
        fn next(&mut self) -> Result<Option<(SpillPos, Vec<u8>)>, SpillError> {
            let inner = self.inner.lock().unwrap();
            let rec = inner
                .records
                .iter()
                .find(|(p, _)| *p >= self.next)
                .map(|(p, r)| (*p, r.clone()));
            if let Some((p, _)) = &rec {
                self.next = p + 1;
            }
            Ok(rec.map(|(p, r)| (SpillPos::Mem(p), r)))
        }

        fn commit(&mut self, upto: SpillPos) -> Result<(), SpillError> {
            let SpillPos::Mem(cp) = upto else {
                return Err("a disk position given to the memory log".into());
            };
            let mut inner = self.inner.lock().unwrap();
            assert!(
                inner.checkpoint.is_none_or(|c| cp > c),
                "checkpoint moved backwards"
            );
            inner.checkpoint = Some(cp);
            inner.commits.push(cp);
            inner.records.retain(|(p, _)| *p > cp);
            Ok(())
        }
    }
}
