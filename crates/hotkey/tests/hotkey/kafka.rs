//! Distributed counting through librdkafka's mock cluster.

use std::sync::Arc;
use std::time::Duration;

use hotkey::EmbeddedKafka;
use hotkey::rdkafka::ClientConfig;
use hotkey::rdkafka::mocking::MockCluster;
use hotkey::rdkafka::producer::{FutureProducer, FutureRecord};
use hotkey::{
    Config, Detector, Event, KafkaReporter, KafkaSource, ManualClock, Report, ReporterConfig, Rule,
    SourceConfig,
};

use hotkey::metrics::{DETECTED, KAFKA_READS, KAFKA_REPORTS, REPORTER_READS, REPORTER_REPORTS};
use testkit::TestRecorder;

use crate::wait_until;

const START: u64 = 1_700_000_000_000;

fn detector(clock: &ManualClock) -> Arc<Detector> {
    let cfg = Config {
        rules: vec![Rule::default()],
        sketch_bytes: 1 << 16,
        hash_seed: Some(5),
        ..Config::default()
    };
    Arc::new(Detector::with_clock(cfg, Arc::new(clock.clone())).unwrap())
}

fn topic(test: &str) -> String {
    format!("hotkey-{test}-{:08x}", rand::random::<u32>())
}

async fn reporter(
    brokers: &str,
    topic: &str,
    instance: &str,
    clock: &ManualClock,
) -> Arc<KafkaReporter> {
    let cfg = ReporterConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        instance: instance.into(),
        send_timeout: Duration::from_millis(1500),
        // Reconnect quickly once a broker is back (the outage test).
        overrides: vec![
            ("reconnect.backoff.ms".into(), "10".into()),
            ("reconnect.backoff.max.ms".into(), "100".into()),
        ],
        ..ReporterConfig::default()
    };
    KafkaReporter::with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap()
}

fn source(brokers: &str, topic: &str, detector: &Arc<Detector>) -> KafkaSource {
    let cfg = SourceConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        ..SourceConfig::default()
    };
    KafkaSource::new(cfg, Arc::clone(detector)).unwrap()
}

