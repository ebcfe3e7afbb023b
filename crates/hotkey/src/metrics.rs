//! Metric names, and the handles this crate registers once.
//!
//! Everything goes through the [`metrics`] facade. Install a recorder (for
//! example `metrics-exporter-prometheus`) **before** building a
//! [`Detector`](crate::Detector), a [`ZkPublisher`](crate::ZkPublisher), a
//! watch ([`HotKeySet::watch`](crate::HotKeySet::watch)), a
//! [`KafkaReporter`](crate::KafkaReporter) or a
//! [`KafkaSource`](crate::KafkaSource): each registers its handles when it is
//! built, so that counting is one atomic add (nothing without a recorder).
//!
//! No metric moves per read. [`Detector::record`](crate::Detector::record)
//! touches one only at the read that makes a key hot; the candidate-table
//! counters are published by [`Detector::tick`](crate::Detector::tick) (and
//! [`Detector::stats`](crate::Detector::stats)) from the detector's own
//! atomics; a reporter publishes once per send, a publisher once per
//! transaction, a source once per Kafka message.
//!
//! | name | kind | labels | moves when |
//! |---|---|---|---|
//! | `hotkey_detected_total` | counter | `rule` | a key became hot (at the read crossing the threshold) |
//! | `hotkey_cooled_total` | counter | `rule` | a hot key cooled down (at a tick) |
//! | `hotkey_hot_keys` | gauge | `rule` | keys hot now (summed over the process's detectors) |
//! | `hotkey_promotions_total` | counter | | keys given an exact window (published per tick) |
//! | `hotkey_candidate_evictions_total` | counter | | candidates dropped, idle or to make room (per tick) |
//! | `hotkey_rejected_promotions_total` | counter | | promotions refused because the candidate table was full: above zero, recall is no longer guaranteed (per tick) |
//! | `hotkey_dropped_events_total` | counter | | events dropped because nobody drained them (per tick) |
//! | `hotkey_zk_writes_total` | counter | `app` | the publisher committed a `multi` |
//! | `hotkey_zk_znodes_total` | counter | `app`, `op` (`created`/`deleted`) | key znodes written by those transactions |
//! | `hotkey_zk_conflicts_total` | counter | `app` | a transaction was refused (znodes not as expected; re-read) |
//! | `hotkey_zk_errors_total` | counter | `app` | a publication attempt failed (retried next interval) |
//! | `hotkey_zk_publisher_reconnects_total` | counter | `app` | the publisher opened a new session after losing one |
//! | `hotkey_zk_skipped_long_keys_total` | counter | `app` | hot keys not published (longer than `max_key_len`) |
//! | `hotkey_zk_published_keys` | gauge | `app` | key znodes the publisher believes are in ZooKeeper |
//! | `hotkey_zk_resyncs_total` | counter | `app` | a watcher re-read every key (its first read included) |
//! | `hotkey_zk_watch_events_total` | counter | `app` | node events watchers applied incrementally |
//! | `hotkey_zk_watch_reconnects_total` | counter | `app` | a watcher opened a new session after expiry |
//! | `hotkey_zk_bad_names_total` | counter | `app` | children that are not encoded keys (ignored) |
//! | `hotkey_reporter_reports_total` | counter | `instance` | a reporter delivered a report message |
//! | `hotkey_reporter_reads_total` | counter | `instance` | reads delivered in those reports |
//! | `hotkey_reporter_failed_sends_total` | counter | `instance` | a send failed (its counts are kept for the next one) |
//! | `hotkey_reporter_dropped_reads_total` | counter | `instance` | reads not reported: aggregate full, or key too long (published per send) |
//! | `hotkey_kafka_reports_total` | counter | `outcome` (`counted`/`stale`/`corrupt`) | a source consumed a message |
//! | `hotkey_kafka_reads_total` | counter | | reads a source fed to its detector |
//!
//! Several objects with the same labels in one process (three watchers of
//! one app, say) add up into the same series.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

