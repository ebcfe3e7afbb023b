//! # order-service: no order is lost when the broker goes away
//!
//! Orders are core data (design notes §1): losing one is not allowed, and
//! the shop must keep taking orders while RabbitMQ is unreachable. The story:
//!
//! 1. A consumer processes orders from a durable RabbitMQ queue with manual
//!    acks (`mq_reliable::ReliableConsumer`) and drops the duplicates that
//!    at-least-once delivery allows (`mq_reliable::Dedupe`, keyed by the
//!    order id carried as AMQP `message_id`).
//! 2. The order service publishes 100 000 orders, 10 000 a second, through
//!    `mq_reliable::ReliablePublisher`: persistent, mandatory, with
//!    publisher confirms. Its connection to the broker goes through a
//!    fault-injection proxy (`testkit::FaultProxy`).
//! 3. A quarter of the way in, the network to the broker is cut: the live
//!    connection drops and reconnects are refused, for three seconds. The
//!    publisher degrades at once: every order it cannot get confirmed (the
//!    ones in flight, and every new one) goes to the local spill log, a
//!    segmented double buffer (`double-buffer`) that batches appends and
//!    fsyncs them; `publish` returns `Spilled` only after that fsync. Order
//!    intake never stops.
//! 4. The network returns: the publisher reconnects, replays the spill log
//!    through the confirmed path (new orders queue behind the backlog), and
//!    is healthy again once the log is empty.
//! 5. At the end every order was processed exactly once: the ids in flight
//!    at the cut may have reached the broker *and* been spilled, so they
//!    arrive twice; the dedupe drops the second copy.
//!
//! The scenario ends with one JSON line of promises and exits non-zero if
//! one failed. Metrics (`mq_reliable_*`, `spill_log_*`) are served for
//! Prometheus at the printed URL.
//!
//! **Demo settings:** one 3 s outage; reconnect backoff capped at 0.5 s
//! (default 5 s) so that the replay starts soon after the network returns;
//! a dedupe window as large as the run (a service sizes it to the publisher
//! window plus the replay checkpoint interval). Needs RabbitMQ
//! (`cargo xtask services up`); run it with `cargo xtask demo order-service`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use demo_support::{
    MetricsEndpoint, Phase, ProgressBar, Promises, counter_bar, demo_setting, run_id, thousands,
};
use mq_reliable::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use mq_reliable::lapin::types::FieldTable;
use mq_reliable::lapin::{Connection, ConnectionProperties};
use mq_reliable::{
    BackoffConfig, ConsumerConfig, Dedupe, Message, Outcome, PendingReceipt, PublisherConfig,
    PublisherState, QueueSpec, Receipt, ReliableConsumer, ReliablePublisher, Topology,
};
use parking_lot::Mutex;
use testkit::{FaultProxy, Service};
use tokio::sync::{mpsc, watch};
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "order-service",
    about = "Orders survive a broker outage (spill, replay) and are processed exactly once"
)]
struct Args {
    /// Orders to publish.
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// Orders per second the shop takes.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// The network to the broker is cut once this share of the orders was taken.
    #[arg(long, default_value_t = 0.25)]
    cut_at: f64,
    /// How long the broker stays unreachable, in seconds.
    #[arg(long, default_value_t = 3)]
    outage_secs: u64,
    /// Where to serve Prometheus metrics (default: a free loopback port).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    demo_support::init_logging();
    let args = Args::parse();
    demo_support::exit_code("order-service", scenario(args).await)
}

