//! The spill log as the publisher sees it: a small internal trait.
//!
//! The production implementation is the `double-buffer` crate's
//! [`SpillLog`](double_buffer::SpillLog) ([`DiskSpill`]); tests of the
//! engine also use an in-memory one. The trait is
//! deliberately narrow: append a record (without blocking) and learn when it
//! is durable; read records back in order from the persisted checkpoint; move
//! the checkpoint. Appends never block the caller's thread; the reader does
//! file I/O, so the engine only uses it on tokio's blocking pool.
//!
//! # Recovery from a failed log
//!
//! A `SpillLog` whose write or fsync failed refuses every later append for
//! good (after a failed fsync nothing may be built on the file). A brief
//! disk-full must not disable spilling until the process restarts, so
//! [`DiskSpill`] replaces a failed log: the next append that finds it
//! failed closes it (the failing log has already cut what it wrote but
//! never synced), closes a replay reader open on it, and opens the
//! directory again — on a background thread, the append waiting meanwhile
//! (`Poll::Pending`). Opening runs the recovery scan, which verifies every
//! record on disk and keeps every one that was reported durable. The
//! waiting append then goes to the new log (one retry); if the directory
//! cannot be opened, it fails with that error. Attempts are rate-limited:
//! the first one after a log that made records durable is immediate; after
//! a reopen that failed, or a reopened log that failed before making any
//! record durable (the disk is still full), the next waits
//! [`SpillConfig::reopen_interval`], doubling up to a minute, and appends
//! fail at once until then.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use double_buffer::{Position, RecoveryReport, Replay, SpillLog};
use tracing::{error, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
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
    /// After a disk error the log is closed and the directory opened again
    /// (see the crate docs). A reopen is attempted at once if the failed
    /// log had made records durable; otherwise — the previous reopen failed,
    /// or the reopened log failed before making any record durable — the
    /// next waits this long, doubling up to a minute (each attempt scans the
    /// whole directory), and spills fail at once meanwhile. Default 1 s.
    pub reopen_interval: Duration,
}

/// The longest wait between two reopen attempts (unless
/// `reopen_interval` is longer).
const MAX_REOPEN_INTERVAL: Duration = Duration::from_secs(60);

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
            reopen_interval: Duration::from_secs(1),
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

    /// Checks the directory name, the reopen interval and the log's layout.
    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("spill.dir", &self.dir, "must not be empty"));
        }
        if self.reopen_interval < Duration::from_millis(1)
            || self.reopen_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "spill.reopen_interval",
                self.reopen_interval,
                "must be between 1 ms and 1 h",
            ));
        }
        self.log.validate().map_err(|e| Error::Spill(Box::new(e)))
    }

    /// The largest record the log takes.
    pub(crate) fn max_record_len(&self) -> usize {
        self.log.max_record_len()
    }
}

/// Opens the log (recovering it) and says where records this build cannot
/// decode go: the directory and `<dir>/quarantine` in production, any
/// `double-buffer` storage in tests.
#[derive(Clone)]
pub(crate) struct Opener {
    log: Arc<dyn Fn() -> double_buffer::Result<(SpillLog, RecoveryReport)> + Send + Sync>,
    quarantine: Arc<dyn Quarantine>,
}

impl Opener {
    /// `log` opens the log (also for every reopen); `quarantine` keeps
    /// undecodable records.
    pub(crate) fn new(
        log: impl Fn() -> double_buffer::Result<(SpillLog, RecoveryReport)> + Send + Sync + 'static,
        quarantine: Arc<dyn Quarantine>,
    ) -> Opener {
        Opener {
            log: Arc::new(log),
            quarantine,
        }
    }

    /// The log on `log` (in memory in tests), its quarantine on `quarantine`.
    #[cfg(test)]
    pub(crate) fn storage(
        log: double_buffer::MemStorage,
        cfg: double_buffer::Config,
        quarantine: double_buffer::MemStorage,
    ) -> Opener {
        Opener::new(
            move || SpillLog::open_with_storage(Arc::new(log.clone()), cfg.clone()),
            Arc::new(StorageQuarantine(Arc::new(quarantine))),
        )
    }
}

