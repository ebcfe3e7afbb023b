//! The broker-independent publishing engine: in-flight window, confirm
//! tracking, spill on failure, reconnect with backoff, replay with
//! checkpoints, and the `Healthy → Degraded → Recovering → Healthy` state
//! machine.
//!
//! One actor task owns all the state; handles talk to it over a bounded
//! channel. A broker is plugged in through [`Transport`] (connect) and
//! [`Link`] (send one message, report connection events): RabbitMQ and
//! Kafka differ only there.
//!
//! # No blocking on the runtime's threads
//!
//! The actor never waits on the disk. Spill appends use the log's poll
//! form: when its buffers are all being written, the record waits in
//! `spill_queue` (in order, bounded by the window plus `spill_window`) and
//! the log wakes the actor when there is room. Their durability is awaited
//! as futures (`SpillFront`). The replay reader's file reads and checkpoint
//! fsyncs run as jobs on tokio's blocking pool, one at a time (`ReplayIo`):
//! a job reads a batch ahead while the actor publishes the previous one.
//!
//! # Confirm tracking
//!
//! Every message in flight owns one future that resolves to the broker's
//! verdict. The actor does not poll them all on every wake-up: each future
//! gets its own waker which, when the broker's answer arrives, pushes the
//! future's sequence number onto a FIFO ready queue. The actor drains that
//! queue *completely* before it acts on any verdict. This matters for
//! RabbitMQ: lapin hands an unroutable message's `basic.return` to whichever
//! confirmation completes first after it, which may belong to a different
//! message (a `multiple` ack completes many at once, in hash order). Because
//! the carrier completes before the returned message's own ack, and wakers
//! run synchronously in completion order, the carrier is always in the
//! queue by the time the returned message's verdict is seen; draining to
//! the end and applying returns before acks therefore never reports a
//! returned message as confirmed.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result, SpillError, invalid};
use crate::message::{Message, Receipt, SpillReason, record};
use crate::spill::{Durable, Spill, SpillPos, SpillReader};
use crate::state::{Counters, PublisherState, Stats, bump};

/// The broker's verdict on one message.
#[derive(Debug)]
pub(crate) enum SendOutcome {
    /// Confirmed. `returned` lists the ids of messages the broker returned
    /// as unroutable whose return this confirmation happened to carry.
    Ack { returned: Vec<Arc<str>> },
    /// Refused by the broker.
    Nack { returned: Vec<Arc<str>> },
    /// Refused for what it is (Kafka: too large, invalid): sending it again
    /// as it is cannot succeed.
    Rejected { error: String },
    /// The channel, connection or client failed; the link is suspect.
    Failed { error: String },
}

/// The future a [`Link`] returns for one message.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = SendOutcome> + Send>>;

/// Something that happened to a link outside any one message.
#[derive(Debug)]
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))] // Kafka reports none
pub(crate) enum LinkEvent {
    /// The broker stopped reading (`connection.blocked`).
    Blocked(String),
    /// The broker reads again.
    Unblocked,
    /// The connection is gone.
    Lost(String),
}

/// A live connection to a broker, ready to publish.
pub(crate) trait Link: Send {
    /// Starts publishing `msg`. Messages must hit the wire in the order of
    /// calls once the returned future has been polled once (the engine polls
    /// each future right away, in order).
    fn send(&mut self, msg: &Message) -> SendFuture;

    /// The next connection event, if any.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>>;

    /// False once the link can no longer publish.
    fn is_alive(&self) -> bool;

    /// Closes the link without waiting (a blackholed peer never answers).
    fn close(self: Box<Self>);
}

/// What [`Transport::connect`] returns.
pub(crate) type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Link>, String>> + Send>>;

/// A way to (re)establish a [`Link`]: connect, open, declare the topology.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Connects; the error is rendered for logs.
    fn connect(&self) -> ConnectFuture;

    /// `rabbitmq` or `kafka`, for logs and metric labels.
    fn name(&self) -> &'static str;
}

/// Knobs shared by every backend.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) window: usize,
    pub(crate) confirm_timeout: Duration,
    pub(crate) backoff: BackoffConfig,
    pub(crate) checkpoint_every: usize,
    pub(crate) spill_window: usize,
    pub(crate) max_payload: usize,
    pub(crate) recovery_intake: f64,
}

impl EngineConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.window == 0 || self.window > 1 << 20 {
            return Err(invalid("window", self.window, "must be in 1..=1048576"));
        }
        // Bounded above too: deadlines are `now + confirm_timeout`.
        if self.confirm_timeout < Duration::from_millis(1)
            || self.confirm_timeout > Duration::from_secs(3600)
        {
            return Err(invalid(
                "confirm_timeout",
                self.confirm_timeout,
                "must be between 1 ms and 1 h",
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(invalid(
                "checkpoint_every",
                self.checkpoint_every,
                "must be positive",
            ));
        }
        if self.spill_window == 0 || self.spill_window > 1 << 20 {
            return Err(invalid(
                "spill_window",
                self.spill_window,
                "must be in 1..=1048576",
            ));
        }
        if !(0.0..1.0).contains(&self.recovery_intake) {
            return Err(invalid(
                "recovery_intake",
                self.recovery_intake,
                "must be in [0, 1): below 1 the backlog shrinks",
            ));
        }
        if self.max_payload == 0 {
            return Err(invalid("max_payload", self.max_payload, "must be positive"));
        }
        self.backoff.validate()
    }
}

/// A message handed to the actor (bounded channel: backpressure).
struct Publish {
    msg: Message,
    reply: Reply,
}

/// What a [`PendingReceipt`] receives: the receipt, and the message itself.
type Answer = (Result<Receipt>, Message);

/// Where one message's receipt goes.
///
/// The message rides back with its receipt and is dropped by whoever awaits
/// the receipt — normally the task that built it. The actor could drop it
/// itself, but freeing memory on a thread other than the one that allocated
/// it serialises both threads on the allocator's lock (glibc's malloc: the
/// producer's arena); on the spill path that cost about a third of the
/// actor's time and halved `publish_bench`'s (d). Holding the message until
/// its receipt costs no copy: the actor holds it until the verdict anyway
/// (in flight), or for the few milliseconds a spill takes to be fsynced.
struct Reply(oneshot::Sender<Answer>);

impl Reply {
    fn send(self, result: Result<Receipt>, msg: Message) {
        // The caller may have dropped its receipt: nothing to tell then.
        let _ = self.0.send((result, msg));
    }
}

/// Requests that must get through even while intake is held back.
enum Control {
    Flush { reply: oneshot::Sender<Result<()>> },
    Close { reply: oneshot::Sender<()> },
}

/// A cheap, cloneable handle on a running engine.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    tx: mpsc::Sender<Publish>,
    ctl: mpsc::UnboundedSender<Control>,
    state: watch::Receiver<PublisherState>,
    counters: Arc<Counters>,
    max_payload: usize,
    what: &'static str,
}

