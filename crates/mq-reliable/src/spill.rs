//! The spill log as the publisher sees it: a small internal trait.
//!
//! The production implementation is the `double-buffer` crate's
//! [`SpillLog`](double_buffer::SpillLog) ([`DiskSpill`]); tests of the
//! engine also use an in-memory one. The trait is
//! deliberately narrow: append a record and learn when it is durable; read
//! records back in order from the persisted checkpoint; move the checkpoint.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use double_buffer::{Position, SpillLog};
use tracing::{info, warn};

use crate::error::{Error, Result, SpillError, invalid};

/// Resolves once an appended record is durable (or the append failed).
pub(crate) type Durable = Pin<Box<dyn Future<Output = Result<(), SpillError>> + Send>>;

/// Where a record sits in the log, as the reader reports it: just after
/// the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    fn append(&self, record: &[u8]) -> Result<Durable, SpillError> {
        // One key, one slice: records replay in append order.
        let ticket = self.log.append_keyed(0, record)?;
        Ok(Box::pin(async move {
            ticket
                .durable()
                .await
                .map(|_| ())
                .map_err(|e| Box::new(e) as SpillError)
        }))
    }

    fn append_durable(&self, record: &[u8]) -> Result<(), SpillError> {
        self.log.append_keyed(0, record)?.wait()?;
        Ok(())
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
    /// Appends one record. Returns at once (it may wait briefly when the
    /// log's buffers are full); the future resolves when the record is
    /// durable. Records appended by one caller are read back in append
    /// order.
    fn append(&self, record: &[u8]) -> Result<Durable, SpillError>;

    /// Appends one record and blocks until it is durable (a rare path: a
    /// flush, about a millisecond).
    fn append_durable(&self, record: &[u8]) -> Result<(), SpillError>;

    /// A reader starting after the persisted checkpoint. Records appended
    /// (and made durable) while the reader exists are returned too.
    fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError>;
}

/// Reads spill records in log order.
pub(crate) trait SpillReader: Send {
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
    /// unless `fail_appends` is set.
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
        commits: u64,
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

        pub(crate) fn commits(&self) -> u64 {
            self.inner.lock().unwrap().commits
        }
    }

    impl Spill for MemorySpill {
        fn append(&self, record: &[u8]) -> Result<Durable, SpillError> {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail_appends {
                return Err("disk full (simulated)".into());
            }
            let pos = inner.next_pos;
            inner.next_pos += 1;
            inner.records.push((pos, record.to_vec()));
            Ok(Box::pin(async { Ok(()) }))
        }

        fn append_durable(&self, record: &[u8]) -> Result<(), SpillError> {
            drop(self.append(record)?);
            Ok(())
        }

        fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError> {
            let from = self.inner.lock().unwrap().checkpoint.map_or(0, |c| c + 1);
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
            inner.commits += 1;
            inner.records.retain(|(p, _)| *p > cp);
            Ok(())
        }
    }
}