/// The `double-buffer` spill log behind the [`Spill`] trait, replaced by a
/// freshly opened one when it fails (see the module docs).
pub(crate) struct DiskSpill {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    open: Opener,
    /// The generation of the newest log that made a record durable.
    proven: AtomicU64,
    state: Mutex<State>,
}

struct State {
    slot: Slot,
    /// Counts reopen attempts; records appended carry it, so that a
    /// durable one proves the log it went to.
    generation: u64,
    /// The reader open on the current log, closed by a reopen (a reader
    /// holds the directory lock too).
    reader: Weak<Mutex<Option<Replay>>>,
    /// No reopen before this (unless the failed log had proven itself).
    next_attempt: Instant,
    /// The waits between reopen attempts: `reopen_interval` doubling up
    /// to [`MAX_REOPEN_INTERVAL`] (or `reopen_interval` if longer), without
    /// jitter; reset once a log has proven itself.
    backoff: Backoff,
    /// Appenders and readers waiting for a reopen to finish.
    wakers: Vec<Waker>,
    /// The thread of the last reopen.
    worker: Option<JoinHandle<()>>,
}

enum Slot {
    Open(SpillLog),
    /// A reopen is running; `cause` is what failed the old log.
    Reopening {
        cause: double_buffer::Error,
    },
    /// The last reopen failed.
    Down {
        error: double_buffer::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DiskSpill {
    /// Opens (recovering) the log described by `cfg`.
    pub(crate) fn open(cfg: &SpillConfig) -> Result<DiskSpill> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::Spill(Box::new(e)))?;
        let (dir, log) = (cfg.dir.clone(), cfg.log.clone());
        let quarantine = Arc::new(DirQuarantine {
            dir: cfg.dir.join(QUARANTINE_DIR),
        });
        DiskSpill::open_with(
            cfg,
            Opener::new(move || SpillLog::open(&dir, log.clone()), quarantine),
        )
    }

    /// Opens the log with `open` (also used for every reopen).
    pub(crate) fn open_with(cfg: &SpillConfig, open: Opener) -> Result<DiskSpill> {
        cfg.validate()?;
        let (log, report) = (open.log)().map_err(|e| Error::Spill(Box::new(e)))?;
        log_opened(&cfg.dir, &report, "spill log opened");
        let mut backoff = Backoff::new(BackoffConfig {
            initial: cfg.reopen_interval,
            max: MAX_REOPEN_INTERVAL.max(cfg.reopen_interval),
        });
        // The first attempt is immediate.
        let next_attempt = Instant::now() + backoff.next_nominal_delay();
        Ok(DiskSpill {
            shared: Arc::new(Shared {
                dir: cfg.dir.clone(),
                open,
                proven: AtomicU64::new(0),
                state: Mutex::new(State {
                    slot: Slot::Open(log),
                    generation: 1,
                    reader: Weak::new(),
                    next_attempt,
                    backoff,
                    wakers: Vec::new(),
                    worker: None,
                }),
            }),
        })
    }
}

fn log_opened(dir: &std::path::Path, report: &RecoveryReport, what: &'static str) {
    if let Some(torn) = &report.torn {
        warn!(
            path = %torn.path.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            "spill log: cut a torn tail left by a crash (never acknowledged)"
        );
    }
    info!(
        dir = %dir.display(),
        pending_records = report.pending_records,
        pending_bytes = report.pending_bytes,
        "{what}"
    );
}

