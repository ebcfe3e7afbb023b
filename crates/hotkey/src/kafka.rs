//! Distributed counting through a Kafka topic.
//!
//! Each application instance runs a [`KafkaReporter`]: `record(key)` adds
//! to a local aggregate (a sharded map: a read of a key already seen in the
//! interval allocates nothing), and every `interval` (100 ms) the aggregate
//! is sent as [`Report`]s, one message per partition. A key always goes to
//! the same partition (a fixed hash, identical on every instance), so
//! several detectors in one consumer group split the keys between them and
//! each still sees every read of its keys. Publishing is single-writer,
//! though: give one [`ZkPublisher`](crate::ZkPublisher) per app the hot keys
//! of all of them, since a second publisher of the same app would remove the
//! first one's keys (see the `zk` module docs).
//!
//! The detector runs a [`KafkaSource`] that consumes the topic and feeds
//! every entry to [`Detector::record_n`](crate::Detector::record_n), at the
//! detector's clock. Reports older than `max_report_age` (by their interval
//! end) are skipped, so a detector that restarts or lags does not turn a
//! backlog into a burst.
//!
//! Early sends: waiting for the interval end would add up to one interval
//! (100 ms) to the detection of every hot key. So a key that gets
//! `urgent_count` reads (default 100) within one interval is *urgent* until
//! the interval ends: the reporter's task sends the pending counts of the
//! urgent keys at once, and every further read of an urgent key is sent the
//! same way, instead of at the interval end. Early sends carry urgent keys
//! only (the other keys still wait for the interval) and are rate-bounded:
//! at least `urgent_gap` (default 5 ms) passes between the start of one
//! early send and the start of the next, so a storm of hot keys costs at
//! most one early send (one message per partition) per `urgent_gap` on top
//! of the interval's, never one message per read. The interval sends go on
//! as before. On the read path an urgent key costs one comparison under the
//! shard lock `record` takes anyway, plus one atomic load (an atomic swap
//! and a wake-up when no early send is pending yet). Early sends happen in
//! the task of [`KafkaReporter::spawn`]; [`KafkaReporter::flush`] sends
//! everything, urgent or not.
//!
//! Delivery: a batch whose send fails is merged back into the aggregate
//! and sent with the next interval, so a broker outage delays counts but
//! loses none while the reporter runs — up to a bound: the aggregate holds
//! at most `max_pending_keys` distinct keys, and while it is full, reads of
//! keys it does not hold yet are dropped and counted
//! ([`ReporterStats::dropped_reads`]), so that an outage cannot grow every
//! application instance's memory without bound (keys already held, the busy
//! ones, keep counting). A key too long to fit in one message is dropped
//! and counted the same way. Counts are telemetry: a report may be counted
//! twice after a consumer-group rebalance (over-counting only), and the
//! counts of the last interval are lost if the instance dies.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::clock::{Clock, SystemClock};
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::metrics::{ReporterMetrics, SourceMetrics};
use crate::report::{Report, entry_size, header_size};
use crate::rule::Rule;

const SHARDS: usize = 16;

/// A key's reads since they were last sent.
#[derive(Debug, Clone, Copy)]
struct Pending {
    reads: u64,
    /// Reached `urgent_count` reads in this interval: its reads go out in
    /// early sends until the interval ends.
    urgent: bool,
}

/// One shard of the aggregate.
#[derive(Debug, Default)]
struct Shard {
    /// Reads per key since the last send.
    keys: HashMap<Box<[u8]>, Pending>,
    /// The keys of `keys` marked urgent in this interval.
    urgent: Vec<Box<[u8]>>,
}
/// Seed of the key → partition hash: fixed, so every instance agrees.
const PARTITION_SEED: u64 = 0x686f_746b_6579;

