//! The synchronisation primitives the double buffer is built on.
//!
//! `buffer.rs` takes its `Mutex` and `Condvar` from `crate::sync` only. The loom test
//! (`tests/loom.rs`) compiles the very same `buffer.rs` next to its own `sync` module that
//! re-exports `loom::sync`, so that the model checker explores the real swap code while the
//! library (and loom's dependency) stay untouched by `cfg(loom)`.

pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
