//! Streaming hot-key detection, published to ZooKeeper and watched by every
//! application instance.
//!
//! A key read more than 1000 times within one second is *hot* (the design
//! notes, §2): it is detected at once, written to ZooKeeper, and every
//! instance watching learns of it and serves it from a local cache instead
//! of crushing one Redis replica after another.
//!
//! * [`Detector`] counts reads per [`Rule`] (key prefix or glob, window,
//!   threshold, cool-down) and emits [`Event::Hot`] / [`Event::Cooled`].
//!   `record(key)` takes no global lock and allocates nothing for a key it
//!   already tracks; memory is bounded whatever the number of distinct keys:
//!   a windowed Count-Min sketch screens every key, and only candidates
//!   (keys that may be heavy) get an exact sliding window. Time is injected
//!   ([`Clock`], [`Detector::record_at`]).
//! * Sources: in-process (an instance calls [`Detector::record`]) or
//!   distributed: each instance aggregates its reads in a [`KafkaReporter`]
//!   that sends counts every 100 ms, and the detector consumes them with a
//!   [`KafkaSource`] (feature `kafka`). A key with `urgent_count` reads (100
//!   by default) in an instance's interval is sent early instead, at most
//!   one early send per `urgent_gap` (5 ms), so that a hot key does not
//!   wait for the interval end ([`ReporterConfig`], `kafka` module docs). [`EmbeddedKafka`] runs librdkafka's
//!   mock cluster in-process for tests, demos and single-host set-ups.
//! * [`ZkPublisher`] writes the hot set under `<root>/<app>`, one znode per
//!   key, coalesced to at most one transaction per 100 ms, with digest ACLs
//!   (feature `zookeeper`; layout and session-loss behaviour in its docs).
//! * [`HotKeySet`] is what every instance consults: `is_hot(key)` is
//!   lock-free; [`HotKeySet::watch`] keeps it in sync with ZooKeeper through
//!   a persistent recursive watch and re-reads everything after a
//!   disconnect or a session expiry.
//! * `hotkey-scan` (binary, see [`scan`]) runs the same detector over an
//!   access log on the log's own timestamps.
//!
//! # Guarantees
//!
//! * **Windows are bucket-aligned.** A rule's window is `buckets` buckets
//!   of `window / buckets` (100 ms of 1 s by default); the count at time `t`
//!   is the sum of the bucket holding `t` and the `buckets - 1` before it
//!   (see [`Rule`]), so it covers between `window - bucket` and `window` of
//!   the past, not an arbitrary interval of length `window`. Reads at most
//!   `window - bucket` apart (900 ms by default) always fall into one
//!   window; reads further apart but less than `window` apart may not
//!   (buckets start at multiples of 100 ms of the clock, so 500 reads at
//!   50 ms and 501 at 1040 ms are never in one window): up to one bucket of
//!   slack. The exact window never counts reads `window` or more apart
//!   together (a new candidate's seed may include older reads: the
//!   over-estimate below).
//! * **No missed hot key.** A key's windowed count as the detector sees it
//!   is never below its true count (the sketch is an upper bound and a
//!   candidate's window is seeded with that bound), so every key read more
//!   than `threshold` times in a window (bucket-aligned, as above) is
//!   reported, at the read that crosses the threshold; in particular every
//!   key read more than `threshold` times within `window - bucket`. Two
//!   exceptions, both visible in [`DetectorStats`]: more than
//!   `max_candidates` keys per rule at the candidate level at once
//!   (`rejected_promotions`), and reads of a key that race, on another
//!   thread, with that key's own promotion (at most one read per thread).
//! * **Bounded over-estimate.** The over-estimate of a candidate is its seed,
//!   at most the candidate level (`threshold / candidate_divisor`, 1/8 by
//!   default) plus sketch collisions, and it leaves the window within one
//!   window length. A key read fewer than `threshold / 2` times in every
//!   window is not reported on the tested workloads (Zipf over a million
//!   keys, uniform).
//! * **Cool-down.** A hot key is reported cooled once [`Detector::tick`] has
//!   seen its window count at or below the threshold for the rule's
//!   cool-down.
//! * **ZooKeeper writes** are bounded: at most one `multi` per app per
//!   `min_write_interval`, at most `max_ops_per_write` operations each.
//!   Published keys survive the detector's session loss (persistent znodes).
//! * **Watchers** converge to the published set after any disconnect or
//!   session expiry; while disconnected they keep the last set.
//!
//! # Observability
//!
//! Counters and gauges go through the [`metrics`](https://docs.rs/metrics)
//! facade, all named `hotkey_*`: detections and cool-downs per rule
//! (`hotkey_detected_total{rule}`, `hotkey_cooled_total{rule}`, the
//! `hotkey_hot_keys{rule}` gauge), the candidate table
//! (`hotkey_rejected_promotions_total`, ...), ZooKeeper writes and watcher
//! re-reads (`hotkey_zk_writes_total{app}`, `hotkey_zk_resyncs_total{app}`,
//! ...), and Kafka reports on both sides
//! (`hotkey_reporter_dropped_reads_total{instance}`,
//! `hotkey_kafka_reports_total{outcome}`, ...). The [`metrics`](mod@metrics)
//! module lists every name with its labels. Nothing is recorded per read:
//! only detections, ticks, sends, transactions and consumed messages move a
//! metric. Install the recorder before building the objects (they register
//! their handles when built).
//!
//! `tracing` events: `INFO` "hot key detected" and "hot key cooled down"
//! (fields `rule`, `key`, `rate` or `cooled_at_ms`), `WARN` when a
//! publication, a report send or a watcher's re-read fails, and when a
//! ZooKeeper session is lost.
//!
//! # Quick example: in-process
//!
//! ```
//! use std::sync::Arc;
//! use hotkey::{Config, Detector, Event, ManualClock, Rule};
//!
//! let clock = ManualClock::new(1_700_000_000_000);
//! let detector = Detector::with_clock(Config::default(), Arc::new(clock.clone()))?;
//! for _ in 0..1001 {
//!     detector.record(b"user:42"); // > 1000 reads within 1 s
//! }
//! let Some(Event::Hot(hot)) = detector.poll_event() else { panic!("not detected") };
//! assert_eq!((hot.key.as_slice(), hot.rate), (&b"user:42"[..], 1001));
//!
//! clock.advance_ms(1_000 + 5_000); // out of the window, then the 5 s cool-down
//! detector.tick();
//! detector.tick();
//! clock.advance_ms(5_000);
//! detector.tick();
//! assert!(matches!(detector.poll_event(), Some(Event::Cooled(_))));
//! # Ok::<(), hotkey::Error>(())
//! ```
//!
//! # Quick example: distributed, published to ZooKeeper
//!
//! ```no_run
//! # async fn run() -> hotkey::Result<()> {
//! use std::sync::Arc;
//! use hotkey::{
//!     Config, Detector, DigestCredentials, HotKeySet, KafkaReporter, KafkaSource, ReporterConfig, SourceConfig,
//!     ZkConfig, ZkPublisher,
//! };
//!
//! // In every application instance: report reads, watch the hot set.
//! let reporter = KafkaReporter::new(ReporterConfig { brokers: "kafka:9092".into(), instance: "web-1".into(), ..Default::default() }).await?;
//! let _reporting = reporter.spawn();
//! let zk = ZkConfig { connect: "zk:2181".into(), app: "shop".into(), ..Default::default() };
//! let watch = HotKeySet::watch(zk.clone()).await?;
//! let hot = watch.set();
//! reporter.record(b"item:7"); // on every cache read
//! if hot.is_hot(b"item:7") { /* serve from the local cache */ }
//!
//! // In the detector: count across instances, publish.
//! let detector = Arc::new(Detector::new(Config::default())?);
//! let (_source, _stats) = KafkaSource::new(SourceConfig { brokers: "kafka:9092".into(), ..Default::default() }, Arc::clone(&detector))?.spawn();
//! let credentials = Some(DigestCredentials { user: "detector".into(), password: "secret".into() });
//! let _publisher = ZkPublisher::connect(ZkConfig { credentials, ..zk }).await?.spawn(detector, true);
//! # Ok(()) }
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod clock;
mod config;
mod detector;
mod error;
mod hotset;
#[cfg(feature = "kafka")]
mod kafka;
pub mod metrics;
mod report;
mod rule;
mod scan;
mod sketch;
mod sync;
mod window;
#[cfg(feature = "zookeeper")]
mod zk;
mod znode;

