//! Streaming hot-key detection published to ZooKeeper and watched by every instance
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
