//! The publisher against a healthy broker, and the broker's own refusals:
//! nacks from a full `reject-publish` queue and returned (unroutable)
//! messages.

use std::time::Duration;

use mq_reliable::{
    Dedupe, ExchangeType, Message, Overflow, PublisherState, QueueSpec, Receipt, ReliablePublisher,
    SpillReason, Topology,
};

use mq_reliable::lapin::Connection;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_arrive_once_with_their_ids() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("roundtrip"));
    let dir = tempfile::tempdir().unwrap();
    let publisher =
        ReliablePublisher::start(publisher_cfg(&url, QueueSpec::classic(&queue), dir.path()))
            .unwrap();
    healthy(&publisher).await;
    let mut pending = Vec::new();
    for i in 0..2_000 {
        pending.push(
            publisher
                .submit(Message::new(format!("id-{i}"), format!("payload {i}")))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), Receipt::Confirmed);
    }
    publisher.flush().await.unwrap();
    let st = publisher.stats();
    assert_eq!((st.confirmed, st.spilled, st.replayed), (2_000, 0, 0));
    let (consumer, got) = collector(consumer_cfg(&url, QueueSpec::classic(&queue), 100));
    eventually(Duration::from_secs(60), "2000 messages", || {
        got.distinct() == 2_000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(got.total(), 2_000, "no duplicates without faults");
    assert_eq!(got.count("id-1999"), 1);
    consumer.shutdown().await.unwrap();
    publisher.close().await;
    assert_eq!(*publisher.state().borrow(), PublisherState::Closed);
    assert_eq!(ready_count(&url, &queue).await, 0);
}

/// A full queue with `x-overflow=reject-publish` nacks; the nacked messages
/// are spilled and replayed once a consumer makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_from_a_full_queue_are_spilled_and_replayed() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("nack"));
    let spec = QueueSpec::classic(&queue).max_length(5, Overflow::RejectPublish);
    let dir = tempfile::tempdir().unwrap();
    let publisher =
        ReliablePublisher::start(publisher_cfg(&url, spec.clone(), dir.path())).unwrap();
    healthy(&publisher).await;
    let mut receipts = Vec::new();
    for i in 0..30 {
        receipts.push(
            publisher
                .publish(Message::new(format!("n{i}"), "x"))
                .await
                .unwrap(),
        );
    }
    let confirmed = receipts.iter().filter(|r| r.is_confirmed()).count();
    assert!(confirmed <= 5, "the queue holds 5: {receipts:?}");
    assert!(
        receipts.contains(&Receipt::Spilled(SpillReason::Nacked)),
        "the broker must have refused some: {receipts:?}"
    );
    assert!(publisher.stats().nacked >= 1);
    assert_ne!(*publisher.state().borrow(), PublisherState::Healthy);
    // Drain the queue: the replay gets through once there is room.
    let (consumer, got) = collector(consumer_cfg(&url, spec, 10));
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("the spill log never drained")
        .unwrap();
    eventually(Duration::from_secs(60), "all 30 ids", || {
        got.distinct() == 30
    })
    .await;
    consumer.shutdown().await.unwrap();
    publisher.close().await;
}

