//! The engine against a scripted in-memory broker and an in-memory spill
//! log, on paused tokio time: every failure path without a real broker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backoff::BackoffConfig;
use crate::engine::{
    ConnectFuture, Engine, EngineConfig, Link, LinkEvent, PendingReceipt, SendFuture, SendOutcome,
    Transport,
};
use crate::message::{Message, Receipt, SpillReason, record};
use crate::spill::MemorySpill;
use crate::state::PublisherState;

/// What the fake broker does with each message it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ack,
    Hold,
}

/// The verdict the fake broker gave one copy of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pending,
    Acked,
    Returned,
    Refused,
    Rejected,
}

#[derive(Default)]
struct BrokerState {
    refuse_connects: bool,
    mode: Option<Mode>,
    /// Ids in wire order, every copy.
    received: Vec<String>,
    /// Held messages awaiting a verdict: (id, index into `copies`, sender).
    held: Vec<(String, usize, oneshot::Sender<SendOutcome>)>,
    /// Every copy received, in wire order, with the verdict it got.
    copies: Vec<(String, Verdict)>,
    /// Ids to nack (once each) instead of the mode's verdict.
    nack_once: HashSet<String>,
    /// Ids the broker cannot route: acked with their own return.
    unroutable: HashSet<String>,
    /// Ids the broker rejects for what they are (Kafka: too large).
    rejected: HashSet<String>,
    events: Option<mpsc::UnboundedSender<LinkEvent>>,
    alive: Option<Arc<AtomicBool>>,
    connects: u64,
}

#[derive(Clone, Default)]
struct FakeBroker(Arc<Mutex<BrokerState>>);

impl FakeBroker {
    fn new(mode: Mode) -> FakeBroker {
        let b = FakeBroker::default();
        b.0.lock().unwrap().mode = Some(mode);
        b
    }
    fn with<R>(&self, f: impl FnOnce(&mut BrokerState) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
    fn received(&self) -> Vec<String> {
        self.with(|s| s.received.clone())
    }
    fn held_ids(&self) -> Vec<String> {
        self.with(|s| s.held.iter().map(|(id, _, _)| id.clone()).collect())
    }
    /// Resolves the held message `id` with `outcome`.
    fn resolve(&self, id: &str, outcome: SendOutcome) {
        let tx = self.with(|s| {
            let i = s
                .held
                .iter()
                .position(|(h, _, _)| h == id)
                .expect("message not held");
            let (_, copy, tx) = s.held.remove(i);
            if s.copies[copy].1 == Verdict::Pending {
                s.copies[copy].1 = match &outcome {
                    SendOutcome::Ack { .. } => Verdict::Acked,
                    SendOutcome::Rejected { .. } => Verdict::Rejected,
                    _ => Verdict::Refused,
                };
            }
            tx
        });
        let _ = tx.send(outcome);
    }
    /// Marks the held `victim` as returned by the broker (its own ack and
    /// the return itself are sent separately).
    fn mark_returned(&self, victim: &str) {
        self.with(|s| {
            let (_, copy, _) = s.held.iter().find(|(h, _, _)| h == victim).unwrap();
            let copy = *copy;
            s.copies[copy].1 = Verdict::Returned;
        });
    }
    fn ack_all(&self) {
        for id in self.held_ids() {
            self.resolve(&id, SendOutcome::Ack { returned: vec![] });
        }
    }
    /// The verdict of the first copy of `id`.
    fn first_verdict(&self, id: &str) -> Option<Verdict> {
        self.with(|s| s.copies.iter().find(|(c, _)| c == id).map(|(_, v)| *v))
    }
    fn event(&self, ev: LinkEvent) {
        self.with(|s| {
            if let Some(tx) = &s.events {
                let _ = tx.send(ev);
            }
        });
    }
    /// Kills the link: held verdicts fail, as lapin's do.
    fn kill(&self) {
        let held = self.with(|s| {
            if let Some(a) = &s.alive {
                a.store(false, Ordering::SeqCst);
            }
            std::mem::take(&mut s.held)
        });
        for (_, _, tx) in held {
            let _ = tx.send(SendOutcome::Failed {
                error: "connection reset".into(),
            });
        }
        self.with(|s| {
            if let Some(ev) = &s.events {
                let _ = ev.send(LinkEvent::Lost("connection reset".into()));
            }
        });
    }
}

impl Transport for FakeBroker {
    fn connect(&self) -> ConnectFuture {
        let b = self.clone();
        Box::pin(async move {
            b.with(|s| {
                if s.refuse_connects {
                    return Err("connection refused".to_string());
                }
                s.connects += 1;
                let (tx, rx) = mpsc::unbounded_channel();
                let alive = Arc::new(AtomicBool::new(true));
                s.events = Some(tx);
                s.alive = Some(Arc::clone(&alive));
                Ok(Box::new(FakeLink {
                    broker: b.clone(),
                    events: rx,
                    alive,
                }) as Box<dyn Link>)
            })
        })
    }
    fn name(&self) -> &'static str {
        "fake"
    }
}

struct FakeLink {
    broker: FakeBroker,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    alive: Arc<AtomicBool>,
}

