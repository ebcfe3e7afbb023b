//! ZooKeeper fast leader election as a sans-IO state machine, with TCP nodes
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