impl Shared {
    /// Starts a reopen on a background thread unless one was tried too
    /// recently; `false` if not now. `cause` is why the log is replaced.
    fn begin_reopen(self: &Arc<Self>, st: &mut State, cause: double_buffer::Error) -> bool {
        let now = Instant::now();
        if self.proven.load(Ordering::Acquire) >= st.generation {
            // The failing log had made records durable: a fresh failure,
            // whose first attempt is immediate.
            st.backoff.reset();
            st.next_attempt = now + st.backoff.next_nominal_delay();
        }
        if now < st.next_attempt {
            return false;
        }
        st.next_attempt = now + st.backoff.next_nominal_delay();
        st.generation += 1;
        warn!(
            dir = %self.dir.display(),
            cause = %cause,
            "the spill log failed; closing it and opening the directory again"
        );
        let old = std::mem::replace(&mut st.slot, Slot::Reopening { cause });
        let reader = std::mem::take(&mut st.reader);
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("spill-log-reopen".into())
            .spawn(move || shared.reopen(old, &reader));
        match spawned {
            Ok(handle) => st.worker = Some(handle),
            Err(e) => {
                // The old log went with the closure; nothing is open.
                let error = double_buffer::Error::Io {
                    op: "spawn the reopen thread",
                    path: self.dir.clone(),
                    source: Arc::new(e),
                };
                error!(error = %error, "cannot reopen the spill log");
                st.slot = Slot::Down { error };
            }
        }
        true
    }

