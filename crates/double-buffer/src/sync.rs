//! The synchronisation primitives the double buffer is built on.
//!
//! `buffer.rs` takes its `Mutex` and `Condvar` from `crate::sync` only. The loom test
//! (`tests/loom.rs`) compiles the very same `buffer.rs` next to its own `sync` module that
//! re-exports `loom::sync`, so that the model checker explores the real swap code while the
//! library stays untouched: no `cfg(loom)`, no loom dependency outside the tests.

pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
