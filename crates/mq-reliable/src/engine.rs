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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
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
        if self.confirm_timeout < Duration::from_millis(1) {
            return Err(invalid(
                "confirm_timeout",
                self.confirm_timeout,
                "must be at least 1 ms",
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
    reply: oneshot::Sender<Result<Receipt>>,
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
        /// checkpoint and closes the connection.
        pub async fn close(&self) {
            self.engine.close().await;
        }
    };
}
pub(crate) use publisher_api;

/// Resolves to the receipt of one submitted message.
#[must_use = "the message is acknowledged only when this resolves to Ok"]
#[derive(Debug)]
pub struct PendingReceipt {
    rx: oneshot::Receiver<Result<Receipt>>,
    what: &'static str,
}

impl Future for PendingReceipt {
    type Output = Result<Receipt>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed(what))))
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
            .send(Publish { msg, reply })
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
    Fresh(oneshot::Sender<Result<Receipt>>),
    Replay { run: u64, idx: u64 },
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
    reader: Box<dyn SpillReader>,
    checkpointer: Checkpointer<SpillPos>,
    /// The reader returned `None` and no append finished since.
    at_end: bool,
    since_commit: usize,
    started: Instant,
    replayed: u64,
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
            let deadline = self.inflight.next_deadline();
            let retry_at = self.retry_due();
            let can_accept = self.can_accept();
            tokio::select! {
                biased;
                () = ready.notify.notified() => self.on_ready(),
                done = SpillFront(&mut self.spill_waits), if !self.spill_waits.is_empty() => {
                    self.on_spilled(done);
                    if let Some(run) = &mut self.replay {
                        run.at_end = false;
                    }
                }
                ev = LinkEvents(&mut self.link), if self.link.is_some() => self.on_link_event(ev),
                res = JoinOpt(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
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
        self.finish_close();
    }

    // --- intake -----------------------------------------------------------

    fn can_accept(&self) -> bool {
        if !self.rx_open || (self.paused && !self.closing) {
            return false;
        }
        if self.direct() {
            self.inflight.live < self.cfg.window
        } else if self.state == PublisherState::Recovering && !self.closing && self.credits < 1.0 {
            false
        } else {
            self.spill_waits.len() < self.cfg.spill_window
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
            self.spill_msg(&msg, reason, reply);
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
            return;
        };
        let fut = link.send(&msg);
        let deadline = Instant::now() + self.cfg.confirm_timeout;
        self.inflight.insert(msg, origin, fut, deadline);
        self.metrics.inflight.set(self.inflight.live as f64);
    }

    fn spill_msg(
        &mut self,
        msg: &Message,
        reason: SpillReason,
        reply: oneshot::Sender<Result<Receipt>>,
    ) {
        record::encode_into(&mut self.scratch, msg);
        match self.spill.append(&self.scratch) {
            Ok(durable) => self.spill_waits.push_back(SpillWait {
                durable,
                reply,
                reason,
            }),
            Err(e) => {
                error!(message_id = %msg.id(), error = %e, "spill append failed");
                let _ = reply.send(Err(Error::Spill(e)));
            }
        }
    }

    /// Appends that became durable (or failed), in append order.
    fn on_spilled(&mut self, done: Vec<(SpillWait, Result<(), SpillError>)>) {
        for (wait, res) in done {
            match res {
                Ok(()) => {
                    bump(&self.counters.spilled);
                    self.metrics.spilled[wait.reason.index()].increment(1);
                    let _ = wait.reply.send(Ok(Receipt::Spilled(wait.reason)));
                }
                Err(e) => {
                    error!(error = %e, "spill append failed to become durable");
                    let _ = wait.reply.send(Err(Error::Spill(e)));
                }
            }
        }
    }

    // --- verdicts ---------------------------------------------------------

    fn on_ready(&mut self) {
        let finished = self.inflight.drain(&self.counters, &self.metrics);
        let mut link_failed = false;
        for f in finished {
            match f.verdict {
                Verdict::Confirmed => self.on_confirmed(f.origin),
                Verdict::Failed(reason) => {
                    self.on_failed(&f.msg, f.origin, reason);
                    self.degrade(reason);
                }
                Verdict::LinkFailed => {
                    self.on_failed(&f.msg, f.origin, SpillReason::ConnectionLost);
                    link_failed = true;
                }
            }
        }
        if link_failed {
            self.fail_link(SpillReason::ConnectionLost, "a publish failed on the link");
        }
        self.metrics.inflight.set(self.inflight.live as f64);
    }

    fn on_confirmed(&mut self, origin: Origin) {
        match origin {
            Origin::Fresh(reply) => {
                bump(&self.counters.confirmed);
                self.metrics.confirms.increment(1);
                let _ = reply.send(Ok(Receipt::Confirmed));
            }
            Origin::Replay { run, idx } => {
                let Some(r) = self.replay.as_mut().filter(|r| r.id == run) else {
                    return; // a confirm for an aborted run: replayed again later
                };
                bump(&self.counters.replayed);
                self.credits =
                    (self.credits + self.cfg.recovery_intake).min(self.cfg.spill_window as f64);
                self.metrics.replayed.increment(1);
                r.replayed += 1;
                r.checkpointer.confirm(idx);
                r.since_commit += 1;
                if r.since_commit >= self.cfg.checkpoint_every {
                    self.commit_replay();
                }
            }
        }
    }

    /// A message was not confirmed: a fresh one is spilled, a replayed one
    /// stays in the log and the replay run stops.
    fn on_failed(&mut self, msg: &Message, origin: Origin, reason: SpillReason) {
        match origin {
            Origin::Fresh(reply) => {
                debug!(message_id = %msg.id(), %reason, "spilling an unconfirmed message");
                self.spill_msg(msg, reason, reply);
            }
            Origin::Replay { run, idx } => {
                if self.replay.as_ref().is_none_or(|r| r.id != run) {
                    return;
                }
                if reason == SpillReason::Returned {
                    self.move_to_tail(msg, idx);
                }
                warn!(message_id = %msg.id(), %reason, "replay interrupted");
                self.abort_replay();
            }
        }
    }

    /// An unroutable record would stop every replay at the same place
    /// until the topology changes. It is appended again at the end of the
    /// log (and its old copy checkpointed only once the new one is
    /// durable), so that the records behind it get through meanwhile.
    fn move_to_tail(&mut self, msg: &Message, idx: u64) {
        match self.spill.append_durable(&record::encode(msg)) {
            Ok(()) => {
                error!(
                    message_id = %msg.id(),
                    "unroutable message moved to the end of the spill log; it is replayed again \
                     until the topology routes it"
                );
                if let Some(run) = self.replay.as_mut() {
                    run.checkpointer.confirm(idx);
                }
            }
            Err(e) => {
                error!(message_id = %msg.id(), error = %e, "cannot move an unroutable record; it stays in place");
            }
        }
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
            self.on_failed(&msg, origin, reason);
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
        if self.link.is_some()
            && (self.state != PublisherState::Degraded || self.inflight.replay_live > 0)
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
        match self.spill.reader() {
            Ok(reader) => {
                self.next_run += 1;
                self.replay = Some(ReplayRun {
                    id: self.next_run,
                    reader,
                    checkpointer: Checkpointer::new(),
                    at_end: false,
                    since_commit: 0,
                    started: Instant::now(),
                    replayed: 0,
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

    /// Feeds the window from the log; finishes the run at the end of the log.
    fn step_replay(&mut self) {
        if self.state != PublisherState::Recovering || self.closing {
            return;
        }
        if !self.link.as_ref().is_some_and(|l| l.is_alive()) || self.blocked {
            return;
        }
        loop {
            let Some(run) = self.replay.as_mut() else {
                return;
            };
            if run.at_end || self.inflight.live >= self.cfg.window {
                break;
            }
            match run.reader.next() {
                Ok(Some((pos, rec))) => {
                    let idx = run.checkpointer.push(pos);
                    let run_id = run.id;
                    match record::decode(&rec) {
                        Ok(msg) => self.send(msg, Origin::Replay { run: run_id, idx }),
                        Err(reason) => {
                            bump(&self.counters.corrupt_records);
                            self.metrics.corrupt.increment(1);
                            error!(position = %pos, reason, "skipping a spill record this crate cannot decode");
                            run.checkpointer.confirm(idx);
                        }
                    }
                }
                Ok(None) => run.at_end = true,
                Err(e) => {
                    error!(error = %e, "spill log read failed; replay stops");
                    self.abort_replay();
                    self.set_state(PublisherState::Degraded);
                    self.schedule_retry();
                    return;
                }
            }
        }
        let Some(run) = self.replay.as_ref() else {
            return;
        };
        if !run.at_end {
            return;
        }
        // Stop taking new messages so the replay can reach the end: what is
        // still being appended becomes durable, then readable (each finished
        // append clears `at_end`).
        self.paused = true;
        if self.spill_waits.is_empty() && run.checkpointer.outstanding() == 0 {
            self.finish_replay();
        }
    }

    fn commit_replay(&mut self) {
        let Some(run) = self.replay.as_mut() else {
            return;
        };
        run.since_commit = 0;
        if let Some(pos) = run.checkpointer.take_ready()
            && let Err(e) = run.reader.commit(pos)
        {
            // Not fatal: the records stay and are replayed again later.
            error!(error = %e, "cannot persist the replay checkpoint");
        }
    }

    fn finish_replay(&mut self) {
        self.commit_replay();
        if let Some(run) = self.replay.take() {
            let secs = run.started.elapsed().as_secs_f64();
            info!(
                replayed = run.replayed,
                seconds = secs,
                "spill log replayed to the end"
            );
        }
        self.paused = false;
        self.backoff.reset();
        self.set_state(PublisherState::Healthy);
    }

    fn abort_replay(&mut self) {
        if self.replay.is_some() {
            self.commit_replay();
            self.replay = None;
        }
        self.paused = false;
    }

    // --- flush and close --------------------------------------------------

    fn check_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        if self.state == PublisherState::Healthy
            && self.inflight.live == 0
            && self.spill_waits.is_empty()
            && self.replay.is_none()
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
        !self.rx_open && self.inflight.live == 0 && self.spill_waits.is_empty()
    }

    fn finish_close(&mut self) {
        if self.replay.is_some() {
            self.commit_replay();
            self.replay = None;
        }
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.set_state(PublisherState::Closed);
        for c in self.closers.drain(..) {
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

/// One message waiting for its spill append to be durable.
struct SpillWait {
    durable: Durable,
    reply: oneshot::Sender<Result<Receipt>>,
    reason: SpillReason,
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

struct JoinOpt<'a>(&'a mut Option<JoinHandle<Result<Box<dyn Link>, String>>>);

impl Future for JoinOpt<'_> {
    type Output = Result<Box<dyn Link>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(h) => Pin::new(h)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|e| Err(format!("connect task failed: {e}")))),
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
