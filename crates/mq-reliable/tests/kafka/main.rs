//! The Kafka producer against librdkafka's mock cluster: a healthy
//! cluster, a broker-down phase, and injected `NotEnoughReplicas` errors
//! (briefly: librdkafka retries them; for longer than the message timeout:
//! the messages are spilled and replayed).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mq_reliable::rdkafka::consumer::{BaseConsumer, Consumer};
use mq_reliable::rdkafka::message::Headers;
use mq_reliable::rdkafka::mocking::MockCluster;
use mq_reliable::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use mq_reliable::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use mq_reliable::{
    BackoffConfig, KafkaConfig, Message, PublisherState, Receipt, ReliabilityConfig,
    ReliableKafkaProducer, SpillReason,
};

const PARTITIONS: i32 = 3;

fn config(bootstrap: &str, topic: &str, dir: &std::path::Path) -> KafkaConfig {
    KafkaConfig {
        message_timeout: Duration::from_millis(1_500),
        probe_timeout: Duration::from_millis(500),
        reliability: ReliabilityConfig {
            window: 256,
            checkpoint_every: 128,
            backoff: BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            ..ReliabilityConfig::new(dir)
        },
        ..KafkaConfig::new(bootstrap, topic, dir)
    }
}

/// Copies of each `message_id` header in `topic`, read from the start until
/// `expect` distinct ids were seen.
async fn read_all(bootstrap: String, topic: String, expect: usize) -> HashMap<String, u32> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "mq-reliable-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut got: HashMap<String, u32> = HashMap::new();
        let start = Instant::now();
        while got.len() < expect {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "read {} of {expect} ids",
                got.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "message_id"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
                    .expect("every record carries its message_id");
                *got.entry(id).or_default() += 1;
            }
        }
        // Whatever else is there (duplicates) within a short grace period.
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_millis(500) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                && let Some(h) = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "message_id"))
                && let Some(v) = h.value
            {
                *got.entry(String::from_utf8(v.to_vec()).unwrap())
                    .or_default() += 1;
            }
        }
        got
    })
    .await
    .unwrap()
}

async fn publish_all(producer: &ReliableKafkaProducer, ids: std::ops::Range<u32>) -> Vec<Receipt> {
    let mut pending = FuturesUnordered::new();
    for i in ids {
        let p = producer
            .submit(Message::new(format!("k{i}"), format!("payload {i}")))
            .await
            .unwrap();
        pending.push(p);
    }
    let mut out = Vec::new();
    while let Some(r) = pending.next().await {
        out.push(r.expect("acknowledged"));
    }
    out
}

async fn healthy(producer: &ReliableKafkaProducer) {
    let mut st = producer.state();
    tokio::time::timeout(
        Duration::from_secs(20),
        st.wait_for(|s| *s == PublisherState::Healthy),
    )
    .await
    .expect("never healthy")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_with_acks_all_on_an_idempotent_producer() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("orders", PARTITIONS, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let producer =
        ReliableKafkaProducer::start(config(&cluster.bootstrap_servers(), "orders", dir.path()))
            .unwrap();
    healthy(&producer).await;
    let receipts = publish_all(&producer, 0..2_000).await;
    assert!(
        receipts.iter().all(|r| r.is_confirmed()),
        "{:?}",
        receipts.iter().find(|r| !r.is_confirmed())
    );
    producer.flush().await.unwrap();
    let got = read_all(cluster.bootstrap_servers(), "orders".into(), 2_000).await;
    assert_eq!(got.len(), 2_000);
    assert!(
        got.values().all(|&n| n == 1),
        "no duplicates without faults"
    );
    producer.close().await;
}

/// A broker-down phase: deliveries time out (bounded by message.timeout.ms)
/// and are spilled, new messages are spilled, and once the broker is back
/// the log is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_phase_spills_and_replays() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let producer =
        ReliableKafkaProducer::start(config(&cluster.bootstrap_servers(), "events", dir.path()))
            .unwrap();
    healthy(&producer).await;
    let before = publish_all(&producer, 0..500).await;
    assert!(before.iter().all(|r| r.is_confirmed()));

    cluster.broker_down(1).unwrap();
    let started = Instant::now();
    let during = publish_all(&producer, 500..1_500).await;
    // Generous for a loaded machine, and still far from the 300 s default.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failures are reported within message.timeout.ms, not librdkafka's 300 s default"
    );
    assert!(
        during.iter().all(|r| !r.is_confirmed()),
        "nothing is confirmed while the broker is down"
    );
    assert!(during.contains(&Receipt::Spilled(SpillReason::ConnectionLost)));
    assert_ne!(*producer.state().borrow(), PublisherState::Healthy);
    // Still down: probes fail, nothing is replayed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(producer.stats().replayed, 0);

    cluster.broker_up(1).unwrap();
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("the log never drained")
        .unwrap();
    assert_eq!(producer.stats().replayed, 1_000);
    let got = read_all(cluster.bootstrap_servers(), "events".into(), 1_500).await;
    for i in 0..1_500 {
        assert!(got.contains_key(&format!("k{i}")), "k{i} lost");
    }
    let duplicates: u32 = got.values().map(|n| n - 1).sum();
    assert!(duplicates <= 256 * 2, "{duplicates} duplicates");
    producer.close().await;
}

/// `NotEnoughReplicas`: a few are retried by librdkafka (idempotently, no
/// duplicates); a stretch longer than the message timeout makes deliveries
/// fail, and those messages are spilled and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_replicas_is_retried_then_spilled() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("payments", PARTITIONS, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let producer =
        ReliableKafkaProducer::start(config(&cluster.bootstrap_servers(), "payments", dir.path()))
            .unwrap();
    healthy(&producer).await;

    // A few errors: retried inside librdkafka, still confirmed.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    let brief = publish_all(&producer, 0..300).await;
    assert!(
        brief.iter().all(|r| r.is_confirmed()),
        "retriable errors are retried"
    );

    // Many: every produce request fails until the message timeout.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let long = publish_all(&producer, 300..600).await;
    assert!(
        long.iter().all(|r| !r.is_confirmed()),
        "unconfirmed while replicas are missing"
    );
    assert!(producer.stats().spilled >= 300);
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("the log never drained")
        .unwrap();
    let got = read_all(cluster.bootstrap_servers(), "payments".into(), 600).await;
    for i in 0..600 {
        assert!(got.contains_key(&format!("k{i}")), "k{i} lost");
    }
    for i in 0..300 {
        assert_eq!(
            got[&format!("k{i}")],
            1,
            "idempotent retries never duplicate"
        );
    }
    producer.close().await;
}
