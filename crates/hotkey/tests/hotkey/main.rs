//! Integration tests of `hotkey`, in one binary to keep link time down.

#[path = "../support/workload.rs"]
mod workload;

mod accuracy;
mod kafka;
mod scan;
mod zk;