pub use clock::{Clock, CoarseClock, ManualClock, SystemClock};
pub use config::Config;
pub use detector::{CooledKey, Detector, DetectorStats, Event, HotKey};
pub use error::{Error, Result};
pub use hotset::{HotKeySet, HotKeySetUpdater, HotKeySnapshot, SetChange};
#[cfg(feature = "kafka")]
pub use kafka::{
    EmbeddedKafka, KafkaReporter, KafkaSource, ReporterConfig, ReporterStats, SourceConfig,
    SourceStats, SourceStatsReader, TaskHandle,
};
#[cfg(feature = "kafka")]
pub use rdkafka;
pub use report::Report;
pub use rule::{KeyPattern, MAX_THRESHOLD, Rule, parse_rules};
pub use scan::{
    Detection, MAX_TIMESTAMP_MS, ScanConfig, ScanSummary, catch_all, display_key, parse_line, scan,
};
#[cfg(feature = "zookeeper")]
pub use zk::{
    DigestCredentials, HotKeyWatch, KeyNodeData, PublisherHandle, PublisherStats, SyncOutcome,
    WatchStats, ZkConfig, ZkPublisher,
};
pub use znode::{decode_key, encode_key};
#[cfg(feature = "zookeeper")]
pub use zookeeper_client;