/// The methods every publisher type (RabbitMQ, Kafka) shares, delegating
/// to its `engine` field.
macro_rules! publisher_api {
    () => {
        /// Publishes `msg` and waits until the broker confirmed it or it was
        /// durably spilled. An `Err` means it was not acknowledged at all
        /// (bad input, spill log failure, closed publisher).
        pub async fn publish(&self, msg: $crate::Message) -> $crate::Result<$crate::Receipt> {
            self.submit(msg).await?.await
        }

        /// Hands `msg` over, waiting only for room in the window; the
        /// returned future resolves like `publish`. Lets one task keep many
        /// messages in flight, in order.
        pub async fn submit(&self, msg: $crate::Message) -> $crate::Result<$crate::PendingReceipt> {
            self.engine.submit(msg).await
        }

        /// Waits until every message submitted before is confirmed by the
        /// broker — spilled ones included, after their replay — and the
        /// spill log is empty. Waits as long as the broker is away.
        pub async fn flush(&self) -> $crate::Result<()> {
            self.engine.flush().await
        }

        /// The current state, as a watch: `borrow()` it, or `changed()` /
        /// `wait_for` a transition.
        pub fn state(&self) -> tokio::sync::watch::Receiver<$crate::PublisherState> {
            self.engine.state()
        }

        /// Counters since start.
        pub fn stats(&self) -> $crate::Stats {
            self.engine.stats()
        }

        /// Stops taking new messages (`submit` then fails with
        /// [`Error::Closed`](crate::Error::Closed)), publishes or spills those
        /// already handed over, waits for the verdicts of those in flight
        /// (spilling any that fail or time out), persists the replay
        /// checkpoint, closes the connection and the spill log: once it
        /// returns, another publisher may open the spill directory.
        pub async fn close(&self) {
            self.engine.close().await;
        }
    };
}
pub(crate) use publisher_api;

/// Resolves to the receipt of one submitted message.
///
/// The publisher keeps the message until its verdict and hands it back
/// with the receipt, so its memory is freed where this resolves — usually
/// the thread that built it, which is cheaper for the allocator than a
/// free on the publisher's thread.
#[must_use = "the message is acknowledged only when this resolves to Ok"]
#[derive(Debug)]
pub struct PendingReceipt {
    rx: oneshot::Receiver<Answer>,
    what: &'static str,
}

impl Future for PendingReceipt {
    type Output = Result<Receipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        // The message that came back is dropped here (see `Reply`).
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_or(Err(Error::Closed(what)), |(result, _msg)| result))
    }
}