fn hot_keys(d: &Detector) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = d
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Hot(h) => Some(h.key),
            Event::Cooled(_) => None,
        })
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_hot_only_across_instances_is_detected() {
    let kafka = EmbeddedKafka::start(&topic("across"), 4).unwrap();
    let (brokers, topic) = (kafka.brokers(), kafka.topic().to_owned());
    let clock = ManualClock::new(START);
    let recorder = TestRecorder::new();
    let guard = recorder.guard();
    let detector = detector(&clock);
    let (source_task, stats) = source(&brokers, &topic, &detector).spawn();

    let mut instances = Vec::new();
    for i in 0..3 {
        let r = reporter(&brokers, &topic, &format!("web-{i}"), &clock).await;
        assert_eq!(r.partitions(), 4);
        // Each instance reads "shared" 400 times (1200 in all) and its own
        // key 900 times: only "shared" passes 1000, and only in sum.
        for _ in 0..400 {
            r.record(b"shared");
        }
        r.record_n(format!("own-{i}").as_bytes(), 900);
        instances.push((Arc::clone(&r), r.spawn()));
    }
    drop(guard);
    wait_until(
        "all reads to reach the detector",
        Duration::from_secs(15),
        // The metrics are bumped right after the stats they mirror.
        || {
            stats.get().reads == 3 * 1300
                && recorder.counter(KAFKA_READS, &[]) == 3 * 1300
                && recorder.counter_sum(REPORTER_READS) == 3 * 1300
        },
    )
    .await;
    assert_eq!(hot_keys(&detector), vec![b"shared".to_vec()]);
    let total: u64 = instances.iter().map(|(r, _)| r.stats().reads).sum();
    assert_eq!(total, 3 * 1300);
    // The same numbers through the `metrics` facade.
    assert_eq!(recorder.counter(DETECTED, &[("rule", "default")]), 1);
    assert_eq!(recorder.counter(KAFKA_READS, &[]), 3 * 1300);
    let counted = recorder.counter(KAFKA_REPORTS, &[("outcome", "counted")]);
    assert_eq!(counted, stats.get().reports);
    for (i, (r, _)) in instances.iter().enumerate() {
        let instance = format!("web-{i}");
        let labels = [("instance", instance.as_str())];
        assert_eq!(recorder.counter(REPORTER_READS, &labels), 1300);
        assert_eq!(
            recorder.counter(REPORTER_REPORTS, &labels),
            r.stats().messages
        );
    }
    assert_eq!(recorder.counter_sum(REPORTER_REPORTS), counted);
    for (_, task) in instances {
        task.shutdown().await;
    }
    source_task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_broker_outage() {
    let kafka = EmbeddedKafka::start(&topic("outage"), 2).unwrap();
    let (brokers, topic, cluster) = (kafka.brokers(), kafka.topic().to_owned(), kafka.cluster());
    let clock = ManualClock::new(START);
    let detector = detector(&clock);
    let r = reporter(&brokers, &topic, "web", &clock).await;

    cluster.broker_down(1).unwrap();
    r.record_n(b"k", 700);
    let err = r.flush().await.unwrap_err().to_string();
    assert!(err.contains("produce"), "{err}");
    assert!(r.stats().failed_sends >= 1);
    r.record_n(b"k", 301);
    cluster.broker_up(1).unwrap();
    // The failed batch was kept: the next flush carries all 1001 reads.
    let mut sent = 0;
    for _ in 0..20 {
        match r.flush().await {
            Ok(n) => {
                sent += n;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(sent, 1, "one entry: k");
    assert_eq!(r.stats().reads, 1001);
    let (task, stats) = source(&brokers, &topic, &detector).spawn();
    wait_until("the reads to be counted", Duration::from_secs(15), || {
        stats.get().reads == 1001
    })
    .await;
    assert_eq!(hot_keys(&detector), vec![b"k".to_vec()]);
    task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_stale_messages_are_skipped() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = topic("corrupt");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let clock = ManualClock::new(START);
    let detector = detector(&clock);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let stale = Report {
        instance: "old".into(),
        interval_end_ms: START - 60_000,
        entries: vec![(b"x".to_vec(), 5000)],
    };
    let fresh = Report {
        instance: "new".into(),
        interval_end_ms: START,
        entries: vec![(b"y".to_vec(), 1001)],
    };
    for payload in [
        b"garbage".to_vec(),
        b"HK\x01\x05ab".to_vec(),
        stale.encode(),
        fresh.encode(),
    ] {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let (task, stats) = source(&brokers, &topic, &detector).spawn();
    wait_until("all four messages", Duration::from_secs(15), || {
        let s = stats.get();
        s.reports + s.stale_reports + s.corrupt_messages == 4
    })
    .await;
    let s = stats.get();
    assert_eq!(
        (s.corrupt_messages, s.stale_reports, s.reports, s.reads),
        (2, 1, 1, 1001)
    );
    assert_eq!(hot_keys(&detector), vec![b"y".to_vec()]);
    task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregate_stays_bounded_while_kafka_is_down() {
    let kafka = EmbeddedKafka::start(&topic("bounded"), 1).unwrap();
    let (brokers, topic, cluster) = (kafka.brokers(), kafka.topic().to_owned(), kafka.cluster());
    let clock = ManualClock::new(START);
    let r = KafkaReporter::with_clock(
        ReporterConfig {
            brokers: brokers.clone(),
            topic: topic.clone(),
            instance: "web".into(),
            max_keys: 2,
            max_pending_keys: 3,
            send_timeout: Duration::from_millis(1500),
            // Reconnect quickly once the broker is back.
            overrides: vec![
                ("reconnect.backoff.ms".into(), "10".into()),
                ("reconnect.backoff.max.ms".into(), "100".into()),
            ],
            ..ReporterConfig::default()
        },
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    cluster.broker_down(1).unwrap();
    // Three keys fit; the reads of two more new keys are dropped and counted,
    // while a key already held keeps counting.
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        r.record(k.as_bytes());
    }
    r.record_n(b"k1", 10);
    assert_eq!(r.stats().dropped_reads, 2);
    // A failed send keeps what it held, and the bound still holds after it.
    assert!(r.flush().await.is_err());
    r.record(b"k6");
    // A key that can never fit in one message is dropped at once.
    r.record(&vec![b'x'; 512 * 1024]);
    assert_eq!(r.stats().dropped_reads, 4);
    cluster.broker_up(1).unwrap();
    let mut sent = None;
    for _ in 0..20 {
        match r.flush().await {
            Ok(n) => {
                sent = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(sent, Some(3), "k1, k2 and k3");
    assert_eq!(r.stats().reads, 11 + 1 + 1);
}

/// A reporter with a 1 s interval, so that an early send is unambiguous.
async fn slow_reporter(brokers: &str, topic: &str, clock: &ManualClock) -> Arc<KafkaReporter> {
    let cfg = ReporterConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        instance: "web".into(),
        interval: Duration::from_secs(1),
        urgent_count: 100,
        urgent_gap: Duration::from_millis(10),
        send_timeout: Duration::from_millis(1500),
        ..ReporterConfig::default()
    };
    KafkaReporter::with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_key_is_sent_before_the_interval_ends_and_cold_keys_wait() {
    let kafka = EmbeddedKafka::start(&topic("urgent"), 2).unwrap();
    let (brokers, topic) = (kafka.brokers(), kafka.topic().to_owned());
    let clock = ManualClock::new(START);
    let r = slow_reporter(&brokers, &topic, &clock).await;
    let task = r.spawn();
    // The interval's first tick fires at once (an empty send); the next
    // interval send is due 1 s after this.
    let interval_start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Cold keys: fewer than urgent_count reads each.
    for i in 0..20 {
        r.record_n(format!("cold-{i}").as_bytes(), 99);
    }
    r.record_n(b"hot", 99);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(r.stats().reads, 0, "nothing is urgent yet: {:?}", r.stats());

    // The 100th read of "hot" makes it urgent: its reads go out at once.
    r.record(b"hot");
    wait_until(
        "the urgent key's early send",
        Duration::from_millis(500),
        || r.stats().reads == 100,
    )
    .await;
    let s = r.stats();
    assert_eq!((s.messages, s.entries, s.urgent_sends), (1, 1, 1), "{s:?}");
    assert!(
        interval_start.elapsed() < Duration::from_millis(800),
        "sent at {:?}, not early",
        interval_start.elapsed()
    );
    // It stays urgent for the rest of the interval: its next reads are
    // sent early too (here the one that makes it hot), without the cold
    // keys.
    r.record_n(b"hot", 901);
    wait_until(
        "the urgent key's second early send",
        Duration::from_millis(500),
        || r.stats().reads == 1001,
    )
    .await;
    let s = r.stats();
    assert_eq!((s.messages, s.entries, s.urgent_sends), (2, 2, 2), "{s:?}");
    assert!(interval_start.elapsed() < Duration::from_millis(900));

    // The cold keys wait for the interval's send.
    wait_until("the interval send", Duration::from_secs(3), || {
        r.stats().reads == 1001 + 20 * 99
    })
    .await;
    assert!(
        interval_start.elapsed() >= Duration::from_millis(950),
        "cold keys sent at {:?}, before the interval ended",
        interval_start.elapsed()
    );
    let s = r.stats();
    assert_eq!(
        (s.entries, s.urgent_sends),
        (2 + 20, 2),
        "the interval send holds the cold keys only: {s:?}"
    );
    task.shutdown().await;

    // Every read reached the topic once: "hot" (1001) is hot, no cold key
    // (99 each) is.
    let detector = detector(&clock);
    let (source_task, stats) = source(&brokers, &topic, &detector).spawn();
    wait_until("the reads to be counted", Duration::from_secs(15), || {
        stats.get().reads == 1001 + 20 * 99
    })
    .await;
    assert_eq!(stats.get().reports, s.messages);
    assert_eq!(hot_keys(&detector), vec![b"hot".to_vec()]);
    source_task.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_urgent_keys_costs_at_most_one_early_send_per_gap() {
    let kafka = EmbeddedKafka::start(&topic("storm"), 1).unwrap();
    let (brokers, topic) = (kafka.brokers(), kafka.topic().to_owned());
    let clock = ManualClock::new(START);
    let r = slow_reporter(&brokers, &topic, &clock).await;
    let task = r.spawn();
    // Past the interval's first tick (an empty send at once).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let start = tokio::time::Instant::now();
    // 50 urgent keys, each read again and again for 300 ms (well inside
    // the 1 s interval): hundreds of thousands of reads of urgent keys.
    let mut reads = 0u64;
    for k in 0..50u32 {
        r.record_n(&k.to_be_bytes(), 100);
        reads += 100;
    }
    while start.elapsed() < Duration::from_millis(300) {
        for k in 0..50u32 {
            r.record(&k.to_be_bytes());
            reads += 1;
        }
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    wait_until("the last early send", Duration::from_millis(500), || {
        r.stats().reads == reads
    })
    .await;
    let s = r.stats();
    // One partition: one message per send. The first tick's send was empty.
    let bound = elapsed.as_millis() as u64 / 10 + 2;
    assert!(s.urgent_sends >= 2, "{s:?}");
    assert!(
        s.messages <= bound,
        "{} messages for {reads} reads in {elapsed:?}, bound {bound}: {s:?}",
        s.messages
    );
    assert_eq!(s.messages, s.urgent_sends, "the interval has not ended");
    task.shutdown().await;
}
