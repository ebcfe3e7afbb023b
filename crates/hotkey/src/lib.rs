//! Streaming hot-key detection, published to ZooKeeper and watched by every
//! application instance.
//!
//! Work in progress: [`HotKeySet`] (the read side every instance uses) and
//! the [`Detector`] are ready; Kafka and ZooKeeper follow.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod clock;
mod config;
mod detector;
mod error;
mod hotset;
#[cfg(feature = "kafka")]
mod kafka;
mod report;
mod rule;
mod scan;
mod sketch;
mod window;
#[cfg(feature = "zookeeper")]
mod zk;
mod znode;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use detector::{CooledKey, Detector, DetectorStats, Event, HotKey};
pub use error::{Error, Result};
pub use hotset::{HotKeySet, HotKeySetUpdater, HotKeySnapshot, SetChange};
#[cfg(feature = "kafka")]
pub use kafka::{
    KafkaReporter, KafkaSource, ReporterConfig, ReporterStats, SourceConfig, SourceStats,
    SourceStatsReader, TaskHandle,
};
#[cfg(feature = "kafka")]
pub use rdkafka;
pub use report::Report;
pub use rule::{KeyPattern, MAX_THRESHOLD, Rule, parse_rules};
pub use scan::{Detection, ScanConfig, ScanSummary, catch_all, display_key, parse_line, scan};
#[cfg(feature = "zookeeper")]
pub use zk::{
    DigestCredentials, HotKeyWatch, KeyNodeData, PublisherHandle, PublisherStats, SyncOutcome,
    WatchStats, ZkConfig, ZkPublisher,
};
pub use znode::{decode_key, encode_key};
#[cfg(feature = "zookeeper")]
pub use zookeeper_client;
