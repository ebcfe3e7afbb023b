//! The core promise under network faults: 100 000 messages while the
//! connection is cut, refused and blackholed; every acknowledged id
//! arrives, duplicates are counted and bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mq_reliable::{Message, PublisherState, QueueSpec, Receipt, ReliablePublisher};

use crate::support::*;

const N: u64 = 100_000;
const WINDOW: usize = 512;
const RATE: u64 = 8_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_survive_cuts_refusals_and_a_blackhole() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("faults"));
    let spec = QueueSpec::classic(&queue);
    let proxy = proxy();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_cfg(&via(&url, proxy.addr()), spec.clone(), dir.path());
    cfg.reliability.window = WINDOW;
    cfg.reliability.checkpoint_every = 256;
    let publisher = ReliablePublisher::start(cfg).unwrap();
    healthy(&publisher).await;

    // Every state the publisher goes through.
    let mut state = publisher.state();
    let states = tokio::spawn(async move {
        let mut seen = vec![*state.borrow()];
        while state.changed().await.is_ok() {
            let s = *state.borrow_and_update();
            seen.push(s);
            if s == PublisherState::Closed {
                break;
            }
        }
        seen
    });

    // The consumer reads straight from the broker.
    let (consumer, got) = collector(consumer_cfg(&url, spec, 500));

    // Faults, each striking a healthy publisher with a full window in
    // flight, while the producer runs.
    let submitted = Arc::new(AtomicU64::new(0));
    let progress = Arc::clone(&submitted);
    let faults_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::clone(&faults_done);
    let watch = publisher.state();
    let faults = tokio::spawn(async move {
        let mut during = Vec::new();
        let healthy_then = |pause: u64| {
            let mut watch = watch.clone();
            async move {
                let _ = watch.wait_for(|s| *s == PublisherState::Healthy).await;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        };
        healthy_then(500).await;
        proxy.cut();
        during.push(progress.load(Ordering::Relaxed));
        healthy_then(700).await;
        proxy.cut();
        during.push(progress.load(Ordering::Relaxed));
        healthy_then(700).await;
        proxy.refuse();
        during.push(progress.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(600)).await;
        proxy.restore();
        healthy_then(700).await;
        proxy.blackhole();
        during.push(progress.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        proxy.restore();
        healthy_then(700).await;
        proxy.cut();
        during.push(progress.load(Ordering::Relaxed));
        // Until the publisher has noticed the last fault and recovered.
        let mut w = watch.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            w.wait_for(|s| *s != PublisherState::Healthy),
        )
        .await;
        healthy_then(0).await;
        done.store(true, Ordering::Relaxed);
        (proxy, during)
    });

    let mut pending = FuturesUnordered::new();
    let (mut confirmed, mut spilled) = (0u64, 0u64);
    let mut tally =
        |r: mq_reliable::Result<Receipt>| match r.expect("every message is acknowledged") {
            Receipt::Confirmed => confirmed += 1,
            Receipt::Spilled(_) => spilled += 1,
        };
    // A steady producer (RATE messages/s), as an application would be;
    // at least N messages, and on until the last fault struck.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut i = 0;
    while i < N || !faults_done.load(Ordering::Relaxed) {
        if i % (RATE / 100) == 0 {
            tick.tick().await;
        }
        let p = publisher
            .submit(Message::new(
                format!("{i}"),
                format!("payload of message {i}"),
            ))
            .await
            .unwrap();
        pending.push(p);
        i += 1;
        submitted.store(i, Ordering::Relaxed);
        while pending.len() > 4 * WINDOW {
            tally(pending.next().await.unwrap());
        }
    }
    while let Some(r) = pending.next().await {
        tally(r);
    }
    let total = i;
    let (proxy, during) = faults.await.unwrap();
    assert_eq!(confirmed + spilled, total);
    assert!(spilled > 0, "the faults must have forced spilling");

    tokio::time::timeout(Duration::from_secs(90), publisher.flush())
        .await
        .expect("the spill log never drained")
        .unwrap();
    let stats = publisher.stats();
    eventually(Duration::from_secs(60), "every id at the consumer", || {
        got.distinct() as u64 == total
    })
    .await;
    for i in 0..total {
        assert!(got.count(&i.to_string()) >= 1, "message {i} lost");
    }
    // Duplicates: only messages in flight when a failure struck, at most
    // one window per connection lost.
    let duplicates = got.total() - total;
    let bound = WINDOW as u64 * stats.connections;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, bound {bound} ({} connections)",
        stats.connections
    );
    assert!(stats.connections >= 6, "a reconnect per fault: {stats:?}");
    assert!(
        stats.confirm_timeouts >= 1,
        "the blackhole stalls confirms: {stats:?}"
    );
    assert!(stats.replayed >= spilled, "{stats:?}");
    consumer.shutdown().await.unwrap();
    publisher.close().await;
    drop(proxy);
    let seen = states.await.unwrap();
    for s in [
        PublisherState::Degraded,
        PublisherState::Recovering,
        PublisherState::Healthy,
    ] {
        assert!(seen.contains(&s), "never {s}: {seen:?}");
    }
    eprintln!(
        "{total} under faults: confirmed {confirmed}, spilled {spilled}, replayed {}, duplicates {duplicates}, \
         connections {}, faults at {during:?}",
        stats.replayed, stats.connections
    );
}