/// Configuration of a [`KafkaReporter`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReporterConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic of reports.
    pub topic: String,
    /// This instance's name, carried in every report.
    pub instance: String,
    /// How often aggregated counts are sent (default 100 ms).
    pub interval: Duration,
    /// Distinct keys aggregated before an early send (of everything) is
    /// triggered.
    pub max_keys: usize,
    /// Reads of one key within one interval that make it urgent: its pending
    /// reads are sent at once, and its further reads in the interval too,
    /// rather than at the interval end (see the module docs). Default 100:
    /// a tenth of the default rule's 1000 reads per second, i.e. what one
    /// instance reads in one 100 ms interval of a key read at the threshold
    /// rate. [`ReporterConfig::urgent_count_for`] derives it from other
    /// rules. At least 1; `u64::MAX` turns early sends off.
    pub urgent_count: u64,
    /// Least time between the starts of two early sends (default 5 ms):
    /// bounds the extra messages a storm of hot keys causes. In
    /// 1 ms ..= `interval`.
    pub urgent_gap: Duration,
    /// Distinct keys the aggregate holds at most (while sends fail, failed
    /// batches are kept up to this); reads of further new keys are dropped and
    /// counted in [`ReporterStats::dropped_reads`]. At least `max_keys`.
    pub max_pending_keys: usize,
    /// Upper bound of one message's size.
    pub max_message_bytes: usize,
    /// How long one send may wait for the broker before it counts as failed.
    pub send_timeout: Duration,
    /// Extra librdkafka producer settings.
    pub overrides: Vec<(String, String)>,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "hotkey-reads".into(),
            instance: "instance".into(),
            interval: Duration::from_millis(100),
            max_keys: 100_000,
            urgent_count: 100,
            urgent_gap: Duration::from_millis(5),
            max_pending_keys: 1_000_000,
            max_message_bytes: 512 * 1024,
            send_timeout: Duration::from_secs(5),
            overrides: Vec::new(),
        }
    }
}

impl ReporterConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_endpoint(&self.brokers, &self.topic)?;
        if self.instance.is_empty() || self.instance.len() > 255 {
            return Err(Error::config(
                "instance",
                &self.instance,
                "must be 1..=255 bytes",
            ));
        }
        if !(Duration::from_millis(1)..=HOUR).contains(&self.interval) {
            return Err(Error::config(
                "interval",
                self.interval,
                "must be in 1 ms ..= 1 h",
            ));
        }
        if self.max_keys == 0 {
            return Err(Error::config(
                "max_keys",
                self.max_keys,
                "must be at least 1",
            ));
        }
        if self.urgent_count == 0 {
            return Err(Error::config(
                "urgent_count",
                self.urgent_count,
                "must be at least 1 (u64::MAX turns early sends off)",
            ));
        }
        if !(Duration::from_millis(1)..=self.interval).contains(&self.urgent_gap) {
            return Err(Error::config(
                "urgent_gap",
                self.urgent_gap,
                "must be in 1 ms ..= interval",
            ));
        }
        if self.max_pending_keys < self.max_keys {
            return Err(Error::config(
                "max_pending_keys",
                self.max_pending_keys,
                "must be at least max_keys",
            ));
        }
        if !(1024..=64 << 20).contains(&self.max_message_bytes) {
            return Err(Error::config(
                "max_message_bytes",
                self.max_message_bytes,
                "must be in 1 KiB ..= 64 MiB",
            ));
        }
        if !(Duration::from_millis(10)..=HOUR).contains(&self.send_timeout) {
            return Err(Error::config(
                "send_timeout",
                self.send_timeout,
                "must be in 10 ms ..= 1 h",
            ));
        }
        Ok(())
    }
}

impl ReporterConfig {
    /// An `urgent_count` for these rules: a tenth of the smallest threshold
    /// (at least 1), i.e. a key's reads in one tenth of its window at the
    /// threshold rate (one 100 ms interval for a 1 s window). 100 for the
    /// default rule; 100 too when `rules` is empty.
    ///
    /// With many instances sharing a hot key evenly, each sees only its
    /// share: lower `urgent_count` to about this value divided by the number
    /// of instances to send their counts early too (more early sends).
    #[must_use]
    pub fn urgent_count_for(rules: &[Rule]) -> u64 {
        rules
            .iter()
            .map(|r| (r.threshold / 10).max(1))
            .min()
            .unwrap_or(100)
    }
}

/// The checks the reporter's and the source's configs share.
fn validate_endpoint(brokers: &str, topic: &str) -> Result<()> {
    if brokers.is_empty() {
        return Err(Error::config(
            "brokers",
            brokers,
            "must name at least one broker",
        ));
    }
    if topic.is_empty() || topic.len() > 249 {
        return Err(Error::config("topic", topic, "must be 1..=249 bytes"));
    }
    Ok(())
}