    /// Runs on the reopen thread: closes the reader and the failed log
    /// (releasing the directory lock), opens the directory again.
    fn reopen(&self, old: Slot, reader: &Weak<Mutex<Option<Replay>>>) {
        if let Some(reader) = reader.upgrade()
            && lock(&reader).take().is_some()
        {
            warn!("the replay reader on the failed spill log is closed; the replay starts again");
        }
        if let Slot::Open(log) = old {
            // A failed log's close reports the failure again.
            drop(log.close());
        }
        let opened = (self.open.log)();
        let wakers = {
            let mut st = lock(&self.state);
            st.slot = match opened {
                Ok((log, report)) => {
                    log_opened(&self.dir, &report, "spill log reopened; spilling resumes");
                    Slot::Open(log)
                }
                Err(error) => {
                    error!(
                        dir = %self.dir.display(),
                        error = %error,
                        retry_in = ?st.next_attempt.saturating_duration_since(Instant::now()),
                        "cannot reopen the spill log; spills fail until the next attempt"
                    );
                    Slot::Down { error }
                }
            };
            std::mem::take(&mut st.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl fmt::Debug for DiskSpill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.shared.state);
        let slot = match &st.slot {
            Slot::Open(_) => "open",
            Slot::Reopening { .. } => "reopening",
            Slot::Down { .. } => "down",
        };
        f.debug_struct("DiskSpill")
            .field("dir", &self.shared.dir)
            .field("log", &slot)
            .field("generation", &st.generation)
            .finish()
    }
}

impl Drop for DiskSpill {
    fn drop(&mut self) {
        // A reopen still running would hold the directory after the
        // publisher closed.
        let worker = lock(&self.shared.state).worker.take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

impl Spill for DiskSpill {
    fn poll_append(
        &self,
        cx: &mut Context<'_>,
        record: &[u8],
    ) -> Poll<Result<Durable, SpillError>> {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        let cause = match &st.slot {
            Slot::Open(log) => {
                // One key, one slice: records replay, and become durable,
                // in append order (the double-buffer's durability-order
                // contract).
                match log.poll_append_keyed(cx, 0, record) {
                    Poll::Ready(Ok(ticket)) => {
                        let generation = st.generation;
                        let shared = Arc::clone(shared);
                        let durable: Durable = Box::pin(async move {
                            ticket
                                .durable()
                                .await
                                .map_err(|e| Box::new(e) as SpillError)?;
                            shared.proven.fetch_max(generation, Ordering::AcqRel);
                            Ok(())
                        });
                        return Poll::Ready(Ok(durable));
                    }
                    // Bad input is refused the same on any log.
                    Poll::Ready(Err(
                        e @ (double_buffer::Error::EmptyRecord
                        | double_buffer::Error::RecordTooLarge { .. }),
                    )) => return Poll::Ready(Err(Box::new(e))),
                    Poll::Ready(Err(e)) if log.stats().failed => e,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Box::new(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Slot::Reopening { .. } => {
                st.wakers.push(cx.waker().clone());
                return Poll::Pending;
            }
            Slot::Down { error } => error.clone(),
        };
        // The log failed (or could not be reopened): reopen it, then this
        // record is appended to the new log — or fails if that is not
        // possible now.
        if shared.begin_reopen(&mut st, cause.clone()) {
            if matches!(st.slot, Slot::Reopening { .. }) {
                st.wakers.push(cx.waker().clone());
                return Poll::Pending;
            }
            // The reopen could not even start.
            if let Slot::Down { error } = &st.slot {
                return Poll::Ready(Err(Box::new(error.clone())));
            }
        }
        Poll::Ready(Err(Box::new(cause)))
    }

    fn reader(&self) -> Result<Box<dyn SpillReader>, SpillError> {
        let mut st = lock(&self.shared.state);
        match &st.slot {
            Slot::Open(log) => {
                let replay = Arc::new(Mutex::new(Some(log.replay()?)));
                st.reader = Arc::downgrade(&replay);
                Ok(Box::new(DiskReader {
                    replay,
                    quarantine: Arc::clone(&self.shared.open.quarantine),
                }))
            }
            // The engine retries the replay later.
            Slot::Reopening { cause } => Err(Box::new(cause.clone())),
            Slot::Down { error } => {
                let error = error.clone();
                self.shared.begin_reopen(&mut st, error.clone());
                Err(Box::new(error))
            }
        }
    }
}

/// A replay reader; a reopen of the log takes its `Replay` away (it holds
/// the failed log and its directory lock), and it then fails.
struct DiskReader {
    replay: Arc<Mutex<Option<Replay>>>,
    /// The opener's quarantine.
    quarantine: Arc<dyn Quarantine>,
}

impl DiskReader {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Replay) -> double_buffer::Result<T>,
    ) -> Result<T, SpillError> {
        match lock(&self.replay).as_mut() {
            Some(replay) => Ok(f(replay)?),
            // Closed for a reopen: the engine stops this replay and starts
            // another from the persisted checkpoint.
            None => Err(Box::new(double_buffer::Error::Closed)),
        }
    }
}

impl SpillReader for DiskReader {
    fn next(&mut self) -> Result<Option<SpillRecord>, SpillError> {
        self.with(|r| {
            Ok(r.next_record()?.map(|r| SpillRecord {
                pos: SpillPos::Log(r.position()),
                id: r.id().get(),
                bytes: r.payload().to_vec(),
            }))
        })
    }

    fn commit(&mut self, upto: SpillPos) -> Result<(), SpillError> {
        match upto {
            SpillPos::Log(p) => self.with(|r| r.commit_to(p)),
            #[cfg(test)]
            SpillPos::Mem(_) => Err("a memory position given to the disk log".into()),
        }
    }

    fn quarantine(&mut self, record: &SpillRecord) -> Result<PathBuf, SpillError> {
        self.quarantine.write(record.id, &record.bytes)
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

/// One record as a reader returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpillRecord {
    /// Just after the record.
    pub(crate) pos: SpillPos,
    /// The log's id for it, unique in the directory across restarts.
    pub(crate) id: u64,
    /// The record as appended.
    pub(crate) bytes: Vec<u8>,
}

/// Reads spill records in log order. Every method does file I/O (reads;
/// fsyncs of the checkpoint and of quarantine files): call them on a
/// blocking thread.
pub(crate) trait SpillReader: Send + 'static {
    /// The next durable record, or `None` at the current end of the log.
    fn next(&mut self) -> Result<Option<SpillRecord>, SpillError>;

    /// Persists that every record up to and including `upto` is replayed;
    /// the log may delete them.
    fn commit(&mut self, upto: SpillPos) -> Result<(), SpillError>;

    /// Keeps the bytes of a record this build cannot decode outside the log,
    /// durably (file and directory synced), so that the checkpoint may pass
    /// it without losing it; returns where they are.
    fn quarantine(&mut self, record: &SpillRecord) -> Result<PathBuf, SpillError>;
}

/// The quarantine directory inside a spill directory.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// Where a [`DiskSpill`] keeps the records this build cannot decode.
pub(crate) trait Quarantine: Send + Sync + fmt::Debug + 'static {
    /// Stores `bytes` durably as `<id>.bin` (file and directory synced);
    /// returns where. Called on a blocking thread.
    fn write(&self, id: u64, bytes: &[u8]) -> Result<PathBuf, SpillError>;
}

/// `<spill dir>/quarantine` on disk, written by [`write_quarantine`].
#[derive(Debug)]
struct DirQuarantine {
    dir: PathBuf,
}

impl Quarantine for DirQuarantine {
    fn write(&self, id: u64, bytes: &[u8]) -> Result<PathBuf, SpillError> {
        write_quarantine(&self.dir, id, bytes).map_err(|e| {
            Box::new(double_buffer::Error::Io {
                op: "write quarantine file in",
                path: self.dir.clone(),
                source: Arc::new(e),
            }) as SpillError
        })
    }
}

/// A quarantine on a `double-buffer` [`Storage`](double_buffer::Storage)
/// (in memory in tests, with injectable faults), written like
/// [`write_quarantine`]: a temporary file written and synced, renamed into
/// place, the directory synced.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct StorageQuarantine(pub(crate) Arc<dyn double_buffer::Storage>);

#[cfg(test)]
impl Quarantine for StorageQuarantine {
    fn write(&self, id: u64, bytes: &[u8]) -> Result<PathBuf, SpillError> {
        let storage = &self.0;
        let (name, tmp) = (format!("{id}.bin"), format!("{id}.bin.tmp"));
        let err = |op: &'static str, file: &str, e: std::io::Error| -> SpillError {
            Box::new(double_buffer::Error::Io {
                op,
                path: storage.path_of(file),
                source: Arc::new(e),
            })
        };
        // A temporary file left by an earlier failed attempt.
        match storage.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("remove", &tmp, e)),
        }
        let file = storage.create(&tmp).map_err(|e| err("create", &tmp, e))?;
        file.write_all_at(bytes, 0)
            .map_err(|e| err("write", &tmp, e))?;
        file.sync_all().map_err(|e| err("fsync", &tmp, e))?;
        drop(file);
        storage
            .rename(&tmp, &name)
            .map_err(|e| err("rename", &tmp, e))?;
        storage
            .sync_dir()
            .map_err(|e| err("fsync directory of", &name, e))?;
        Ok(storage.path_of(&name))
    }
}

