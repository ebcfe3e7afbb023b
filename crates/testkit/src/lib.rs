//! Test support for the workspace: the real services and ways to break them.
//!
//! * [`Service`] names RabbitMQ, Redis and ZooKeeper, reads their endpoints
//!   from the environment (`AMQP_URL`, `REDIS_URL`, `ZK_CONNECT`) and checks
//!   readiness over each one's own protocol. `cargo xtask services` uses the
//!   same probes, so "ready" means the same thing everywhere.
//! * [`require`] is how a test states that it needs a server: it returns the
//!   endpoint, or panics with the command that starts the server. A test
//!   never passes because its server was missing.
//! * [`FaultProxy`] sits between a client and a real server and cuts,
//!   refuses, blackholes or delays traffic on demand, so that tests can make
//!   a shared server "fail" without stopping it.
//! * [`ZooKeeperServer`] writes a `zoo.cfg` and builds the command that runs
//!   Debian's ZooKeeper, standalone or as an ensemble member.
//! * `TestRecorder` (feature `metrics`) keeps what the code under test
//!   recorded through the `metrics` facade, for one test at a time;
//!   `scrape` (same feature) fetches a Prometheus endpoint's page over a
//!   blocking HTTP/1.1 `GET`.
//! * [`run_models`] is the `main` of a harness-less test target (the loom
//!   model checks): runs each model, honours a name filter, prints a summary.
//!
//! # Quick example
//!
//! ```no_run
//! use std::time::Duration;
//! use testkit::{FaultProxy, Service};
//!
//! testkit::require(Service::Redis);
//! let proxy = FaultProxy::start(Service::Redis.addr().unwrap()).unwrap();
//! assert!(Service::Redis.probe_addr(proxy.addr(), Duration::from_secs(1)).is_ok());
//! proxy.refuse();
//! assert!(Service::Redis.probe_addr(proxy.addr(), Duration::from_secs(1)).is_err());
//! proxy.restore();
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod error;
#[cfg(feature = "metrics")]
mod metrics;
mod models;
mod proxy;
#[cfg(feature = "metrics")]
mod scrape;
mod services;
mod zookeeper;

#[cfg(feature = "metrics")]
pub use crate::metrics::TestRecorder;
#[cfg(feature = "metrics")]
pub use crate::scrape::scrape;

pub use error::{ProbeError, Result};
pub use models::run_models;
pub use proxy::{FaultProxy, Mode};
pub use services::{Service, require};
pub use zookeeper::{
    Ensemble, EnsembleMember, ZOOKEEPER_JAR, ZOOKEEPER_MAIN_CLASS, ZooKeeperServer,
};