/// An unroutable `mandatory` message comes back as an ack carrying a
/// return: it must be reported spilled, never confirmed, while its
/// routable neighbours are confirmed. In the log it moves to the end at
/// each replay, so the routable messages behind it get through; once the
/// topology routes it, it is delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_spilled_not_confirmed() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("route"));
    let orphan_key = format!("{queue}-nobody-listens");
    let late_queue = cleanup.queue(&format!("{queue}-late"));
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::exchange("amq.direct", ExchangeType::Direct, &queue)
        .bind(QueueSpec::classic(&queue));
    let cfg = mq_reliable::PublisherConfig {
        topology,
        ..publisher_cfg(&url, QueueSpec::classic(&queue), dir.path())
    };
    let publisher = ReliablePublisher::start(cfg).unwrap();
    healthy(&publisher).await;
    let mut pending = Vec::new();
    for i in 0..200 {
        let mut m = Message::new(format!("r{i}"), "x");
        if i % 10 == 3 {
            m = m.with_routing_key(orphan_key.clone());
        }
        pending.push(publisher.submit(m).await.unwrap());
    }
    let mut returned = 0;
    for (i, p) in pending.into_iter().enumerate() {
        let r = p.await.unwrap();
        if i % 10 == 3 {
            // Returned, or sent to the log behind an earlier return.
            assert_ne!(
                r,
                Receipt::Confirmed,
                "unroutable message {i} reported confirmed"
            );
            returned += usize::from(r == Receipt::Spilled(SpillReason::Returned));
        } else if r != Receipt::Confirmed {
            // After the first return the publisher degrades: later messages
            // go behind the spill backlog.
            assert_eq!(r, Receipt::Spilled(SpillReason::Degraded), "message {i}");
        }
    }
    assert!(returned >= 1);
    // The 180 routable messages all reach their queue; the 20 others wait.
    let q = queue.clone();
    let u = url.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ready_count(&u, &q).await < 180 {
        assert!(
            std::time::Instant::now() < deadline,
            "routable messages stuck behind unroutable ones"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready_count(&url, &queue).await, 180);
    assert!(publisher.stats().returned >= 20);
    assert_ne!(*publisher.state().borrow(), PublisherState::Healthy);
    // Fix the topology: bind a queue for the orphan key.
    let conn = Connection::connect(&url, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        late_queue.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        late_queue.as_str().into(),
        "amq.direct".into(),
        orphan_key.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("unroutable messages never delivered after the fix")
        .unwrap();
    assert_eq!(ready_count(&url, &late_queue).await, 20);
    let _ = conn.close(200, "done".into()).await;
    publisher.close().await;
}

/// A confirm that arrives after the timeout: the message was spilled and is
/// replayed, so the broker gets it twice; both copies carry the same id and
/// the dedupe window drops the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_confirm_leads_to_a_duplicate_that_dedupes() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("late"));
    let proxy = proxy();
    let dir = tempfile::tempdir().unwrap();
    let publisher = ReliablePublisher::start(publisher_cfg(
        &via(&url, proxy.addr()),
        QueueSpec::classic(&queue),
        dir.path(),
    ))
    .unwrap();
    healthy(&publisher).await;
    assert!(
        publisher
            .publish(Message::new("warm-up", "x"))
            .await
            .unwrap()
            .is_confirmed()
    );
    // 1 s each way: the confirm comes back 2 s after the publish, a whole
    // second after the publisher gave up (so a timer firing late on a
    // loaded machine does not matter). The message itself reaches the
    // broker all the same: the proxy delivers what it holds even after the
    // publisher dropped the connection.
    proxy.delay(Duration::from_millis(1_000));
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(
            publisher
                .submit(Message::new(format!("late-{i}"), "x"))
                .await
                .unwrap(),
        );
    }
    // The first expired confirm drops the connection: everything in
    // flight is spilled for that reason.
    for p in pending {
        assert_eq!(
            p.await.unwrap(),
            Receipt::Spilled(SpillReason::ConfirmTimeout)
        );
    }
    assert!(publisher.stats().confirm_timeouts >= 1);
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("replay never finished")
        .unwrap();
    assert!(publisher.stats().replayed >= 20);
    let (consumer, got) = collector(consumer_cfg(&url, QueueSpec::classic(&queue), 100));
    // The originals reached the broker too: two copies, same id.
    eventually(Duration::from_secs(60), "both copies", || {
        (0..20).all(|i| got.count(&format!("late-{i}")) == 2)
    })
    .await;
    let mut dedupe = Dedupe::new(1024);
    let mut firsts = 0;
    for (id, n) in got.0.lock().unwrap().iter() {
        for _ in 0..*n {
            if dedupe.first_seen(id) {
                firsts += 1;
            }
        }
    }
    assert_eq!(firsts, 21);
    assert_eq!(dedupe.duplicates(), 20);
    consumer.shutdown().await.unwrap();
    publisher.close().await;
}