impl Link for FakeLink {
    fn send(&mut self, msg: &Message) -> SendFuture {
        if !self.alive.load(Ordering::SeqCst) {
            return Box::pin(async {
                SendOutcome::Failed {
                    error: "dead".into(),
                }
            });
        }
        let id = msg.id().to_string();
        let (tx, rx) = oneshot::channel();
        let immediate = self.broker.with(|s| {
            s.received.push(id.clone());
            let copy = s.copies.len();
            if s.nack_once.remove(&id) {
                s.copies.push((id, Verdict::Refused));
                return Some(SendOutcome::Nack { returned: vec![] });
            }
            if s.unroutable.contains(&id) {
                s.copies.push((id.clone(), Verdict::Returned));
                return Some(SendOutcome::Ack {
                    returned: vec![Arc::from(id.as_str())],
                });
            }
            if s.rejected.contains(&id) {
                s.copies.push((id, Verdict::Rejected));
                return Some(SendOutcome::Rejected {
                    error: "message too large".into(),
                });
            }
            match s.mode.unwrap() {
                Mode::Ack => {
                    s.copies.push((id, Verdict::Acked));
                    Some(SendOutcome::Ack { returned: vec![] })
                }
                Mode::Hold => {
                    s.copies.push((id.clone(), Verdict::Pending));
                    s.held.push((id, copy, tx));
                    None
                }
            }
        });
        match immediate {
            Some(o) => Box::pin(async move { o }),
            None => Box::pin(async move {
                rx.await.unwrap_or(SendOutcome::Failed {
                    error: "verdict dropped".into(),
                })
            }),
        }
    }
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        self.events.poll_recv(cx)
    }
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    fn close(self: Box<Self>) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

fn cfg(window: usize) -> EngineConfig {
    EngineConfig {
        window,
        confirm_timeout: Duration::from_secs(2),
        backoff: BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        checkpoint_every: 3,
        spill_window: 64,
        max_payload: 1 << 20,
        recovery_intake: 0.5,
    }
}

fn start(broker: &FakeBroker, spill: &MemorySpill, window: usize) -> Engine {
    Engine::start(
        cfg(window),
        Arc::new(broker.clone()),
        Arc::new(spill.clone()),
        "publisher",
    )
    .unwrap()
}

fn msg(i: usize) -> Message {
    Message::new(format!("m{i}"), format!("payload {i}"))
}

async fn wait_state(e: &Engine, want: PublisherState) {
    let mut rx = e.state();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state never became {want}, is {}", *e.state().borrow()))
        .unwrap();
}

/// Lets the actor run until it has nothing left to do. Paused time
/// advances only when every task idles and no blocking job (the spill
/// reader's) runs, so a 1 ms sleep ends only then.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A healthy engine whose broker holds every message, with `n` messages
/// submitted and on the wire (their receipts pending).
async fn held(window: usize, n: usize) -> (FakeBroker, MemorySpill, Engine, Vec<PendingReceipt>) {
    let broker = FakeBroker::new(Mode::Hold);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, window);
    wait_state(&e, PublisherState::Healthy).await;
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(e.submit(msg(i)).await.unwrap());
    }
    settle().await;
    (broker, spill, e, pending)
}

fn first_occurrences(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|i| seen.insert((*i).clone()))
        .cloned()
        .collect()
}

fn spilled_ids(spill: &MemorySpill) -> Vec<String> {
    spill
        .pending()
        .iter()
        .map(|r| record::decode(r).unwrap().id().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn healthy_publishes_are_confirmed_in_order() {
    let broker = FakeBroker::new(Mode::Ack);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 8);
    wait_state(&e, PublisherState::Healthy).await;
    for i in 0..50 {
        assert_eq!(
            e.submit(msg(i)).await.unwrap().await.unwrap(),
            Receipt::Confirmed
        );
    }
    let ids: Vec<_> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(broker.received(), ids);
    let st = e.stats();
    assert_eq!((st.confirmed, st.spilled, st.replayed), (50, 0, 0));
    e.flush().await.unwrap();
    e.close().await;
    assert_eq!(*e.state().borrow(), PublisherState::Closed);
    assert!(matches!(
        e.submit(msg(99)).await,
        Err(crate::Error::Closed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn broker_down_at_start_spills_then_replays_everything_in_order() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 4);
    for i in 0..20 {
        let r = e.submit(msg(i)).await.unwrap().await.unwrap();
        assert_eq!(r, Receipt::Spilled(SpillReason::Degraded));
    }
    assert_eq!(spilled_ids(&spill).len(), 20);
    assert_eq!(*e.state().borrow(), PublisherState::Degraded);
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    let ids: Vec<_> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(broker.received(), ids);
    assert!(
        spill.pending().is_empty(),
        "replayed records are checkpointed"
    );
    // A checkpoint at least every `checkpoint_every` (3) + window (4)
    // records, the bound of the duplicates a crash mid-replay may cause.
    let commits = spill.commit_positions();
    assert_eq!(commits.last(), Some(&19), "{commits:?}");
    let mut prev: i64 = -1;
    for &c in &commits {
        assert!(c as i64 - prev <= 3 + 4, "{commits:?}");
        prev = c as i64;
    }
    assert_eq!(e.stats().replayed, 20);
}

#[tokio::test(start_paused = true)]
async fn a_nack_spills_the_message_and_it_is_replayed_later() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| {
        s.nack_once.insert("m3".into());
    });
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 8);
    wait_state(&e, PublisherState::Healthy).await;
    let mut receipts = Vec::new();
    for i in 0..6 {
        receipts.push(e.submit(msg(i)).await.unwrap().await.unwrap());
    }
    assert_eq!(receipts[3], Receipt::Spilled(SpillReason::Nacked));
    assert!(receipts[..3].iter().all(|r| r.is_confirmed()));
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    // The first retry is immediate, so m3 was replayed before m4 came.
    assert_eq!(
        broker.received(),
        ["m0", "m1", "m2", "m3", "m3", "m4", "m5"].map(String::from)
    );
    assert_eq!(e.stats().nacked, 1);
}