/// The upper bound of the configured intervals (so that no deadline overflows).
const HOUR: Duration = Duration::from_secs(3600);

fn kafka_err<'a>(
    op: &'static str,
    topic: &'a str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> Error + 'a {
    move |source| Error::Kafka {
        op,
        topic: topic.to_owned(),
        source,
    }
}

/// Counters of a [`KafkaReporter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReporterStats {
    /// Messages delivered.
    pub messages: u64,
    /// Entries delivered.
    pub entries: u64,
    /// Reads delivered.
    pub reads: u64,
    /// Sends that failed (their counts were kept for the next interval).
    pub failed_sends: u64,
    /// Reads not reported: of a new key while `max_pending_keys` keys were
    /// waiting, or of a key too long to fit in one message.
    pub dropped_reads: u64,
    /// Early sends of urgent keys that delivered at least one message
    /// (their messages are counted in `messages` too).
    pub urgent_sends: u64,
}

/// Aggregates an instance's reads and reports them to Kafka. See the module
/// docs.
pub struct KafkaReporter {
    cfg: ReporterConfig,
    producer: FutureProducer,
    partitions: i32,
    clock: Arc<dyn Clock>,
    hasher: foldhash::fast::FixedState,
    shards: Box<[Mutex<Shard>]>,
    pending_keys: AtomicU64,
    /// An early send is asked for and has not started yet.
    urgent_pending: AtomicBool,
    urgent: Notify,
    urgent_sends: AtomicU64,
    /// Longest key that fits in one message.
    max_key_len: usize,
    full: Notify,
    messages: AtomicU64,
    entries: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    metrics: ReporterMetrics,
}

