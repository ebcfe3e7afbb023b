//! Streaming hot-key detection, published to ZooKeeper and watched by every
//! application instance.
//!
//! Work in progress: [`HotKeySet`] (the read side every instance uses) is
//! ready; counting, detection, Kafka and ZooKeeper follow.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod error;
mod hotset;

pub use error::{Error, Result};
pub use hotset::{HotKeySet, HotKeySetUpdater, HotKeySnapshot, SetChange};