#[tokio::test(start_paused = true)]
async fn a_return_riding_on_another_confirm_is_never_reported_confirmed() {
    let (broker, spill, e, pending) = held(8, 4).await;
    assert_eq!(broker.held_ids().len(), 4);
    // lapin attaches the return of m2 to whichever confirm completes first
    // after it: here m3's (a later message), then m2's own plain ack.
    broker.resolve(
        "m3",
        SendOutcome::Ack {
            returned: vec![Arc::from("m2")],
        },
    );
    broker.resolve("m2", SendOutcome::Ack { returned: vec![] });
    // And the return of m0 rides on m1's ack, resolved in the same batch.
    broker.resolve(
        "m1",
        SendOutcome::Ack {
            returned: vec![Arc::from("m0")],
        },
    );
    broker.resolve("m0", SendOutcome::Ack { returned: vec![] });
    let receipts: Vec<_> = futures_util::future::join_all(pending).await;
    let receipts: Vec<_> = receipts.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        receipts,
        [
            Receipt::Spilled(SpillReason::Returned),
            Receipt::Confirmed,
            Receipt::Spilled(SpillReason::Returned),
            Receipt::Confirmed,
        ]
    );
    assert_eq!(e.stats().returned, 2);
    assert_eq!(spilled_ids(&spill), ["m0", "m2"]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_spills_everything_in_flight_and_replays_it() {
    let broker = FakeBroker::new(Mode::Hold);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 4);
    wait_state(&e, PublisherState::Healthy).await;
    let mut pending = Vec::new();
    for i in 0..4 {
        pending.push(e.submit(msg(i)).await.unwrap());
    }
    // The window is full: the fifth waits for room.
    let e2 = e.clone();
    let fifth = tokio::spawn(async move { e2.submit(msg(4)).await.unwrap().await });
    settle().await;
    assert_eq!(
        broker.held_ids().len(),
        4,
        "never more than the window in flight"
    );
    broker.with(|s| s.mode = Some(Mode::Ack));
    broker.kill();
    for p in pending {
        assert_eq!(
            p.await.unwrap(),
            Receipt::Spilled(SpillReason::ConnectionLost)
        );
    }
    assert_eq!(
        fifth.await.unwrap().unwrap(),
        Receipt::Spilled(SpillReason::Degraded)
    );
    // Reconnect, replay.
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    let got = broker.received();
    assert_eq!(
        first_occurrences(&got),
        (0..5).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // Duplicates: at most the window.
    assert!(got.len() - 5 <= 4, "{got:?}");
    assert_eq!(broker.with(|s| s.connects), 2);
}

#[tokio::test(start_paused = true)]
async fn a_confirm_timeout_spills_and_reconnects() {
    let broker = FakeBroker::new(Mode::Hold);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 4);
    wait_state(&e, PublisherState::Healthy).await;
    let p = e.submit(msg(0)).await.unwrap();
    broker.with(|s| s.refuse_connects = true);
    // Nobody answers; paused time jumps to the deadline.
    assert_eq!(
        p.await.unwrap(),
        Receipt::Spilled(SpillReason::ConfirmTimeout)
    );
    assert_eq!(e.stats().confirm_timeouts, 1);
    broker.with(|s| {
        s.mode = Some(Mode::Ack);
        s.refuse_connects = false;
    });
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(broker.received(), ["m0", "m0"]);
    assert_eq!(broker.with(|s| s.connects), 2);
}

#[tokio::test(start_paused = true)]
async fn blocked_connection_spills_until_unblocked() {
    let broker = FakeBroker::new(Mode::Hold);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 4);
    wait_state(&e, PublisherState::Healthy).await;
    let p = e.submit(msg(0)).await.unwrap();
    settle().await;
    broker.event(LinkEvent::Blocked("low on disk".into()));
    assert_eq!(p.await.unwrap(), Receipt::Spilled(SpillReason::Blocked));
    let r = e.submit(msg(1)).await.unwrap().await.unwrap();
    assert_eq!(r, Receipt::Spilled(SpillReason::Degraded));
    // No replay while blocked, however long.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(*e.state().borrow(), PublisherState::Degraded);
    assert_eq!(broker.received(), ["m0"]);
    broker.with(|s| s.mode = Some(Mode::Ack));
    broker.event(LinkEvent::Unblocked);
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(broker.received(), ["m0", "m0", "m1"]);
    assert_eq!(broker.with(|s| s.connects), 1, "the connection was kept");
}