/// `hotkey_detected_total`.
pub const DETECTED: &str = "hotkey_detected_total";
/// `hotkey_cooled_total`.
pub const COOLED: &str = "hotkey_cooled_total";
/// `hotkey_hot_keys`.
pub const HOT_KEYS: &str = "hotkey_hot_keys";
/// `hotkey_promotions_total`.
pub const PROMOTIONS: &str = "hotkey_promotions_total";
/// `hotkey_candidate_evictions_total`.
pub const CANDIDATE_EVICTIONS: &str = "hotkey_candidate_evictions_total";
/// `hotkey_rejected_promotions_total`.
pub const REJECTED_PROMOTIONS: &str = "hotkey_rejected_promotions_total";
/// `hotkey_dropped_events_total`.
pub const DROPPED_EVENTS: &str = "hotkey_dropped_events_total";
/// `hotkey_zk_writes_total`.
pub const ZK_WRITES: &str = "hotkey_zk_writes_total";
/// `hotkey_zk_znodes_total`.
pub const ZK_ZNODES: &str = "hotkey_zk_znodes_total";
/// `hotkey_zk_conflicts_total`.
pub const ZK_CONFLICTS: &str = "hotkey_zk_conflicts_total";
/// `hotkey_zk_errors_total`.
pub const ZK_ERRORS: &str = "hotkey_zk_errors_total";
/// `hotkey_zk_publisher_reconnects_total`.
pub const ZK_PUBLISHER_RECONNECTS: &str = "hotkey_zk_publisher_reconnects_total";
/// `hotkey_zk_skipped_long_keys_total`.
pub const ZK_SKIPPED_LONG_KEYS: &str = "hotkey_zk_skipped_long_keys_total";
/// `hotkey_zk_published_keys`.
pub const ZK_PUBLISHED_KEYS: &str = "hotkey_zk_published_keys";
/// `hotkey_zk_resyncs_total`.
pub const ZK_RESYNCS: &str = "hotkey_zk_resyncs_total";
/// `hotkey_zk_watch_events_total`.
pub const ZK_WATCH_EVENTS: &str = "hotkey_zk_watch_events_total";
/// `hotkey_zk_watch_reconnects_total`.
pub const ZK_WATCH_RECONNECTS: &str = "hotkey_zk_watch_reconnects_total";
/// `hotkey_zk_bad_names_total`.
pub const ZK_BAD_NAMES: &str = "hotkey_zk_bad_names_total";
/// `hotkey_reporter_reports_total`.
pub const REPORTER_REPORTS: &str = "hotkey_reporter_reports_total";
/// `hotkey_reporter_reads_total`.
pub const REPORTER_READS: &str = "hotkey_reporter_reads_total";
/// `hotkey_reporter_failed_sends_total`.
pub const REPORTER_FAILED_SENDS: &str = "hotkey_reporter_failed_sends_total";
/// `hotkey_reporter_dropped_reads_total`.
pub const REPORTER_DROPPED_READS: &str = "hotkey_reporter_dropped_reads_total";
/// `hotkey_kafka_reports_total`.
pub const KAFKA_REPORTS: &str = "hotkey_kafka_reports_total";
/// `hotkey_kafka_reads_total`.
pub const KAFKA_READS: &str = "hotkey_kafka_reads_total";

/// A counter fed from a running total kept elsewhere (an atomic the hot
/// path already bumps): [`publish`](Self::publish) adds what the total grew
/// by since the last call, so the hot path itself never touches the metric.
#[derive(Debug)]
pub(crate) struct TotalCounter {
    counter: Counter,
    published: AtomicU64,
}

impl TotalCounter {
    pub(crate) fn new(counter: Counter) -> Self {
        TotalCounter {
            counter,
            published: AtomicU64::new(0),
        }
    }

    /// Publishes `total` (a monotonic count). Concurrent callers add each
    /// increment once: `fetch_max` hands every growth to exactly one of them.
    pub(crate) fn publish(&self, total: u64) {
        let before = self.published.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.counter.increment(total - before);
        }
    }
}

