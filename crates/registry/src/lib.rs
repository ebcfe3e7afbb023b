//! Eureka-compatible service registry held in memory
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