impl fmt::Debug for KafkaReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaReporter")
            .field("topic", &self.cfg.topic)
            .field("instance", &self.cfg.instance)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaReporter {
    /// Creates the producer and reads the topic's partition count.
    pub async fn new(cfg: ReporterConfig) -> Result<Arc<Self>> {
        Self::with_clock(cfg, Arc::new(SystemClock)).await
    }

    /// [`new`](Self::new) with an injected clock (stamps the reports).
    pub async fn with_clock(cfg: ReporterConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>> {
        cfg.validate()?;
        let metrics = ReporterMetrics::new(&cfg.instance);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                cfg.send_timeout.as_millis().to_string(),
            )
            .set(
                "message.max.bytes",
                (cfg.max_message_bytes + 4096).to_string(),
            );
        for (k, v) in &cfg.overrides {
            client.set(k, v);
        }
        let producer: FutureProducer = client
            .create()
            .map_err(kafka_err("create producer", &cfg.topic))?;
        let (p, topic, timeout) = (producer.clone(), cfg.topic.clone(), cfg.send_timeout);
        let partitions = tokio::task::spawn_blocking(move || {
            let md = p
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(kafka_err("fetch metadata", &topic))?;
            let n = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if n == 0 {
                return Err(Error::config(
                    "topic",
                    &topic,
                    "does not exist or has no partitions",
                ));
            }
            Ok(n as i32)
        })
        .await
        .map_err(|_| Error::Closed("metadata task"))??;
        let max_key_len = cfg.max_message_bytes - header_size(&cfg.instance) - entry_size(0);
        Ok(Arc::new(KafkaReporter {
            cfg,
            producer,
            partitions,
            clock,
            hasher: foldhash::fast::FixedState::with_seed(PARTITION_SEED),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            pending_keys: AtomicU64::new(0),
            urgent_pending: AtomicBool::new(false),
            urgent: Notify::new(),
            urgent_sends: AtomicU64::new(0),
            max_key_len,
            full: Notify::new(),
            messages: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            metrics,
        }))
    }

    /// Number of partitions of the topic (read at creation).
    #[must_use]
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Records one read of `key`.
    #[inline]
    pub fn record(&self, key: &[u8]) {
        self.record_n(key, 1);
    }

    /// Records `n` reads of `key` (dropped and counted when the key is too
    /// long for a message, or new while the aggregate is full; see the module
    /// docs). A key that reaches `urgent_count` reads in the interval is sent
    /// early by the task of [`spawn`](Self::spawn).
    pub fn record_n(&self, key: &[u8], n: u64) {
        self.add(key, n, true);
    }

    /// Adds `n` reads of `key`; `fresh` is false for the counts of a failed
    /// send, merged back: they neither make a key urgent nor ask for an
    /// early send (they wait for the interval, or the key's next read).
    fn add(&self, key: &[u8], n: u64, fresh: bool) {
        if n == 0 {
            return;
        }
        if key.len() > self.max_key_len {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let h = self.hasher.hash_one(key);
        let mut guard = self.shards[(h as usize) % SHARDS].lock();
        let shard = &mut *guard;
        if let Some(p) = shard.keys.get_mut(key) {
            p.reads = p.reads.saturating_add(n);
            let wake = fresh && (p.urgent || p.reads >= self.cfg.urgent_count);
            if wake && !p.urgent {
                p.urgent = true;
                shard.urgent.push(key.into());
            }
            drop(guard);
            if wake {
                self.wake_urgent();
            }
            return;
        }
        if self.pending_keys.load(Ordering::Relaxed) >= self.cfg.max_pending_keys as u64 {
            drop(guard);
            self.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let urgent = fresh && n >= self.cfg.urgent_count;
        shard.keys.insert(key.into(), Pending { reads: n, urgent });
        if urgent {
            shard.urgent.push(key.into());
        }
        drop(guard);
        if urgent {
            self.wake_urgent();
        }
        if self.pending_keys.fetch_add(1, Ordering::Relaxed) + 1 == self.cfg.max_keys as u64 {
            self.full.notify_one();
        }
    }

    /// Asks the task for an early send, unless one is asked for already (a
    /// load, in the common case of a busy urgent key).
    #[inline]
    fn wake_urgent(&self) {
        if !self.urgent_pending.load(Ordering::Relaxed)
            && !self.urgent_pending.swap(true, Ordering::AcqRel)
        {
            self.urgent.notify_one();
        }
    }

    fn partition_of(&self, key: &[u8]) -> i32 {
        (self.hasher.hash_one(key) >> 33) as i32 % self.partitions
    }

    /// Sends everything aggregated so far; returns the number of entries
    /// sent. Entries of a failed send are merged back for the next call.
    /// Ends the interval: no key is urgent afterwards.
    pub async fn flush(&self) -> Result<usize> {
        let mut taken: Vec<(Box<[u8]>, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let keys = {
                let mut shard = shard.lock();
                shard.urgent.clear();
                std::mem::take(&mut shard.keys)
            };
            // Urgent keys already sent early stay with 0 reads until now.
            taken.extend(
                keys.into_iter()
                    .filter(|(_, p)| p.reads > 0)
                    .map(|(k, p)| (k, p.reads)),
            );
        }
        self.pending_keys.store(0, Ordering::Relaxed);
        self.send(taken).await
    }

    /// The early send: the pending reads of the keys urgent in this interval
    /// (the others stay for the interval's send). Returns the number of
    /// entries sent; those of a failed send are merged back.
    async fn flush_urgent(&self) -> Result<usize> {
        let mut taken: Vec<(Box<[u8]>, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            for key in &shard.urgent {
                if let Some(p) = shard.keys.get_mut(key)
                    && p.reads > 0
                {
                    taken.push((key.clone(), std::mem::take(&mut p.reads)));
                }
            }
        }
        let sent = self.send(taken).await;
        if matches!(sent, Ok(n) if n > 0) {
            self.urgent_sends.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends `taken`, one message per partition (more if one would exceed
    /// `max_message_bytes`); merges back the entries of a failed send.
    async fn send(&self, taken: Vec<(Box<[u8]>, u64)>) -> Result<usize> {
        if taken.is_empty() {
            self.publish_dropped();
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let mut by_partition: Vec<Vec<(Vec<u8>, u64)>> = vec![Vec::new(); self.partitions as usize];
        for (k, n) in taken {
            by_partition[self.partition_of(&k) as usize].push((k.into_vec(), n));
        }
        let budget = self.cfg.max_message_bytes - header_size(&self.cfg.instance);
        let mut sends = Vec::new();
        for (partition, entries) in by_partition.into_iter().enumerate() {
            let mut batch = Vec::new();
            let mut size = 0;
            for (k, n) in entries {
                let s = entry_size(k.len());
                if !batch.is_empty() && size + s > budget {
                    sends.push((partition as i32, std::mem::take(&mut batch)));
                    size = 0;
                }
                size += s;
                batch.push((k, n));
            }
            if !batch.is_empty() {
                sends.push((partition as i32, batch));
            }
        }
        let futures = sends.into_iter().map(|(partition, entries)| {
            let report = Report {
                instance: self.cfg.instance.clone(),
                interval_end_ms: now,
                entries,
            };
            async move {
                let payload = report.encode();
                let record = FutureRecord::<(), _>::to(&self.cfg.topic)
                    .partition(partition)
                    .payload(&payload);
                let result = self.producer.send(record, self.cfg.send_timeout).await;
                (report, result)
            }
        });
        let mut sent = 0;
        let mut first_error = None;
        for (report, result) in futures::future::join_all(futures).await {
            match result {
                Ok(_) => {
                    let reads = report.entries.iter().map(|(_, n)| n).sum::<u64>();
                    self.messages.fetch_add(1, Ordering::Relaxed);
                    self.entries
                        .fetch_add(report.entries.len() as u64, Ordering::Relaxed);
                    self.reads.fetch_add(reads, Ordering::Relaxed);
                    self.metrics.reports.increment(1);
                    self.metrics.reads.increment(reads);
                    sent += report.entries.len();
                }
                Err((e, _)) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failed_sends.increment(1);
                    for (k, n) in report.entries {
                        self.add(&k, n, false);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        // Reads dropped by `record_n` are published here, once per send,
        // rather than on the read path.
        self.publish_dropped();
        match first_error {
            Some(e) => Err(Error::Kafka {
                op: "produce",
                topic: self.cfg.topic.clone(),
                source: e,
            }),
            None => Ok(sent),
        }
    }

    fn publish_dropped(&self) {
        self.metrics
            .dropped_reads
            .publish(self.dropped.load(Ordering::Relaxed));
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ReporterStats {
        ReporterStats {
            messages: self.messages.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            failed_sends: self.failed.load(Ordering::Relaxed),
            dropped_reads: self.dropped.load(Ordering::Relaxed),
            urgent_sends: self.urgent_sends.load(Ordering::Relaxed),
        }
    }

    /// Spawns the task that flushes every `interval` (or early when
    /// `max_keys` distinct keys are waiting), and sends urgent keys early, at
    /// most once per `urgent_gap` (see the module docs). Aborted when the
    /// handle drops; [`TaskHandle::shutdown`] flushes a last time.
    pub fn spawn(self: &Arc<Self>) -> TaskHandle {
        let this = Arc::clone(self);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(this.cfg.interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // When the next early send may start.
            let mut next_urgent = tokio::time::Instant::now();
            loop {
                let step = tokio::select! {
                    _ = every.tick() => Step::Flush,
                    _ = this.full.notified() => Step::Flush,
                    _ = this.urgent.notified() => Step::Urgent,
                    _ = stop_rx.changed() => Step::Stop,
                };
                if step == Step::Urgent {
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep_until(next_urgent) => false,
                        _ = stop_rx.changed() => true,
                    };
                    if !stopped {
                        next_urgent = tokio::time::Instant::now() + this.cfg.urgent_gap;
                        // Cleared before the counts are taken: a read after
                        // this asks for the next early send.
                        this.urgent_pending.store(false, Ordering::Release);
                        if let Err(e) = this.flush_urgent().await {
                            warn!(error = %e, "sending urgent read counts failed; kept for the next send");
                        }
                        continue;
                    }
                }
                if let Err(e) = this.flush().await {
                    warn!(error = %e, "sending read counts failed; kept for the next interval");
                }
                if step != Step::Flush {
                    break;
                }
            }
        });
        TaskHandle {
            stop: stop_tx,
            task: Some(task),
        }
    }
}

/// What the reporter's task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Send everything (interval end or `max_keys`).
    Flush,
    /// Send the urgent keys.
    Urgent,
    /// Send everything and stop.
    Stop,
}

/// A background task of this module; dropping it aborts the task.
pub struct TaskHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").finish_non_exhaustive()
    }
}

impl TaskHandle {
    /// Asks the task to finish its current step (a reporter flushes once
    /// more) and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Configuration of a [`KafkaSource`].
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic of reports.
    pub topic: String,
    /// Consumer group of the detectors (they split the partitions).
    pub group_id: String,
    /// Reports whose interval ended longer ago than this (detector clock)
    /// are skipped.
    pub max_report_age: Duration,
    /// Extra librdkafka consumer settings.
    pub overrides: Vec<(String, String)>,
}

impl SourceConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_endpoint(&self.brokers, &self.topic)?;
        if self.group_id.is_empty() {
            return Err(Error::config(
                "group_id",
                &self.group_id,
                "must be non-empty",
            ));
        }
        if !(Duration::from_millis(1)..=24 * HOUR).contains(&self.max_report_age) {
            return Err(Error::config(
                "max_report_age",
                self.max_report_age,
                "must be in 1 ms ..= 1 day",
            ));
        }
        Ok(())
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "hotkey-reads".into(),
            group_id: "hotkey-detector".into(),
            max_report_age: Duration::from_secs(2),
            overrides: Vec::new(),
        }
    }
}

/// Counters of a [`KafkaSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    /// Reports counted.
    pub reports: u64,
    /// Reads fed to the detector.
    pub reads: u64,
    /// Reports skipped for age.
    pub stale_reports: u64,
    /// Messages that were not valid reports (skipped).
    pub corrupt_messages: u64,
}

struct SourceShared {
    reports: AtomicU64,
    reads: AtomicU64,
    stale: AtomicU64,
    corrupt: AtomicU64,
    metrics: SourceMetrics,
}

/// Feeds a [`Detector`] from the report topic. See the module docs.
pub struct KafkaSource {
    cfg: SourceConfig,
    consumer: StreamConsumer,
    detector: Arc<Detector>,
    shared: Arc<SourceShared>,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the topic; `cfg` is validated.
    pub fn new(cfg: SourceConfig, detector: Arc<Detector>) -> Result<Self> {
        cfg.validate()?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("fetch.wait.max.ms", "10");
        for (k, v) in &cfg.overrides {
            client.set(k, v);
        }
        let consumer: StreamConsumer = client
            .create()
            .map_err(kafka_err("create consumer", &cfg.topic))?;
        consumer
            .subscribe(&[&cfg.topic])
            .map_err(kafka_err("subscribe", &cfg.topic))?;
        Ok(KafkaSource {
            cfg,
            consumer,
            detector,
            shared: Arc::new(SourceShared {
                reports: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                stale: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                metrics: SourceMetrics::new(),
            }),
        })
    }

    /// Counts one encoded report (what the consumer loop does per message).
    pub fn handle_message(&self, payload: &[u8], what: &str) -> Result<()> {
        let report = match Report::decode(payload, what) {
            Ok(r) => r,
            Err(e) => {
                self.shared.corrupt.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.corrupt.increment(1);
                return Err(e);
            }
        };
        let now = self.detector.clock().now_ms();
        if now.saturating_sub(report.interval_end_ms) > self.cfg.max_report_age.as_millis() as u64 {
            self.shared.stale.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.stale.increment(1);
            return Ok(());
        }
        let mut reads = 0u64;
        for (k, n) in &report.entries {
            self.detector.record_at(k, *n, now);
            reads = reads.saturating_add(*n);
        }
        self.shared.reports.fetch_add(1, Ordering::Relaxed);
        self.shared.reads.fetch_add(reads, Ordering::Relaxed);
        self.shared.metrics.counted.increment(1);
        self.shared.metrics.reads.increment(reads);
        Ok(())
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SourceStats {
        source_stats(&self.shared)
    }

    /// Spawns the consumer loop; returns its handle and a way to read the
    /// counters.
    pub fn spawn(self) -> (TaskHandle, SourceStatsReader) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let reader = SourceStatsReader {
            shared: Arc::clone(&self.shared),
        };
        let task = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = self.consumer.recv() => m,
                    _ = stop_rx.changed() => break,
                };
                match msg {
                    Ok(m) => {
                        let what = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
                        if let Err(e) = self.handle_message(m.payload().unwrap_or_default(), &what)
                        {
                            warn!(error = %e, "skipping a message that is not a read report");
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        (
            TaskHandle {
                stop: stop_tx,
                task: Some(task),
            },
            reader,
        )
    }
}

fn source_stats(s: &SourceShared) -> SourceStats {
    SourceStats {
        reports: s.reports.load(Ordering::Relaxed),
        reads: s.reads.load(Ordering::Relaxed),
        stale_reports: s.stale.load(Ordering::Relaxed),
        corrupt_messages: s.corrupt.load(Ordering::Relaxed),
    }
}

/// Reads the counters of a spawned [`KafkaSource`].
#[derive(Clone)]
pub struct SourceStatsReader {
    shared: Arc<SourceShared>,
}

impl fmt::Debug for SourceStatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SourceStatsReader")
            .field(&self.get())
            .finish()
    }
}

impl SourceStatsReader {
    /// The counters now.
    #[must_use]
    pub fn get(&self) -> SourceStats {
        source_stats(&self.shared)
    }
}

/// librdkafka's embedded mock cluster with the report topic created: the
/// default for tests, demos and single-host set-ups with no Kafka to hand.
/// Give [`brokers`](Self::brokers) to [`ReporterConfig`] and
/// [`SourceConfig`]; the cluster lives as long as this value (in this
/// process only).
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: String,
}