/// Per rule of a detector.
#[derive(Debug)]
pub(crate) struct RuleMetrics {
    pub(crate) detected: Counter,
    pub(crate) cooled: Counter,
    pub(crate) hot_keys: Gauge,
}

impl RuleMetrics {
    pub(crate) fn new(rule: &str) -> Self {
        describe_detector();
        RuleMetrics {
            detected: counter!(DETECTED, "rule" => rule.to_owned()),
            cooled: counter!(COOLED, "rule" => rule.to_owned()),
            hot_keys: gauge!(HOT_KEYS, "rule" => rule.to_owned()),
        }
    }
}

/// A detector's candidate-table counters, published per tick.
#[derive(Debug)]
pub(crate) struct DetectorMetrics {
    pub(crate) promotions: TotalCounter,
    pub(crate) evictions: TotalCounter,
    pub(crate) rejected: TotalCounter,
    pub(crate) dropped_events: TotalCounter,
}

impl DetectorMetrics {
    pub(crate) fn new() -> Self {
        DetectorMetrics {
            promotions: TotalCounter::new(counter!(PROMOTIONS)),
            evictions: TotalCounter::new(counter!(CANDIDATE_EVICTIONS)),
            rejected: TotalCounter::new(counter!(REJECTED_PROMOTIONS)),
            dropped_events: TotalCounter::new(counter!(DROPPED_EVENTS)),
        }
    }
}

fn describe_detector() {
    describe_counter!(DETECTED, "keys that became hot, by rule");
    describe_counter!(COOLED, "hot keys that cooled down, by rule");
    describe_gauge!(HOT_KEYS, "keys hot now, by rule");
    describe_counter!(PROMOTIONS, "keys promoted to an exact window");
    describe_counter!(CANDIDATE_EVICTIONS, "candidate windows dropped");
    describe_counter!(
        REJECTED_PROMOTIONS,
        "promotions refused because the candidate table was full (recall no longer guaranteed)"
    );
    describe_counter!(DROPPED_EVENTS, "detector events dropped undrained");
}

/// A [`ZkPublisher`](crate::ZkPublisher)'s.
#[cfg(feature = "zookeeper")]
#[derive(Debug)]
pub(crate) struct PublisherMetrics {
    pub(crate) writes: Counter,
    pub(crate) created: Counter,
    pub(crate) deleted: Counter,
    pub(crate) conflicts: Counter,
    pub(crate) errors: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) skipped_long_keys: Counter,
    pub(crate) published: Gauge,
}

#[cfg(feature = "zookeeper")]
impl PublisherMetrics {
    pub(crate) fn new(app: &str) -> Self {
        describe_counter!(ZK_WRITES, "hot-key transactions committed to ZooKeeper");
        describe_counter!(ZK_ZNODES, "hot-key znodes created or deleted");
        describe_counter!(ZK_CONFLICTS, "hot-key transactions refused (re-read)");
        describe_counter!(ZK_ERRORS, "failed hot-key publication attempts");
        describe_counter!(ZK_PUBLISHER_RECONNECTS, "publisher sessions reopened");
        describe_counter!(ZK_SKIPPED_LONG_KEYS, "hot keys too long to publish");
        describe_gauge!(ZK_PUBLISHED_KEYS, "hot-key znodes published now");
        let app = || app.to_owned();
        PublisherMetrics {
            writes: counter!(ZK_WRITES, "app" => app()),
            created: counter!(ZK_ZNODES, "app" => app(), "op" => "created"),
            deleted: counter!(ZK_ZNODES, "app" => app(), "op" => "deleted"),
            conflicts: counter!(ZK_CONFLICTS, "app" => app()),
            errors: counter!(ZK_ERRORS, "app" => app()),
            reconnects: counter!(ZK_PUBLISHER_RECONNECTS, "app" => app()),
            skipped_long_keys: counter!(ZK_SKIPPED_LONG_KEYS, "app" => app()),
            published: gauge!(ZK_PUBLISHED_KEYS, "app" => app()),
        }
    }
}

