//! Sharded in-memory double buffer with group commit to a crash-safe spill log
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