#[tokio::test(start_paused = true)]
async fn messages_during_recovery_queue_behind_the_backlog() {
    let broker = FakeBroker::new(Mode::Hold);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 2);
    for i in 0..6 {
        let _ = e.submit(msg(i)).await.unwrap().await.unwrap();
    }
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Recovering).await;
    // New messages while the replay is held up: a head start of one
    // window is taken at once, the rest as the replay makes progress.
    let mut late = Vec::new();
    for i in 6..10 {
        late.push(e.submit(msg(i)).await.unwrap());
    }
    settle().await;
    assert_eq!(spilled_ids(&spill).len(), 6 + 2, "head start = window");
    // Release the replay as it comes.
    while *e.state().borrow() != PublisherState::Healthy {
        settle().await;
        for id in broker.held_ids() {
            broker.resolve(&id, SendOutcome::Ack { returned: vec![] });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for r in futures_util::future::join_all(late).await {
        assert_eq!(r.unwrap(), Receipt::Spilled(SpillReason::Degraded));
    }
    // Behind the backlog, in order, once each.
    assert_eq!(
        broker.received(),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let p = e.submit(msg(10)).await.unwrap();
    settle().await;
    broker.ack_all();
    assert_eq!(p.await.unwrap(), Receipt::Confirmed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_spill_is_an_error_not_an_acknowledgement() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    spill.set_fail_appends(true);
    let e = start(&broker, &spill, 2);
    let err = e.submit(msg(0)).await.unwrap().await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(e.stats().spilled, 0);
}

/// The message rides back with its receipt (`Reply`): whether confirmed or
/// spilled, its memory is freed by the task awaiting the receipt — here the
/// test's own thread — never on the actor's worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_is_freed_where_its_receipt_is_awaited() {
    /// A payload that records the thread that drops it.
    struct Owner(Arc<Mutex<Option<std::thread::ThreadId>>>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            b"payload"
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(std::thread::current().id());
        }
    }
    for broker_down in [false, true] {
        let broker = FakeBroker::new(Mode::Ack);
        broker.with(|s| s.refuse_connects = broker_down);
        let spill = MemorySpill::new();
        let e = start(&broker, &spill, 4);
        if !broker_down {
            wait_state(&e, PublisherState::Healthy).await;
        }
        let freed = Arc::new(Mutex::new(None));
        let payload = bytes::Bytes::from_owner(Owner(Arc::clone(&freed)));
        let receipt = e
            .submit(Message::new("m", payload))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(receipt.is_confirmed(), !broker_down, "{receipt:?}");
        assert_eq!(
            *freed.lock().unwrap(),
            Some(std::thread::current().id()),
            "freed on the awaiting thread (broker down: {broker_down})"
        );
        e.close().await;
    }
}

/// A brief disk-full while degraded, end to end over the real spill log
/// (in memory, with an injected fault): the publish it strikes gets an
/// error, not a receipt; the next ones are spilled again once the log was
/// reopened; and once the broker is back every acknowledged message reaches
/// it, in order — the one that got the error does not (the failing log cut
/// it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_error_fails_that_spill_and_spilling_resumes() {
    use double_buffer::{Fault, MemStorage};

    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let mem = MemStorage::new();
    let spill = mem_disk_spill(mem.clone(), MemStorage::new());
    let e = Engine::start(
        cfg(4),
        Arc::new(broker.clone()),
        Arc::new(spill),
        "publisher",
    )
    .unwrap();
    let publish = |i| {
        let e = e.clone();
        async move { e.submit(msg(i)).await?.await }
    };
    for i in 0..5 {
        assert_eq!(
            publish(i).await.unwrap(),
            Receipt::Spilled(SpillReason::Degraded)
        );
    }
    mem.inject(Fault::Sync, 0, std::io::ErrorKind::StorageFull);
    let err = publish(5).await.unwrap_err();
    assert!(matches!(err, crate::Error::Spill(_)), "{err}");
    mem.heal();
    for i in 6..10 {
        assert_eq!(
            publish(i).await.unwrap(),
            Receipt::Spilled(SpillReason::Degraded)
        );
    }
    assert_eq!(e.stats().spilled, 9);
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    let want: Vec<String> = (0..10)
        .filter(|&i| i != 5)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(first_occurrences(&broker.received()), want);
    e.close().await;
}

/// A record this build cannot decode (say, a newer build's format) is
/// not lost: its bytes go to the quarantine before the checkpoint passes
/// it, it is counted, and the replay goes on with the records after it.
#[tokio::test(start_paused = true)]
async fn an_undecodable_record_is_quarantined_and_the_replay_goes_on() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    let newer = vec![9, 4, b'n', b'e', b'x', b't', 0, b'?'];
    spill.push_raw(record::encode(&msg(0)));
    spill.push_raw(newer.clone());
    for i in 1..4 {
        spill.push_raw(record::encode(&msg(i)));
    }
    let e = start(&broker, &spill, 2);
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(spill.quarantined(), [(1, newer)]);
    assert_eq!(broker.received(), ["m0", "m1", "m2", "m3"]);
    assert!(spill.pending().is_empty(), "checkpointed past it");
    assert_eq!(e.stats().corrupt_records, 1);
}