/// Writes `bytes` to `<dir>/<id>.bin` durably: a temporary file, written and
/// fsynced, renamed into place (so a crash never leaves a partial file
/// under the final name), then the directory fsynced — and the spill
/// directory too, which holds the quarantine directory's own entry.
pub(crate) fn write_quarantine(
    dir: &std::path::Path,
    id: u64,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    let path = dir.join(format!("{id}.bin"));
    let tmp = dir.join(format!("{id}.bin.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
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
        room_wakers: Vec<Waker>,
        commits: Vec<u64>,
        reader_open: bool,
        /// (record position, bytes) of quarantined records.
        quarantined: Vec<(u64, Vec<u8>)>,
        fail_quarantine: bool,
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

        /// Appends `bytes` as they are (a record another build wrote).
        pub(crate) fn push_raw(&self, bytes: Vec<u8>) {
            let mut inner = self.inner.lock().unwrap();
            let pos = inner.next_pos;
            inner.next_pos += 1;
            inner.records.push((pos, bytes));
        }

        /// Quarantined records: (position, bytes).
        pub(crate) fn quarantined(&self) -> Vec<(u64, Vec<u8>)> {
            self.inner.lock().unwrap().quarantined.clone()
        }

        /// While set, writing a quarantine file fails.
        pub(crate) fn set_fail_quarantine(&self, fail: bool) {
            self.inner.lock().unwrap().fail_quarantine = fail;
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
            wakers.into_iter().for_each(Waker::wake);
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
        fn next(&mut self) -> Result<Option<SpillRecord>, SpillError> {
            let inner = self.inner.lock().unwrap();
            let rec = inner
                .records
                .iter()
                .find(|(p, _)| *p >= self.next)
                .map(|(p, r)| (*p, r.clone()));
            if let Some((p, _)) = &rec {
                self.next = p + 1;
            }
            Ok(rec.map(|(p, bytes)| SpillRecord {
                pos: SpillPos::Mem(p),
                id: p,
                bytes,
            }))
        }

        fn quarantine(&mut self, record: &SpillRecord) -> Result<PathBuf, SpillError> {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail_quarantine {
                return Err("cannot write the quarantine file (simulated)".into());
            }
            inner.quarantined.push((record.id, record.bytes.clone()));
            Ok(PathBuf::from(format!("mem:quarantine/{}.bin", record.id)))
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

#[cfg(test)]
mod disk_tests {
    //! `DiskSpill` replacing a failed log, on the same scenarios in memory
    //! (`MemStorage` with an injected fault) and in a real directory (a
    //! storage whose next fsync fails), as okaywal runs its storage tests.

    use super::*;
    use std::io;
    use std::sync::atomic::AtomicBool;

    use double_buffer::{DiskStorage, Fault, MemStorage, Storage, StorageFile};

    /// Where a scenario runs and how it breaks the disk.
    struct Env {
        cfg: SpillConfig,
        open: Opener,
        /// Makes file syncs fail with "disk full".
        fail: Box<dyn Fn()>,
        /// Ends the failure.
        heal: Box<dyn Fn()>,
        _dir: Option<tempfile::TempDir>,
    }

    fn log_config() -> double_buffer::Config {
        double_buffer::Config {
            slices: 1,
            buffer_size: 16 << 10,
            segment_size: 64 << 10,
            linger: Duration::from_millis(1),
            ..double_buffer::Config::default()
        }
    }

    fn spill_config(dir: PathBuf) -> SpillConfig {
        SpillConfig {
            dir,
            log: log_config(),
            reopen_interval: Duration::from_millis(200),
        }
    }

    fn mem_env() -> Env {
        let mem = MemStorage::new();
        let (m1, m2, m3) = (mem.clone(), mem.clone(), mem);
        Env {
            cfg: spill_config(PathBuf::from("mem:")),
            open: Opener::storage(m1, log_config(), MemStorage::new()),
            // Every sync fails until healed (the failing log's cut too).
            fail: Box::new(move || m2.inject(Fault::Sync, 0, io::ErrorKind::StorageFull)),
            heal: Box::new(move || m3.heal()),
            _dir: None,
        }
    }

    fn disk_env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        let failing = Arc::new(AtomicU64::new(0));
        let (f1, f2, f3) = (Arc::clone(&failing), Arc::clone(&failing), failing);
        let p = path.clone();
        let quarantine = Arc::new(DirQuarantine {
            dir: path.join(QUARANTINE_DIR),
        });
        Env {
            cfg: spill_config(path),
            open: Opener::new(
                move || {
                    let storage = FlakyDisk {
                        inner: DiskStorage::open(&p)?,
                        failing: Arc::clone(&f1),
                    };
                    SpillLog::open_with_storage(Arc::new(storage), log_config())
                },
                quarantine,
            ),
            // The next fsync fails; the disk is fine after that.
            fail: Box::new(move || f2.store(1, Ordering::SeqCst)),
            heal: Box::new(move || f3.store(0, Ordering::SeqCst)),
            _dir: Some(dir),
        }
    }

    /// A real directory whose next `failing` file syncs fail with "disk full".
    #[derive(Debug)]
    struct FlakyDisk {
        inner: DiskStorage,
        failing: Arc<AtomicU64>,
    }

    #[derive(Debug)]
    struct FlakyFile {
        inner: Box<dyn StorageFile>,
        failing: Arc<AtomicU64>,
    }

    impl FlakyFile {
        fn sync(&self, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
            let fail = self
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected: no space left on device",
                ));
            }
            f()
        }
    }

    impl Storage for FlakyDisk {
        fn list(&self) -> io::Result<Vec<String>> {
            self.inner.list()
        }
        fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
            Ok(Box::new(FlakyFile {
                inner: self.inner.create(name)?,
                failing: Arc::clone(&self.failing),
            }))
        }
        fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn StorageFile>> {
            Ok(Box::new(FlakyFile {
                inner: self.inner.open(name, write)?,
                failing: Arc::clone(&self.failing),
            }))
        }
        fn remove(&self, name: &str) -> io::Result<()> {
            self.inner.remove(name)
        }
        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            self.inner.rename(from, to)
        }
        fn sync_dir(&self) -> io::Result<()> {
            self.inner.sync_dir()
        }
        fn path_of(&self, name: &str) -> PathBuf {
            self.inner.path_of(name)
        }
    }

    impl StorageFile for FlakyFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.inner.write_all_at(buf, offset)
        }
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn preallocate(&self, len: u64) -> io::Result<()> {
            self.inner.preallocate(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.sync(|| self.inner.sync_data())
        }
        fn sync_all(&self) -> io::Result<()> {
            self.sync(|| self.inner.sync_all())
        }
    }

    fn rec(i: usize) -> Vec<u8> {
        format!("record {i} {}", "x".repeat(i % 97)).into_bytes()
    }

    /// Appends and waits until durable: `Ok` is what the publisher turns
    /// into `Receipt::Spilled`.
    async fn spill(s: &DiskSpill, record: &[u8]) -> Result<(), SpillError> {
        let durable = std::future::poll_fn(|cx| s.poll_append(cx, record)).await?;
        durable.await
    }

    fn read_all(s: &DiskSpill) -> Vec<Vec<u8>> {
        let mut reader = s.reader().unwrap();
        let mut out = Vec::new();
        while let Some(r) = reader.next().unwrap() {
            out.push(r.bytes);
        }
        out
    }

    fn kind(e: &SpillError) -> Option<io::ErrorKind> {
        e.downcast_ref::<double_buffer::Error>()
            .and_then(double_buffer::Error::io_kind)
    }

    fn generation(s: &DiskSpill) -> u64 {
        lock(&s.shared.state).generation
    }

    /// A brief disk-full: the spill it strikes gets the error, the next
    /// one reopens the log and succeeds, and every spill acknowledged
    /// before and after reads back — also after the directory is opened
    /// afresh (a restart).
    async fn a_failed_log_is_reopened_and_spilling_resumes(env: Env) {
        let s = DiskSpill::open_with(&env.cfg, env.open.clone()).unwrap();
        let mut acked = Vec::new();
        for i in 0..10 {
            spill(&s, &rec(i)).await.unwrap();
            acked.push(rec(i));
        }
        (env.fail)();
        let e = spill(&s, b"doomed").await.unwrap_err();
        assert_eq!(kind(&e), Some(io::ErrorKind::StorageFull), "{e}");
        (env.heal)();
        for i in 10..30 {
            spill(&s, &rec(i)).await.unwrap();
            acked.push(rec(i));
        }
        assert_eq!(generation(&s), 2, "reopened once");
        // The failing log cut the record that got the error.
        assert_eq!(read_all(&s), acked);
        drop(s);
        let s = DiskSpill::open_with(&env.cfg, env.open.clone()).unwrap();
        assert_eq!(read_all(&s), acked);
    }

    /// A replay reader open on the failed log holds it (and, on disk, the
    /// directory lock): the reopen closes it, it fails from then on, and a
    /// new reader reads everything acknowledged.
    async fn a_reader_on_the_failed_log_is_closed_by_the_reopen(env: Env) {
        let s = DiskSpill::open_with(&env.cfg, env.open.clone()).unwrap();
        let mut acked = Vec::new();
        for i in 0..5 {
            spill(&s, &rec(i)).await.unwrap();
            acked.push(rec(i));
        }
        let mut reader = s.reader().unwrap();
        assert_eq!(reader.next().unwrap().unwrap().bytes, rec(0));
        (env.fail)();
        spill(&s, b"doomed").await.unwrap_err();
        (env.heal)();
        for i in 5..10 {
            spill(&s, &rec(i)).await.unwrap();
            acked.push(rec(i));
        }
        let e = reader.next().unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        drop(reader);
        assert_eq!(read_all(&s), acked);
    }

    #[tokio::test]
    async fn a_failed_log_is_reopened_and_spilling_resumes_in_memory() {
        a_failed_log_is_reopened_and_spilling_resumes(mem_env()).await;
    }

    #[tokio::test]
    async fn a_failed_log_is_reopened_and_spilling_resumes_on_disk() {
        a_failed_log_is_reopened_and_spilling_resumes(disk_env()).await;
    }

    #[tokio::test]
    async fn a_reader_on_the_failed_log_is_closed_by_the_reopen_in_memory() {
        a_reader_on_the_failed_log_is_closed_by_the_reopen(mem_env()).await;
    }

    #[tokio::test]
    async fn a_reader_on_the_failed_log_is_closed_by_the_reopen_on_disk() {
        a_reader_on_the_failed_log_is_closed_by_the_reopen(disk_env()).await;
    }

    /// A reopen that fails is the spill's error (nothing acknowledged);
    /// attempts are rate-limited — also when the reopened log fails again
    /// before making anything durable — and start at once after a log that
    /// had made records durable.
    #[tokio::test]
    async fn reopens_that_fail_are_errors_and_rate_limited() {
        let mem = MemStorage::new();
        let refuse = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicU64::new(0));
        let (m, r, o) = (mem.clone(), Arc::clone(&refuse), Arc::clone(&opens));
        let open = Opener::new(
            move || {
                o.fetch_add(1, Ordering::SeqCst);
                if r.load(Ordering::SeqCst) {
                    return Err(double_buffer::Error::Io {
                        op: "open",
                        path: PathBuf::from("mem:"),
                        source: Arc::new(io::Error::from(io::ErrorKind::PermissionDenied)),
                    });
                }
                SpillLog::open_with_storage(Arc::new(m.clone()), log_config())
            },
            Arc::new(StorageQuarantine(Arc::new(MemStorage::new()))),
        );
        // Wide margins: the machine is shared and may stall.
        let interval = Duration::from_millis(500);
        let cfg = SpillConfig {
            reopen_interval: interval,
            ..spill_config(PathBuf::from("mem:"))
        };
        let s = DiskSpill::open_with(&cfg, open).unwrap();
        let opens = || opens.load(Ordering::SeqCst);
        let mut acked = Vec::new();
        spill(&s, &rec(0)).await.unwrap();
        acked.push(rec(0));

        // The disk fails and the directory cannot be opened either.
        mem.inject(Fault::Sync, 0, io::ErrorKind::StorageFull);
        spill(&s, b"doomed 1").await.unwrap_err();
        refuse.store(true, Ordering::SeqCst);
        let e = spill(&s, b"doomed 2").await.unwrap_err();
        assert_eq!(kind(&e), Some(io::ErrorKind::PermissionDenied), "{e}");
        assert_eq!(opens(), 2, "one reopen attempt");
        // Within the interval: no attempt, an error at once.
        let e = spill(&s, b"doomed 3").await.unwrap_err();
        assert_eq!(kind(&e), Some(io::ErrorKind::PermissionDenied), "{e}");
        assert!(s.reader().is_err());
        assert_eq!(opens(), 2, "rate-limited");

        // It opens again, but the disk is still full: the reopened log
        // fails before making anything durable, and the next attempt waits
        // twice as long.
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        refuse.store(false, Ordering::SeqCst);
        let e = spill(&s, b"doomed 4").await.unwrap_err();
        assert_eq!(kind(&e), Some(io::ErrorKind::StorageFull), "{e}");
        assert_eq!(opens(), 3);
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        spill(&s, b"doomed 5").await.unwrap_err();
        assert_eq!(opens(), 3, "the doubled interval has not passed");

        // The disk is back: the next attempt (after the doubled interval)
        // succeeds.
        mem.heal();
        tokio::time::sleep(interval).await;
        spill(&s, &rec(1)).await.unwrap();
        acked.push(rec(1));
        assert_eq!(opens(), 4);

        // A log that made records durable and then fails is replaced at
        // once.
        mem.inject(Fault::Sync, 0, io::ErrorKind::StorageFull);
        spill(&s, b"doomed 6").await.unwrap_err();
        mem.heal();
        spill(&s, &rec(2)).await.unwrap();
        acked.push(rec(2));
        assert_eq!(opens(), 5, "no wait after a proven log");
        assert_eq!(read_all(&s), acked);
    }

    #[test]
    fn the_reopen_interval_is_checked() {
        for bad in [Duration::ZERO, Duration::from_secs(7200)] {
            let e = SpillConfig {
                reopen_interval: bad,
                ..SpillConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("spill.reopen_interval"), "{e}");
        }
    }
}