impl fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("brokers", &self.brokers())
            .field("topic", &self.topic)
            .finish()
    }
}

impl EmbeddedKafka {
    /// Starts a one-broker mock cluster with `topic` of `partitions`.
    pub fn start(topic: &str, partitions: i32) -> Result<Self> {
        if !(1..=1024).contains(&partitions) {
            return Err(Error::config(
                "partitions",
                partitions,
                "must be in 1..=1024",
            ));
        }
        let cluster = MockCluster::new(1).map_err(kafka_err("start mock cluster", topic))?;
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(kafka_err("create topic", topic))?;
        Ok(EmbeddedKafka {
            cluster,
            topic: topic.to_owned(),
        })
    }

    /// The `bootstrap.servers` string of the cluster.
    #[must_use]
    pub fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The report topic.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The underlying mock cluster (to inject faults in tests).
    #[must_use]
    pub fn cluster(&self) -> &MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        &self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_count_is_a_tenth_of_the_smallest_threshold() {
        assert_eq!(
            ReporterConfig::urgent_count_for(&[Rule::default()]),
            ReporterConfig::default().urgent_count
        );
        let rules = [
            Rule::default().with_threshold(5000),
            Rule::default().with_threshold(250),
        ];
        assert_eq!(ReporterConfig::urgent_count_for(&rules), 25);
        assert_eq!(
            ReporterConfig::urgent_count_for(&[Rule::default().with_threshold(3)]),
            1
        );
        assert_eq!(ReporterConfig::urgent_count_for(&[]), 100);
    }