/// If the quarantine cannot be written, the replay does not skip the
/// record: it publishes what comes before it, checkpoints exactly that and
/// stops with the error; the record and everything after it stay in the
/// log, and the replay goes on once the quarantine can be written.
#[tokio::test(start_paused = true)]
async fn a_record_that_cannot_be_quarantined_stops_the_replay_before_it() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    let newer = vec![9, 1, b'x'];
    spill.push_raw(record::encode(&msg(0)));
    spill.push_raw(record::encode(&msg(1)));
    spill.push_raw(newer.clone());
    spill.push_raw(record::encode(&msg(2)));
    spill.set_fail_quarantine(true);
    let e = start(&broker, &spill, 8);
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Recovering).await;
    wait_state(&e, PublisherState::Degraded).await;
    settle().await;
    assert_eq!(first_occurrences(&broker.received()), ["m0", "m1"]);
    assert_eq!(
        spill.pending()[0],
        newer,
        "stopped at the record, not past it"
    );
    assert_eq!(spill.pending().len(), 2);
    assert!(spill.quarantined().is_empty());
    assert_eq!(e.stats().corrupt_records, 0);
    // Later attempts stop at the same place until the quarantine works.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(spill.pending().len(), 2);
    spill.set_fail_quarantine(false);
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(spill.quarantined(), [(2, newer)]);
    assert_eq!(first_occurrences(&broker.received()), ["m0", "m1", "m2"]);
    assert!(spill.pending().is_empty());
}

/// The same over the real spill log in a real directory: the undecodable
/// record's bytes land in `<spill dir>/quarantine/<record id>.bin`; while
/// that cannot be written (a file is in the way), the replay stops before
/// the record; once it can, the replay goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_lands_in_the_quarantine_directory() {
    use crate::spill::{DiskSpill, QUARANTINE_DIR, SpillConfig};

    let dir = tempfile::tempdir().unwrap();
    let spill_dir = dir.path().join("spill");
    let cfg = SpillConfig::new(&spill_dir);
    let spill = DiskSpill::open(&cfg).unwrap();
    let newer = spill_with_an_undecodable_record(&spill).await;
    // A file where the quarantine directory should be: writing fails.
    let blocker = spill_dir.join(QUARANTINE_DIR);
    std::fs::write(&blocker, b"in the way").unwrap();

    let broker = FakeBroker::new(Mode::Ack);
    let e = Engine::start(
        cfg_with_fast_retry(),
        Arc::new(broker.clone()),
        Arc::new(spill),
        "publisher",
    )
    .unwrap();
    wait_state(&e, PublisherState::Recovering).await;
    wait_state(&e, PublisherState::Degraded).await;
    assert_eq!(first_occurrences(&broker.received()), ["m0"]);
    std::fs::remove_file(&blocker).unwrap();
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(first_occurrences(&broker.received()), ["m0", "m1"]);
    let files: Vec<_> = std::fs::read_dir(&blocker)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_named_by_record_id(files[0].file_name().unwrap().to_str().unwrap());
    assert_eq!(std::fs::read(&files[0]).unwrap(), newer);
    assert_eq!(e.stats().corrupt_records, 1);
    e.close().await;
}

/// The same in memory: the quarantine goes through the opener's storage,
/// like the log, never to the real file system (the log's "directory" is
/// `mem:`). While the quarantine cannot be written (an injected fault),
/// the replay stops before the record and is retried; once it can, the
/// record's bytes are in the quarantine storage and the replay goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_quarantined_in_the_opener_storage() {
    use double_buffer::{Fault, MemStorage, Storage};

    let quarantine = MemStorage::new();
    let spill = mem_disk_spill(MemStorage::new(), quarantine.clone());
    let newer = spill_with_an_undecodable_record(&spill).await;
    // The quarantine file is created, but its fsync fails.
    quarantine.inject(Fault::Sync, 0, std::io::ErrorKind::StorageFull);

    let broker = FakeBroker::new(Mode::Ack);
    let e = Engine::start(
        cfg_with_fast_retry(),
        Arc::new(broker.clone()),
        Arc::new(spill),
        "publisher",
    )
    .unwrap();
    wait_state(&e, PublisherState::Recovering).await;
    wait_state(&e, PublisherState::Degraded).await;
    // Retried, stopping at the same place each time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(first_occurrences(&broker.received()), ["m0"]);
    assert_eq!(e.stats().corrupt_records, 0);
    let names = quarantine.list().unwrap();
    assert!(
        names.iter().all(|n| n.ends_with(".bin.tmp")),
        "nothing under a final name yet: {names:?}"
    );
    quarantine.heal();
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert_eq!(first_occurrences(&broker.received()), ["m0", "m1"]);
    let names = quarantine.list().unwrap();
    assert_eq!(names.len(), 1, "the temporary file is gone: {names:?}");
    assert_named_by_record_id(&names[0]);
    assert_eq!(quarantine.read(&names[0]).unwrap(), newer);
    assert_eq!(e.stats().corrupt_records, 1);
    e.close().await;
    assert!(
        !std::path::Path::new("mem:").exists(),
        "nothing written to the real file system"
    );
}

