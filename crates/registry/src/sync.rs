//! The atomics the lock-free renewal counters are built on.
//!
//! `lease.rs` takes its atomics from `crate::sync` only. The loom test
//! (`tests/loom.rs`) compiles that very file next to its own `sync` module that
//! re-exports `loom::sync::atomic`, so the model checker explores the shipped
//! code while the library stays on `std`.

pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