    #[test]
    fn configs_are_validated_and_errors_name_the_field() {
        ReporterConfig::default().validate().unwrap();
        SourceConfig::default().validate().unwrap();
        let reporter = [
            (
                "interval",
                ReporterConfig {
                    interval: Duration::MAX,
                    ..ReporterConfig::default()
                },
            ),
            (
                "send_timeout",
                ReporterConfig {
                    send_timeout: Duration::MAX,
                    ..ReporterConfig::default()
                },
            ),
            (
                "instance",
                ReporterConfig {
                    instance: "x".repeat(256),
                    ..ReporterConfig::default()
                },
            ),
        ];
        for (field, cfg) in reporter {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        // The early-send fields: the error names the field and the value.
        let e = ReporterConfig {
            urgent_count: 0,
            ..ReporterConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("urgent_count = 0"), "{e}");
        let e = ReporterConfig {
            urgent_gap: Duration::from_millis(101),
            ..ReporterConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("urgent_gap = 101ms"), "{e}");
        assert!(matches!(
            ReporterConfig {
                urgent_gap: Duration::ZERO,
                ..ReporterConfig::default()
            }
            .validate(),
            Err(Error::InvalidConfig { field, .. }) if field == "urgent_gap"
        ));
        let source = [
            (
                "group_id",
                SourceConfig {
                    group_id: String::new(),
                    ..SourceConfig::default()
                },
            ),
            (
                "max_report_age",
                SourceConfig {
                    max_report_age: Duration::MAX,
                    ..SourceConfig::default()
                },
            ),
        ];
        for (field, cfg) in source {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