/// The real spill log (`DiskSpill`, one slice, 16 KiB buffers) over
/// in-memory storage: `log` for the log, `quarantine` for undecodable
/// records; the "directory" is `mem:`.
fn mem_disk_spill(
    log: double_buffer::MemStorage,
    quarantine: double_buffer::MemStorage,
) -> crate::spill::DiskSpill {
    use crate::spill::{DiskSpill, Opener, SpillConfig};

    let log_cfg = double_buffer::Config {
        slices: 1,
        buffer_size: 16 << 10,
        linger: Duration::from_millis(1),
        ..double_buffer::Config::default()
    };
    let cfg = SpillConfig {
        dir: "mem:".into(),
        log: log_cfg.clone(),
        reopen_interval: Duration::from_millis(50),
    };
    DiskSpill::open_with(&cfg, Opener::storage(log, log_cfg, quarantine)).unwrap()
}

/// Appends, durably, `m0`, a record this build cannot decode (a newer
/// format) and `m1`; returns the undecodable record's bytes.
async fn spill_with_an_undecodable_record(spill: &impl crate::spill::Spill) -> Vec<u8> {
    let newer = b"\x09 a record from a newer build".to_vec();
    let records = [
        record::encode(&msg(0)),
        newer.clone(),
        record::encode(&msg(1)),
    ];
    for r in &records {
        let durable = std::future::poll_fn(|cx| spill.poll_append(cx, r))
            .await
            .unwrap();
        durable.await.unwrap();
    }
    newer
}

/// A quarantine file is `<record id>.bin`.
fn assert_named_by_record_id(name: &str) {
    assert!(
        name.ends_with(".bin") && name.trim_end_matches(".bin").parse::<u64>().is_ok(),
        "named by record id: {name}"
    );
}

fn cfg_with_fast_retry() -> EngineConfig {
    EngineConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
        },
        ..cfg(4)
    }
}

/// When the spill log has no room (its buffers are being written), the
/// actor does not block: records wait in order, intake stops at
/// `spill_window`, nothing is acknowledged early, and all of it is appended
/// in order once there is room.
#[tokio::test(start_paused = true)]
async fn a_full_spill_log_holds_intake_without_blocking_and_keeps_order() {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    spill.set_full(true);
    let e = start(&broker, &spill, 4);
    // More than `spill_window` (64) plus the channel (64) can hold.
    let receipts: Vec<_> = (0..200)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.submit(msg(i)).await?.await })
        })
        .collect();
    settle().await;
    assert!(spill.pending().is_empty());
    assert!(
        receipts.iter().all(|r| !r.is_finished()),
        "nothing acknowledged before it is durable"
    );
    spill.set_full(false);
    for r in receipts {
        assert_eq!(
            r.await.unwrap().unwrap(),
            Receipt::Spilled(SpillReason::Degraded)
        );
    }
    let ids: Vec<_> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(spilled_ids(&spill), ids, "appended in publish order");
    assert_eq!(e.stats().spilled, 200);
}

#[tokio::test(start_paused = true)]
async fn a_failure_during_replay_keeps_the_rest_of_the_log() {
    let broker = FakeBroker::new(Mode::Hold);
    broker.with(|s| s.refuse_connects = true);
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 3);
    for i in 0..9 {
        let _ = e.submit(msg(i)).await.unwrap().await.unwrap();
    }
    broker.with(|s| s.refuse_connects = false);
    wait_state(&e, PublisherState::Recovering).await;
    settle().await;
    // First three replayed: ack m0 and m2, nack m1.
    assert_eq!(broker.held_ids(), ["m0", "m1", "m2"]);
    broker.resolve("m0", SendOutcome::Ack { returned: vec![] });
    broker.resolve("m2", SendOutcome::Ack { returned: vec![] });
    broker.resolve("m1", SendOutcome::Nack { returned: vec![] });
    wait_state(&e, PublisherState::Degraded).await;
    settle().await; // the checkpoint is written on the blocking pool
    // m0 is checkpointed, m1 and everything after stay.
    assert_eq!(spilled_ids(&spill)[0], "m1");
    broker.with(|s| s.mode = Some(Mode::Ack));
    broker.ack_all();
    wait_state(&e, PublisherState::Healthy).await;
    e.flush().await.unwrap();
    assert!(spill.pending().is_empty());
    let got = broker.received();
    assert_eq!(
        first_occurrences(&got),
        (0..9).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn close_gives_every_accepted_message_a_receipt() {
    // Two in flight (held by the broker), more queued behind the window.
    let (broker, _spill, e, pending) = held(2, 6).await;
    let closer = tokio::spawn({
        let e = e.clone();
        async move { e.close().await }
    });
    settle().await;
    // Nothing new gets in once closing started.
    assert!(matches!(
        e.submit(msg(99)).await,
        Err(crate::Error::Closed(_))
    ));
    // The broker answers the two in flight; the queued ones go out too.
    while !closer.is_finished() {
        broker.ack_all();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), Receipt::Confirmed);
    }
    assert_eq!(*e.state().borrow(), PublisherState::Closed);
    assert!(matches!(e.flush().await, Err(crate::Error::Closed(_))));
}

