//! Integration tests of `hotkey`, in one binary to keep link time down.

#[path = "../support/workload.rs"]
mod workload;

mod accuracy;
#[cfg(feature = "kafka")]
mod kafka;
mod metrics;
mod scan;
#[cfg(feature = "zookeeper")]
mod zk;

use std::time::Duration;

/// Polls `cond` every 10 ms until it holds; fails the test after `timeout`.
#[cfg_attr(not(any(feature = "kafka", feature = "zookeeper")), allow(dead_code))]
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
