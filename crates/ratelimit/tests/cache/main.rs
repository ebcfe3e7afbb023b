//! `ProtectedCache` against real Redis servers: the shared one (through a
//! `FaultProxy` where a test breaks the network) and private ones started
//! per test where exact server-side counting is needed.

mod basic;
mod big;
mod faults;
mod loader;
mod storm;
mod support;