impl Engine {
    /// Opens the disk spill log of `spill` (recovering it) and starts the
    /// actor over `transport`.
    pub(crate) fn open(
        cfg: EngineConfig,
        spill: &crate::spill::SpillConfig,
        transport: impl Transport,
        what: &'static str,
    ) -> Result<Engine> {
        cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime(what));
        }
        let spill = crate::spill::DiskSpill::open(spill)?;
        Engine::start(cfg, Arc::new(transport), Arc::new(spill), what)
    }

    /// Starts the actor on the current tokio runtime.
    pub(crate) fn start(
        cfg: EngineConfig,
        transport: Arc<dyn Transport>,
        spill: Arc<dyn Spill>,
        what: &'static str,
    ) -> Result<Engine> {
        cfg.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime(what))?;
        let (tx, rx) = mpsc::channel(cfg.window.max(cfg.spill_window).min(65_536));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(PublisherState::Degraded);
        let counters = Counters::shared();
        let max_payload = cfg.max_payload;
        let actor = Actor::new(
            cfg,
            transport,
            spill,
            rx,
            ctl_rx,
            state_tx,
            Arc::clone(&counters),
        );
        runtime.spawn(actor.run());
        Ok(Engine {
            tx,
            ctl,
            state,
            counters,
            max_payload,
            what,
        })
    }

    pub(crate) async fn submit(&self, msg: Message) -> Result<PendingReceipt> {
        msg.validate(self.max_payload)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Publish {
                msg,
                reply: Reply(reply),
            })
            .await
            .map_err(|_| Error::Closed(self.what))?;
        Ok(PendingReceipt {
            rx,
            what: self.what,
        })
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Control::Flush { reply })
            .map_err(|_| Error::Closed(self.what))?;
        rx.await.unwrap_or(Err(Error::Closed(self.what)))
    }

    pub(crate) async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.ctl.send(Control::Close { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn state(&self) -> watch::Receiver<PublisherState> {
        self.state.clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

/// The actor's metrics, registered once (per-message macro lookups cost
/// more than the rest of the spill path). Install the metrics recorder
/// before starting a publisher.
struct Metrics {
    confirms: metrics::Counter,
    replayed: metrics::Counter,
    nacks: metrics::Counter,
    returns: metrics::Counter,
    timeouts: metrics::Counter,
    corrupt: metrics::Counter,
    /// Indexed by `SpillReason::index`.
    spilled: Vec<metrics::Counter>,
    state: metrics::Gauge,
    inflight: metrics::Gauge,
}

impl Metrics {
    fn new(backend: &'static str) -> Metrics {
        Metrics {
            confirms: metrics::counter!("mq_reliable_confirms_total", "backend" => backend),
            replayed: metrics::counter!("mq_reliable_replayed_total", "backend" => backend),
            nacks: metrics::counter!("mq_reliable_nacks_total", "backend" => backend),
            returns: metrics::counter!("mq_reliable_returns_total", "backend" => backend),
            timeouts: metrics::counter!("mq_reliable_confirm_timeouts_total", "backend" => backend),
            corrupt: metrics::counter!("mq_reliable_corrupt_records_total", "backend" => backend),
            spilled: SpillReason::ALL
                .iter()
                .map(|r| {
                    metrics::counter!(
                        "mq_reliable_spilled_total",
                        "backend" => backend,
                        "reason" => r.as_str()
                    )
                })
                .collect(),
            state: metrics::gauge!("mq_reliable_state", "backend" => backend),
            inflight: metrics::gauge!("mq_reliable_inflight", "backend" => backend),
        }
    }
}

/// Commands taken from the channel per wake-up of the actor.
const INTAKE_BATCH: usize = 256;

// ---------------------------------------------------------------------------
// In-flight window with an ordered ready queue.

#[derive(Debug, Default)]
struct ReadyQueue {
    queue: Mutex<VecDeque<u64>>,
    notify: Notify,
}

impl ReadyQueue {
    fn push(&self, seq: u64) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(seq);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<u64> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// Wakes the actor and records *which* message became ready, in order.
struct SlotWaker {
    seq: u64,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.seq);
        }
    }
}

enum Origin {
    Fresh(Reply),
    /// Record `idx` of replay run `run`, at `pos` in the log.
    Replay {
        run: u64,
        idx: u64,
        pos: SpillPos,
    },
}

struct Slot {
    msg: Message,
    origin: Origin,
    deadline: Instant,
    fut: SendFuture,
    flag: Arc<SlotWaker>,
    waker: Waker,
    outcome: Option<SendOutcome>,
    collected: bool,
    returned: bool,
}

struct Finished {
    msg: Message,
    origin: Origin,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Confirmed,
    Failed(SpillReason),
    LinkFailed,
}

#[derive(Default)]
struct InFlight {
    slots: VecDeque<Option<Slot>>,
    base: u64,
    live: usize,
    replay_live: usize,
    ready: Arc<ReadyQueue>,
}

impl InFlight {
    fn insert(&mut self, msg: Message, origin: Origin, fut: SendFuture, deadline: Instant) {
        let seq = self.base + self.slots.len() as u64;
        let flag = Arc::new(SlotWaker {
            seq,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        let waker = Waker::from(Arc::clone(&flag));
        if matches!(origin, Origin::Replay { .. }) {
            self.replay_live += 1;
        }
        let mut slot = Slot {
            msg,
            origin,
            deadline,
            fut,
            flag,
            waker,
            outcome: None,
            collected: false,
            returned: false,
        };
        // The first poll puts the message on the wire (in call order).
        let mut cx = Context::from_waker(&slot.waker);
        if let Poll::Ready(o) = slot.fut.as_mut().poll(&mut cx) {
            slot.outcome = Some(o);
            slot.flag.queued.store(true, Ordering::Release);
            self.ready.push(seq);
        }
        self.slots.push_back(Some(slot));
        self.live += 1;
    }

    /// From the oldest message awaiting its verdict to the newest sent: the
    /// window is a sliding one, so a message is sent only within `window`
    /// of the oldest unconfirmed one. That bounds how far a failed message
    /// can be overtaken, and how far apart two copies of one message are.
    fn span(&self) -> usize {
        self.slots.len()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let off = seq.checked_sub(self.base)?;
        self.slots.get_mut(off as usize)?.as_mut()
    }

    fn remove(&mut self, seq: u64) -> Option<Slot> {
        let off = seq.checked_sub(self.base)?;
        let slot = self.slots.get_mut(off as usize)?.take()?;
        self.live -= 1;
        if matches!(slot.origin, Origin::Replay { .. }) {
            self.replay_live -= 1;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(slot)
    }

    /// Drains the ready queue to the end and returns the verdicts, in
    /// sequence order, with returns applied first (see the module docs).
    fn drain(&mut self, counters: &Counters, metrics: &Metrics) -> Vec<Finished> {
        let mut resolved = Vec::new();
        while let Some(seq) = self.ready.pop() {
            let Some(slot) = self.get_mut(seq) else {
                continue; // finalized already; a late wake
            };
            slot.flag.queued.store(false, Ordering::Release);
            if slot.outcome.is_none() {
                let mut cx = Context::from_waker(&slot.waker);
                if let Poll::Ready(o) = slot.fut.as_mut().poll(&mut cx) {
                    slot.outcome = Some(o);
                }
            }
            if slot.outcome.is_some() && !slot.collected {
                slot.collected = true;
                resolved.push(seq);
            }
        }
        // Returns first: a return may ride on another message's confirm.
        let mut returned_ids: Vec<Arc<str>> = Vec::new();
        for &seq in &resolved {
            if let Some(Slot {
                outcome: Some(SendOutcome::Ack { returned } | SendOutcome::Nack { returned }),
                ..
            }) = self.get_mut(seq)
            {
                returned_ids.append(returned);
            }
        }
        for id in returned_ids {
            bump(&counters.returned);
            metrics.returns.increment(1);
            let mut found = false;
            for slot in self.slots.iter_mut().flatten() {
                if *slot.msg.id() == *id {
                    slot.returned = true;
                    found = true;
                }
            }
            if !found {
                warn!(message_id = %id, "broker returned a message that is no longer in flight");
            }
        }
        resolved.sort_unstable();
        resolved
            .into_iter()
            .filter_map(|seq| {
                let slot = self.remove(seq)?;
                let verdict = match slot.outcome {
                    Some(SendOutcome::Ack { .. }) if slot.returned => {
                        Verdict::Failed(SpillReason::Returned)
                    }
                    Some(SendOutcome::Ack { .. }) => Verdict::Confirmed,
                    Some(SendOutcome::Nack { .. }) => {
                        bump(&counters.nacked);
                        metrics.nacks.increment(1);
                        if slot.returned {
                            Verdict::Failed(SpillReason::Returned)
                        } else {
                            Verdict::Failed(SpillReason::Nacked)
                        }
                    }
                    Some(SendOutcome::Rejected { error }) => {
                        bump(&counters.nacked);
                        metrics.nacks.increment(1);
                        warn!(message_id = %slot.msg.id(), %error, "the broker rejects this message");
                        Verdict::Failed(SpillReason::Rejected)
                    }
                    Some(SendOutcome::Failed { error }) => {
                        debug!(message_id = %slot.msg.id(), %error, "send failed");
                        Verdict::LinkFailed
                    }
                    None => return None,
                };
                Some(Finished {
                    msg: slot.msg,
                    origin: slot.origin,
                    verdict,
                })
            })
            .collect()
    }

    /// The earliest confirm deadline among live slots. Deadlines grow with
    /// the sequence number and the front slot is always live.
    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .front()
            .and_then(|s| s.as_ref())
            .map(|s| s.deadline)
    }

    /// Removes every live slot, in sequence order.
    fn take_all(&mut self) -> Vec<(Message, Origin)> {
        // Later sequence numbers start after the old ones, so a stale wake
        // for a removed slot never matches a new one.
        self.base += self.slots.len() as u64;
        let all: Vec<_> = self
            .slots
            .drain(..)
            .flatten()
            .map(|s| (s.msg, s.origin))
            .collect();
        self.live = 0;
        self.replay_live = 0;
        all
    }
}

// ---------------------------------------------------------------------------
// The actor.

struct ReplayRun {
    id: u64,
    checkpointer: Checkpointer<SpillPos>,
    /// Records read from the log and not yet published, in log order.
    buffered: VecDeque<(SpillPos, Fetched)>,
    /// The last read reached the end of the log and no append became
    /// durable since.
    at_end: bool,
    since_commit: usize,
    started: Instant,
    replayed: u64,
    /// The reader failed after the records in `buffered`: once they are
    /// published and confirmed (and so checkpointed), the run stops with
    /// this error.
    stop: Option<SpillError>,
}

/// A record a reader job fetched, decoded on the blocking pool.
enum Fetched {
    Message(Message),
    /// This build cannot decode it (a newer build's format, say); its bytes
    /// are durably in the quarantine file, so the checkpoint may pass it.
    Quarantined,
}

/// Most records one read job fetches ahead of the window.
const READ_AHEAD: usize = 4096;

/// The spill log's reader. Its reads and checkpoint commits do file I/O
/// (fsyncs), so it is only ever used by a job on tokio's blocking pool, one
/// job at a time; between jobs it rests here.
#[derive(Default)]
struct ReplayIo {
    /// The reader, unless a job has it (or none is open).
    reader: Option<Box<dyn SpillReader>>,
    job: Option<JoinHandle<JobDone>>,
    /// The replay run the reader serves.
    run: u64,
    /// The run ended while a job had the reader: when it returns, commit
    /// this position (if any) and close the reader.
    retire: Option<Option<SpillPos>>,
    /// The running job writes a checkpoint.
    committing: bool,
}

impl ReplayIo {
    /// No reader open and no job running: a new run may open one.
    fn idle(&self) -> bool {
        self.reader.is_none() && self.job.is_none()
    }
}

/// What a reader job does, in this order.
#[derive(Debug, Clone, Copy)]
struct Job {
    run: u64,
    /// `Actor::spill_epoch` when the job started.
    epoch: u64,
    commit: Option<SpillPos>,
    read: usize,
    /// Drop the reader at the end (the run is over).
    close: bool,
}

struct JobDone {
    run: u64,
    epoch: u64,
    /// Back from the job, unless it closed it.
    reader: Option<Box<dyn SpillReader>>,
    committed: Option<Result<SpillPos, SpillError>>,
    records: Vec<(SpillPos, Fetched)>,
    /// The reader reported the end of the log.
    at_end: bool,
    read_error: Option<SpillError>,
}

/// Runs on the blocking pool. A record that does not decode is written to
/// the quarantine first; if that fails, the read stops before it with the
/// error (the replay stops, the record stays in the log).
fn run_job(mut reader: Box<dyn SpillReader>, job: Job) -> JobDone {
    let committed = job.commit.map(|pos| reader.commit(pos).map(|()| pos));
    let mut records = Vec::new();
    let mut at_end = false;
    let mut read_error = None;
    while records.len() < job.read {
        match reader.next() {
            Ok(Some(rec)) => match record::decode(&rec.bytes) {
                Ok(msg) => records.push((rec.pos, Fetched::Message(msg))),
                Err(reason) => match reader.quarantine(&rec) {
                    Ok(path) => {
                        error!(
                            position = %rec.pos,
                            record_id = rec.id,
                            reason,
                            path = %path.display(),
                            "a spill record this build cannot decode was quarantined; the replay \
                             goes on"
                        );
                        records.push((rec.pos, Fetched::Quarantined));
                    }
                    Err(e) => {
                        error!(
                            position = %rec.pos,
                            record_id = rec.id,
                            reason,
                            error = %e,
                            "cannot quarantine a spill record this build cannot decode; the \
                             replay stops before it"
                        );
                        read_error = Some(e);
                        break;
                    }
                },
            },
            Ok(None) => {
                at_end = true;
                break;
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    JobDone {
        run: job.run,
        epoch: job.epoch,
        reader: (!job.close).then_some(reader),
        committed,
        records,
        at_end,
        read_error,
    }
}

/// What happens once a spill append is durable.
enum After {
    /// The publisher gets its receipt (and `msg` back).
    Reply {
        reply: Reply,
        reason: SpillReason,
        msg: Message,
    },
    /// An unroutable replayed record (record `idx` of run `run`) was copied
    /// to the tail of the log: its old copy, at `from`, is done with.
    Moved {
        from: SpillPos,
        run: u64,
        idx: u64,
        msg: Message,
    },
}

impl After {
    /// The message whose record is appended.
    fn msg(&self) -> &Message {
        match self {
            After::Reply { msg, .. } | After::Moved { msg, .. } => msg,
        }
    }
}

/// A record waiting for room in the spill log.
struct Queued {
    record: Vec<u8>,
    after: After,
}

/// Wakes the actor when the spill log has room again.
#[derive(Debug, Default)]
struct RoomWaker(Notify);

impl Wake for RoomWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

struct Actor {
    cfg: EngineConfig,
    transport: Arc<dyn Transport>,
    spill: Arc<dyn Spill>,
    rx: mpsc::Receiver<Publish>,
    rx_open: bool,
    ctl: mpsc::UnboundedReceiver<Control>,
    ctl_open: bool,
    /// New messages the actor may still take while recovering: replay
    /// confirms earn them, so the backlog shrinks even under full load.
    credits: f64,
    state: PublisherState,
    state_tx: watch::Sender<PublisherState>,
    counters: Arc<Counters>,
    metrics: Metrics,
    /// Reused to encode spill records.
    scratch: Vec<u8>,
    /// Records waiting for room in the spill log, in order (appended before
    /// anything spilled after them).
    spill_queue: VecDeque<Queued>,
    room: Arc<RoomWaker>,
    room_waker: Waker,
    /// Counts appends that became durable: a read that reached the end of
    /// the log while one did may have missed it.
    spill_epoch: u64,
    /// Old copies of records moved to the tail of the log (skipped by
    /// replays until a checkpoint passes them).
    moved: BTreeSet<SpillPos>,
    /// Moves whose new copy is not yet durable: no replay starts meanwhile.
    moves_pending: usize,
    /// A run that ended while its unroutable record was being moved: its
    /// checkpoint waits for the move.
    ending: Option<ReplayRun>,
    io: ReplayIo,
    link: Option<Box<dyn Link>>,
    connecting: Option<JoinHandle<Result<Box<dyn Link>, String>>>,
    /// When to reconnect (no link) or start a replay (link up).
    retry_at: Option<Instant>,
    blocked: bool,
    backoff: Backoff,
    inflight: InFlight,
    /// Appends awaiting their fsync, in append order.
    spill_waits: VecDeque<SpillWait>,
    replay: Option<ReplayRun>,
    next_run: u64,
    /// Intake paused so the replay can reach the end of the log.
    paused: bool,
    flushes: Vec<oneshot::Sender<Result<()>>>,
    closers: Vec<oneshot::Sender<()>>,
    closing: bool,
}

impl Actor {
    fn new(
        cfg: EngineConfig,
        transport: Arc<dyn Transport>,
        spill: Arc<dyn Spill>,
        rx: mpsc::Receiver<Publish>,
        ctl: mpsc::UnboundedReceiver<Control>,
        state_tx: watch::Sender<PublisherState>,
        counters: Arc<Counters>,
    ) -> Actor {
        let backoff = Backoff::new(cfg.backoff.clone());
        let metrics = Metrics::new(transport.name());
        let room = Arc::new(RoomWaker::default());
        let room_waker = Waker::from(Arc::clone(&room));
        Actor {
            cfg,
            transport,
            spill,
            rx,
            rx_open: true,
            ctl,
            ctl_open: true,
            credits: 0.0,
            state: PublisherState::Degraded,
            state_tx,
            counters,
            metrics,
            scratch: Vec::new(),
            spill_queue: VecDeque::new(),
            room,
            room_waker,
            spill_epoch: 0,
            moved: BTreeSet::new(),
            moves_pending: 0,
            ending: None,
            io: ReplayIo::default(),
            link: None,
            connecting: None,
            retry_at: Some(Instant::now()),
            blocked: false,
            backoff,
            inflight: InFlight::default(),
            spill_waits: VecDeque::new(),
            replay: None,
            next_run: 0,
            paused: false,
            flushes: Vec::new(),
            closers: Vec::new(),
            closing: false,
        }
    }

    fn backend(&self) -> &'static str {
        self.transport.name()
    }

    async fn run(mut self) {
        self.metrics.state.set(self.state.gauge());
        info!(
            backend = self.backend(),
            "publisher started (degraded until connected)"
        );
        loop {
            if self.link.as_ref().is_some_and(|l| !l.is_alive()) {
                self.fail_link(SpillReason::ConnectionLost, "the link is no longer alive");
            }
            self.step_replay();
            self.check_flushes();
            if self.closing && self.close_done() {
                break;
            }
            let ready = Arc::clone(&self.inflight.ready);
            let room = Arc::clone(&self.room);
            let deadline = self.inflight.next_deadline();
            let retry_at = self.retry_due();
            let can_accept = self.can_accept();
            tokio::select! {
                biased;
                () = ready.notify.notified() => self.on_ready(),
                done = SpillFront(&mut self.spill_waits), if !self.spill_waits.is_empty() => {
                    self.on_spilled(done);
                }
                () = room.0.notified(), if !self.spill_queue.is_empty() => self.drain_spill_queue(),
                res = JoinOpt(&mut self.io.job), if self.io.job.is_some() => {
                    self.io.job = None;
                    self.on_job_done(res);
                }
                ev = LinkEvents(&mut self.link), if self.link.is_some() => self.on_link_event(ev),
                res = JoinOpt(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    let res = res.unwrap_or_else(|e| Err(format!("connect task failed: {e}")));
                    self.on_connected(res);
                }
                () = sleep_opt(deadline), if deadline.is_some() => self.on_timeout(),
                () = sleep_opt(retry_at), if retry_at.is_some() => self.on_retry(),
                ctl = self.ctl.recv(), if self.ctl_open => match ctl {
                    Some(ctl) => self.on_control(ctl),
                    None => self.ctl_open = false,
                },
                cmd = self.rx.recv(), if can_accept => match cmd {
                    Some(p) => {
                        self.on_publish(p);
                        // Take what is queued in one go: fewer trips
                        // through `select!` at high rates.
                        for _ in 0..INTAKE_BATCH {
                            if !self.can_accept() {
                                break;
                            }
                            match self.rx.try_recv() {
                                Ok(p) => self.on_publish(p),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Every handle is gone (or close() closed it):
                        // nothing more can arrive.
                        self.rx_open = false;
                        self.begin_close();
                    }
                },
            }
        }
        self.finish_close().await;
    }

    // --- intake -----------------------------------------------------------

    fn can_accept(&self) -> bool {
        if !self.rx_open || (self.paused && !self.closing) {
            return false;
        }
        if self.direct() {
            self.inflight.span() < self.cfg.window
        } else if self.inflight.live > self.inflight.replay_live {
            // Messages sent before the failure still await their verdict;
            // should they fail too, they are spilled ahead of anything
            // accepted after them (the documented order).
            false
        } else if self.state == PublisherState::Recovering && !self.closing && self.credits < 1.0 {
            false
        } else {
            self.spill_waits.len() + self.spill_queue.len() < self.cfg.spill_window
        }
    }

    /// True when new messages go straight to the broker.
    fn direct(&self) -> bool {
        self.state == PublisherState::Healthy
            && !self.blocked
            && self.link.as_ref().is_some_and(|l| l.is_alive())
    }

    fn on_publish(&mut self, Publish { msg, reply }: Publish) {
        if self.direct() {
            self.send(msg, Origin::Fresh(reply));
        } else {
            if self.state == PublisherState::Recovering {
                self.credits -= 1.0;
            }
            let reason = if self.closing {
                SpillReason::Shutdown
            } else {
                SpillReason::Degraded
            };
            self.spill(After::Reply { reply, reason, msg });
        }
    }

    fn on_control(&mut self, ctl: Control) {
        match ctl {
            Control::Flush { reply } => {
                if self.closing {
                    let _ = reply.send(Err(Error::Closed("publisher")));
                } else {
                    self.flushes.push(reply);
                }
            }
            Control::Close { reply } => {
                self.closers.push(reply);
                self.begin_close();
            }
        }
    }

    fn send(&mut self, msg: Message, origin: Origin) {
        let Some(link) = self.link.as_mut() else {
            // Callers check for a link; should one not, nothing is dropped.
            self.on_failed(msg, origin, SpillReason::ConnectionLost);
            return;
        };
        let fut = link.send(&msg);
        let deadline = Instant::now() + self.cfg.confirm_timeout;
        self.inflight.insert(msg, origin, fut, deadline);
        self.metrics.inflight.set(self.inflight.live as f64);
    }

    /// Appends `after`'s message to the spill log, or queues it behind the
    /// records waiting for room; never blocks.
    fn spill(&mut self, after: After) {
        if !self.spill_queue.is_empty() {
            self.spill_queue.push_back(Queued {
                record: record::encode(after.msg()),
                after,
            });
            return;
        }
        record::encode_into(&mut self.scratch, after.msg());
        let mut cx = Context::from_waker(&self.room_waker);
        match self.spill.poll_append(&mut cx, &self.scratch) {
            Poll::Ready(res) => self.appended(res, after),
            Poll::Pending => self.spill_queue.push_back(Queued {
                record: std::mem::take(&mut self.scratch),
                after,
            }),
        }
    }

    /// Appends queued records while the log has room (it wakes `room` when
    /// it has more).
    fn drain_spill_queue(&mut self) {
        let waker = self.room_waker.clone();
        let mut cx = Context::from_waker(&waker);
        while let Some(front) = self.spill_queue.front() {
            let Poll::Ready(res) = self.spill.poll_append(&mut cx, &front.record) else {
                return;
            };
            if let Some(q) = self.spill_queue.pop_front() {
                self.appended(res, q.after);
            }
        }
    }

    fn appended(&mut self, res: Result<Durable, SpillError>, after: After) {
        match res {
            Ok(durable) => self.spill_waits.push_back(SpillWait { durable, after }),
            Err(e) => self.spill_done(after, Err(e)),
        }
    }

    /// Appends that became durable (or failed), in append order.
    fn on_spilled(&mut self, done: Vec<(SpillWait, Result<(), SpillError>)>) {
        for (wait, res) in done {
            self.spill_done(wait.after, res);
        }
        self.spill_epoch += 1;
        if let Some(run) = &mut self.replay {
            run.at_end = false;
        }
    }

    fn spill_done(&mut self, after: After, res: Result<(), SpillError>) {
        match (after, res) {
            (After::Reply { reply, reason, msg }, Ok(())) => {
                bump(&self.counters.spilled);
                self.metrics.spilled[reason.index()].increment(1);
                reply.send(Ok(Receipt::Spilled(reason)), msg);
            }
            (After::Reply { reply, msg, .. }, Err(e)) => {
                error!(error = %e, "spill append failed");
                reply.send(Err(Error::Spill(e)), msg);
            }
            (
                After::Moved {
                    from,
                    run,
                    idx,
                    msg,
                },
                Ok(()),
            ) => {
                self.moved.insert(from);
                if let Some(r) = self.ending.as_mut().filter(|r| r.id == run) {
                    r.checkpointer.confirm(idx);
                }
                error!(
                    message_id = %msg.id(),
                    "unroutable message moved to the end of the spill log; it is replayed again \
                     until the topology routes it"
                );
                self.move_done();
            }
            (After::Moved { msg, .. }, Err(e)) => {
                error!(message_id = %msg.id(), error = %e, "cannot move an unroutable record; it stays in place");
                self.move_done();
            }
        }
    }

    fn move_done(&mut self) {
        self.moves_pending -= 1;
        if self.moves_pending == 0
            && let Some(run) = self.ending.take()
        {
            self.retire_run(run);
        }
    }

    // --- verdicts ---------------------------------------------------------

    fn on_ready(&mut self) {
        let finished = self.inflight.drain(&self.counters, &self.metrics);
        let mut link_failed = false;
        for f in finished {
            match f.verdict {
                Verdict::Confirmed => self.on_confirmed(f.msg, f.origin),
                Verdict::Failed(reason) => {
                    self.on_failed(f.msg, f.origin, reason);
                    self.degrade(reason);
                }
                Verdict::LinkFailed => {
                    self.on_failed(f.msg, f.origin, SpillReason::ConnectionLost);
                    link_failed = true;
                }
            }
        }
        if link_failed {
            self.fail_link(SpillReason::ConnectionLost, "a publish failed on the link");
        }
        self.metrics.inflight.set(self.inflight.live as f64);
    }

    fn on_confirmed(&mut self, msg: Message, origin: Origin) {
        match origin {
            Origin::Fresh(reply) => {
                bump(&self.counters.confirmed);
                self.metrics.confirms.increment(1);
                reply.send(Ok(Receipt::Confirmed), msg);
            }
            Origin::Replay { run, idx, .. } => {
                let Some(r) = self
                    .replay
                    .as_mut()
                    .filter(|r| r.id == run)
                    .or(self.ending.as_mut().filter(|r| r.id == run))
                else {
                    return; // a confirm for an aborted run: replayed again later
                };
                bump(&self.counters.replayed);
                self.credits =
                    (self.credits + self.cfg.recovery_intake).min(self.cfg.spill_window as f64);
                self.metrics.replayed.increment(1);
                r.replayed += 1;
                r.checkpointer.confirm(idx);
                // Committed by the next reader job (`step_replay`).
                r.since_commit += 1;
            }
        }
    }

    /// A message was not confirmed: a fresh one is spilled, a replayed one
    /// stays in the log and the replay run stops.
    fn on_failed(&mut self, msg: Message, origin: Origin, reason: SpillReason) {
        match origin {
            Origin::Fresh(reply) => {
                debug!(message_id = %msg.id(), %reason, "spilling an unconfirmed message");
                self.spill(After::Reply { reply, reason, msg });
            }
            Origin::Replay { run, idx, pos } => {
                if self.replay.as_ref().is_none_or(|r| r.id != run) {
                    return;
                }
                warn!(message_id = %msg.id(), %reason, "replay interrupted");
                if matches!(reason, SpillReason::Returned | SpillReason::Rejected) {
                    self.move_to_tail(msg, run, idx, pos);
                }
                self.abort_replay();
            }
        }
    }

    /// An unroutable (or rejected) record would stop every replay at the
    /// same place until the topology (or the broker's limits) change. It is appended again at the end of the
    /// log, so that the records behind it get through meanwhile. Once the
    /// new copy is durable the old one counts as replayed: the ending run's
    /// checkpoint may pass it (the run's final commit waits for the move),
    /// and later runs skip it. No replay starts before the move is done.
    /// Were the process to crash before a checkpoint passes the old copy,
    /// both are replayed: a duplicate, never a loss.
    fn move_to_tail(&mut self, msg: Message, run: u64, idx: u64, from: SpillPos) {
        self.moves_pending += 1;
        self.spill(After::Moved {
            from,
            run,
            idx,
            msg,
        });
    }

    // --- state ------------------------------------------------------------

    fn set_state(&mut self, state: PublisherState) {
        if self.state == state {
            return;
        }
        info!(
            backend = self.backend(),
            from = %self.state,
            to = %state,
            "publisher state changed"
        );
        self.state = state;
        self.metrics.state.set(state.gauge());
        let _ = self.state_tx.send(state);
    }

    /// A failure that keeps the link: spill from now on, retry after backoff.
    fn degrade(&mut self, reason: SpillReason) {
        if self.state != PublisherState::Degraded {
            warn!(backend = self.backend(), %reason, "degrading: spilling new messages");
        }
        self.abort_replay();
        self.set_state(PublisherState::Degraded);
        self.schedule_retry();
    }

    fn schedule_retry(&mut self) {
        if self.retry_at.is_none() && !self.closing {
            let delay = self.backoff.next_delay(rand::random());
            debug!(
                ?delay,
                failures = self.backoff.failures(),
                "next attempt scheduled"
            );
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    /// The link is dead (or suspect): every message in flight is spilled.
    fn fail_link(&mut self, reason: SpillReason, why: &str) {
        if let Some(link) = self.link.take() {
            warn!(backend = self.backend(), why, "connection lost");
            link.close();
        }
        self.blocked = false;
        self.fail_all_inflight(reason);
        self.degrade(reason);
    }

    fn fail_all_inflight(&mut self, reason: SpillReason) {
        for (msg, origin) in self.inflight.take_all() {
            self.on_failed(msg, origin, reason);
        }
    }

    fn on_link_event(&mut self, ev: Option<LinkEvent>) {
        match ev {
            Some(LinkEvent::Blocked(why)) => {
                warn!(backend = self.backend(), reason = %why, "broker blocked the connection");
                self.blocked = true;
                self.fail_all_inflight(SpillReason::Blocked);
                self.degrade(SpillReason::Blocked);
                self.retry_at = None; // wait for unblock (or loss)
            }
            Some(LinkEvent::Unblocked) => {
                info!(backend = self.backend(), "broker unblocked the connection");
                self.blocked = false;
                self.retry_at = Some(Instant::now());
            }
            Some(LinkEvent::Lost(why)) => self.fail_link(SpillReason::ConnectionLost, &why),
            None => self.fail_link(SpillReason::ConnectionLost, "event stream ended"),
        }
    }

    fn on_connected(&mut self, res: Result<Box<dyn Link>, String>) {
        match res {
            Ok(link) => {
                bump(&self.counters.connections);
                info!(backend = self.backend(), "connected");
                if self.closing {
                    link.close();
                    return;
                }
                self.link = Some(link);
                self.blocked = false;
                self.retry_at = Some(Instant::now());
            }
            Err(e) => {
                warn!(backend = self.backend(), error = %e, "connect failed");
                self.schedule_retry();
            }
        }
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        let expired = self
            .inflight
            .slots
            .iter()
            .flatten()
            .filter(|s| s.deadline <= now)
            .count();
        if expired == 0 {
            return;
        }
        for _ in 0..expired {
            bump(&self.counters.confirm_timeouts);
        }
        self.metrics.timeouts.increment(expired as u64);
        warn!(expired, "confirms timed out; dropping the connection");
        self.fail_link(SpillReason::ConfirmTimeout, "confirm timeout");
    }

    fn retry_due(&self) -> Option<Instant> {
        if self.closing || self.connecting.is_some() || self.blocked {
            return None;
        }
        // A new replay waits for every message in flight (a fresh one that
        // fails is spilled behind the backlog it would overtake otherwise;
        // the last run's records), its reader's last job, and moves of
        // unroutable records.
        if self.link.is_some()
            && (self.state != PublisherState::Degraded
                || self.inflight.live > 0
                || !self.io.idle()
                || self.moves_pending > 0)
        {
            return None;
        }
        self.retry_at
    }

    fn on_retry(&mut self) {
        self.retry_at = None;
        match &self.link {
            None => {
                let fut = self.transport.connect();
                self.connecting = Some(tokio::spawn(fut));
            }
            Some(link) if link.is_alive() => self.start_replay(),
            Some(_) => self.fail_link(SpillReason::ConnectionLost, "link no longer alive"),
        }
    }

    // --- replay -----------------------------------------------------------

    fn start_replay(&mut self) {
        if !self.io.idle() || self.moves_pending > 0 {
            // `retry_due` holds the attempt until they are done.
            self.retry_at = Some(Instant::now());
            return;
        }
        match self.spill.reader() {
            Ok(reader) => {
                self.next_run += 1;
                self.io.reader = Some(reader);
                self.io.run = self.next_run;
                self.replay = Some(ReplayRun {
                    id: self.next_run,
                    checkpointer: Checkpointer::new(),
                    buffered: VecDeque::new(),
                    at_end: false,
                    since_commit: 0,
                    started: Instant::now(),
                    replayed: 0,
                    stop: None,
                });
                // A head start, so that a short recovery does not stall
                // producers at all.
                self.credits = self.cfg.window.min(self.cfg.spill_window) as f64;
                self.set_state(PublisherState::Recovering);
            }
            Err(e) => {
                error!(error = %e, "cannot open the spill log for replay");
                self.schedule_retry();
            }
        }
    }

    /// Publishes what the reader fetched while the window has room, keeps
    /// the reader busy (checkpoint when due, read ahead), and finishes the
    /// run at the end of the log.
    fn step_replay(&mut self) {
        if self.state != PublisherState::Recovering || self.closing {
            return;
        }
        if !self.link.as_ref().is_some_and(|l| l.is_alive()) || self.blocked {
            return;
        }
        // While a checkpoint is due or being written, nothing more is sent:
        // so at most `checkpoint_every` + one window of records are
        // confirmed beyond the persisted checkpoint, as if it were written
        // synchronously (the pause is a few fsyncs per `checkpoint_every`).
        while self.inflight.span() < self.cfg.window && !self.io.committing {
            let Some(run) = self.replay.as_mut() else {
                return;
            };
            if run.since_commit >= self.cfg.checkpoint_every {
                break;
            }
            let Some((pos, fetched)) = run.buffered.pop_front() else {
                break;
            };
            let idx = run.checkpointer.push(pos);
            if self.moved.contains(&pos) {
                // Its copy at the tail is durable: this one is done.
                run.checkpointer.confirm(idx);
                continue;
            }
            match fetched {
                Fetched::Message(msg) => {
                    let origin = Origin::Replay {
                        run: run.id,
                        idx,
                        pos,
                    };
                    self.send(msg, origin);
                }
                Fetched::Quarantined => {
                    // Its bytes are safe outside the log (the job logged
                    // where): the checkpoint may pass it.
                    run.checkpointer.confirm(idx);
                    bump(&self.counters.corrupt_records);
                    self.metrics.corrupt.increment(1);
                }
            }
        }
        let Some(run) = self.replay.as_mut() else {
            return;
        };
        if self.io.job.is_none() && self.io.reader.is_some() {
            // A checkpoint is due: write the newest confirmed prefix (if it
            // moved; if not, nothing waits for it).
            let commit = if run.since_commit >= self.cfg.checkpoint_every {
                run.since_commit = 0;
                run.checkpointer.take_ready()
            } else {
                None
            };
            let ahead = self.cfg.window.min(READ_AHEAD);
            let read = if !run.at_end && run.stop.is_none() && run.buffered.len() * 2 <= ahead {
                ahead - run.buffered.len()
            } else {
                0
            };
            if commit.is_some() || read > 0 {
                let job = Job {
                    run: run.id,
                    epoch: self.spill_epoch,
                    commit,
                    read,
                    close: false,
                };
                self.spawn_job(job);
            }
        }
        let Some(run) = self.replay.as_mut() else {
            return;
        };
        if run.stop.is_some() {
            // Everything read before the failure is through: stop here, so
            // that the run's checkpoint covers exactly the records before
            // the one the reader failed on.
            if run.buffered.is_empty() && run.checkpointer.outstanding() == 0 {
                let e = run.stop.take();
                if let Some(e) = e {
                    error!(error = %e, "spill log read failed; replay stops");
                }
                self.abort_replay();
                self.set_state(PublisherState::Degraded);
                self.schedule_retry();
            }
            return;
        }
        if !run.at_end || !run.buffered.is_empty() {
            return;
        }
        // Stop taking new messages so the replay can reach the end: what is
        // still being appended becomes durable, then readable (each finished
        // append clears `at_end`).
        self.paused = true;
        if self.spill_waits.is_empty()
            && self.spill_queue.is_empty()
            && run.checkpointer.outstanding() == 0
        {
            self.finish_replay();
        }
    }

    /// Hands the reader to a job on the blocking pool.
    fn spawn_job(&mut self, job: Job) {
        if let Some(reader) = self.io.reader.take() {
            self.io.committing = job.commit.is_some();
            self.io.job = Some(tokio::task::spawn_blocking(move || run_job(reader, job)));
        }
    }

    fn on_job_done(&mut self, res: Result<JobDone, JoinError>) {
        self.io.committing = false;
        let done = match res {
            Ok(done) => done,
            Err(e) => {
                // The reader went down with the job; a new run opens another.
                error!(error = %e, "a spill log reader job failed");
                self.io.retire = None;
                if self.replay.as_ref().is_some_and(|r| r.id == self.io.run) {
                    self.replay = None;
                    self.paused = false;
                    self.set_state(PublisherState::Degraded);
                    self.schedule_retry();
                }
                return;
            }
        };
        match done.committed {
            Some(Ok(pos)) => {
                // Old copies at or before the checkpoint are gone for good.
                self.moved = self.moved.split_off(&pos);
                self.moved.remove(&pos);
            }
            Some(Err(e)) => {
                // Not fatal: the records stay and are replayed again later.
                error!(error = %e, "cannot persist the replay checkpoint");
            }
            None => {}
        }
        self.io.reader = done.reader;
        if let Some(commit) = self.io.retire.take() {
            // The run ended while the job had the reader.
            self.close_reader(commit);
            return;
        }
        let current = self.replay.as_ref().is_some_and(|r| r.id == done.run);
        if !current {
            // An ending run's reader waits for its final commit.
            let ending = self.ending.as_ref().is_some_and(|r| r.id == done.run);
            if !ending && self.io.reader.is_some() {
                self.close_reader(None);
            }
            return;
        }
        if let Some(e) = done.read_error {
            // The records read before the failure are published first
            // (`step_replay` stops the run after them).
            if let Some(run) = self.replay.as_mut() {
                run.buffered.extend(done.records);
                run.stop = Some(e);
            }
            return;
        }
        let epoch = self.spill_epoch;
        if let Some(run) = self.replay.as_mut() {
            run.buffered.extend(done.records);
            // An append that became durable during the read may have been
            // missed: then this is not the end.
            if done.at_end && done.epoch == epoch {
                run.at_end = true;
            }
        }
    }

    /// Commits `commit` (if any) and closes the reader, on the blocking pool.
    fn close_reader(&mut self, commit: Option<SpillPos>) {
        let job = Job {
            run: self.io.run,
            epoch: self.spill_epoch,
            commit,
            read: 0,
            close: true,
        };
        self.spawn_job(job);
    }

    /// Ends the current run: its confirmed prefix is committed and its
    /// reader closed (once the reader's job, if one runs, is back, and once
    /// the run's unroutable record, if any, is moved).
    fn end_run(&mut self) {
        let Some(run) = self.replay.take() else {
            return;
        };
        if self.moves_pending > 0 {
            self.ending = Some(run);
        } else {
            self.retire_run(run);
        }
    }

    fn retire_run(&mut self, mut run: ReplayRun) {
        let commit = run.checkpointer.take_ready();
        if self.io.job.is_some() {
            self.io.retire = Some(commit);
        } else if self.io.reader.is_some() {
            self.close_reader(commit);
        }
    }

    fn finish_replay(&mut self) {
        if let Some(run) = &self.replay {
            info!(
                replayed = run.replayed,
                seconds = run.started.elapsed().as_secs_f64(),
                "spill log replayed to the end"
            );
        }
        self.end_run();
        self.paused = false;
        self.backoff.reset();
        self.set_state(PublisherState::Healthy);
    }

    fn abort_replay(&mut self) {
        self.end_run();
        self.paused = false;
    }

    // --- flush and close --------------------------------------------------

    fn check_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        // The last checkpoint too: then the spill log is empty.
        if self.state == PublisherState::Healthy
            && self.inflight.live == 0
            && self.spill_waits.is_empty()
            && self.spill_queue.is_empty()
            && self.replay.is_none()
            && self.io.idle()
            && self.rx.is_empty()
        {
            for f in self.flushes.drain(..) {
                let _ = f.send(Ok(()));
            }
        }
    }

    fn begin_close(&mut self) {
        if self.closing {
            return;
        }
        info!(backend = self.backend(), "closing publisher");
        self.closing = true;
        // What is already queued is still handled; nothing new gets in.
        self.rx.close();
        self.retry_at = None;
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        if let Some(run) = &self.replay {
            debug!(run = run.id, "stopping replay for shutdown");
        }
        for f in self.flushes.drain(..) {
            let _ = f.send(Err(Error::Closed("publisher")));
        }
        // Nothing more goes to the broker; what is in flight gets its
        // verdict (or times out and is spilled).
        if self.link.is_none() || self.blocked {
            self.fail_all_inflight(SpillReason::Shutdown);
        }
        self.paused = false;
    }

    fn close_done(&self) -> bool {
        !self.rx_open
            && self.inflight.live == 0
            && self.spill_waits.is_empty()
            && self.spill_queue.is_empty()
    }

    /// Persists the replay checkpoint, closes the link and the spill log
    /// (off the runtime's threads), then answers `close()`: once it
    /// returns, the spill directory is free for another publisher.
    async fn finish_close(mut self) {
        self.end_run();
        if let Some(link) = self.link.take() {
            link.close();
        }
        loop {
            if let Some(job) = self.io.job.take() {
                let res = job.await;
                self.on_job_done(res);
            } else if self.io.reader.is_some() {
                self.close_reader(None);
            } else {
                break;
            }
        }
        self.set_state(PublisherState::Closed);
        let closers = std::mem::take(&mut self.closers);
        let spill = Arc::clone(&self.spill);
        drop(self);
        let _ = tokio::task::spawn_blocking(move || drop(spill)).await;
        for c in closers {
            let _ = c.send(());
        }
    }
}

// ---------------------------------------------------------------------------
// Small future adapters for `select!`.

struct LinkEvents<'a>(&'a mut Option<Box<dyn Link>>);

impl Future for LinkEvents<'_> {
    type Output = Option<LinkEvent>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(link) => link.poll_event(cx),
            None => Poll::Pending,
        }
    }
}

/// One append waiting to become durable.
struct SpillWait {
    durable: Durable,
    after: After,
}

/// Resolves with the appends that finished, front first. Records of one
/// writer become durable in append order, so only the front one needs a
/// waker: when it completes, those behind it that completed too are taken
/// in the same pass, and the first one still pending registers the waker.
/// (Were the order ever different, this would only delay receipts.)
struct SpillFront<'a>(&'a mut VecDeque<SpillWait>);

impl Future for SpillFront<'_> {
    type Output = Vec<(SpillWait, Result<(), SpillError>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut done = Vec::new();
        while let Some(front) = self.0.front_mut() {
            match front.durable.as_mut().poll(cx) {
                Poll::Ready(res) => {
                    if let Some(wait) = self.0.pop_front() {
                        done.push((wait, res));
                    }
                }
                Poll::Pending => break,
            }
        }
        if done.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(done)
        }
    }
}

/// Resolves with the task's output once it finished (pending if none).
struct JoinOpt<'a, T>(&'a mut Option<JoinHandle<T>>);

impl<T> Future for JoinOpt<'_, T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(h) => Pin::new(h).poll(cx),
            None => Poll::Pending,
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
