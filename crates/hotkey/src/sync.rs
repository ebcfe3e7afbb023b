//! The atomics the lock-free counters are built on.
//!
//! `window.rs` and `sketch.rs` take their atomics from `crate::sync` only.
//! The loom test (`tests/loom.rs`) compiles those very files next to its own
//! `sync` module that re-exports `loom::sync::atomic`, so the model checker
//! explores the shipped code while the library stays on `std`.

pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