async fn scenario(args: Args) -> Result<ExitCode> {
    if args.orders == 0 || args.rate == 0 || !(0.0..1.0).contains(&args.cut_at) {
        bail!("need orders > 0, rate > 0 and 0 <= cut-at < 1");
    }
    // Installed before the publisher starts: it registers its metrics then.
    let metrics = MetricsEndpoint::install(args.metrics_addr)?;
    let amqp = testkit::require(Service::RabbitMq);
    let proxy = FaultProxy::start(Service::RabbitMq.addr()?)?;
    let through_proxy = with_authority(&amqp, proxy.addr())?;
    let outage = Duration::from_secs(args.outage_secs);
    let n = args.orders;
    demo_setting(
        "broker outage",
        format!(
            "one, {} s long, after {:.0} % of the orders",
            args.outage_secs,
            args.cut_at * 100.0
        ),
        "whenever the network fails",
    );
    demo_setting(
        "reconnect backoff",
        "100 ms doubling up to 0.5 s",
        "100 ms doubling up to 5 s",
    );
    demo_setting(
        "dedupe window",
        format!("{} ids (the whole run)", thousands(n)),
        "publisher window + replay checkpoint interval",
    );
    let mut promises = Promises::new("order-service");
    let run = run_id();
    let queue = format!("demo-orders-{run}");
    let spill_dir = tempfile::tempdir().context("creating the spill directory")?;

    // 1. The consumer: manual acks, dedupe by order id.
    let book = Arc::new(Mutex::new(Book::new(n)));
    let (all_processed, mut all_processed_rx) = watch::channel(false);
    let consumer = {
        let book = Arc::clone(&book);
        ReliableConsumer::start(
            ConsumerConfig {
                prefetch: 500,
                connection_name: format!("order-service consumer {run}"),
                ..ConsumerConfig::new(&amqp, QueueSpec::classic(&queue))
            },
            move |delivery| {
                let outcome = match delivery.id.as_deref().and_then(order_number) {
                    Some(order) => {
                        let mut book = book.lock();
                        book.deliver(order);
                        if book.processed_count == book.deliveries.len() as u64 {
                            let _ = all_processed.send(true);
                        }
                        Outcome::Ack
                    }
                    None => {
                        tracing::warn!("a message without an order id: rejected");
                        Outcome::Reject
                    }
                };
                async move { outcome }
            },
        )?
    };

    // 2. The publisher, through the fault proxy.
    let mut config = PublisherConfig::new(
        &through_proxy,
        Topology::queue(QueueSpec::classic(&queue)),
        spill_dir.path(),
    );
    config.connection_name = format!("order-service {run}");
    config.reliability.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(500),
    };
    let publisher = ReliablePublisher::start(config)?;
    let mut state = publisher.state();
    tokio::time::timeout(
        Duration::from_secs(15),
        state.wait_for(|s| *s == PublisherState::Healthy),
    )
    .await
    .context("the publisher did not connect to RabbitMQ within 15 s")??;
    let timeline = StateLog::start(&publisher);
    info!(
        "publishing {} orders to queue {queue} through the fault proxy {} → {}",
        thousands(n),
        proxy.addr(),
        proxy.upstream()
    );

    // 3. Take orders at a steady rate; a collector awaits their receipts.
    let receipts = Arc::new(Receipts::default());
    let (tx, rx) = mpsc::channel(8192);
    let producer = tokio::spawn(take_orders(publisher.clone(), n, args.rate, tx));
    let bar = counter_bar("orders acknowledged", n);
    let collector = tokio::spawn(collect(rx, Arc::clone(&receipts), bar.clone()));

    // 4. The network to the broker fails, then returns.
    let cut_after = (n as f64 * args.cut_at) as u64;
    let mut cut: Option<Instant> = None;
    let mut restored: Option<Instant> = None;
    while restored.is_none() {
        let taken = receipts.submitted.load(Ordering::Relaxed);
        if cut.is_none() && taken >= cut_after {
            // Timed from before the call: the publisher may notice while
            // `refuse` is still waiting for the listener to close.
            cut = Some(Instant::now());
            proxy.refuse();
            info!(
                "network to the broker cut at order {}: connection dropped, reconnects refused",
                thousands(taken)
            );
        }
        if let Some(at) = cut
            && at.elapsed() >= outage
        {
            restored = Some(Instant::now());
            proxy.restore();
            info!(
                "network to the broker back after {:.1} s",
                at.elapsed().as_secs_f64()
            );
        }
        bar.set_message(format!("orders acknowledged ({})", *state.borrow()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cut = cut.context("the cut never happened")?;
    let restored = restored.context("the network never returned")?;
    producer.await??;
    collector.await?;
    bar.finish_and_clear();

    // 5. Drain: the spill log replayed, the queue consumed.
    let phase = Phase::start("replaying the spill log", Duration::from_secs(5));
    let flushed = tokio::time::timeout(Duration::from_secs(120), publisher.flush()).await;
    phase.finish();
    let flushed = matches!(flushed, Ok(Ok(())));
    let phase = Phase::start("consumer catching up", Duration::from_secs(5));
    let consumed = tokio::time::timeout(
        Duration::from_secs(120),
        all_processed_rx.wait_for(|done| *done),
    )
    .await
    .is_ok();
    // Late duplicates may still sit behind the last new order: wait until
    // the queue is empty and nothing is held unacknowledged.
    let drained = wait_drained(&amqp, &queue, &consumer).await;
    phase.finish();
    let consumer_stats = consumer.shutdown().await?;
    publisher.close().await;
    let stats = publisher.stats();
    let timeline = timeline.events();
    delete_queue(&amqp, &queue).await;

    // What was promised, and what happened.
    let (lost, twice, once, duplicates, delivered) = {
        let book = book.lock();
        (
            book.processed.iter().filter(|&&p| p == 0).count(),
            book.processed.iter().filter(|&&p| p > 1).count(),
            book.processed.iter().filter(|&&p| p == 1).count(),
            book.dedupe.duplicates(),
            book.delivered,
        )
    };
    let confirmed = receipts.confirmed.load(Ordering::Relaxed);
    let spilled = receipts.spilled.load(Ordering::Relaxed);
    let refused = receipts.failed.load(Ordering::Relaxed);
    promises.check(
        "no acknowledged order is lost",
        format!(
            "orders lost: {lost} of {} ({} confirmed by RabbitMQ, {} spilled and fsynced, \
             {refused} unacknowledged)",
            thousands(n),
            thousands(confirmed),
            thousands(spilled)
        ),
        lost == 0 && refused == 0 && consumed,
    );
    info!(
        "consumer: {} deliveries, {} redelivered by RabbitMQ, {} duplicates dropped",
        thousands(delivered),
        consumer_stats.redelivered,
        thousands(duplicates)
    );
    promises.check(
        "every order is processed exactly once after dedupe",
        format!(
            "{} of {} processed once, {twice} twice or more; {} duplicate deliveries \
             dropped by Dedupe",
            thousands(once as u64),
            thousands(n),
            thousands(duplicates),
        ),
        once as u64 == n && twice == 0 && drained,
    );
    let degraded = first_after(&timeline, cut, PublisherState::Degraded);
    let recovering = first_after(&timeline, restored, PublisherState::Recovering);
    let healthy = first_after(&timeline, restored, PublisherState::Healthy);
    promises.check(
        "the publisher spills while the broker is away and replays when it returns",
        match (degraded, recovering, healthy) {
            (Some(d), Some(r), Some(h)) => format!(
                "degraded {:.0} ms after the cut; {} spilled, {} replayed (from {:.2} s after \
                 the network returned); healthy {:.2} s after it returned; spill log {}",
                d.as_secs_f64() * 1e3,
                thousands(stats.spilled),
                thousands(stats.replayed),
                r.as_secs_f64(),
                h.as_secs_f64(),
                if flushed { "empty" } else { "NOT empty" }
            ),
            _ => format!(
                "state changes after the cut: {:?}",
                timeline
                    .iter()
                    .filter(|(t, _)| *t >= cut)
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
            ),
        },
        degraded.is_some()
            && healthy.is_some()
            && stats.spilled > 0
            && stats.replayed >= stats.spilled
            && flushed,
    );
    // Orders taken while the broker was unreachable: acknowledged by the
    // spill log alone. (Once it is back, new orders wait for the replay's
    // pace by design, so they are not counted here.)
    let mut waits: Vec<f64> = receipts
        .spilled_latency_ms
        .lock()
        .iter()
        .filter(|(at, _)| (cut..restored).contains(at))
        .map(|(_, ms)| *ms)
        .collect();
    waits.sort_by(f64::total_cmp);
    let p99 = percentile(&waits, 0.99);
    let max = waits.last().copied().unwrap_or(0.0);
    promises.check(
        "orders are taken while the broker is away",
        format!(
            "{} orders taken in the {:.1} s outage; receipt (after the fsync) p99 \
             {p99:.1} ms, max {max:.1} ms",
            thousands(waits.len() as u64),
            outage.as_secs_f64()
        ),
        !waits.is_empty() && p99 < 1000.0,
    );
    info!(
        "publisher counters: confirmed {}, spilled {}, replayed {}, nacked {}, returned {}, \
         confirm timeouts {}, connections {}",
        stats.confirmed,
        stats.spilled,
        stats.replayed,
        stats.nacked,
        stats.returned,
        stats.confirm_timeouts,
        stats.connections
    );
    metrics
        .print_key_metrics(&["mq_reliable_", "spill_log_"])
        .await?;
    Ok(promises.finish())
}

/// What the consumer saw, per order.
struct Book {
    dedupe: Dedupe,
    /// Times each order was processed (after the dedupe): must end at 1.
    processed: Vec<u32>,
    processed_count: u64,
    delivered: u64,
    deliveries: Vec<u32>,
}

impl Book {
    fn new(n: u64) -> Book {
        Book {
            dedupe: Dedupe::new(n as usize),
            processed: vec![0; n as usize],
            processed_count: 0,
            delivered: 0,
            deliveries: vec![0; n as usize],
        }
    }

    /// One delivery of `order`: processed only the first time its id is seen.
    fn deliver(&mut self, order: u64) {
        let Some(slot) = self.deliveries.get_mut(order as usize) else {
            tracing::warn!("order {order} is not one of ours");
            return;
        };
        *slot += 1;
        self.delivered += 1;
        if self.dedupe.first_seen(&order_id(order)) {
            // "Process" the order: here, count it.
            self.processed[order as usize] += 1;
            self.processed_count += 1;
        }
    }
}

fn order_id(n: u64) -> String {
    format!("order-{n:07}")
}

fn order_number(id: &str) -> Option<u64> {
    id.strip_prefix("order-")?.parse().ok()
}

/// Receipts by kind, and how long the spilled ones took.
#[derive(Default)]
struct Receipts {
    submitted: AtomicU64,
    confirmed: AtomicU64,
    spilled: AtomicU64,
    failed: AtomicU64,
    /// (submitted at, ms until the receipt) of every spilled order.
    spilled_latency_ms: Mutex<Vec<(Instant, f64)>>,
}

/// Submits `n` orders at `rate` per second, in order; each pending receipt
/// goes to the collector.
async fn take_orders(
    publisher: ReliablePublisher,
    n: u64,
    rate: u64,
    receipts: mpsc::Sender<(PendingReceipt, Instant)>,
) -> Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut next = 0u64;
    while next < n {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(n);
        while next < due {
            let payload = format!(
                r#"{{"order":{next},"sku":"widget-{}","quantity":{}}}"#,
                next % 97,
                1 + next % 5
            );
            let pending = publisher
                .submit(Message::new(order_id(next), payload))
                .await?;
            receipts
                .send((pending, Instant::now()))
                .await
                .context("the receipt collector stopped")?;
            next += 1;
        }
    }
    Ok(())
}

/// Awaits every receipt in a task of its own, so that each one's latency is
/// its own (not that of a slower receipt ahead of it).
async fn collect(
    mut rx: mpsc::Receiver<(PendingReceipt, Instant)>,
    receipts: Arc<Receipts>,
    bar: ProgressBar,
) {
    let mut waiting = tokio::task::JoinSet::new();
    while let Some((pending, submitted)) = rx.recv().await {
        receipts.submitted.fetch_add(1, Ordering::Relaxed);
        let (receipts, bar) = (Arc::clone(&receipts), bar.clone());
        waiting.spawn(async move {
            match pending.await {
                Ok(Receipt::Confirmed) => {
                    receipts.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Receipt::Spilled(_)) => {
                    receipts.spilled.fetch_add(1, Ordering::Relaxed);
                    receipts
                        .spilled_latency_ms
                        .lock()
                        .push((submitted, submitted.elapsed().as_secs_f64() * 1e3));
                }
                Err(e) => {
                    tracing::error!("an order was not acknowledged: {e}");
                    receipts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            bar.inc(1);
        });
        // Reap finished ones as we go, so the set stays small.
        while waiting.try_join_next().is_some() {}
    }
    while waiting.join_next().await.is_some() {}
}

/// Every state the publisher went through, with when.
struct StateLog {
    events: Arc<Mutex<Vec<(Instant, PublisherState)>>>,
}

impl StateLog {
    fn start(publisher: &ReliablePublisher) -> StateLog {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut state = publisher.state();
        let log = Arc::clone(&events);
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let s = *state.borrow_and_update();
                info!("publisher state: {s}");
                log.lock().push((Instant::now(), s));
            }
        });
        StateLog { events }
    }

    fn events(&self) -> Vec<(Instant, PublisherState)> {
        self.events.lock().clone()
    }
}