/// A [`HotKeyWatch`](crate::HotKeyWatch)'s.
#[cfg(feature = "zookeeper")]
#[derive(Debug)]
pub(crate) struct WatchMetrics {
    pub(crate) resyncs: Counter,
    pub(crate) events: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) bad_names: Counter,
}

#[cfg(feature = "zookeeper")]
impl WatchMetrics {
    pub(crate) fn new(app: &str) -> Self {
        describe_counter!(ZK_RESYNCS, "full re-reads of the hot keys by watchers");
        describe_counter!(ZK_WATCH_EVENTS, "hot-key node events applied by watchers");
        describe_counter!(
            ZK_WATCH_RECONNECTS,
            "watcher sessions reopened after expiry"
        );
        describe_counter!(ZK_BAD_NAMES, "children of the app node that are not keys");
        let app = || app.to_owned();
        WatchMetrics {
            resyncs: counter!(ZK_RESYNCS, "app" => app()),
            events: counter!(ZK_WATCH_EVENTS, "app" => app()),
            reconnects: counter!(ZK_WATCH_RECONNECTS, "app" => app()),
            bad_names: counter!(ZK_BAD_NAMES, "app" => app()),
        }
    }
}

/// A [`KafkaReporter`](crate::KafkaReporter)'s.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub(crate) struct ReporterMetrics {
    pub(crate) reports: Counter,
    pub(crate) reads: Counter,
    pub(crate) failed_sends: Counter,
    pub(crate) dropped_reads: TotalCounter,
}

#[cfg(feature = "kafka")]
impl ReporterMetrics {
    pub(crate) fn new(instance: &str) -> Self {
        describe_counter!(REPORTER_REPORTS, "read reports delivered to Kafka");
        describe_counter!(REPORTER_READS, "reads delivered to Kafka");
        describe_counter!(REPORTER_FAILED_SENDS, "report sends that failed (retried)");
        describe_counter!(REPORTER_DROPPED_READS, "reads dropped, never reported");
        let instance = || instance.to_owned();
        ReporterMetrics {
            reports: counter!(REPORTER_REPORTS, "instance" => instance()),
            reads: counter!(REPORTER_READS, "instance" => instance()),
            failed_sends: counter!(REPORTER_FAILED_SENDS, "instance" => instance()),
            dropped_reads: TotalCounter::new(
                counter!(REPORTER_DROPPED_READS, "instance" => instance()),
            ),
        }
    }
}

/// A [`KafkaSource`](crate::KafkaSource)'s.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub(crate) struct SourceMetrics {
    pub(crate) counted: Counter,
    pub(crate) stale: Counter,
    pub(crate) corrupt: Counter,
    pub(crate) reads: Counter,
}

#[cfg(feature = "kafka")]
impl SourceMetrics {
    pub(crate) fn new() -> Self {
        describe_counter!(KAFKA_REPORTS, "read reports consumed, by outcome");
        describe_counter!(KAFKA_READS, "reads fed to the detector from Kafka");
        SourceMetrics {
            counted: counter!(KAFKA_REPORTS, "outcome" => "counted"),
            stale: counter!(KAFKA_REPORTS, "outcome" => "stale"),
            corrupt: counter!(KAFKA_REPORTS, "outcome" => "corrupt"),
            reads: counter!(KAFKA_READS),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_total_counter_adds_each_growth_once() {
        let value = Arc::new(AtomicU64::new(0));
        let total = Arc::new(TotalCounter::new(Counter::from_arc(Arc::clone(&value))));
        total.publish(5);
        total.publish(3); // a stale total from a slower caller adds nothing
        total.publish(5);
        assert_eq!(value.load(Ordering::Relaxed), 5);
        let threads: Vec<_> = (1..=4u64)
            .map(|i| {
                let total = Arc::clone(&total);
                std::thread::spawn(move || (0..=100).for_each(|n| total.publish(n * i)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(
            value.load(Ordering::Relaxed),
            400,
            "the counter ends at the largest total"
        );
    }
}