#[tokio::test(start_paused = true)]
async fn close_spills_what_the_broker_never_answers() {
    let (_broker, spill, e, mut pending) = held(4, 1).await;
    let p = pending.pop().unwrap();
    e.close().await; // waits for the confirm timeout
    assert_eq!(
        p.await.unwrap(),
        Receipt::Spilled(SpillReason::ConfirmTimeout)
    );
    assert_eq!(spilled_ids(&spill), ["m0"]);
}

#[tokio::test(start_paused = true)]
async fn an_unroutable_record_moves_to_the_tail_and_does_not_block_the_rest() {
    poison_record_moves_to_the_tail(|s| &mut s.unroutable, Verdict::Returned).await;
}

/// A record the broker rejects for what it is (Kafka: too large) would
/// stop every replay at the same place, for good: it is moved like an
/// unroutable one.
#[tokio::test(start_paused = true)]
async fn a_rejected_record_moves_to_the_tail_and_does_not_block_the_rest() {
    poison_record_moves_to_the_tail(|s| &mut s.rejected, Verdict::Rejected).await;
}

async fn poison_record_moves_to_the_tail(
    set: fn(&mut BrokerState) -> &mut HashSet<String>,
    verdict: Verdict,
) {
    let broker = FakeBroker::new(Mode::Ack);
    broker.with(|s| {
        s.refuse_connects = true;
        set(s).insert("m1".into());
    });
    let spill = MemorySpill::new();
    let e = start(&broker, &spill, 4);
    for i in 0..6 {
        let _ = e.submit(msg(i)).await.unwrap().await.unwrap();
    }
    broker.with(|s| s.refuse_connects = false);
    // Everything but m1 gets through; m1 waits at the end of the log.
    let mut waited = Duration::ZERO;
    while spilled_ids(&spill) != ["m1"] {
        assert!(
            waited < Duration::from_secs(600),
            "the rest never got past m1: {:?}",
            spilled_ids(&spill)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let got = broker.received();
    for i in [0, 2, 3, 4, 5] {
        assert!(got.contains(&format!("m{i}")), "m{i} missing from {got:?}");
    }
    let st = e.stats();
    assert!(st.returned + st.nacked >= 1, "{st:?}");
    assert_ne!(*e.state().borrow(), PublisherState::Healthy);
    // The topology (or the limit) is fixed: m1 is delivered at the next
    // attempt.
    broker.with(|s| set(s).clear());
    e.flush().await.unwrap();
    assert!(spill.pending().is_empty());
    assert_eq!(broker.first_verdict("m1"), Some(verdict));
    assert_eq!(broker.received().last().map(String::as_str), Some("m1"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Publish(usize),
        AckOldest,
        AckNewest,
        NackOldest,
        RejectOldest,
        ReturnVia,
        Kill,
        RefuseConnects(bool),
        Block,
        Unblock,
        Sleep(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..4).prop_map(Op::Publish),
            3 => Just(Op::AckOldest),
            2 => Just(Op::AckNewest),
            1 => Just(Op::NackOldest),
            1 => Just(Op::RejectOldest),
            1 => Just(Op::ReturnVia),
            1 => Just(Op::Kill),
            1 => any::<bool>().prop_map(Op::RefuseConnects),
            1 => Just(Op::Block),
            1 => Just(Op::Unblock),
            2 => (1u64..3000).prop_map(Op::Sleep),
        ]
    }

    proptest! {
        // 64 cases by default; PROPTEST_CASES=N digs deeper.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        /// Whatever the broker does: every message gets exactly one receipt;
        /// "confirmed" only if the broker acked that very copy without a
        /// return; once the broker behaves, every acknowledged message
        /// reaches it; and the documented order holds: the first stored
        /// copies follow publish order, except that a message whose copy
        /// failed (refused, or lost with its link) may be overtaken by up to
        /// 2 × (window − 1) messages, and a returned one by any.
        #[test]
        fn nothing_acknowledged_is_lost(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(scenario(ops));
        }
    }

    const WINDOW: usize = 4;

    async fn scenario(ops: Vec<Op>) {
        let broker = FakeBroker::new(Mode::Hold);
        let spill = MemorySpill::new();
        let e = start(&broker, &spill, WINDOW);
        let mut next = 0usize;
        let mut receipts: HashMap<String, tokio::task::JoinHandle<crate::Result<Receipt>>> =
            HashMap::new();
        for op in ops {
            match op {
                Op::Publish(n) => {
                    for _ in 0..n {
                        let id = format!("m{next}");
                        next += 1;
                        let e2 = e.clone();
                        let m = Message::new(id.clone(), "x");
                        receipts.insert(id, tokio::spawn(async move { e2.submit(m).await?.await }));
                    }
                }
                Op::AckOldest
                | Op::AckNewest
                | Op::NackOldest
                | Op::RejectOldest
                | Op::ReturnVia => {
                    let held = broker.held_ids();
                    let pick = match op {
                        Op::AckNewest => held.last(),
                        _ => held.first(),
                    };
                    if let Some(id) = pick.cloned() {
                        match op {
                            Op::NackOldest => {
                                broker.resolve(&id, SendOutcome::Nack { returned: vec![] });
                            }
                            Op::RejectOldest => {
                                let error = "too large".into();
                                broker.resolve(&id, SendOutcome::Rejected { error });
                            }
                            Op::ReturnVia if held.len() >= 2 => {
                                // The newest held message is returned; its
                                // return rides on the oldest one's ack.
                                let victim = held.last().unwrap().clone();
                                broker.mark_returned(&victim);
                                broker.resolve(
                                    &id,
                                    SendOutcome::Ack {
                                        returned: vec![Arc::from(victim.as_str())],
                                    },
                                );
                                broker.resolve(&victim, SendOutcome::Ack { returned: vec![] });
                            }
                            _ => broker.resolve(&id, SendOutcome::Ack { returned: vec![] }),
                        }
                    }
                }
                Op::Kill => broker.kill(),
                Op::RefuseConnects(b) => broker.with(|s| s.refuse_connects = b),
                Op::Block => broker.event(LinkEvent::Blocked("alarm".into())),
                Op::Unblock => broker.event(LinkEvent::Unblocked),
                Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            settle().await;
        }
        // The broker behaves from now on.
        broker.with(|s| {
            s.refuse_connects = false;
            s.mode = Some(Mode::Ack);
        });
        broker.event(LinkEvent::Unblocked);
        broker.ack_all();
        e.flush().await.unwrap();
        let received: HashSet<String> = broker.received().into_iter().collect();
        for (id, h) in receipts {
            let r = h.await.unwrap().unwrap();
            if r == Receipt::Confirmed {
                assert_eq!(
                    broker.first_verdict(&id),
                    Some(Verdict::Acked),
                    "{id} reported confirmed"
                );
            }
            assert!(
                received.contains(&id),
                "{id} was acknowledged ({r:?}) but never reached the broker"
            );
        }
        assert!(
            spill.pending().is_empty(),
            "the log drains once the broker behaves"
        );
        let copies = broker.with(|s| s.copies.clone());
        check_order(&copies, WINDOW);
        check_copy_distance(&copies, WINDOW);
    }

    /// The Dedupe sizing promise without crashes: between the first copy of
    /// a message the broker may have stored and any later copy, fewer than
    /// 2 × window other messages are stored for the first time (a Dedupe
    /// remembers ids in the order it first saw them), unroutable and
    /// rejected messages excepted.
    fn check_copy_distance(copies: &[(String, Verdict)], window: usize) {
        // Acked copies are stored; pending ones (the link died) may be.
        let stored: Vec<(usize, &str)> = copies
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| matches!(v, Verdict::Acked | Verdict::Pending))
            .map(|(at, (id, _))| (at, id.as_str()))
            .collect();
        let mut first: HashMap<&str, usize> = HashMap::new();
        for &(at, id) in &stored {
            first.entry(id).or_insert(at);
        }
        // Returned and rejected ones move to the tail of the log: they may
        // come back after any number of others (documented).
        let moved: HashSet<&str> = copies
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Returned | Verdict::Rejected))
            .map(|(id, _)| id.as_str())
            .collect();
        for &(at, id) in &stored {
            let from = first[id];
            if at == from || moved.contains(id) {
                continue;
            }
            let between = first.values().filter(|&&f| f > from && f < at).count();
            assert!(
                between <= 2 * (window - 1),
                "{between} new messages between two copies of {id}: {copies:?}"
            );
        }
    }

    /// The ordering promise, on the copies the broker got (wire order, with
    /// the verdict each got; ids are `m<publish order>`).
    fn check_order(copies: &[(String, Verdict)], window: usize) {
        let n = |id: &str| id[1..].parse::<usize>().unwrap();
        let mut first_ack: HashMap<usize, usize> = HashMap::new();
        let mut first_failed: HashMap<usize, usize> = HashMap::new();
        let mut returned: HashSet<usize> = HashSet::new();
        for (at, (id, v)) in copies.iter().enumerate() {
            let i = n(id);
            match v {
                Verdict::Acked => {
                    first_ack.entry(i).or_insert(at);
                }
                // Moved to the tail of the log when replayed: any number
                // of messages may overtake it.
                Verdict::Returned | Verdict::Rejected => {
                    returned.insert(i);
                    first_failed.entry(i).or_insert(at);
                }
                Verdict::Refused | Verdict::Pending => {
                    first_failed.entry(i).or_insert(at);
                }
            }
        }
        for (&i, &ai) in &first_ack {
            if returned.contains(&i) {
                continue;
            }
            // Messages published after m{i} but stored before it.
            let overtakers: Vec<usize> = first_ack
                .iter()
                .filter(|&(&j, &aj)| j > i && aj < ai)
                .map(|(&j, _)| j)
                .collect();
            let Some(earliest) = overtakers.iter().map(|j| first_ack[j]).min() else {
                continue;
            };
            // Fewer than a window in flight with its first copy, and
            // fewer than a window replayed with it (the same ones each
            // time it fails again).
            assert!(
                overtakers.len() <= 2 * (window - 1),
                "m{i} overtaken by {overtakers:?}: {copies:?}"
            );
            assert!(
                first_failed.get(&i).is_some_and(|&f| f < earliest),
                "m{i} overtaken by {overtakers:?} though no copy of it failed: {copies:?}"
            );
        }
    }
}
