//! Circuit-breaking Redis cache client with per-instance limits and a big-value guard
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
