//! The spill log: sharded double buffers in front of a flusher that writes and syncs groups.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::buffer::{Batch, DoubleBuffer, PushError, PushMode};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{
    self, GroupHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, encode_record,
    payload_crc,
};
use crate::recovery::{RecoveryReport, recover};
use crate::storage::{DIRECT_ALIGN, DiskStorage, Storage, StorageFile};

/// The id of a record: unique within a log directory (across restarts too), and increasing
/// within each slice in append order. Slices take ids in blocks, so ids of different slices
/// do not follow append order, and there may be gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub(crate) u64);

impl RecordId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A crash-safe, append-only spill log with sharded in-memory double buffers and group commit.
///
/// See the [crate documentation](crate) for the durability contract. `SpillLog` is `Sync`:
/// share it between threads by reference or in an [`Arc`].
pub struct SpillLog {
    engine: Arc<Engine>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SpillLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpillLog")
            .field("storage", &self.engine.storage)
            .field("slices", &self.engine.slices.len())
            .finish_non_exhaustive()
    }
}

/// Everything the flusher, the writers' slow paths and the replay reader share.
pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) slices: Box<[Arc<Slice>]>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) next_id: AtomicU64,
    flusher: Mutex<Flusher>,
    /// Segments on disk and how far each holds durable data, for the replay reader.
    pub(crate) segments: Mutex<SegmentTable>,
    pub(crate) replay_open: AtomicBool,
    pub(crate) checkpoint: Mutex<Option<format::CheckpointData>>,
}

/// Segments the replay reader may read: id → (durable data end, sealed).
#[derive(Debug, Default)]
pub(crate) struct SegmentTable {
    pub(crate) entries: BTreeMap<u64, SegmentEntry>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentEntry {
    pub(crate) end: u64,
    pub(crate) sealed: bool,
}

/// How writers and waiters reach the flusher, and how it reports failure.
pub(crate) struct Signals {
    bell: Mutex<Bell>,
    ring: Condvar,
    failure: OnceLock<Error>,
    closed: AtomicBool,
    flush_thread: bool,
    linger: Duration,
}

#[derive(Debug, Default)]
struct Bell {
    /// A buffer is full, a caller waits, or a flush was asked for: flush now.
    urgent: bool,
    /// When the oldest unflushed record arrived (flush at `since + linger`).
    data_since: Option<Instant>,
    shutdown: bool,
}

impl Signals {
    fn urgent(&self) {
        lock(&self.bell).urgent = true;
        self.ring.notify_one();
    }

    fn data(&self) {
        let mut bell = lock(&self.bell);
        if bell.data_since.is_none() {
            bell.data_since = Some(Instant::now());
            drop(bell);
            self.ring.notify_one();
        }
    }

    /// The error a refused or failed operation reports.
    fn refusal(&self) -> Error {
        match self.failure.get() {
            Some(e) => Error::Failed {
                cause: Arc::new(e.clone()),
            },
            None => Error::Closed,
        }
    }
}

/// One slice: its double buffer, how far it is durable, and who waits.
#[repr(align(128))]
pub(crate) struct Slice {
    index: u16,
    buffer: DoubleBuffer,
    /// The highest record id of this slice known durable.
    durable: AtomicU64,
    /// The highest record id a waiter asked to be flushed.
    demanded: AtomicU64,
    /// The slice's block of ids: `[next, end)`, reserved from the log's counter. Touched only
    /// under the slice lock (inside the push closure); atomics only to share the struct.
    id_next: AtomicU64,
    id_end: AtomicU64,
    waiters: Mutex<Vec<(u64, Waker)>>,
    signals: Arc<Signals>,
    /// For the no-thread mode, where a waiter flushes by itself.
    engine: OnceLock<Weak<Engine>>,
}

/// Ids a slice reserves at a time, so that appends do not all hit one shared counter.
const ID_BLOCK: u64 = 256;

impl Slice {
    /// The next record id of this slice. Must be called under the slice lock.
    fn take_id(&self, counter: &AtomicU64) -> u64 {
        let mut id = self.id_next.load(Ordering::Relaxed);
        if id >= self.id_end.load(Ordering::Relaxed) {
            id = counter.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.id_end.store(id + ID_BLOCK, Ordering::Relaxed);
        }
        self.id_next.store(id + 1, Ordering::Relaxed);
        id
    }

    /// Whether record `id` of this slice is durable; an error if the log failed before it was.
    fn check(&self, id: u64) -> Option<Result<()>> {
        if self.durable.load(Ordering::Acquire) >= id {
            return Some(Ok(()));
        }
        let failure = self.signals.failure.get()?;
        // The flusher publishes every success before it records a failure.
        if self.durable.load(Ordering::Acquire) >= id {
            return Some(Ok(()));
        }
        Some(Err(failure.clone()))
    }