/// How long after `since` the publisher first entered `state`.
fn first_after(
    events: &[(Instant, PublisherState)],
    since: Instant,
    state: PublisherState,
) -> Option<Duration> {
    events
        .iter()
        .find(|(t, s)| *t >= since && *s == state)
        .map(|(t, _)| t.duration_since(since))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `amqp://user:pass@host:port/vhost` with `host:port` replaced by `addr`.
fn with_authority(url: &str, addr: SocketAddr) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("an AMQP URL has a scheme")?;
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    Ok(format!("{scheme}://{userinfo}{addr}{path}"))
}

/// Waits (up to 30 s) until the queue is empty and the consumer holds
/// nothing unacknowledged.
async fn wait_drained(url: &str, queue: &str, consumer: &ReliableConsumer) -> bool {
    let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await else {
        return false;
    };
    let Ok(channel) = conn.create_channel().await else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut drained = false;
    while Instant::now() < deadline {
        let ready = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count());
        if matches!(ready, Ok(0)) && consumer.unacked() == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "drained".into()).await;
    drained
}

async fn delete_queue(url: &str, queue: &str) {
    if let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await {
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "demo over".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_round_trip() {
        assert_eq!(order_number(&order_id(42)), Some(42));
        assert_eq!(order_number("x-1"), None);
    }

    #[test]
    fn the_proxy_replaces_only_the_authority() {
        let addr: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(
            with_authority("amqp://guest:guest@127.0.0.1:5672/%2f", addr).unwrap(),
            "amqp://guest:guest@127.0.0.1:9999/%2f"
        );
        assert_eq!(
            with_authority("amqp://localhost", addr).unwrap(),
            "amqp://127.0.0.1:9999"
        );
    }

    #[test]
    fn a_book_processes_each_order_once() {
        let mut b = Book::new(3);
        for o in [0, 1, 1, 2, 0] {
            b.deliver(o);
        }
        assert_eq!(b.processed, vec![1, 1, 1]);
        assert_eq!((b.delivered, b.dedupe.duplicates()), (5, 2));
    }
}