    fn poll_durable(
        &self,
        id: u64,
        cx: &mut Context<'_>,
        registered: &mut Option<Waker>,
    ) -> Poll<Result<()>> {
        if let Some(r) = self.check(id) {
            return Poll::Ready(r);
        }
        if !self.signals.flush_thread {
            // No flusher thread: flush on this one.
            let Some(engine) = self.engine.get().and_then(Weak::upgrade) else {
                return Poll::Ready(Err(self.signals.refusal()));
            };
            while self.check(id).is_none() {
                match engine.flush_round() {
                    Ok(true) => {}
                    // Another thread's round carries it and has not published yet.
                    Ok(false) => thread::yield_now(),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            return Poll::Ready(self.check(id).unwrap_or(Ok(())));
        }
        {
            let mut waiters = lock(&self.waiters);
            if let Some(r) = self.check(id) {
                return Poll::Ready(r);
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                waiters.push((id, cx.waker().clone()));
                *registered = Some(cx.waker().clone());
            }
        }
        if self.demanded.fetch_max(id, Ordering::AcqRel) < id {
            self.signals.urgent();
        }
        Poll::Pending
    }

    /// Moves the wakers of records up to `id` (all of them if `id` is `u64::MAX`) to `out`.
    fn collect_waiters(&self, id: u64, out: &mut Vec<Waker>) {
        let mut waiters = lock(&self.waiters);
        let mut i = 0;
        while i < waiters.len() {
            if waiters[i].0 <= id {
                out.push(waiters.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
    }

    /// Wakes the waiters of records up to `id` (all of them if `id` is `u64::MAX`).
    fn wake_upto(&self, id: u64, scratch: &mut Vec<Waker>) {
        self.collect_waiters(id, scratch);
        for w in scratch.drain(..) {
            w.wake();
        }
    }
}

/// The flusher's own state, behind its own mutex (never a slice lock).
struct Flusher {
    active: Option<ActiveSegment>,
    next_segment: u64,
    next_group: u64,
    taken: Vec<(usize, Batch)>,
    wake: Vec<Waker>,
    /// The aligned buffer groups are assembled in, with direct I/O.
    staging: Option<Staging>,
    /// A segment file created by a rotation that has not completed: removed if the log fails.
    creating: Option<String>,
    /// The log failed and what it wrote but never synced is not cut yet (see
    /// [`Engine::cut_unsynced`]).
    cut_pending: bool,
}

struct ActiveSegment {
    id: u64,
    name: String,
    file: Box<dyn StorageFile>,
    salt: u64,
    /// Where the next group goes.
    pos: u64,
    /// Written with direct I/O (whole aligned blocks through the staging buffer).
    direct: bool,
    /// With direct I/O, the segment header still to be written, in front of the first group.
    pending_header: Option<[u8; SEGMENT_HEADER_LEN]>,
}

thread_local! {
    static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

/// The slice a thread tries first: spread round-robin on first use, then moved to wherever
/// the thread last found an uncontended lock.
fn home_slice(n: usize) -> usize {
    HOME.with(|h| {
        let mut v = h.get();
        if v == usize::MAX {
            v = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
            h.set(v);
        }
        v % n
    })
}

fn set_home(i: usize) {
    HOME.with(|h| h.set(i));
}

/// A claim on one appended record: wait on it to learn that the record is durable.
///
/// Dropping a ticket does not cancel anything: the record is written all the same (that is the
/// fire-and-forget use). [`Ticket::wait`] blocks; `ticket.await` (the ticket is [`IntoFuture`])
/// works on any executor, since the flusher wakes the task's [`Waker`] itself.
#[must_use = "a record is only known durable once its ticket is waited on; drop it explicitly to fire and forget"]
pub struct Ticket {
    slice: Arc<Slice>,
    id: u64,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("slice", &self.slice.index)
            .finish()
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}

impl Ticket {
    /// The record's id.
    pub fn id(&self) -> RecordId {
        RecordId(self.id)
    }

    /// The slice the record went to.
    pub fn slice(&self) -> usize {
        usize::from(self.slice.index)
    }

    /// `Ok(true)` once the record is durable, `Ok(false)` while it is not yet, and the error if
    /// the log failed before it became durable. Never blocks and never asks for a flush.
    pub fn is_durable(&self) -> Result<bool> {
        match self.slice.check(self.id) {
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    /// Blocks until the fsync that covers the record has returned; the error if the flush
    /// carrying it failed (then the record is not known durable: it may or may not be read back
    /// after a restart).
    pub fn wait(self) -> Result<RecordId> {
        self.wait_deadline(None).map(|_| RecordId(self.id))
    }

    /// Like [`Ticket::wait`] but gives up after `timeout`: `Ok(false)` if the record is not yet
    /// durable then (the ticket stays usable). A timeout beyond the clock's range waits for good.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_deadline(Instant::now().checked_add(timeout))
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> Result<bool> {
        THREAD_WAKER.with(|waker| {
            let mut cx = Context::from_waker(waker);
            let mut registered = None;
            loop {
                if let Poll::Ready(r) = self.slice.poll_durable(self.id, &mut cx, &mut registered) {
                    return r.map(|()| true);
                }
                match deadline {
                    None => thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return Ok(false);
                        }
                        thread::park_timeout(d - now);
                    }
                }
            }
        })
    }

    /// A future that resolves like [`Ticket::wait`]; the same as `ticket.await`.
    pub fn durable(self) -> Durable {
        Durable {
            ticket: self,
            registered: None,
        }
    }
}

impl IntoFuture for Ticket {
    type Output = Result<RecordId>;
    type IntoFuture = Durable;

    fn into_future(self) -> Durable {
        self.durable()
    }
}

/// The future of [`Ticket::durable`]: resolves once the record is durable. Runtime-agnostic:
/// the flusher thread wakes the waker.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Durable {
    ticket: Ticket,
    registered: Option<Waker>,
}

impl Future for Durable {
    type Output = Result<RecordId>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<RecordId>> {
        let this = &mut *self;
        this.ticket
            .slice
            .poll_durable(this.ticket.id, cx, &mut this.registered)
            .map(|r| r.map(|()| this.ticket.id()))
    }
}

impl SpillLog {
    /// Opens (or creates) the log in `dir`, recovering what is there: see [`RecoveryReport`].
    /// The directory is locked until the log — and its [`Replay`](crate::Replay) reader, if one
    /// is open — is closed or dropped.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<(SpillLog, RecoveryReport)> {
        config.validate()?;
        let storage = DiskStorage::open(dir)?;
        SpillLog::open_with_storage(Arc::new(storage), config)
    }

    /// Opens the log on any [`Storage`] (for instance [`MemStorage`](crate::MemStorage) in tests).
    pub fn open_with_storage(
        storage: Arc<dyn Storage>,
        config: Config,
    ) -> Result<(SpillLog, RecoveryReport)> {
        config.validate()?;
        let recovered = recover(&*storage, config.read_chunk())?;
        let signals = Arc::new(Signals {
            bell: Mutex::new(Bell::default()),
            ring: Condvar::new(),
            failure: OnceLock::new(),
            closed: AtomicBool::new(false),
            flush_thread: config.flush_thread,
            linger: config.linger,
        });
        let slices: Box<[Arc<Slice>]> = (0..config.slices)
            .map(|i| {
                Arc::new(Slice {
                    index: i as u16,
                    buffer: DoubleBuffer::new(config.buffer_size),
                    durable: AtomicU64::new(0),
                    demanded: AtomicU64::new(0),
                    id_next: AtomicU64::new(0),
                    id_end: AtomicU64::new(0),
                    waiters: Mutex::new(Vec::new()),
                    signals: Arc::clone(&signals),
                    engine: OnceLock::new(),
                })
            })
            .collect();
        let mut table = SegmentTable::default();
        for &(id, end) in &recovered.segments {
            table.entries.insert(id, SegmentEntry { end, sealed: true });
        }
        let engine = Arc::new(Engine {
            storage,
            slices,
            signals: Arc::clone(&signals),
            next_id: AtomicU64::new(recovered.next_id),
            flusher: Mutex::new(Flusher {
                active: None,
                next_segment: recovered.next_segment,
                next_group: recovered.next_group,
                taken: Vec::with_capacity(config.slices),
                wake: Vec::new(),
                staging: config
                    .direct_io
                    .then(|| Staging::new(crate::config::staging_capacity(&config))),
                creating: None,
                cut_pending: false,
            }),
            segments: Mutex::new(table),
            replay_open: AtomicBool::new(false),
            checkpoint: Mutex::new(recovered.checkpoint),
            config,
        });
        for s in engine.slices.iter() {
            let _ = s.engine.set(Arc::downgrade(&engine));
        }
        let thread = if engine.config.flush_thread {
            let e = Arc::clone(&engine);
            let handle = thread::Builder::new()
                .name("spill-log-flusher".into())
                .spawn(move || flusher_thread(&e))
                .map_err(|err| Error::io("spawn flusher thread", e_path(&engine), err))?;
            Some(handle)
        } else {
            None
        };
        Ok((SpillLog { engine, thread }, recovered.report))
    }

    /// Appends a record; waits while both buffers of every slice it may use are full (the disk
    /// is slower than intake). The record is in memory when this returns; it is durable once
    /// the returned ticket's [`wait`](Ticket::wait) returns.
    pub fn append(&self, record: &[u8]) -> Result<Ticket> {
        self.engine.append(record, None, Room::Wait)
    }

    /// Like [`SpillLog::append`] but fails with [`Error::WouldBlock`] instead of waiting for
    /// the flusher to free a buffer; nothing is appended then.
    pub fn try_append(&self, record: &[u8]) -> Result<Ticket> {
        self.engine.append(record, None, Room::Fail)
    }

    /// Appends to the slice `key % slices`, never falling over to another one: records with the
    /// same key keep their append order on disk and in replay, and become durable in that order.
    pub fn append_keyed(&self, key: u64, record: &[u8]) -> Result<Ticket> {
        self.engine.append(record, Some(key), Room::Wait)
    }

    /// The non-blocking form of [`SpillLog::append_keyed`].
    pub fn try_append_keyed(&self, key: u64, record: &[u8]) -> Result<Ticket> {
        self.engine.append(record, Some(key), Room::Fail)
    }

    /// The poll form of [`SpillLog::append`], for async code: where `append` would wait for the
    /// flusher to free a buffer, this registers `cx`'s waker — woken when a buffer comes back or
    /// the log shuts — and returns `Poll::Pending`, with nothing appended: poll again with the
    /// same record. It never blocks the thread on I/O. (With [`Config::flush_thread`] off, the
    /// caller is the flusher: it flushes on its own thread, as `append` does.)
    pub fn poll_append(&self, cx: &mut Context<'_>, record: &[u8]) -> Poll<Result<Ticket>> {
        self.engine.poll_append(cx, record, None)
    }

    /// The poll form of [`SpillLog::append_keyed`]; see [`SpillLog::poll_append`].
    pub fn poll_append_keyed(
        &self,
        cx: &mut Context<'_>,
        key: u64,
        record: &[u8],
    ) -> Poll<Result<Ticket>> {
        self.engine.poll_append(cx, record, Some(key))
    }

    /// [`SpillLog::append`] for async code: waits for room without blocking the thread. The
    /// record is in memory when this resolves; `ticket.await` then waits until it is durable.
    pub async fn append_async(&self, record: &[u8]) -> Result<Ticket> {
        std::future::poll_fn(|cx| self.poll_append(cx, record)).await
    }

    /// [`SpillLog::append_keyed`] for async code: waits for room without blocking the thread.
    pub async fn append_keyed_async(&self, key: u64, record: &[u8]) -> Result<Ticket> {
        std::future::poll_fn(|cx| self.poll_append_keyed(cx, key, record)).await
    }

    /// Makes every record appended before this call durable, then returns.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush_all()
    }

    /// A reader over the records not yet replayed, from the checkpoint on. One at a time.
    pub fn replay(&self) -> Result<crate::Replay> {
        crate::replay::Replay::open(Arc::clone(&self.engine))
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &Config {
        &self.engine.config
    }

    /// Counters for monitoring.
    pub fn stats(&self) -> Stats {
        let pending = self
            .engine
            .slices
            .iter()
            .filter(|s| s.buffer.pending().is_some())
            .count();
        let table = lock(&self.engine.segments);
        Stats {
            next_id: RecordId(self.engine.next_id.load(Ordering::Relaxed)),
            slices_with_pending: pending,
            segments: table.entries.len(),
            failed: self.engine.signals.failure.get().is_some(),
        }
    }

    /// Flushes everything appended, stops the flusher and releases the directory. Appends
    /// racing with `close` either fail with [`Error::Closed`] or are flushed before it returns.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let engine = &self.engine;
        engine.signals.closed.store(true, Ordering::SeqCst);
        for s in engine.slices.iter() {
            s.buffer.shut();
        }
        if let Some(handle) = self.thread.take() {
            lock(&engine.signals.bell).shutdown = true;
            engine.signals.ring.notify_all();
            if handle.join().is_err() {
                engine.fail(Error::io(
                    "flush",
                    e_path(engine),
                    std::io::Error::other("the flusher thread panicked"),
                ));
            }
        } else {
            while engine.signals.failure.get().is_none() {
                match engine.flush_round() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
        }
        if engine.signals.failure.get().is_some() {
            let mut fl = lock(&engine.flusher);
            if fl.cut_pending {
                engine.cut_unsynced(&mut fl);
            }
        }
        let mut scratch = Vec::new();
        for s in engine.slices.iter() {
            s.wake_upto(u64::MAX, &mut scratch);
        }
        match engine.signals.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for SpillLog {
    fn drop(&mut self) {
        if !self.engine.signals.closed.load(Ordering::SeqCst)
            && let Err(e) = self.shutdown()
        {
            tracing::error!(error = %e, "closing the spill log on drop failed");
        }
    }
}

/// A snapshot of a log's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Ids below this one have been handed out (slices reserve them in blocks).
    pub next_id: RecordId,
    /// Slices holding records not yet taken by the flusher.
    pub slices_with_pending: usize,
    /// Segment files in the directory.
    pub segments: usize,
    /// Whether a flush failed (the log then refuses appends).
    pub failed: bool,
}

fn e_path(engine: &Engine) -> std::path::PathBuf {
    engine.storage.path_of("")
}

fn flusher_thread(engine: &Arc<Engine>) {
    let signals = &engine.signals;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        loop {
            let shutdown = {
                let mut bell = lock(&signals.bell);
                loop {
                    if bell.shutdown || bell.urgent {
                        break;
                    }
                    match bell.data_since {
                        Some(since) => {
                            let due = since + signals.linger;
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            bell = signals
                                .ring
                                .wait_timeout(bell, due - now)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        None => {
                            bell = signals
                                .ring
                                .wait(bell)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
                bell.urgent = false;
                bell.data_since = None;
                bell.shutdown
            };
            if engine.flush_round().is_err() {
                return;
            }
            if shutdown {
                while let Ok(true) = engine.flush_round() {}
                return;
            }
            engine.rearm();
        }
    }));
    if outcome.is_err() {
        engine.fail(Error::io(
            "flush",
            e_path(engine),
            std::io::Error::other("the flusher thread panicked"),
        ));
    }
}

/// What an append does when its slice's two buffers are both full.
#[derive(Clone, Copy)]
enum Room<'a> {
    /// Wait for the flusher to give one back (or, without a flusher thread, flush).
    Wait,
    /// Fail with [`Error::WouldBlock`].
    Fail,
    /// Register the waker and fail with [`Error::WouldBlock`] (the poll form).
    Register(&'a Waker),
}

impl Engine {
    fn poll_append(
        &self,
        cx: &mut Context<'_>,
        record: &[u8],
        key: Option<u64>,
    ) -> Poll<Result<Ticket>> {
        // Without a flusher thread, the caller flushes (as every other call does then).
        let room = if self.signals.flush_thread {
            Room::Register(cx.waker())
        } else {
            Room::Wait
        };
        match self.append(record, key, room) {
            Err(Error::WouldBlock) => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    fn append(&self, record: &[u8], key: Option<u64>, room: Room<'_>) -> Result<Ticket> {
        let len = record.len();
        if len == 0 {
            return Err(Error::EmptyRecord);
        }
        let max = self.config.max_record_len();
        if len > max {
            return Err(Error::RecordTooLarge { len, max });
        }
        let crc = payload_crc(record);
        let frame = RECORD_HEADER_LEN + len;
        let n = self.slices.len();
        let next_id = &self.next_id;
        let push = |i: usize, mode: PushMode, waker: Option<&Waker>| {
            let slice = &self.slices[i];
            slice.buffer.push_inner(frame, mode, waker, |out| {
                let id = slice.take_id(next_id);
                encode_record(out, record, crc, id, slice.index);
                (id, id)
            })
        };
        let block = matches!(room, Room::Wait);
        // With a flusher thread, a blocking append waits for it; without one, it flushes itself.
        let wait_mode = if block && self.signals.flush_thread {
            PushMode::Block
        } else {
            PushMode::Try
        };
        let waker = match room {
            Room::Register(w) => Some(w),
            Room::Wait | Room::Fail => None,
        };
        let (i, pushed) = loop {
            let attempt = match key {
                Some(k) => {
                    let i = (k % n as u64) as usize;
                    (i, push(i, wait_mode, waker))
                }
                None => {
                    let home = home_slice(n);
                    let mut found = None;
                    for step in 0..n {
                        let i = (home + step) % n;
                        match push(i, PushMode::Uncontended, None) {
                            Err(PushError::Contended | PushError::Full) => {}
                            other => {
                                if step > 0 {
                                    set_home(i);
                                }
                                found = Some((i, other));
                                break;
                            }
                        }
                    }
                    found.unwrap_or_else(|| (home, push(home, wait_mode, waker)))
                }
            };
            match attempt {
                (i, Ok(p)) => break (i, p),
                (_, Err(PushError::Full)) if block && !self.signals.flush_thread => {
                    self.flush_round()?;
                }
                (_, Err(PushError::Full | PushError::Contended)) => return Err(Error::WouldBlock),
                (_, Err(PushError::Shut)) => return Err(self.signals.refusal()),
                (_, Err(PushError::TooLarge { len, .. })) => {
                    return Err(Error::RecordTooLarge { len, max });
                }
                // `take_id` hands out ids under the slice lock from blocks reserved in
                // increasing order, so a slice's ids only ever increase.
                (_, Err(PushError::TagNotIncreasing { tag, last })) => {
                    unreachable!("slice record id {tag} after {last}")
                }
            }
        };
        if pushed.sealed {
            self.signals.urgent();
        } else if pushed.first_in_buffer {
            self.signals.data();
        }
        Ok(Ticket {
            slice: Arc::clone(&self.slices[i]),
            id: pushed.value,
        })
    }

    fn flush_all(&self) -> Result<()> {
        let targets: Vec<(usize, u64)> = self
            .slices
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.buffer.last_tag()))
            .filter(|&(_, t)| t > 0)
            .collect();
        for (i, id) in targets {
            let slice = Arc::clone(&self.slices[i]);
            if slice.check(id).is_none() {
                slice.demanded.fetch_max(id, Ordering::AcqRel);
                self.signals.urgent();
            }
            Ticket { slice, id }.wait()?;
        }
        Ok(())
    }

    /// After a round: a round takes at most one buffer per slice, so a slice may still hold
    /// records. Ask for another round at once if someone waits for them (or a buffer is sealed),
    /// otherwise when the linger time is up.
    fn rearm(&self) {
        let mut urgent = false;
        let mut data = false;
        for s in self.slices.iter() {
            if let Some(sealed) = s.buffer.pending() {
                if sealed || s.demanded.load(Ordering::Acquire) > s.durable.load(Ordering::Acquire)
                {
                    urgent = true;
                    break;
                }
                data = true;
            }
        }
        if urgent || data {
            let mut bell = lock(&self.signals.bell);
            bell.urgent |= urgent;
            if data {
                bell.data_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Records the first failure, refuses further appends and wakes everyone.
    pub(crate) fn fail(&self, e: Error) {
        tracing::error!(error = %e, "spill log flush failed; the log refuses further records");
        let _ = self.signals.failure.set(e);
        for s in self.slices.iter() {
            s.buffer.shut();
        }
        let mut scratch = Vec::new();
        for s in self.slices.iter() {
            s.wake_upto(u64::MAX, &mut scratch);
        }
        lock(&self.signals.bell).shutdown = true;
        self.signals.ring.notify_all();
    }

    /// One group commit: take every slice's pending buffer, write them as one group, sync,
    /// then publish durability and give the buffers back. `Ok(false)` if there was nothing.
    pub(crate) fn flush_round(&self) -> Result<bool> {
        let mut guard = lock(&self.flusher);
        if let Some(e) = self.signals.failure.get() {
            return Err(e.clone());
        }
        let fl = &mut *guard;
        for (i, s) in self.slices.iter().enumerate() {
            if let Some(b) = s.buffer.take() {
                fl.taken.push((i, b));
            }
        }
        if fl.taken.is_empty() {
            return Ok(false);
        }
        let mut woken = std::mem::take(&mut fl.wake);
        let outcome = self.write_group(fl);
        match &outcome {
            Ok(()) => {
                // Readers see a segment once its first group is durable (with direct I/O that
                // group carries the segment header too).
                if let Some(a) = fl.active.as_ref() {
                    lock(&self.segments)
                        .entries
                        .entry(a.id)
                        .or_insert(SegmentEntry {
                            end: a.pos,
                            sealed: false,
                        })
                        .end = a.pos;
                }
                for (i, batch) in fl.taken.drain(..) {
                    let slice = &self.slices[i];
                    let last = batch.last_tag();
                    slice.durable.fetch_max(last, Ordering::AcqRel);
                    slice.buffer.restore(batch);
                    slice.collect_waiters(last, &mut woken);
                }
            }
            Err(e) => {
                for (i, batch) in fl.taken.drain(..) {
                    self.slices[i].buffer.restore(batch);
                }
                // Refuse every later round before the flusher's lock is released: nothing is
                // ever written after the cut.
                let _ = self.signals.failure.set(e.clone());
                fl.cut_pending = true;
                self.cut_unsynced(fl);
            }
        }
        // Wake outside the flusher's lock: a waker may run code that calls back into the log.
        drop(guard);
        match outcome {
            Ok(()) => {
                for w in woken.drain(..) {
                    w.wake();
                }
                // Keep the (now empty) vector's capacity for the next round.
                let mut guard = lock(&self.flusher);
                if guard.wake.capacity() < woken.capacity() {
                    guard.wake = woken;
                }
                Ok(true)
            }
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// After a failed write or sync: removes a segment whose creation did not complete and cuts
    /// the active segment back to the end of its last synced group, then syncs that. A reopen
    /// of the directory must not build on bytes that were written but never synced: after a
    /// failed `fsync` the kernel may still show them (the page cache keeps them, marked clean)
    /// although they never reached the disk, so recovery would keep them, the next log would
    /// continue after them, and a power loss would later leave a gap that reads as corruption.
    /// Only records that were never reported durable are cut. If the cut fails too, it is
    /// tried again when the log is closed.
    fn cut_unsynced(&self, fl: &mut Flusher) {
        match self.try_cut(fl) {
            Ok(()) => fl.cut_pending = false,
            Err(e) => tracing::error!(
                error = %e,
                "cannot cut what the failed spill log wrote but never synced; \
                 retried when the log is closed"
            ),
        }
    }

    fn try_cut(&self, fl: &mut Flusher) -> Result<()> {
        let dir = || self.storage.path_of("");
        let mut removed = false;
        if let Some(name) = fl.creating.clone() {
            match self.storage.remove(&name) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", self.storage.path_of(&name), e)),
            }
            fl.creating = None;
        }
        if let Some(a) = fl.active.as_ref().filter(|a| a.pos == 0) {
            // Direct I/O, header not yet written: the file holds nothing synced.
            match self.storage.remove(&a.name) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", self.storage.path_of(&a.name), e)),
            }
            fl.active = None;
        }
        if removed {
            self.storage
                .sync_dir()
                .map_err(|e| Error::io("fsync directory", dir(), e))?;
        }
        if let Some(a) = fl.active.as_ref() {
            let path = || self.storage.path_of(&a.name);
            a.file
                .set_len(a.pos)
                .map_err(|e| Error::io("truncate", path(), e))?;
            a.file
                .sync_all()
                .map_err(|e| Error::io("fsync", path(), e))?;
        }
        Ok(())
    }

    fn write_group(&self, fl: &mut Flusher) -> Result<()> {
        let body: u64 = fl.taken.iter().map(|(_, b)| b.bytes().len() as u64).sum();
        let records: u32 = fl.taken.iter().map(|(_, b)| b.frames()).sum();
        let mut group = GroupHeader {
            seq: fl.next_group,
            body_len: body as u32,
            records,
        };
        let rotate = match &fl.active {
            None => true,
            Some(a) => {
                a.pos > SEGMENT_HEADER_LEN as u64 && a.pos + group.span() > self.config.segment_size
            }
        };
        if rotate {
            self.rotate(fl)?;
        }
        group.seq = fl.next_group;
        let active = fl.active.as_mut().expect("rotate leaves an active segment");
        let path = || self.storage.path_of(&active.name);
        let written = match (&mut fl.staging, active.direct) {
            (Some(staging), true) => {
                // One aligned write: [segment header,] group header, batches, zeros to a block.
                staging.clear();
                if let Some(h) = active.pending_header.take() {
                    staging.push(&h);
                }
                let group_at = staging.len();
                staging.push(&[0; format::GROUP_HEADER_LEN]);
                for (_, b) in &fl.taken {
                    staging.push(b.bytes());
                }
                let padded = staging.pad_to_block();
                group.body_len = (padded - group_at - format::GROUP_HEADER_LEN) as u32;
                staging.put(group_at, &group.encode(active.salt));
                active
                    .file
                    .write_all_at(staging.bytes(), active.pos)
                    .map_err(|e| Error::io("write", path(), e))?;
                padded as u64
            }
            _ => {
                let header = group.encode(active.salt);
                active
                    .file
                    .write_all_at(&header, active.pos)
                    .map_err(|e| Error::io("write", path(), e))?;
                let mut at = active.pos + format::GROUP_HEADER_LEN as u64;
                for (_, b) in &fl.taken {
                    active
                        .file
                        .write_all_at(b.bytes(), at)
                        .map_err(|e| Error::io("write", path(), e))?;
                    at += b.bytes().len() as u64;
                }
                group.span()
            }
        };
        active
            .file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", path(), e))?;
        active.pos += written;
        fl.next_group += 1;
        metrics::counter!("spill_log_groups_total").increment(1);
        metrics::counter!("spill_log_records_total").increment(u64::from(records));
        metrics::counter!("spill_log_bytes_total").increment(written);
        Ok(())
    }

    /// Seals the active segment (already synced) and starts the next one: create,
    /// preallocate, write and sync its header, sync the directory. With direct I/O the header
    /// goes out with the first group instead (a direct write must be a whole block); until that
    /// group is synced the file reads as zeros, which recovery takes for an interrupted creation.
    fn rotate(&self, fl: &mut Flusher) -> Result<()> {
        if let Some(old) = fl.active.take()
            && let Some(entry) = lock(&self.segments).entries.get_mut(&old.id)
        {
            entry.sealed = true;
        }
        let id = fl.next_segment;
        let name = format::segment_name(id);
        let path = self.storage.path_of(&name);
        let create = |e| Error::io("create", &path, e);
        let direct = if self.config.direct_io {
            self.storage.create_direct(&name).map_err(create)?
        } else {
            None
        };
        let (file, direct) = match direct {
            Some(file) => (file, true),
            None => (self.storage.create(&name).map_err(create)?, false),
        };
        fl.next_segment += 1;
        fl.creating = Some(name.clone());
        if self.config.preallocate {
            file.preallocate(self.config.segment_size)
                .map_err(|e| Error::io("fallocate", &path, e))?;
        }
        let header = SegmentHeader {
            segment: id,
            first_group: fl.next_group,
            next_id: self.next_id.load(Ordering::Relaxed),
            salt: format::random_salt(),
        };
        let (pos, pending_header) = if direct {
            (0, Some(header.encode()))
        } else {
            file.write_all_at(&header.encode(), 0)
                .map_err(|e| Error::io("write", &path, e))?;
            (SEGMENT_HEADER_LEN as u64, None)
        };
        file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
        self.storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", self.storage.path_of(""), e))?;
        fl.creating = None;
        fl.active = Some(ActiveSegment {
            id,
            name,
            file,
            salt: header.salt,
            pos,
            direct,
            pending_header,
        });
        Ok(())
    }
}

/// The direct-I/O staging buffer: block-aligned memory inside a larger allocation (no
/// `unsafe`: the aligned window is found with `align_offset`).
struct Staging {
    memory: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staging {
    fn new(capacity: usize) -> Self {
        let memory = vec![0u8; capacity + DIRECT_ALIGN];
        let start = memory.as_ptr().align_offset(DIRECT_ALIGN);
        Staging {
            memory,
            start,
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn put(&mut self, offset: usize, bytes: &[u8]) {
        let at = self.start + offset;
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Zeros up to the next block boundary; returns the padded length.
    fn pad_to_block(&mut self) -> usize {
        let padded = self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        self.memory[self.start + self.len..self.start + padded].fill(0);
        self.len = padded;
        padded
    }

    fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn slice() -> Slice {
        Slice {
            index: 0,
            buffer: DoubleBuffer::new(4096),
            durable: AtomicU64::new(0),
            demanded: AtomicU64::new(0),
            id_next: AtomicU64::new(0),
            id_end: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            signals: Arc::new(Signals {
                bell: Mutex::new(Bell::default()),
                ring: Condvar::new(),
                failure: OnceLock::new(),
                closed: AtomicBool::new(false),
                flush_thread: true,
                linger: Duration::from_millis(1),
            }),
            engine: OnceLock::new(),
        }
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<SpillLog>();
        send_sync::<Ticket>();
        send::<Durable>();
        send::<crate::Replay>();
    }

    #[test]
    fn a_flush_wakes_only_the_waiters_it_covered() {
        let s = slice();
        let counters: Vec<Arc<Counter>> = (0..3)
            .map(|_| Arc::new(Counter(AtomicUsize::new(0))))
            .collect();
        for (c, id) in counters.iter().zip([3, 7, 10]) {
            let waker = Waker::from(Arc::clone(c));
            let mut registered = None;
            assert!(
                s.poll_durable(id, &mut Context::from_waker(&waker), &mut registered)
                    .is_pending()
            );
        }
        assert!(lock(&s.signals.bell).urgent, "a waiter asks for a flush");
        assert_eq!(s.demanded.load(Ordering::SeqCst), 10);
        // The flusher made records up to 7 durable.
        s.durable.store(7, Ordering::SeqCst);
        s.wake_upto(7, &mut Vec::new());
        let woken: Vec<usize> = counters
            .iter()
            .map(|c| c.0.load(Ordering::SeqCst))
            .collect();
        assert_eq!(woken, [1, 1, 0]);
        assert_eq!(lock(&s.waiters).len(), 1);
        let waker = Waker::from(Arc::clone(&counters[0]));
        assert!(
            s.poll_durable(3, &mut Context::from_waker(&waker), &mut None)
                .is_ready()
        );
    }

    #[test]
    fn repolling_with_the_same_waker_registers_once() {
        let s = slice();
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&c));
        let mut registered = None;
        for _ in 0..5 {
            assert!(
                s.poll_durable(4, &mut Context::from_waker(&waker), &mut registered)
                    .is_pending()
            );
        }
        assert_eq!(lock(&s.waiters).len(), 1);
    }

    #[test]
    fn a_failure_reaches_waiters_but_not_records_already_durable() {
        let s = slice();
        s.durable.store(5, Ordering::SeqCst);
        let _ = s
            .signals
            .failure
            .set(Error::io("fdatasync", "x", std::io::Error::other("boom")));
        assert!(matches!(s.check(5), Some(Ok(()))));
        assert!(matches!(s.check(6), Some(Err(Error::Io { .. }))));
    }

    // DoubleBuffer on its own (see the note in buffer.rs).

    /// Pushes a `len`-byte frame that `fill` fills (or leaves as given) with tag `tag`.
    fn push(
        db: &DoubleBuffer,
        len: usize,
        fill: Option<u8>,
        tag: u64,
    ) -> std::result::Result<(), PushError> {
        db.push(len, PushMode::Try, |frame| {
            assert_eq!(frame.len(), len);
            assert!(frame.iter().all(|&b| b == 0), "a frame starts zeroed");
            if let Some(b) = fill {
                frame.fill(b);
            }
            (tag, ())
        })
        .map(|p| p.value)
    }

    #[test]
    fn a_frame_is_exactly_len_bytes_and_cannot_touch_its_neighbours() {
        let db = DoubleBuffer::new(8);
        push(&db, 3, Some(7), 1).unwrap();
        // A closure that writes nothing still gets its `len` bytes (zeros), not fewer.
        push(&db, 2, None, 2).unwrap();
        let batch = db.take().unwrap();
        assert_eq!(batch.bytes(), [7, 7, 7, 0, 0]);
        assert_eq!((batch.frames(), batch.last_tag()), (2, 2));
    }

    #[test]
    fn poll_push_registers_once_and_is_woken_by_restore_and_by_shut() {
        let db = DoubleBuffer::new(4);
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&c));
        let mut cx = Context::from_waker(&waker);
        let mut poll = |tag: u64| {
            db.poll_push(&mut cx, 4, |f| {
                f.fill(tag as u8);
                (tag, ())
            })
        };
        assert!(matches!(poll(1), Poll::Ready(Ok(_))));
        assert!(matches!(poll(2), Poll::Ready(Ok(p)) if p.sealed));
        // Both buffers full: pending, the closure not run, the waker kept once.
        assert!(poll(3).is_pending());
        assert!(poll(3).is_pending());
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
        let batch = db.take().unwrap();
        assert_eq!((batch.bytes(), batch.last_tag()), (&[1u8; 4][..], 1));
        db.restore(batch);
        assert_eq!(c.0.load(Ordering::SeqCst), 1, "woken once by the restore");
        assert!(matches!(poll(3), Poll::Ready(Ok(_))));
        assert!(poll(4).is_pending());
        db.shut();
        assert_eq!(c.0.load(Ordering::SeqCst), 2, "woken by the shut");
        assert!(matches!(poll(4), Poll::Ready(Err(PushError::Shut))));
    }

    #[test]
    fn a_tag_that_does_not_increase_is_an_error_and_the_frame_is_taken_back() {
        let db = DoubleBuffer::new(8);
        push(&db, 2, Some(1), 5).unwrap();
        assert_eq!(
            push(&db, 2, Some(2), 5),
            Err(PushError::TagNotIncreasing { tag: 5, last: 5 })
        );
        push(&db, 2, Some(3), 6).unwrap();
        let batch = db.take().unwrap();
        assert_eq!(batch.bytes(), [1, 1, 3, 3]);
        assert_eq!((batch.frames(), batch.last_tag()), (2, 6));
    }
}
